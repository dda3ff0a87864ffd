"""``sink_transposes``: NCHW float regions between NHWC producers and consumers run in NHWC.

The rewritten graph is the expected one (no full-size transposes left, resize and concat in
NHWC, small gates permuted on their own); a region whose NCHW result is also needed elsewhere
is left alone; an FPN-like ONNX model computes the same values through the whole pipeline,
against ONNX Runtime; and the int8 PP-OCRv4 det neck, where the pattern comes from, loses its
transposes.
"""

from __future__ import annotations

import numpy as np
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from onnx_builders import make_model
from tvmforge.passes.graph.sink_transposes import sink_transposes

RESIZE = dict(
    roi=[0.0, 0.0, 0.0, 0.0], method="nearest_neighbor",
    coordinate_transformation_mode="asymmetric", rounding_method="floor",
)


@I.ir_module
class Neck:
    """Two NHWC conv outputs, merged in NCHW (gate, upsample, add, concat), quantized NHWC."""

    @R.function
    def main(
        a: R.Tensor((1, 8, 8, 24), "float32"),
        b: R.Tensor((1, 4, 4, 24), "float32"),
        gate: R.Tensor((1, 24, 1, 1), "float32"),
    ) -> R.Tensor((1, 8, 8, 48), "float32"):
        with R.dataflow():
            ta = R.permute_dims(a, axes=[0, 3, 1, 2])
            tb = R.permute_dims(b, axes=[0, 3, 1, 2])
            g = R.clip(gate, 0, 1)
            ga = R.multiply(ta, g)
            up = R.image.resize2d(tb, R.shape([8, 8]), layout="NCHW", **RESIZE)
            s = R.add(ga, up)
            c = R.concat((s, up), axis=1)
            y = R.permute_dims(c, axes=[0, 2, 3, 1])
            z = R.divide(y, R.const(0.5, "float32"))
            R.output(z)
        return z


@I.ir_module
class NeckNHWC:
    @R.function
    def main(
        a: R.Tensor((1, 8, 8, 24), "float32"),
        b: R.Tensor((1, 4, 4, 24), "float32"),
        gate: R.Tensor((1, 24, 1, 1), "float32"),
    ) -> R.Tensor((1, 8, 8, 48), "float32"):
        with R.dataflow():
            g1 = R.clip(R.permute_dims(gate, axes=[0, 2, 3, 1]), 0, 1)
            ga1 = R.multiply(a, g1)
            up1 = R.image.resize2d(b, R.shape([8, 8]), layout="NHWC", **RESIZE)
            s1 = R.add(ga1, up1)
            c1 = R.concat((s1, up1), axis=3)
            z = R.divide(c1, R.const(0.5, "float32"))
            R.output(z)
        return z


def _ops(mod: tvm.IRModule) -> list[str]:
    names: list[str] = []

    def visit(e) -> None:
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
            names.append(e.op.name)

    relax.analysis.post_order_visit(mod["main"], visit)
    return names


def _run(mod: tvm.IRModule, *arrays: np.ndarray) -> np.ndarray:
    exe = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(exe, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy()



def test_the_region_runs_in_nhwc_with_the_same_values():
    after = sink_transposes()(Neck)
    ops = _ops(after)
    # only the [1, 24, 1, 1] gate is permuted; resize and concat work on NHWC
    assert ops.count("relax.permute_dims") == 1
    assert sorted(ops) == sorted(_ops(NeckNHWC))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 8, 8, 24)).astype(np.float32)
    b = rng.standard_normal((1, 4, 4, 24)).astype(np.float32)
    gate = rng.uniform(-0.5, 1.5, (1, 24, 1, 1)).astype(np.float32)
    np.testing.assert_array_equal(_run(after, a, b, gate), _run(Neck, a, b, gate))
    np.testing.assert_array_equal(_run(NeckNHWC, a, b, gate), _run(Neck, a, b, gate))


@I.ir_module
class NeededInNCHW:
    """The NCHW sum is an output too: converting it would compute it twice."""

    @R.function
    def main(
        a: R.Tensor((1, 8, 8, 24), "float32"), b: R.Tensor((1, 24, 8, 8), "float32")
    ) -> R.Tuple(R.Tensor((1, 24, 8, 8), "float32"), R.Tensor((1, 8, 8, 24), "float32")):
        with R.dataflow():
            ta = R.permute_dims(a, axes=[0, 3, 1, 2])
            s = R.add(ta, b)  # b is NCHW and full size: no twin without a transpose of it
            y = R.permute_dims(s, axes=[0, 2, 3, 1])
            out = (s, y)
            R.output(out)
        return out


def test_a_region_with_nchw_uses_is_left_alone():
    tvm.ir.assert_structural_equal(sink_transposes()(NeededInNCHW), NeededInNCHW)


def test_fpn_like_onnx_model_matches_onnxruntime():
    """Transposes from NHWC, a gate, an upsample-add and a channel concat, back to NHWC."""
    import onnxruntime as ort

    from tvmforge import build_model

    rng = np.random.default_rng(3)
    gate = numpy_helper.from_array(rng.uniform(0, 1, (1, 24, 1, 1)).astype(np.float32), "g")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    roi = numpy_helper.from_array(np.zeros(0, np.float32), "roi")
    nodes = [
        helper.make_node("Transpose", ["a"], ["ta"], perm=[0, 3, 1, 2]),
        helper.make_node("Transpose", ["b"], ["tb"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["ta", "g"], ["ga"]),
        helper.make_node("Resize", ["tb", "roi", "scales"], ["up"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Add", ["ga", "up"], ["s"]),
        helper.make_node("Concat", ["s", "up", "ta"], ["c"], axis=1),
        helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 16, 16, 24]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 8, 8, 24])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 72])],
        [gate, scales, roi],
    )
    a = rng.standard_normal((1, 16, 16, 24)).astype(np.float32)
    b = rng.standard_normal((1, 8, 8, 24)).astype(np.float32)
    built = build_model(model, "x86", threads=2)
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    ours = vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"a": a, "b": b})
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
