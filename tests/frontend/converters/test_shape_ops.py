"""Converters that fix how shapes and indices come out: Split with zero-sized and uneven parts,
MaxPool's Indices, ConvTranspose's output_shape, Pad with a run-time fill value, ReduceMax/Min
on booleans and over empty axes, and variadic Max/Min/Sum/Mean that broadcast. Each group is one
model built for x86 and compared with ONNX Runtime."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnx_builders import assert_close, run_both


def _model(nodes, inputs, outputs, inits=(), opset=18):
    graph = helper.make_graph(nodes, "shapes", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=9)


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def test_split_pool_indices_conv_transpose_output_shape():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 7, 5)).astype(np.float32)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    nodes = [
        # zero-sized part, given sizes; and opset 18's uneven num_outputs (3, 3, 1)
        helper.make_node("Split", ["x", "sizes"], ["s0", "s1", "s2"], axis=2),
        helper.make_node("Split", ["x"], ["u0", "u1", "u2"], axis=2, num_outputs=3),
        helper.make_node("MaxPool", ["x"], ["p", "pi"], kernel_shape=[3, 2], strides=[2, 1],
                         pads=[1, 0, 1, 1], storage_order=0),
        helper.make_node("MaxPool", ["x"], ["q", "qi"], kernel_shape=[2, 2],
                         storage_order=1, ceil_mode=1, strides=[2, 2]),
        helper.make_node("ConvTranspose", ["x", "w"], ["t"], strides=[3, 2],
                         output_shape=[23, 12]),
    ]
    inits = [numpy_helper.from_array(np.array([4, 0, 3], np.int64), "sizes"),
             numpy_helper.from_array(w, "w")]
    outs = [_vi(n, None) for n in ("s0", "s1", "s2", "u0", "u1", "u2", "p")]
    outs += [_vi("pi", None, TensorProto.INT64), _vi("q", None),
             _vi("qi", None, TensorProto.INT64), _vi("t", None)]
    ours, ref = run_both(_model(nodes, [_vi("x", list(x.shape))], outs, inits), {"x": x})
    assert ours[1].shape == (1, 2, 0, 5) and ours[5].shape == (1, 2, 1, 5)
    assert ours[10].shape == (1, 3, 23, 12)
    assert_close(ours, ref)


def test_pad_value_bool_and_empty_reductions_variadic_broadcast():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    flags = rng.random((2, 3, 4)) > 0.5
    empty = np.zeros((2, 0, 4), np.float32)
    scalar = np.array(0.25, np.float32)
    nodes = [
        helper.make_node("Pad", ["x", "pads", "fill"], ["padded"], mode="constant"),
        helper.make_node("ReduceMax", ["flags", "axis1"], ["any"], keepdims=0),
        helper.make_node("ReduceMin", ["flags", "axis1"], ["all"], keepdims=1),
        helper.make_node("ReduceMax", ["empty", "axis1"], ["emax"], keepdims=1),
        helper.make_node("ReduceMin", ["empty", "axis1"], ["emin"], keepdims=0),
        helper.make_node("Max", ["x", "scalar", "row"], ["mx"]),
        helper.make_node("Min", ["scalar", "x"], ["mn"]),
        helper.make_node("Sum", ["x", "row", "scalar"], ["sm"]),
        helper.make_node("Mean", ["row", "x"], ["me"]),
    ]
    inits = [numpy_helper.from_array(np.array([0, 1, 2, 0], np.int64), "pads"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([0.5, -1.0, 2.0], np.float32), "row")]
    inputs = [_vi("x", [2, 3]), _vi("fill", []), _vi("flags", [2, 3, 4], TensorProto.BOOL),
              _vi("empty", [2, 0, 4]), _vi("scalar", [])]
    outs = [_vi("padded", None), _vi("any", None, TensorProto.BOOL),
            _vi("all", None, TensorProto.BOOL), _vi("emax", None), _vi("emin", None)]
    outs += [_vi(n, None) for n in ("mx", "mn", "sm", "me")]
    feeds = {"x": x, "fill": np.array(-7.5, np.float32), "flags": flags, "empty": empty,
             "scalar": scalar}
    ours, ref = run_both(_model(nodes, inputs, outs, inits, opset=20), feeds)
    assert np.all(ours[3] == -np.inf) and np.all(ours[4] == np.inf)
    assert_close(ours, ref)


def test_cumsum_axis_fed_at_run_time_needs_no_freeze(tmp_path):
    import tvmforge

    model = _model([helper.make_node("CumSum", ["x", "axis"], ["y"], exclusive=1)],
                   [_vi("x", [3, 4]), _vi("axis", [], TensorProto.INT64)], [_vi("y", [3, 4])],
                   opset=14)
    compiled = tvmforge.load(tvmforge.compile_model(model, "x86", tmp_path / "c.tar"))
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for axis in (0, 1, -1, -2):
        want = np.cumsum(x, axis=axis) - x  # exclusive
        got = compiled(x=x, axis=np.array(axis, np.int64))["y"]
        np.testing.assert_allclose(got, want, err_msg=f"axis {axis}")
