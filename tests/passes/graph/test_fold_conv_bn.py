"""``fold_conv_bn``: inference BatchNorm (and constant per-channel scale/shift) into the conv.

Three kinds of test: the rewritten graph is the expected one (weights folded with the maths of
the module docstring), the pass leaves alone what it must not touch (a conv with a second user,
BatchNorm statistics that are graph inputs, a layout it does not know), and models with
BatchNorm built through the whole pipeline match ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from onnx_builders import make_model
from tvmforge.passes.graph.fold_conv_bn import fold_conv_bn

EPS = 1e-5
RNG = np.random.default_rng(3)
W = RNG.standard_normal((6, 4, 3, 3)).astype(np.float32)
GAMMA, BETA, MEAN = (RNG.standard_normal(6).astype(np.float32) for _ in range(3))
VAR = RNG.uniform(0.5, 2.0, 6).astype(np.float32)
BN = {"gamma": GAMMA, "beta": BETA, "mean": MEAN, "var": VAR}


def _scale_shift() -> tuple[np.ndarray, np.ndarray]:
    """``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``, computed in float64 and
    stored as float32 constants, as the pass does."""
    s = GAMMA.astype(np.float64) / np.sqrt(VAR.astype(np.float64) + EPS)
    t = BETA.astype(np.float64) - MEAN.astype(np.float64) * s
    return s.astype(np.float32), t.astype(np.float32)


def _bind(mod: tvm.IRModule, params: dict[str, np.ndarray]) -> tvm.IRModule:
    return relax.transform.BindParams(
        "main", {k: tvm.runtime.tensor(v) for k, v in params.items()}
    )(mod)


def _ops(mod: tvm.IRModule) -> list[str]:
    """Operator names of ``main``'s bindings, in order."""
    names = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
                names.append(value.op.name)
    return names


@I.ir_module
class ConvBN:
    @R.function
    def main(
        x: R.Tensor((1, 4, 8, 8), "float32"),
        w: R.Tensor((6, 4, 3, 3), "float32"),
        gamma: R.Tensor((6,), "float32"),
        beta: R.Tensor((6,), "float32"),
        mean: R.Tensor((6,), "float32"),
        var: R.Tensor((6,), "float32"),
    ) -> R.Tensor((1, 6, 8, 8), "float32"):
        with R.dataflow():
            c = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
            bn = R.nn.batch_norm(c, gamma, beta, mean, var, axis=1, epsilon=EPS, training=False)
            y = bn[0]
            r = R.nn.relu(y)
            R.output(r)
        return r


@I.ir_module
class ConvBias:
    @R.function
    def main(
        x: R.Tensor((1, 4, 8, 8), "float32"),
        w: R.Tensor((6, 4, 3, 3), "float32"),
        b: R.Tensor((1, 6, 1, 1), "float32"),
    ) -> R.Tensor((1, 6, 8, 8), "float32"):
        with R.dataflow():
            c = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
            y = R.add(c, b)
            r = R.nn.relu(y)
            R.output(r)
        return r



def test_batch_norm_folds_into_conv_weights():
    after = fold_conv_bn()(_bind(ConvBN, {"w": W, **BN}))
    s, t = _scale_shift()
    expected = _bind(
        ConvBias,
        {
            "w": (W.astype(np.float64) * s.astype(np.float64).reshape(6, 1, 1, 1)).astype(
                np.float32
            ),
            "b": t.reshape(1, 6, 1, 1),
        },
    )
    tvm.ir.assert_structural_equal(after, expected)


@I.ir_module
class ConvBiasBNScaleShift:
    """DenseNet's pattern: conv (+ bias) -> BatchNorm -> Mul -> Add -> Relu."""

    @R.function
    def main(
        x: R.Tensor((1, 4, 8, 8), "float32"),
        w: R.Tensor((6, 4, 3, 3), "float32"),
        b: R.Tensor((1, 6, 1, 1), "float32"),
        gamma: R.Tensor((6,), "float32"),
        beta: R.Tensor((6,), "float32"),
        mean: R.Tensor((6,), "float32"),
        var: R.Tensor((6,), "float32"),
        k: R.Tensor((6, 1, 1), "float32"),
        m: R.Tensor((6, 1, 1), "float32"),
    ) -> R.Tensor((1, 6, 8, 8), "float32"):
        with R.dataflow():
            c = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
            cb = R.add(c, b)
            bn = R.nn.batch_norm(cb, gamma, beta, mean, var, axis=1, epsilon=EPS, training=False)
            y = bn[0]
            z = R.multiply(y, k)
            a = R.add(z, m)
            r = R.nn.relu(a)
            R.output(r)
        return r


