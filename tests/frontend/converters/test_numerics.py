"""Converters that fix numerics against ONNX Runtime: float ReduceMax/Min of rows of -inf,
half-precision MatMul/Softmax accumulating in float32, NMS thresholds (IoU > threshold, ONNX's
defaults), Constant's value_ints/value_int and a 0-d Unsqueeze axes."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnx_builders import assert_close, run_both


def _model(nodes, inputs, outputs, inits=(), opset=18):
    graph = helper.make_graph(nodes, "numerics", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=9)


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def test_masked_rows_half_matmul_and_constant_forms():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    x[1] = -np.inf  # a row masked out entirely
    a = rng.standard_normal((4, 256)).astype(np.float16)
    b = rng.standard_normal((256, 8)).astype(np.float16)
    nodes = [
        helper.make_node("ReduceMax", ["x", "axis"], ["mx"], keepdims=0),
        helper.make_node("Neg", ["x"], ["negx"]),
        helper.make_node("ReduceMin", ["negx", "axis"], ["mn"], keepdims=1),
        helper.make_node("MatMul", ["a", "b"], ["ab"]),
        helper.make_node("Softmax", ["ab"], ["sm"], axis=-1),
        helper.make_node("Constant", [], ["ints"], value_ints=[2, 3]),
        helper.make_node("Constant", [], ["zero"], value_int=0),
        helper.make_node("Unsqueeze", ["ints", "zero"], ["u"]),
    ]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "axis")]
    outs = [_vi("mx", None), _vi("mn", None), _vi("ab", None, TensorProto.FLOAT16),
            _vi("sm", None, TensorProto.FLOAT16), _vi("u", None, TensorProto.INT64)]
    model = _model(nodes, [_vi("x", [3, 5]), _vi("a", [4, 256], TensorProto.FLOAT16),
                           _vi("b", [256, 8], TensorProto.FLOAT16)], outs, inits)
    ours, ref = run_both(model, {"x": x, "a": a, "b": b})
    assert ours[0][1] == -np.inf and ours[1][1, 0] == np.inf
    assert ours[4].shape == (1, 2)
    # float16 results within one ulp of ORT's float32-accumulated ones
    assert_close(ours[:2] + ours[4:], ref[:2] + ref[4:])
    exact = (a.astype(np.float64) @ b.astype(np.float64))
    assert np.max(np.abs(ours[2] - exact)) <= np.max(np.abs(ref[2] - exact)) + 0.05


def test_nms_suppresses_only_above_the_threshold_and_defaults():
    # unit squares shifted by half a side: IoU = 0.5 / 1.5 = 1/3
    boxes = np.array([[[0, 0, 1, 1], [0, 0.5, 1, 1.5], [0, 5, 1, 6]]], np.float32)
    scores = np.array([[[0.9, 0.8, -0.5]]], np.float32)
    third = np.float32(1 / 3)
    nodes = [
        # at the IoU itself: kept (IoU is not greater)
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "k", "iou"], ["at"]),
        # threshold 0: any overlap suppresses; absent score threshold keeps the negative score
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "k", "zero"], ["any"]),
        # no thresholds at all: IoU threshold 0, no score filtering
        helper.make_node("NonMaxSuppression", ["boxes", "scores", "k"], ["none"]),
    ]
    inits = [numpy_helper.from_array(np.array([3], np.int64), "k"),
             numpy_helper.from_array(np.array([third], np.float32), "iou"),
             numpy_helper.from_array(np.array([0.0], np.float32), "zero")]
    outs = [_vi(n, None, TensorProto.INT64) for n in ("at", "any", "none")]
    model = _model(nodes, [_vi("boxes", [1, 3, 4]), _vi("scores", [1, 1, 3])], outs, inits,
                   opset=11)
    ours, ref = run_both(model, {"boxes": boxes, "scores": scores})
    assert len(ours[1]) == 2  # box 1 suppressed by box 0, box 2 (negative score) kept
    assert_close(ours, ref)
