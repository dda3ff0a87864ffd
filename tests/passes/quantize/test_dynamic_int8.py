"""``dynamic_int8``: matmuls with constant weights become int8 kernels whose input scale is
computed at run time (``--quantize int8 --activation-scales dynamic``).

The integer arithmetic is checked against a numpy model of it (ONNX's DynamicQuantizeLinear
of the input, per-column symmetric weights with the family's code range, an exact int32
product); the whole build against the fp32 build; and the cases the pass leaves alone.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_builders import make_model
from tvmforge.driver.build import build_model
from tvmforge.passes.quantize.qparams import weight_params
from tvmforge.passes.schedule.intrinsics import int8_family
from tvmforge.targets import resolve

F32 = np.float32
HOST_FAMILY = int8_family(resolve("x86").tvm_target())


def _ffn(k: int = 48, hidden: int = 80, n: int = 24, m: int = 6, seed: int = 0,
         batch: int | str = 1) -> onnx.ModelProto:
    """x[B, m, k] -> MatMul(W1) + b1 -> Relu -> MatMul(W2) -> + x @ P (a second branch)."""
    rng = np.random.default_rng(seed)

    def init(name, shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(F32), name)

    node = helper.make_node
    nodes = [node("MatMul", ["x", "w1"], ["h"]), node("Add", ["h", "b1"], ["hb"]),
             node("Relu", ["hb"], ["r"]), node("MatMul", ["r", "w2"], ["y2"]),
             node("MatMul", ["x", "p"], ["yp"]), node("Add", ["y2", "yp"], ["y"])]
    return make_model(nodes,
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, m, k])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, m, n])],
                      [init("w1", (k, hidden)), init("b1", (hidden,)),
                       init("w2", (hidden, n)), init("p", (k, n))])


def _run(built, x: np.ndarray) -> np.ndarray:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _dynamic_matmul(x: np.ndarray, w: np.ndarray, qmax: int) -> np.ndarray:
    """numpy's model of one quantized matmul."""
    lo, hi = min(F32(0), x.min()), max(F32(0), x.max())
    scale = F32(1) if hi == lo else F32((hi - lo) / F32(255))
    zp = np.clip(np.round(-lo / scale), 0, 255)
    xq = np.clip(np.round(x / scale) + zp, 0, 255).astype(np.int64)
    s_w, w_q = weight_params(np.ascontiguousarray(w.T), axis=0, qmax=qmax)
    acc = (xq - int(zp)).reshape(-1, x.shape[-1]) @ w_q.T.astype(np.int64)
    return (acc.astype(F32) * (scale * s_w)).reshape(*x.shape[:-1], -1)


def test_the_integer_arithmetic_matches_its_numpy_model():
    model = _ffn()
    built = build_model(model, "x86", threads=2, quantize="int8", activation_scales="dynamic")
    report = built.quantization["report"]
    assert len(report["layers"]) == 3 and not report["left_float"]
    assert report["activation_scales"] == "dynamic"
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    qmax = 64 if HOST_FAMILY == "avx2" else 127
    rng = np.random.default_rng(1)
    for _ in range(2):
        x = (rng.standard_normal((1, 6, 48)) * 2).astype(F32)
        h = np.maximum(_dynamic_matmul(x, w["w1"], qmax) + w["b1"], 0)
        ref = _dynamic_matmul(h, w["w2"], qmax) + _dynamic_matmul(x, w["p"], qmax)
        out = _run(built, x)
        # float32 rounding of the multiplier and of the hidden layer's requantization input
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_close_to_fp32_also_for_an_all_zero_input():
    model = _ffn(seed=3)
    q = build_model(model, "x86", threads=2, quantize="int8", activation_scales="dynamic")
    f = build_model(model, "x86", threads=2)
    x = np.random.default_rng(2).standard_normal((1, 6, 48)).astype(F32)
    a, b = _run(q, x), _run(f, x)
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.05
    zeros = np.zeros((1, 6, 48), F32)  # the first layers' scale is 1 there, not 0 / 0
    a, b = _run(q, zeros), _run(f, zeros)
    assert np.isfinite(a).all() and np.linalg.norm(a - b) / np.linalg.norm(b) < 0.05


def test_what_it_leaves_float():
    # a matmul of two activations, and a matmul whose input keeps a dynamic batch
    node = helper.make_node
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4, 8])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 8, 5])
    model = make_model([node("MatMul", ["a", "b"], ["y"])], [a, b],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5])])
    built = build_model(model, "x86", threads=2, quantize="int8", activation_scales="dynamic")
    assert built.quantization["report"]["layers"] == []
    dyn = build_model(_ffn(batch="N"), "x86", threads=2, quantize="int8",
                      activation_scales="dynamic")
    report = dyn.quantization["report"]
    assert report["layers"] == [] and len(report["left_float"]) == 3


def test_skip_layers_and_bad_options():
    from tvmforge.errors import InputError

    built = build_model(_ffn(), "x86", threads=2, quantize="int8", activation_scales="dynamic",
                        skip_layers=["matmul_0"])
    assert built.quantization["report"]["left_float"] == ["matmul_0"]
    with pytest.raises(InputError, match="activation-scales"):
        build_model(_ffn(), "x86", quantize="int8", activation_scales="sometimes")
