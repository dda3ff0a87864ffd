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


def test_a_sound_model_passes(tmp_model):
    from tvmforge.frontend.importer import load

    w = numpy_helper.from_array(np.ones(2, np.float32), "w")
    model = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [_vi("x")], [_vi("y")], [w])
    assert load(tmp_model(model)).proto.graph.node[0].op_type == "Add"
