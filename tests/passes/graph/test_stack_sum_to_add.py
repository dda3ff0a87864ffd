"""``stack_sum_to_add``: ONNX ``Sum`` (broadcast_to + stack + sum) becomes a chain of adds.

Three kinds of test: the rewritten graph is the expected one, sums that are not "over the
stacked axis" are left alone, and a residual block with ``Sum`` matches ONNX Runtime through
the whole pipeline (where the add now fuses into the conv's epilogue).
"""

from __future__ import annotations

import numpy as np
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from onnx_builders import make_model
from tvmforge.passes.graph.stack_sum_to_add import stack_sum_to_add


@I.ir_module
class OnnxSum:
    """What the ONNX importer makes of ``Sum(a, b, c)``."""

    @R.function
    def main(
        a: R.Tensor((1, 4, 8, 8), "float32"),
        b: R.Tensor((1, 4, 8, 8), "float32"),
        c: R.Tensor((1, 4, 1, 1), "float32"),
    ) -> R.Tensor((1, 4, 8, 8), "float32"):
        with R.dataflow():
            ba = R.broadcast_to(a, R.shape([1, 4, 8, 8]))
            bb = R.broadcast_to(b, R.shape([1, 4, 8, 8]))
            bc = R.broadcast_to(c, R.shape([1, 4, 8, 8]))
            s = R.stack((ba, bb, bc), axis=0)
            y = R.sum(s, axis=[0], keepdims=False)
            r = R.nn.relu(y)
            R.output(r)
        return r


@I.ir_module
class Adds:
    @R.function
    def main(
        a: R.Tensor((1, 4, 8, 8), "float32"),
        b: R.Tensor((1, 4, 8, 8), "float32"),
        c: R.Tensor((1, 4, 1, 1), "float32"),
    ) -> R.Tensor((1, 4, 8, 8), "float32"):
        with R.dataflow():
            bc = R.broadcast_to(c, R.shape([1, 4, 8, 8]))  # a real broadcast stays
            ab = R.add(a, b)
            y = R.add(ab, bc)
            r = R.nn.relu(y)
            R.output(r)
        return r



def test_sum_of_stack_becomes_adds_in_order():
    tvm.ir.assert_structural_equal(stack_sum_to_add()(OnnxSum), Adds)


@I.ir_module
class OtherAxis:
    @R.function
    def main(a: R.Tensor((2, 3), "float32"), b: R.Tensor((2, 3), "float32")) -> R.Tensor(
        (2, 3), "float32"
    ):
        with R.dataflow():
            s = R.stack((a, b), axis=0)
            y = R.sum(s, axis=[1], keepdims=False)  # sums over a's rows, not over a and b
            R.output(y)
        return y


@I.ir_module
class KeepDims:
    @R.function
    def main(a: R.Tensor((2, 3), "float32"), b: R.Tensor((2, 3), "float32")) -> R.Tensor(
        (1, 2, 3), "float32"
    ):
        with R.dataflow():
            s = R.stack((a, b), axis=0)
            y = R.sum(s, axis=[0], keepdims=True)
            R.output(y)
        return y


def test_other_sums_are_left_alone():
    tvm.ir.assert_structural_equal(stack_sum_to_add()(OtherAxis), OtherAxis)
    tvm.ir.assert_structural_equal(stack_sum_to_add()(KeepDims), KeepDims)


def test_residual_block_matches_onnxruntime():
    import onnxruntime as ort

    from tvmforge import build_model

    rng = np.random.default_rng(4)
    weights = {
        "w1": rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.2,
        "w2": rng.standard_normal((16, 16, 1, 1)).astype(np.float32) * 0.2,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"]),
        helper.make_node("Sum", ["c2", "x", "r1"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 12, 12])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    x = rng.standard_normal((1, 16, 12, 12)).astype(np.float32)
    built = build_model(model, "x86", threads=2)
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    ours = vm["main"](tvm.runtime.tensor(x)).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(ref))))


@I.ir_module
class OnnxSumDynamicBatch:
    """``Sum(a, b)`` with a symbolic batch ``n``."""

    @R.function
    def main(
        a: R.Tensor(("n", 4, 8, 8), "float32"), b: R.Tensor(("n", 4, 8, 8), "float32")
    ) -> R.Tensor(("n", 4, 8, 8), "float32"):
        n = T.int64()
        with R.dataflow():
            ba = R.broadcast_to(a, R.shape([n, 4, 8, 8]))
            bb = R.broadcast_to(b, R.shape([n, 4, 8, 8]))
            s = R.stack((ba, bb), axis=0)
            y = R.sum(s, axis=[0], keepdims=False)
            R.output(y)
        return y


def test_dynamic_batch_sum_becomes_an_add():
    after = stack_sum_to_add()(OnnxSumDynamicBatch)
    ops = [
        b.value.op.name
        for block in after["main"].body.blocks
        for b in block.bindings
        if isinstance(b.value, relax.Call) and isinstance(b.value.op, tvm.ir.Op)
    ]
    assert "relax.stack" not in ops and "relax.sum" not in ops, ops
    assert ops.count("relax.add") == 1
