"""``fold_constants_numpy``: calls on constants evaluated with numpy instead of compiled kernels.

Three kinds of test: the folded graph is the one ``FoldConstant`` would give, the pass leaves
alone what numpy must not fold (integer arithmetic, calls on inputs) and only then hands over
to ``FoldConstant``, and a model whose weights go through folded arithmetic matches ONNX
Runtime after the whole pipeline.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from onnx_builders import make_model
from tvmforge.passes.graph.fold_constants_numpy import fold_constants_numpy, has_constant_calls

RNG = np.random.default_rng(11)
MEAN = RNG.standard_normal(6).astype(np.float32)
VAR = RNG.uniform(0.5, 2.0, 6).astype(np.float32)
BIAS = RNG.standard_normal(6).astype(np.float32)


def _bind(mod: tvm.IRModule, params: dict[str, np.ndarray]) -> tvm.IRModule:
    return relax.transform.BindParams(
        "main", {k: tvm.runtime.tensor(v) for k, v in params.items()}
    )(mod)


@I.ir_module
class DecomposedNorm:
    """What ``DecomposeOpsForInference`` leaves of a BatchNorm, plus a conv-style bias."""

    @R.function
    def main(
        x: R.Tensor((1, 6, 4, 4), "float32"),
        mean: R.Tensor((6,), "float32"),
        var: R.Tensor((6,), "float32"),
        bias: R.Tensor((6,), "float32"),
    ) -> R.Tensor((1, 6, 4, 4), "float32"):
        with R.dataflow():
            m = R.expand_dims(mean, axis=[0, 2, 3])
            d = R.subtract(x, m)
            v = R.expand_dims(var, axis=[0, 2, 3])
            ve = R.add(v, R.const(1e-5, "float32"))
            sd = R.sqrt(ve)
            n = R.divide(d, sd)
            b = R.reshape(bias, R.shape([1, 6, 1, 1]))
            y = R.add(n, b)
            R.output(y)
        return y



def test_folds_what_fold_constant_folds():
    mod = _bind(DecomposedNorm, {"mean": MEAN, "var": VAR, "bias": BIAS})
    ours = fold_constants_numpy(fallback=False)(mod)
    tvms = relax.transform.FoldConstant()(mod)
    assert not has_constant_calls(ours)
    assert _ops(ours) == _ops(tvms) == ["relax.subtract", "relax.divide", "relax.add"]
    # The same constants, to float32 rounding (numpy's sqrt against the compiled kernel's).
    ca, cb = _constants(ours), _constants(tvms)
    assert [x.shape for x in ca] == [y.shape for y in cb] == [(1, 6, 1, 1)] * 3
    for x, y in zip(ca, cb, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6)


def _ops(mod: tvm.IRModule) -> list[str]:
    return [
        b.value.op.name
        for b in mod["main"].body.blocks[0].bindings
        if isinstance(b.value, relax.Call)
    ]


def _constants(mod: tvm.IRModule) -> list[np.ndarray]:
    out = []
    for binding in mod["main"].body.blocks[0].bindings:
        value = binding.value
        if isinstance(value, relax.Call):
            out += [a.value.numpy() for a in value.args if isinstance(a, tvm.ir.expr.Constant)]
    return out


@I.ir_module
class Shapes:
    @R.function
    def main(x: R.Tensor((2, 3), "float32"), w: R.Tensor((3, 2), "float32")) -> R.Tensor(
        (2, 2), "float32"
    ):
        with R.dataflow():
            t = R.permute_dims(w)
            u = R.expand_dims(t, axis=[0])
            v = R.squeeze(u, axis=[0])
            c = R.concat((v, v), axis=0)
            r = R.reshape(c, R.shape([3, 4]))
            s = R.strided_slice(r, axes=[1], begin=[0], end=[2])
            y = R.matmul(x, s)
            R.output(y)
        return y


@I.ir_module
class ShapesFolded:
    @R.function
    def main(x: R.Tensor((2, 3), "float32"), s: R.Tensor((3, 2), "float32")) -> R.Tensor(
        (2, 2), "float32"
    ):
        with R.dataflow():
            y = R.matmul(x, s)
            R.output(y)
        return y


def test_layout_ops_fold_exactly_and_the_rest_goes_to_fold_constant():
    w = RNG.standard_normal((3, 2)).astype(np.float32)
    mod = _bind(Shapes, {"w": w})
    numpy_only = fold_constants_numpy(fallback=False)(mod)
    # strided_slice has no numpy folder: it is the one call on constants left ...
    assert has_constant_calls(numpy_only)
    assert _ops(numpy_only) == ["relax.strided_slice", "relax.matmul"]
    # ... and the fallback hands it to FoldConstant.
    s = np.concatenate([w.T, w.T], axis=0).reshape(3, 4)[:, :2]
    tvm.ir.assert_structural_equal(fold_constants_numpy()(mod), _bind(ShapesFolded, {"s": s}))


# --- does not apply ----------------------------------------------------------------------------


@I.ir_module
class IntegerDivide:
    @R.function
    def main(x: R.Tensor((4,), "int32"), a: R.Tensor((4,), "int32")) -> R.Tensor((4,), "int32"):
        with R.dataflow():
            d = R.divide(a, R.const(3, "int32"))
            y = R.add(x, d)
            R.output(y)
        return y


def test_integer_arithmetic_is_left_to_fold_constant():
    mod = _bind(IntegerDivide, {"a": np.array([-7, -1, 5, 9], np.int32)})
    after = fold_constants_numpy(fallback=False)(mod)
    tvm.ir.assert_structural_equal(after, mod)
    assert has_constant_calls(after)


def test_calls_on_inputs_are_left_alone_and_fold_constant_is_skipped(monkeypatch):
    mod = DecomposedNorm  # no parameter bound: nothing is constant but the epsilon

    def fail(*_args, **_kwargs):
        raise AssertionError("FoldConstant ran although nothing was left to fold")

    after_numpy = fold_constants_numpy(fallback=False)(mod)
    assert not has_constant_calls(after_numpy)
    monkeypatch.setattr(relax.transform, "FoldConstant", fail)
    after = fold_constants_numpy()(mod)
    tvm.ir.assert_structural_equal(after, mod)


# --- numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [1e-5, 1e-3])
def test_matches_onnxruntime(epsilon):
    """Conv (its bias reshaped) -> MaxPool -> BatchNorm, plus arithmetic on weights only."""
    import onnxruntime as ort

    from tvmforge import build_model

    rng = np.random.default_rng(2)
    weights = {
        "w": rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.3,
        "b": rng.standard_normal(6).astype(np.float32),
        "gamma": rng.standard_normal(6).astype(np.float32),
        "beta": rng.standard_normal(6).astype(np.float32),
        "mean": rng.standard_normal(6).astype(np.float32),
        "var": rng.uniform(0.2, 3.0, 6).astype(np.float32),
        "shape": np.array([1, 6, 1, 1], np.int64),
        "k": rng.standard_normal(6).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * 4),
        helper.make_node(
            "MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1]
        ),
        helper.make_node(
            "BatchNormalization", ["p", "gamma", "beta", "mean", "var"], ["n"], epsilon=epsilon
        ),
        helper.make_node("Reshape", ["k", "shape"], ["k4"]),
        helper.make_node("Sqrt", ["var"], ["sv"]),  # a computation on weights only
        helper.make_node("Reshape", ["sv", "shape"], ["sv4"]),
        helper.make_node("Mul", ["k4", "sv4"], ["ks"]),
        helper.make_node("Add", ["n", "ks"], ["y"]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 9, 9])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    x = np.random.default_rng(5).standard_normal((1, 3, 9, 9)).astype(np.float32)
    built = build_model(model, "x86", threads=2)
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    ours = vm["main"](tvm.runtime.tensor(x)).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(ref))))
