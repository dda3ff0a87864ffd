"""Celu and ReverseSequence (``tvmforge.frontend.converters.sequence_ops``) against ONNX
Runtime: alpha, both axis layouts, run-time lengths (full, partial, one)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from onnx_builders import assert_close, run_both


def test_celu_and_reverse_sequence_match_onnxruntime():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2)).astype(np.float32)  # [time, batch, feature]
    xb = np.ascontiguousarray(x.transpose(1, 0, 2))  # [batch, time, feature]
    lens = np.array([4, 2, 1], np.int64)
    nodes = [
        helper.make_node("Celu", ["x"], ["celu"], alpha=0.7),
        helper.make_node("ReverseSequence", ["x", "lens"], ["rev_tb"], batch_axis=1, time_axis=0),
        helper.make_node("ReverseSequence", ["xb", "lens"], ["rev_bt"], batch_axis=0, time_axis=1),
    ]
    graph = helper.make_graph(
        nodes, "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 2]),
         helper.make_tensor_value_info("xb", TensorProto.FLOAT, [3, 4, 2]),
         helper.make_tensor_value_info("lens", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
         for n in ("celu", "rev_tb", "rev_bt")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=9)
    ours, ref = run_both(model, {"x": x, "xb": xb, "lens": lens})
    assert_close(ours, ref)
    np.testing.assert_array_equal(ours[1][:, 2], x[:, 2])  # length 1: unchanged
