"""Targets: resolution from strings, host detection, and a real model built for each family.

ARM: light SqueezeNet built for ``arm`` runs under qemu on an aarch64 TVM runtime (QEMU_CPU set
to the preset's core) and matches ONNX Runtime. CUDA: the same model built for ``cuda:sm_80``
here without a GPU; the artifact holds the device code. Running it needs a GPU (``gpu`` mark).
"""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

import tvmforge
from tvmforge import build_model, compile_model
from tvmforge.bench.reference import compare, run_onnxruntime
from tvmforge.runtime.executor import random_inputs
from tvmforge.targets import REGISTRY, TargetSpecError, arm, cuda, resolve


def test_x86_native_compiles_for_the_host_and_keys_by_its_cpuid_level():
    t = resolve("x86", threads=2)
    assert t.target["mcpu"] not in ("", "generic")
    assert t.target["num-cores"] == 2 and t.threads == 2
    flags = set()
    for line in open("/proc/cpuinfo").read().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        assert t.tuning_key.startswith("x86-avx512")
    elif "avx2" in flags:
        assert t.tuning_key == "x86-avx2"
    t.tvm_target()  # TVM accepts it


@pytest.mark.parametrize(
    "spec",
    ["x86:avx2", "arm", "arm:cortex-a76", "arm:neoverse-n1", "cuda", "cuda:sm_75", "cuda:sm_90"],
)
def test_presets_resolve_to_valid_tvm_targets(spec):
    t = resolve(spec)
    tvm_target = t.tvm_target()
    assert t.spec() == resolve(t.spec()).spec()
    if t.key == "arm":
        assert tvm_target.attrs["mtriple"] == "aarch64-linux-gnu"
        assert ("+dotprod" in t.target["mattr"]) == (t.preset != "cortex-a72")
        assert t.export_cc == arm.CROSS_CC
    if t.key == "cuda":
        assert tvm_target.kind.name == "cuda" and str(tvm_target.attrs["arch"]) == t.preset


def test_json_target():
    t = resolve('{"kind": "llvm", "mcpu": "skylake-avx512"}', threads=3)
    assert t.key == "json" and t.device == "cpu" and t.arch == "x86_64"
    assert t.target["num-cores"] == 3
    assert t.tuning_key == ""  # no shipped logs are offered to an arbitrary target
    a = resolve('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}')
    assert a.arch == "aarch64"


@pytest.mark.parametrize("spec", ["sparc", "x86:pentium", '{"mcpu": 1}', "{not json"])
def test_bad_target_strings(spec):
    with pytest.raises(TargetSpecError):
        resolve(spec)


def test_registry_has_the_three_families():
    assert set(REGISTRY) == {"x86", "arm", "cuda"}
    for fam in REGISTRY.values():
        assert fam.default_preset in fam.presets


def test_json_llvm_target_compiles_and_runs(tmp_path):
    out = compile_model(
        "zoo:squeezenet", '{"kind": "llvm", "mcpu": "haswell"}', tmp_path / "sq.tar"
    )
    model = tvmforge.load(out)
    x = random_inputs(model.inputs)
    ref = run_onnxruntime(tvmforge.frontend.importer.load("zoo:squeezenet"), x)
    assert all(c.ok for c in compare(model(**x), ref))


def test_arm_squeezenet_runs_under_qemu_and_matches(aarch64_root, tmp_path, cli):
    assert arm.can_build(), arm.can_build().reason
    res = cli(
        "compile", "zoo:squeezenet", "--target", "arm:cortex-a72", "-o", "sq_arm.tar", "--check"
    )
    assert res.exit_code == 0, res.output
    assert " ok" in res.stdout
    manifest = tvmforge.runtime.artifact.read_manifest(tmp_path / "sq_arm.tar")
    assert manifest["target"]["arch"] == "aarch64"
    assert manifest["target"]["target"]["mtriple"] == "aarch64-linux-gnu"
    # The same artifact through the Python API: the library is an aarch64 ELF run under qemu.
    model = tvmforge.load(tmp_path / "sq_arm.tar")
    x = random_inputs(model.inputs, seed=5)
    ours = model(**x)
    ref = run_onnxruntime(tvmforge.frontend.importer.load("zoo:squeezenet"), x)
    assert all(c.ok for c in compare(ours, ref)), [c.line() for c in compare(ours, ref)]
    with tarfile.open(tmp_path / "sq_arm.tar") as tar:
        elf = tar.extractfile("model.so").read(20)
    assert elf[:4] == b"\x7fELF" and int.from_bytes(elf[18:20], "little") == 183  # EM_AARCH64


def test_cuda_artifact_builds_without_gpu_and_holds_device_code(tmp_path):
    built = build_model("zoo:squeezenet", "cuda:sm_80")
    host = built.executable.mod.imports[0]
    device = [m for m in host.imports if m.kind == "cuda"]
    assert len(device) == 1
    source = device[0].inspect_source()
    assert source.count('extern "C" __global__') >= 10  # one per fused kernel
    assert "threadIdx.x" in source  # scheduled (dlight): kernels are bound to GPU threads

    out = tvmforge.driver.build.export(built, tmp_path / "sq_cuda.tar")
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        lib = tar.extractfile("model.so").read()
    assert manifest["target"]["device"] == "cuda"
    assert manifest["target"]["target"] == {"kind": "cuda", "arch": "sm_80"}
    assert manifest["outputs"][0]["shape"] == [1, 1000, 1, 1]
    # The device module is serialized into the library (TVM 0.27 stores CUDA C, format
    # "cuda", compiled by the CUDA runtime when the library is loaded on a GPU machine).
    assert b"\x04\x00\x00\x00\x00\x00\x00\x00cuda" in lib
    assert lib.count(b'extern "C" __global__') == source.count('extern "C" __global__')


@pytest.mark.gpu
@pytest.mark.skipif(not cuda.can_run(), reason=f"needs an NVIDIA GPU: {cuda.can_run().reason}")
def test_cuda_artifact_runs_and_matches(tmp_path):
    out = compile_model("zoo:squeezenet", "cuda", tmp_path / "sq.tar")
    model = tvmforge.load(out)
    x = random_inputs(model.inputs)
    ref = run_onnxruntime(tvmforge.frontend.importer.load("zoo:squeezenet"), x)
    results = compare(model(**x), ref, atol=1e-3, rtol=1e-3)
    assert all(r.ok for r in results), [r.line() for r in results]
    assert np.isfinite(next(iter(model(**x).values()))).all()