def test_chain_collapses_to_one_conv_and_one_add():
    bias = RNG.standard_normal((1, 6, 1, 1)).astype(np.float32)
    k = RNG.standard_normal((6, 1, 1)).astype(np.float32)
    m = RNG.standard_normal((6, 1, 1)).astype(np.float32)
    mod = _bind(ConvBiasBNScaleShift, {"w": W, "b": bias, **BN, "k": k, "m": m})
    after = fold_conv_bn()(mod)
    assert _ops(after) == ["relax.nn.conv2d", "relax.add", "relax.nn.relu"]
    x = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(after, x), _run(mod, x), rtol=1e-4, atol=1e-4)


@I.ir_module
class PreActivation:
    """BatchNorm with no conv before it: one multiply and one add remain."""

    @R.function
    def main(
        x: R.Tensor((1, 6, 8, 8), "float32"),
        gamma: R.Tensor((6,), "float32"),
        beta: R.Tensor((6,), "float32"),
        mean: R.Tensor((6,), "float32"),
        var: R.Tensor((6,), "float32"),
    ) -> R.Tensor((1, 6, 8, 8), "float32"):
        with R.dataflow():
            bn = R.nn.batch_norm(x, gamma, beta, mean, var, axis=1, epsilon=EPS, training=False)
            y = bn[0]
            r = R.nn.relu(y)
            R.output(r)
        return r


@I.ir_module
class ScaleShift:
    @R.function
    def main(
        x: R.Tensor((1, 6, 8, 8), "float32"),
        s: R.Tensor((1, 6, 1, 1), "float32"),
        t: R.Tensor((1, 6, 1, 1), "float32"),
    ) -> R.Tensor((1, 6, 8, 8), "float32"):
        with R.dataflow():
            m = R.multiply(x, s)
            y = R.add(m, t)
            r = R.nn.relu(y)
            R.output(r)
        return r


def test_batch_norm_without_conv_becomes_scale_and_shift():
    after = fold_conv_bn()(_bind(PreActivation, BN))
    s, t = _scale_shift()
    expected = _bind(
        ScaleShift,
        {"s": s.reshape(1, 6, 1, 1), "t": t.reshape(1, 6, 1, 1)},
    )
    tvm.ir.assert_structural_equal(after, expected)


# --- does not apply ----------------------------------------------------------------------------


@I.ir_module
class ConvTwoUsers:
    """The conv output is also returned: folding would compute the conv twice."""

    @R.function
    def main(
        x: R.Tensor((1, 4, 8, 8), "float32"),
        w: R.Tensor((6, 4, 3, 3), "float32"),
        gamma: R.Tensor((6,), "float32"),
        beta: R.Tensor((6,), "float32"),
        mean: R.Tensor((6,), "float32"),
        var: R.Tensor((6,), "float32"),
    ):
        with R.dataflow():
            c = R.nn.conv2d(x, w, padding=[1, 1, 1, 1])
            bn = R.nn.batch_norm(c, gamma, beta, mean, var, axis=1, epsilon=EPS, training=False)
            y = bn[0]
            out = (c, y)
            R.output(out)
        return out


def test_conv_with_a_second_user_keeps_its_weights():
    after = fold_conv_bn()(_bind(ConvTwoUsers, {"w": W, **BN}))
    assert _ops(after) == ["relax.nn.conv2d", "relax.multiply", "relax.add"]
    conv = after["main"].body.blocks[0].bindings[0].value
    np.testing.assert_array_equal(conv.args[1].value.numpy(), W)


def test_statistics_that_are_inputs_are_left_alone():
    mod = _bind(ConvBN, {"w": W, "gamma": GAMMA, "beta": BETA})  # mean, var stay inputs
    after = fold_conv_bn()(mod)
    tvm.ir.assert_structural_equal(after, mod)


@I.ir_module
class ConvNHWC:
    @R.function
    def main(
        x: R.Tensor((1, 8, 8, 4), "float32"),
        w: R.Tensor((3, 3, 4, 6), "float32"),
        s: R.Tensor((6,), "float32"),
    ) -> R.Tensor((1, 8, 8, 6), "float32"):
        with R.dataflow():
            c = R.nn.conv2d(x, w, padding=[1, 1, 1, 1], data_layout="NHWC", kernel_layout="HWIO")
            y = R.multiply(c, s)
            R.output(y)
        return y


