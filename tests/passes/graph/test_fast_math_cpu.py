"""``fast_math_cpu``: polynomial exp/erf/tanh/sigmoid/softmax on CPU targets only.

The pass rewrites the float32 ops on an ``llvm`` target and nothing elsewhere, the rewritten
kernels are vectorized (no scalar libm call left in the assembly), and models with every
rewritten op match ONNX Runtime after the whole pipeline.
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
from tvmforge.passes.graph.fast_math_cpu import fast_math_cpu

X86 = {"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}  # structure: 16 lanes


@I.ir_module
class ExpSoftmax:
    @R.function
    def main(x: R.Tensor((4, 32), "float32")) -> R.Tensor((4, 32), "float32"):
        with R.dataflow():
            y = R.nn.softmax(R.exp(x), axis=-1)
            R.output(y)
        return y



def test_rewrites_on_cpu_only():
    with tvm.target.Target(X86):
        after = fast_math_cpu()(ExpSoftmax)
    text = after.script()
    assert "R.exp" not in text and "R.nn.softmax" not in text
    assert "fast_exp" in text and "fast_softmax" in text
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host={"kind": "llvm"})
    with cuda:
        tvm.ir.assert_structural_equal(fast_math_cpu()(ExpSoftmax), ExpSoftmax)
    tvm.ir.assert_structural_equal(fast_math_cpu()(ExpSoftmax), ExpSoftmax)  # no target


def test_no_scalar_libm_call_left():
    from tvmforge.driver import pipeline

    target = tvm.target.Target(X86)
    ex = tvm.compile(
        ExpSoftmax, target=target, relax_pipeline=pipeline.tvmforge_pipeline(target=target)
    )
    asm = ex.mod.imports[0].inspect_source("asm")
    assert "vfmadd" in asm  # the polynomial, vectorized
    assert "expf" not in asm  # stock TVM: 64 calls to libm's expf here


def _unary_model(op_nodes, shape=(2, 6, 40)):
    rng = np.random.default_rng(4)
    inits = {"s": np.array(3.0, np.float32)}
    nodes = [helper.make_node("Mul", ["x", "s"], ["xs"]), *op_nodes]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    ), rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize(
    "nodes",
    [
        pytest.param([helper.make_node("Exp", ["xs"], ["y"])], id="exp"),
        pytest.param([helper.make_node("Erf", ["xs"], ["y"])], id="erf"),
        pytest.param([helper.make_node("Tanh", ["xs"], ["y"])], id="tanh"),
        pytest.param([helper.make_node("Sigmoid", ["xs"], ["y"])], id="sigmoid"),
        pytest.param([helper.make_node("Softmax", ["xs"], ["y"], axis=-1)], id="softmax"),
        pytest.param([helper.make_node("Softmax", ["xs"], ["y"], axis=1)], id="softmax-axis1"),
    ],
)
def test_matches_onnxruntime(nodes):
    import onnxruntime as ort

    from tvmforge import build_model

    model, x = _unary_model(nodes)
    built = build_model(model, "x86", threads=2)
    out = relax.VirtualMachine(built.executable, tvm.cpu())["main"](tvm.runtime.tensor(x))
    ours = (out if hasattr(out, "numpy") else out[0]).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("row", [197, 77, 18385, 40, 20])
def test_softmax_rows_not_a_multiple_of_the_vector_match_onnxruntime(row):
    """Rows of 197 (ViT), 77 (CLIP), 18385 (a CTC vocabulary) run padded to the vector; 40
    (a multiple of 8 lanes, not of 16) and 20 (under two vectors of 16) as well or as before:
    the result is the unpadded row's either way."""
    import onnxruntime as ort

    from tvmforge import build_model

    model, x = _unary_model([helper.make_node("Softmax", ["xs"], ["y"], axis=-1)],
                            shape=(3, row))
    built = build_model(model, "x86", threads=2)
    out = relax.VirtualMachine(built.executable, tvm.cpu())["main"](tvm.runtime.tensor(x))
    ours = (out if hasattr(out, "numpy") else out[0]).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours.sum(-1), 1.0, rtol=1e-5)


def test_padded_softmax_reductions_are_vectorized():
    """A 197-wide row: the max and the exp-sum become vector partial results (rfactor by the
    lanes), which the scheduler declines for a row the vector does not divide."""
    from tvm import te

    from tvmforge.passes.graph.fast_math_cpu import _softmax
    from tvmforge.passes.schedule.params import CpuScheduleParams
    from tvmforge.passes.schedule.rules import schedule_prim_func

    target = tvm.target.Target(X86)
    params = CpuScheduleParams.from_target(target)
    x = te.placeholder((12, 197), "float32", name="x")
    padded = te.create_prim_func([x, _softmax(x, 1, params.lanes)])
    plain = te.create_prim_func([x, _softmax(x, 1, None)])
    with target:
        ours, before = schedule_prim_func(padded, params), schedule_prim_func(plain, params)
    assert ours.script().count("_rf") >= 2  # the max's and the sum's vector partials
    assert "_rf" not in before.script()
    assert "T.vectorized" in ours.script()
