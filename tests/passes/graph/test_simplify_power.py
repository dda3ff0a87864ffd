"""``simplify_power``: ``power`` by a constant exponent becomes square roots and products.

Three kinds of test: each exponent of the rule table gives the expected graph, exponents
outside the table (and a non-constant exponent) are left alone, and local response
normalisation (``x^0.75``) matches ONNX Runtime after the whole pipeline.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from onnx_builders import make_model
from tvmforge.passes.graph.simplify_power import RULES, simplify_power


def _power(exponent: float) -> tvm.IRModule:
    @I.ir_module
    class Power:
        @R.function
        def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 8), "float32"):
            with R.dataflow():
                y = R.power(x, R.const(exponent, "float32"))
                R.output(y)
            return y

    return Power


@I.ir_module
class ThreeQuarters:
    @R.function
    def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 8), "float32"):
        with R.dataflow():
            s = R.sqrt(x)
            q = R.sqrt(s)
            y = R.multiply(s, q)
            R.output(y)
        return y


@I.ir_module
class Square:
    @R.function
    def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 8), "float32"):
        with R.dataflow():
            y = R.multiply(x, x)
            R.output(y)
        return y



def test_three_quarters_becomes_two_square_roots():
    tvm.ir.assert_structural_equal(simplify_power()(_power(0.75)), ThreeQuarters)


def test_square_becomes_a_product():
    tvm.ir.assert_structural_equal(simplify_power()(_power(2.0)), Square)


@pytest.mark.parametrize("exponent", sorted(RULES))
def test_every_rule_computes_the_power(exponent):
    x = np.random.default_rng(0).uniform(0.1, 4.0, (2, 8)).astype(np.float32)
    after = simplify_power()(_power(exponent))
    assert "relax.power" not in after.script()
    ex = tvm.compile(after, target=tvm.target.Target({"kind": "llvm"}))
    ours = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(ours, np.power(x, np.float32(exponent)), rtol=2e-6)


@I.ir_module
class VariableExponent:
    @R.function
    def main(x: R.Tensor((2, 8), "float32"), e: R.Tensor((), "float32")):
        with R.dataflow():
            y = R.power(x, e)
            R.output(y)
        return y


def test_other_exponents_are_left_alone():
    for mod in (_power(1.5), _power(0.3), VariableExponent):
        tvm.ir.assert_structural_equal(simplify_power()(mod), mod)


def test_lrn_matches_onnxruntime():
    import onnxruntime as ort

    from tvmforge import build_model

    nodes = [helper.make_node("LRN", ["x"], ["y"], size=5, alpha=1e-4, beta=0.75, bias=1.0)]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 9, 9])],
    )
    x = (np.random.default_rng(3).standard_normal((1, 32, 9, 9)) * 20).astype(np.float32)
    built = build_model(model, "x86", threads=2)
    ours = relax.VirtualMachine(built.executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