def test_unknown_layout_is_left_alone():
    mod = _bind(
        ConvNHWC,
        {
            "w": RNG.standard_normal((3, 3, 4, 6)).astype(np.float32),
            "s": RNG.standard_normal(6).astype(np.float32),
        },
    )
    tvm.ir.assert_structural_equal(fold_conv_bn()(mod), mod)


# --- numbers -----------------------------------------------------------------------------------


def _run(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _bn_model(order: str, group: int = 1, bias: bool = True) -> onnx.ModelProto:
    """``conv-bn-relu`` (BatchNorm after a conv) or ``bn-relu-conv`` (pre-activation)."""
    rng = np.random.default_rng(hash((order, group, bias)) % 2**32)
    cin, cout = 8, 12
    w = rng.standard_normal((cout, cin // group, 3, 3)).astype(np.float32) * 0.3
    channels = cout if order == "conv-bn-relu" else cin
    weights = {
        "w": w,
        "b": rng.standard_normal(cout).astype(np.float32),
        "gamma": rng.standard_normal(channels).astype(np.float32),
        "beta": rng.standard_normal(channels).astype(np.float32),
        "mean": rng.standard_normal(channels).astype(np.float32),
        "var": rng.uniform(0.2, 3.0, channels).astype(np.float32),
    }
    conv_in = ["x", "w", "b"] if bias else ["x", "w"]
    bn_in = ["gamma", "beta", "mean", "var"]
    if order == "conv-bn-relu":
        nodes = [
            helper.make_node("Conv", conv_in, ["c"], pads=[1] * 4, group=group),
            helper.make_node("BatchNormalization", ["c", *bn_in], ["n"], epsilon=EPS),
            helper.make_node("Relu", ["n"], ["y"]),
        ]
    else:
        conv_in = ["r", *conv_in[1:]]
        nodes = [
            helper.make_node("BatchNormalization", ["x", *bn_in], ["n"], epsilon=EPS),
            helper.make_node("Relu", ["n"], ["r"]),
            helper.make_node("Conv", conv_in, ["y"], pads=[1] * 4, group=group),
        ]
    if not bias:
        del weights["b"]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, 10, 10])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )


@pytest.mark.parametrize(
    ("order", "group", "bias"),
    [
        ("conv-bn-relu", 1, True),
        ("conv-bn-relu", 1, False),
        ("conv-bn-relu", 4, True),
        ("bn-relu-conv", 1, True),
    ],
)
def test_matches_onnxruntime(order, group, bias):
    import onnxruntime as ort

    from tvmforge import build_model

    model = _bn_model(order, group, bias)
    x = np.random.default_rng(5).standard_normal((1, 8, 10, 10)).astype(np.float32)
    built = build_model(model, "x86", threads=2)
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    ours = vm["main"](tvm.runtime.tensor(x)).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(ref))))


def test_dynamic_batch_folds_and_matches_onnxruntime_at_two_batch_sizes():
    """A symbolic batch (``N``) does not stop the fold: the channel axis is what matters."""
    import onnxruntime as ort

    from tvmforge import build_model
    from tvmforge.driver.pipeline import graph_passes
    from tvmforge.frontend import importer as frontend

    model = _bn_model("conv-bn-relu", 1, True)
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    loaded = frontend.load(model)
    inputs = frontend.resolve_inputs(loaded, {}, dynamic_batch=True)
    assert inputs[0].shape[0] == "N"
    with tvm.target.Target({"kind": "llvm"}):
        mod = tvm.transform.Sequential(graph_passes())(frontend.to_relax(loaded, inputs))
    ops = _ops(mod)
    assert "relax.nn.batch_norm" not in ops and "relax.multiply" not in ops, ops
    # one conv left (packed into a call_tir on CPU targets), carrying the folded BN
    assert ops.count("relax.nn.conv2d") + ops.count("relax.call_tir") == 1, ops

    built = build_model(model, "x86", threads=2)
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 8, 10, 10)).astype(np.float32)
        ours = vm["main"](tvm.runtime.tensor(x)).numpy()
        (ref,) = sess.run(None, {"x": x})
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(ref))))
