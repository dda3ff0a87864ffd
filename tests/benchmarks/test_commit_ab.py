"""``benchmarks/commit_ab.py``: a git revision's tvmforge against the working tree's."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import onnx

from onnx_builders import conv_relu_model

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "commit_ab.py"


def _load():
    spec = importlib.util.spec_from_file_location("commit_ab", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_revision_is_what_its_builds_import(tmp_path):
    """``PYTHONPATH`` from ``_checkout`` imports the archived source, subpackages included,
    not the installed (editable) package."""
    path = _load()._checkout("HEAD", tmp_path)
    code = (
        "import tvmforge, tvmforge.passes.graph.winograd as w; "
        "print(tvmforge.__file__); print(w.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(path)),
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout.split()
    assert all(Path(p).resolve().is_relative_to(tmp_path.resolve()) for p in out), out
    committed = subprocess.run(
        ["git", "-C", str(ROOT), "show", "HEAD:passes/graph/winograd.py"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert (tmp_path / "src" / "passes" / "graph" / "winograd.py").read_text() == committed


def test_both_builds_run_and_are_timed_against_onnxruntime(tmp_path, capsys):
    model = tmp_path / "conv.onnx"
    onnx.save(conv_relu_model(), model)
    assert _load().main(["HEAD", str(model), "--rounds", "1", "--no-tune"]) == 0
    out = capsys.readouterr().out
    assert "built by HEAD" in out and "built by working tree" in out
    assert out.count("max error relative to the largest output") == 2
    last = out.strip().splitlines()[-1]
    assert "HEAD" in last and "working tree" in last and "onnxruntime" in last


def test_int8_builds_are_compared_and_checked_for_identical_outputs(tmp_path, capsys):
    """``--int8``: both revisions quantize with the same seeded calibration samples, so the
    same source gives bit-identical outputs (how a kernel change is shown to be exact)."""
    model = tmp_path / "conv.onnx"
    onnx.save(conv_relu_model(), model)
    assert _load().main(["HEAD", str(model), "--rounds", "1", "--no-tune", "--int8"]) == 0
    out = capsys.readouterr().out
    assert out.count("max error relative to the largest output") == 2
    assert "the two builds' outputs are identical" in out
