"""``benchmarks/kernel_hashes.py``: every scheduled kernel, hashed, against the committed
reference for the AVX-512 VNNI preset (the same on any machine: the kernels are scheduled for
the preset's CPU, and the build stops before code generation). A difference means a kernel
changed: regenerate the reference with the script's ``--out`` when that is the intent."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "kernel_hashes.py"
REFERENCE = ROOT / "benchmarks" / "results" / "kernel_hashes_avx512-vnni.json"


def _script():
    spec = importlib.util.spec_from_file_location("kernel_hashes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reference(path: Path = REFERENCE) -> dict:
    data = json.loads(path.read_text())
    assert data["target"] == "x86:avx512-vnni"
    return data["models"]


def _check(key: str, model: str, quantize: str | None = None, reference: Path = REFERENCE):
    got = _script().model_hashes(model, "x86:avx512-vnni", quantize, threads=2)
    want = _reference(reference)[key]
    changed = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    assert not changed, f"{key}: kernels changed: {changed}"


def test_squeezenet_kernels_are_unchanged():
    _check("zoo:squeezenet", "zoo:squeezenet")


@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    ["zoo:resnet50", "zoo:inception_v1", "zoo:shufflenet", "zoo:densenet121", "zoo:ppocr-det",
     "zoo:ppocr-rec", "zoo:bert-base"],
)
def test_every_default_model_keeps_its_kernels(model):
    _check(model, model)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["zoo:resnet50"])
def test_int8_kernels_are_unchanged(model):
    _check(f"{model} [int8]", model, "int8")


def test_a_changed_kernel_is_reported(tmp_path):
    """The comparison is not vacuous: a reference with one hash altered fails."""
    data = json.loads(REFERENCE.read_text())
    kernels = data["models"]["zoo:squeezenet"]
    first = sorted(kernels)[0]
    kernels[first] = "0" * 16
    altered = tmp_path / "ref.json"
    altered.write_text(json.dumps(data))
    with pytest.raises(AssertionError, match=first):
        _check("zoo:squeezenet", "zoo:squeezenet", reference=altered)
