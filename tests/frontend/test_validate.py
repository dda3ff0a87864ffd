"""Malformed graphs are refused before import with one line naming the tensor or node (exit 2),
and an identity graph with no nodes is a valid model."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_builders import make_model


def _vi(name: str, elem: int = TensorProto.FLOAT, shape=(2,)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def _one_line(res) -> str:
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert "Traceback" not in res.output
    return lines[0]


def _short_initializer() -> TensorProto:
    """A float initializer of shape [2] carrying one float's bytes (onnx.helper refuses to
    make one; a damaged file has them)."""
    t = TensorProto()
    t.name, t.data_type = "w", TensorProto.FLOAT
    t.dims.extend([2])
    t.raw_data = np.zeros(1, np.float32).tobytes()
    return t


CASES = {
    "cycle": (
        [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
         helper.make_node("Relu", ["a"], ["b"], name="second")],
        [_vi("x")], [_vi("b")], [], "cycle",
    ),
    "dangling-input": (
        [helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")],
        [_vi("x")], [_vi("y")], [], "'adder' reads 'ghost'",
    ),
    "undefined-output": (
        [helper.make_node("Relu", ["x"], ["y"])],
        [_vi("x")], [_vi("y"), _vi("nowhere")], [], "output 'nowhere'",
    ),
    "unknown-elem-type": (
        [helper.make_node("Relu", ["x"], ["y"])],
        [_vi("x", elem=99)], [_vi("y")], [], "element type 99",
    ),
    "kernel-shape-not-the-weight's": (
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[5, 5],
                          pads=[1, 1, 1, 1])],
        [_vi("x", shape=(1, 3, 8, 8))], [_vi("y", shape=(1, 4, 6, 6))],
        [numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")],
        "'conv' (Conv): kernel_shape [5, 5] does not match the window [3, 3]",
    ),
    "pads-of-the-wrong-rank": (
        [helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2],
                          pads=[0, 0])],
        [_vi("x", shape=(1, 3, 8, 8))], [_vi("y", shape=(1, 3, 7, 7))], [],
        "'pool' (MaxPool): pads [0, 0] has 2 values, its 2-d window needs 4",
    ),
    "zero-stride": (
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", strides=[0, 1])],
        [_vi("x", shape=(1, 3, 8, 8))], [_vi("y", shape=(1, 4, 6, 6))],
        [numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")],
        "strides [0, 1] must be positive",
    ),
    "type-annotation-contradicts-the-op": (
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [_vi("x")], [_vi("y", elem=TensorProto.INT64)], [],
        "Inferred elem type differs from existing elem type: float vs int64",
    ),
    "initializer-too-short": (
        [helper.make_node("Add", ["x", "w"], ["y"])],
        [_vi("x")], [_vi("y")],
        [_short_initializer()],
        "initializer 'w' holds 4 bytes",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_malformed_graph_is_one_line_exit_2(cli, tmp_model, case):
    nodes, inputs, outputs, inits, message = CASES[case]
    model = make_model(nodes, inputs, outputs, inits)
    res = cli("compile", tmp_model(model), "-o", "m.tar")
    assert res.exit_code == 2, res.output
    line = _one_line(res)
    assert message in line and "model.onnx" in line


def test_an_identity_graph_is_a_valid_model(cli, tmp_model, tmp_path):
    model = make_model([], [_vi("x", shape=(3,))], [_vi("x", shape=(3,))])
    res = cli("compile", tmp_model(model), "-o", "id.tar", "--check")
    assert res.exit_code == 0, res.output
    import tvmforge

    out = tvmforge.load(tmp_path / "id.tar")(x=np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(out["x"], np.arange(3, dtype=np.float32))


def test_onnx_runtime_refuses_what_is_refused():
    """The window and type cases are ones ONNX's checker lets through and ONNX Runtime
    refuses (to load, or to run): tvmforge must not compile them silently."""
    import onnxruntime as ort

    for case in ("kernel-shape-not-the-weight's", "type-annotation-contradicts-the-op"):
        nodes, inputs, outputs, inits, _ = CASES[case]
        model = make_model(nodes, inputs, outputs, inits)
        feeds = {i.name: np.ones([d.dim_value for d in i.type.tensor_type.shape.dim],
                                 np.float32) for i in inputs}
        with pytest.raises(Exception, match=r"kernel_shape|Type Error"):
            ort.InferenceSession(model.SerializeToString()).run(None, feeds)


def test_a_sound_model_passes(tmp_model):
    from tvmforge.frontend.importer import load

    w = numpy_helper.from_array(np.ones(2, np.float32), "w")
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [_vi("x")], [_vi("y")], [w])
    assert load(tmp_model(model)).proto.graph.node[0].op_type == "Add"
