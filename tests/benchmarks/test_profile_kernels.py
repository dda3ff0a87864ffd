"""``benchmarks/profile_kernels.py``: per-kernel times inside a real run, and ONNX Runtime's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "profile_kernels.py"


def _load():
    spec = importlib.util.spec_from_file_location("profile_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_in_model_kernel_times_account_for_the_run():
    prof = _load()
    run_ms, kernels = prof.tvmforge_profile("zoo:squeezenet", threads=2, runs=3, use_logs=False)
    # a conv is one kernel, or three for Winograd's (its output transform counts it once)
    convs = {k: v for k, v in kernels.items() if "conv2d" in k or "winograd_output" in k}
    assert convs and all(ms > 0 and calls >= 1 for ms, calls in convs.values())
    assert sum(calls for _, calls in convs.values()) == 26  # SqueezeNet 1.1's 26 convs
    assert any("winograd_output" in k for k in convs)  # its 3x3 expand convs
    # the calls are the run: their sum is the run's time up to the VM's own work and noise
    total = sum(ms for ms, _ in kernels.values())
    assert 0.5 * run_ms < total < 2.0 * run_ms


def test_onnxruntime_nodes_are_grouped_by_op_and_shapes(capsys):
    prof = _load()
    total, groups = prof.ort_profile("zoo:squeezenet", threads=2, runs=3)
    assert total > 0
    convs = [(key, n) for key, (_, n) in groups.items() if "Conv" in key[0]]
    assert sum(n for _, n in convs) == 26
    assert prof.main(["zoo:squeezenet", "--runs", "2", "--top", "3", "--ort", "--no-tune"]) == 0
    out = capsys.readouterr().out
    assert out.count(" ms  x") == 6 and "onnxruntime zoo:squeezenet" in out
