"""The ONNX pre-pass: shape subgraphs fold, constant Ifs inline, for-Loops and Scans unroll."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_builders import make_model
from tvmforge import build_model
from tvmforge.frontend.importer import TensorInfo
from tvmforge.frontend.simplify import simplify
from tvmforge.runtime.executor import LocalVM


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


def test_runtime_trip_count_is_one_clear_line_and_listed_by_inspect(cli, tmp_model):
    model = _for_loop_model(4)
    del model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info("M", TensorProto.INT64, []))
    path = tmp_model(model)
    res = cli("inspect", path)
    assert res.exit_code == 0 and "unsupported: 1 node(s) [Loop]: loop (Loop)" in res.stdout
    res = cli("compile", path, "-o", "m.tar")
    assert res.exit_code == 2  # bad input: the trip count must be given at compile time
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert "loop (Loop) takes its trip count from graph input 'M'" in lines[0]
    assert "--freeze M=" in lines[0]
    res = cli("compile", path, "--freeze", "M=4", "-o", "m.tar")
    assert res.exit_code == 0, res.output


def test_for_loop_in_opset_11_with_a_nested_if_unrolls(tmp_path):
    """Old-opset Unsqueeze (axes attribute) for the stacked scan output, and an If inside the
    body that reads a body value: each unrolled copy reads its own iteration's value."""
    then_g = helper.make_graph(
        [helper.make_node("Mul", ["a", "two"], ["t"])], "then", [], [_f("t", [2])]
    )
    else_g = helper.make_graph([helper.make_node("Neg", ["a"], ["e"])], "else", [], [_f("e", [2])])
    body = helper.make_graph(
        [
            helper.make_node("Add", ["acc", "x"], ["a"]),
            helper.make_node("Greater", ["i", "one"], ["big"]),
            helper.make_node("If", ["big"], ["acc_out"], then_branch=then_g, else_branch=else_g),
            helper.make_node("Identity", ["cond"], ["cond_out"]),
            helper.make_node("Identity", ["acc_out"], ["scan_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            _f("acc", [2]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            _f("acc_out", [2]),
            _f("scan_out", [2]),
        ],
    )
    model = make_model(
        [helper.make_node("Loop", ["M", "", "x"], ["final", "history"], name="loop", body=body)],
        [_f("x", [2])],
        [_f("final", [2]), _f("history", [4, 2])],
        [
            numpy_helper.from_array(np.array(4, np.int64), "M"),
            numpy_helper.from_array(np.array(1, np.int64), "one"),
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        ],
        opset=11,
    )
    _, report = simplify(model, [TensorInfo("x", (2,), "float32")])
    assert report.unrolled_loops == 1 and report.inlined_ifs == 4
    x = np.array([0.5, -1.25], np.float32)
    ours, ref = _run_both(model, {"x": x}, tmp_path)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _scan_model(length=3, opset=17, **axes):
    """Two states (a running sum and a running product) and two scan inputs:
    ``acc += a_t * b_t``, ``prod *= tanh(a_t)``; scan outputs ``acc`` and ``acc - prod``."""
    body = helper.make_graph(
        [
            helper.make_node("Mul", ["a_t", "b_t"], ["ab"]),
            helper.make_node("Add", ["acc", "ab"], ["acc_o"]),
            helper.make_node("Tanh", ["a_t"], ["ta"]),
            helper.make_node("Mul", ["prod", "ta"], ["prod_o"]),
            helper.make_node("Identity", ["acc_o"], ["y1_t"]),
            helper.make_node("Sub", ["acc_o", "prod_o"], ["y2_t"]),
        ],
        "body",
        [_f("acc", [3]), _f("prod", [3]), _f("a_t", [3]), _f("b_t", [3])],
        [_f("acc_o", [3]), _f("prod_o", [3]), _f("y1_t", [3]), _f("y2_t", [3])],
    )
    in_axes = axes.get("scan_input_axes", [0, 0])
    shapes = [[3, length] if ax % 2 == 1 else [length, 3] for ax in in_axes]
    node = helper.make_node(
        "Scan",
        ["acc0", "prod0", "a", "b"],
        ["acc", "prod", "y1", "y2"],
        name="scan",
        body=body,
        num_scan_inputs=2,
        **axes,
    )
    return make_model(
        [node],
        [_f("acc0", [3]), _f("prod0", [3]), _f("a", shapes[0]), _f("b", shapes[1])],
        [_f(n, None) for n in ("acc", "prod", "y1", "y2")],
        opset=opset,
    )


@pytest.mark.parametrize(
    ("opset", "axes"),
    [
        (17, {}),
        (17, {"scan_input_directions": [1, 0], "scan_output_directions": [0, 1]}),
        (17, {"scan_input_axes": [0, 1], "scan_output_axes": [1, -1]}),
        (
            11,
            {
                "scan_input_axes": [-2, -1],
                "scan_input_directions": [1, 1],
                "scan_output_axes": [0, 1],
                "scan_output_directions": [1, 0],
            },
        ),
    ],
    ids=["forward", "reverse", "axes", "negative-axes-opset11"],
)
def test_scan_is_unrolled_and_matches(opset, axes, tmp_path):
    model = _scan_model(opset=opset, **axes)
    infos = [
        TensorInfo(i.name, tuple(d.dim_value for d in i.type.tensor_type.shape.dim), "float32")
        for i in model.graph.input
    ]
    out, report = simplify(model, infos)
    assert report.unrolled_scans == 1 and "Scan" not in [n.op_type for n in out.graph.node]
    rng = np.random.default_rng(0)
    feed = {i.name: rng.normal(size=i.shape).astype(np.float32) for i in infos}
    ours, ref = _run_both(model, feed, tmp_path)
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_scan_opset8_batched_form_is_unrolled_and_matches(tmp_path):
    """Scan-8: axis 0 is a batch, axis 1 the sequence; ``directions`` reverses the input."""
    body = helper.make_graph(
        [
            helper.make_node("Add", ["s", "x_t"], ["s_o"]),
            helper.make_node("Mul", ["s_o", "x_t"], ["y_t"]),
        ],
        "body",
        [_f("s", [3]), _f("x_t", [3])],
        [_f("s_o", [3]), _f("y_t", [3])],
    )
    node = helper.make_node(
        "Scan", ["", "s0", "x"], ["s", "y"], body=body, num_scan_inputs=1, directions=[1]
    )
    model = make_model(
        [node], [_f("s0", [2, 3]), _f("x", [2, 4, 3])], [_f("s", None), _f("y", None)], opset=8
    )
    _, report = simplify(
        model, [TensorInfo("s0", (2, 3), "float32"), TensorInfo("x", (2, 4, 3), "float32")]
    )
    assert report.unrolled_scans == 1
    rng = np.random.default_rng(1)
    feed = {"s0": rng.normal(size=(2, 3)), "x": rng.normal(size=(2, 4, 3))}
    feed = {k: v.astype(np.float32) for k, v in feed.items()}
    ours, ref = _run_both(model, feed, tmp_path)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_scan_with_unknown_length_is_left_alone():
    model = _scan_model()
    dims = model.graph.input[2].type.tensor_type.shape.dim
    dims[0].dim_param = "T"
    out, report = simplify(
        model,
        [
            TensorInfo("acc0", (3,), "float32"),
            TensorInfo("prod0", (3,), "float32"),
            TensorInfo("a", ("T", 3), "float32"),
            TensorInfo("b", (3, 3), "float32"),
        ],
    )
    assert report.unrolled_scans == 0 and "Scan" in [n.op_type for n in out.graph.node]


def test_nodes_out_of_order_are_sorted_before_import():
    import tvmforge
    from onnx import TensorProto, helper

    from onnx_builders import make_model

    model = make_model(
        [helper.make_node("Relu", ["t"], ["y"]), helper.make_node("Neg", ["x"], ["t"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    built = tvmforge.build_model(model, "x86")
    assert [o.name for o in built.outputs] == ["y"]
