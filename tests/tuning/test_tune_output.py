"""What ``tvmforge tune`` prints is for a human: no raw TVM log lines (the pool kernels'
"Unknown schedule rule" warnings), and a summary whose figures agree with each other."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_builders import make_model


def _conv_pool_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(
        np.random.default_rng(0).normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c"], ["p"], name="maxpool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("AveragePool", ["p"], ["y"], name="avgpool", kernel_shape=[2, 2],
                         strides=[2, 2]),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])],
        [w],
    )


def test_tune_prints_no_tvm_log_lines_and_an_honest_summary(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(_conv_pool_model(), model)
    res = subprocess.run(
        [sys.executable, "-m", "tvmforge.cli", "tune", str(model), "--target", "x86",
         "--trials", "1", "--tuning-log", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=600,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Unknown schedule rule" not in out
    assert not re.search(r"^\[\d\d:\d\d:\d\d\]", out, re.M), out
    summary = next(line for line in out.splitlines() if line.startswith("searched"))
    searched, kernels = map(int, re.match(r"searched (\d+) of (\d+) kernel", summary).groups())
    assert searched == 1 and kernels > 1
    assert f"({kernels - searched} kept their default schedule" in summary
    assert "not the model's latency" in out
