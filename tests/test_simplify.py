"""The ONNX pre-pass: shape subgraphs fold, constant Ifs inline, for-Loops unroll."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_builders import make_model
from tvmforge import build_model
from tvmforge.frontend import TensorInfo
from tvmforge.runtime import LocalVM
from tvmforge.simplify import simplify


def _run_both(model, feed, tmp_path):
    built = build_model(model, "x86")
    lib = tmp_path / "lib.so"
    built.executable.export_library(str(lib))
    ours = LocalVM(lib, "cpu").run([feed[i.name] for i in built.inputs])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return ours, sess.run(None, feed)


def _reshape_by_shape_model(batch):
    """y = Reshape(x, Concat(Gather(Shape(x), 0), [-1])): a computed target shape."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape"),
    ]
    inits = [
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 12])],
        inits,
    )


def test_shape_subgraph_folds_to_a_constant():
    model = _reshape_by_shape_model("N")
    out, report = simplify(model, [TensorInfo("x", (2, 3, 4), "float32")])
    assert [n.op_type for n in out.graph.node] == ["Reshape"]
    target = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}["target"]
    assert target.tolist() == [2, -1]
    assert report.folded_nodes >= 4


def test_folded_model_compiles_and_matches(tmp_path):
    model = _reshape_by_shape_model(2)
    x = np.random.default_rng(0).random((2, 3, 4), dtype=np.float32)
    (ours,), (ref,) = _run_both(model, {"x": x}, tmp_path)
    np.testing.assert_array_equal(ours, ref)


def test_quantization_boundaries_are_not_folded():
    w = numpy_helper.from_array(np.arange(4, dtype=np.int8), "w")
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "scale"], ["wf"], name="dq"),
        helper.make_node("Add", ["x", "wf"], ["y"], name="add"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [w, numpy_helper.from_array(np.array(0.5, np.float32), "scale")],
    )
    out, _ = simplify(model, [TensorInfo("x", (4,), "float32")])
    assert [n.op_type for n in out.graph.node] == ["DequantizeLinear", "Add"]


def _branchy(cond_value):
    then_g = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"], name="times2")],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [3])],
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"], name="neg")],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [3])],
    )
    nodes = [
        helper.make_node("Equal", ["mode", "sixteen"], ["c"], name="is16k"),
        helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_g, else_branch=else_g),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [
            numpy_helper.from_array(np.array(cond_value, np.int64), "mode"),
            numpy_helper.from_array(np.array(16, np.int64), "sixteen"),
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        ],
    )


@pytest.mark.parametrize(("mode", "expect"), [(16, "Mul"), (8, "Neg")])
def test_constant_if_is_inlined(mode, expect, tmp_path):
    model = _branchy(mode)
    out, report = simplify(model, [TensorInfo("x", (3,), "float32")])
    assert report.inlined_ifs == 1
    assert expect in [n.op_type for n in out.graph.node]
    assert "If" not in [n.op_type for n in out.graph.node]
    x = np.array([1.0, -2.0, 3.0], np.float32)
    (ours,), (ref,) = _run_both(model, {"x": x}, tmp_path)
    np.testing.assert_array_equal(ours, ref)


def _for_loop_model(trips: int):
    """acc_{i+1} = acc_i * 0.5 + x * i; scan output collects acc_{i+1} each iteration."""
    body = helper.make_graph(
        [
            helper.make_node("Cast", ["i"], ["fi"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["acc", "half"], ["a"]),
            helper.make_node("Mul", ["x", "fi"], ["b"]),
            helper.make_node("Add", ["a", "b"], ["acc_out"]),
            helper.make_node("Identity", ["cond"], ["cond_out"]),
            helper.make_node("Identity", ["acc_out"], ["scan_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc", TensorProto.FLOAT, [2]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("scan_out", TensorProto.FLOAT, [2]),
        ],
        [numpy_helper.from_array(np.array(0.5, np.float32), "half")],
    )
    return make_model(
        [
            helper.make_node(
                "Loop", ["M", "true", "x"], ["final", "history"], name="loop", body=body
            )
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [
            helper.make_tensor_value_info("final", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("history", TensorProto.FLOAT, [trips, 2]),
        ],
        [
            numpy_helper.from_array(np.array(trips, np.int64), "M"),
            numpy_helper.from_array(np.array(True), "true"),
        ],
    )


def test_for_loop_is_unrolled_and_matches(tmp_path):
    model = _for_loop_model(4)
    out, report = simplify(model, [TensorInfo("x", (2,), "float32")])
    assert report.unrolled_loops == 1
    assert "Loop" not in [n.op_type for n in out.graph.node]
    x = np.array([1.5, -2.0], np.float32)
    ours, ref = _run_both(model, {"x": x}, tmp_path)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert ours[1].shape == (4, 2)


def test_loop_with_runtime_trip_count_is_left_alone():
    model = _for_loop_model(4)
    del model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info("M", TensorProto.INT64, []))
    out, report = simplify(model, [TensorInfo("x", (2,), "float32"), TensorInfo("M", (), "int64")])
    assert report.unrolled_loops == 0
    assert "Loop" in [n.op_type for n in out.graph.node]
