"""``conv1d_as_conv2d``: 1-D convs run as 2-D convs of height 1 (so the blocked conv kernels
take them), checked against ONNX Runtime, and the 1-D convs it must leave alone."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.ir.expr import Constant

from onnx_builders import make_model
from tvmforge import build_model
from tvmforge.passes.graph.conv1d_as_conv2d import conv1d_as_conv2d

LOGGER = "tvmforge.passes.graph.conv1d_as_conv2d"


def _model(cin, cout, k, width, stride=1, pads=(0, 0), dilation=1, group=1, batch=1):
    """x[batch, cin, width] -> Conv1d (+ bias) -> Relu."""
    rng = np.random.default_rng(cin * 7 + cout + k)
    weights = {
        "w": rng.standard_normal((cout, cin // group, k)).astype(np.float32) * 0.3,
        "b": rng.standard_normal(cout).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[stride], pads=list(pads),
                         dilations=[dilation], group=group),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, cin, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, name) for name, v in weights.items()],
    )


@pytest.mark.parametrize(
    ("cin", "cout", "k", "width", "stride", "pads", "dilation", "group"),
    [
        pytest.param(1, 257, 512, 4000, 160, (0, 0), 1, 1, id="stft-1to257-k512-s160"),
        pytest.param(16, 24, 3, 50, 1, (1, 1), 1, 1, id="k3-same"),
        pytest.param(12, 12, 5, 40, 2, (2, 1), 2, 1, id="strided-dilated-asym-pad"),
        pytest.param(16, 32, 3, 30, 1, (1, 1), 1, 4, id="grouped"),
        pytest.param(8, 8, 3, 30, 1, (1, 1), 1, 8, id="depthwise"),
    ],
)
def test_matches_onnxruntime(cin, cout, k, width, stride, pads, dilation, group, caplog):
    import onnxruntime as ort

    model = _model(cin, cout, k, width, stride, pads, dilation, group)
    x = np.random.default_rng(2).standard_normal((1, cin, width)).astype(np.float32)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        built = build_model(model, "x86", threads=2)
    assert "rewrote 1 conv1d as conv2d" in caplog.text
    out = relax.VirtualMachine(built.executable, tvm.cpu())["main"](tvm.runtime.tensor(x))
    ours = (out if hasattr(out, "numpy") else out[0]).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(ref))))


def _conv1d_module(data_shape, dtype="float32"):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(data_shape, dtype))
    w = relax.const(np.ones((8, 4, 3), dtype), dtype)
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(bb.emit(relax.op.nn.conv1d(x, w, padding=(1, 1))))
        bb.emit_func_output(y)
    return bb.get()


def _ops(mod) -> set[str]:
    names = set()
    relax.analysis.post_order_visit(
        mod["main"].body,
        lambda e: names.add(e.op.name)
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) else None,
    )
    return names


def test_dynamic_batch_is_rewritten_and_runs():
    """A dynamic batch (the leading dim symbolic) is taken: the conv2d keeps it."""
    from tvmforge.runtime.executor import LocalVM

    model = _model(4, 8, 3, 20, pads=(1, 1))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    built = build_model(model, "x86", threads=2)
    import pathlib
    import tempfile

    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((3, 4, 20)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        lib = pathlib.Path(tmp) / "lib.so"
        built.executable.export_library(str(lib))
        (ours,) = LocalVM(lib, "cpu").run([x])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(ours, sess.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_rewrites_to_conv2d_with_a_constant_weight():
    after = conv1d_as_conv2d()(_conv1d_module((1, 4, 16)))
    ops = _ops(after)
    assert "relax.nn.conv1d" not in ops
    assert {"relax.nn.conv2d", "relax.expand_dims", "relax.squeeze"} <= ops
    # the weight stays a constant (reshaped here), so the weight packing still sees one
    calls = []
    relax.analysis.post_order_visit(
        after["main"].body,
        lambda e: calls.append(e)
        if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.nn.conv2d" else None,
    )
    (conv,) = calls
    assert isinstance(conv.args[1], Constant)
    assert conv.args[1].value.numpy().shape == (8, 4, 1, 3)


@pytest.mark.parametrize(
    "mod",
    [
        pytest.param(_conv1d_module((1, 4, tvm.tirx.Var("w", "int64"))), id="symbolic-width"),
        pytest.param(_conv1d_module((1, 4, 16), "float16"), id="float16-again"),
        pytest.param(_conv1d_module((1, 4, 16), "float16"), id="float16"),
    ],
)
def test_leaves_what_it_cannot_take(mod, caplog):
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        after = conv1d_as_conv2d()(mod)
    assert "relax.nn.conv1d" in _ops(after) and "relax.nn.conv2d" not in _ops(after)
    assert "conv1d left to LegalizeOps" in caplog.text


def _column_model(cin, cout, k, length, stride=1, pads=(0, 0), dilation=1, group=1):
    """x[1, cin, length, 1] -> Conv k x 1 (+ bias), as Keras/jax2tf write a Conv1D."""
    rng = np.random.default_rng(cin + cout * 3 + k)
    weights = {
        "w": rng.standard_normal((cout, cin // group, k, 1)).astype(np.float32) * 0.2,
        "b": rng.standard_normal(cout).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[stride, 1],
                         pads=[pads[0], 0, pads[1], 0], dilations=[dilation, 1], group=group),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, length, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, name) for name, v in weights.items()],
    )


@pytest.mark.parametrize(
    ("cin", "cout", "k", "length", "stride", "pads", "dilation", "group"),
    [
        pytest.param(64, 128, 5, 100, 1, (0, 0), 1, 1, id="magika-like-k5"),
        pytest.param(16, 24, 3, 41, 2, (1, 2), 2, 1, id="strided-dilated-padded"),
        pytest.param(16, 16, 3, 30, 1, (1, 1), 1, 16, id="depthwise"),
    ],
)
def test_column_convs_run_as_row_convs(cin, cout, k, length, stride, pads, dilation, group,
                                       caplog):
    import onnxruntime as ort

    model = _column_model(cin, cout, k, length, stride, pads, dilation, group)
    x = np.random.default_rng(3).standard_normal((1, cin, length, 1)).astype(np.float32)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        built = build_model(model, "x86", threads=2)
    assert "rewrote 1 conv1d as conv2d" in caplog.text
    out = relax.VirtualMachine(built.executable, tvm.cpu())["main"](tvm.runtime.tensor(x))
    ours = (out if hasattr(out, "numpy") else out[0]).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(ref))))


def test_other_convs_are_not_columns():
    """A k x k conv, a 1 x 1 conv and a k x 1 conv over a wide image stay as they are."""
    from tvmforge.passes.graph.conv1d_as_conv2d import why_not_column

    def call(data, weight, padding=(0, 0, 0, 0)):
        x = relax.Var("x", relax.TensorType(data, "float32"))
        w = relax.Var("w", relax.TensorType(weight, "float32"))
        bb = relax.BlockBuilder()
        with bb.function("main", [x, w]):
            y = bb.emit(relax.op.nn.conv2d(x, w, padding=padding))
            bb.emit_func_output(y)
        return bb.get()["main"].body.blocks[0].bindings[0].value

    assert why_not_column(call((1, 4, 20, 1), (8, 4, 3, 1))) is None
    assert why_not_column(call((1, 4, 20, 20), (8, 4, 3, 3))) is not None
    assert why_not_column(call((1, 4, 20, 1), (8, 4, 1, 1))) is not None
    assert why_not_column(call((1, 4, 20, 5), (8, 4, 3, 1))) is not None
    padded = call((1, 4, 20, 1), (8, 4, 3, 1), (1, 1, 1, 1))
    assert why_not_column(padded) == "padded along the width"
