"""``fake_quant``: a QDQ model's quantize-dequantize pairs become elementwise float arithmetic.

The rewrite must compute exactly what TVM's own legalization of the pair computes (both
round half to even), so each test builds the module before and after the pass and compares
the outputs bit for bit, on inputs that land on rounding ties and outside the integer range.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from tvmforge.passes.graph.fake_quant import fake_quant

SCALE = 0.05


def _pair_module(qdtype: str, zp, scale, axis: int = 1, dq_scale=None, dq_zp=None):
    """``dequantize(quantize(x))`` on x[2, 3, 4]; the dequantize may use other parameters."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3, 4), "float32"))

    def const(v, dtype):
        return relax.const(np.asarray(v, dtype), dtype)

    with bb.function("main", [x]):
        with bb.dataflow():
            q = bb.emit(relax.op.quantize(x, const(scale, "float32"), const(zp, qdtype),
                                          axis=axis, out_dtype=qdtype))
            d = bb.emit(relax.op.dequantize(
                q, const(scale if dq_scale is None else dq_scale, "float32"),
                const(zp if dq_zp is None else dq_zp, qdtype), axis=axis,
                out_dtype="float32"))
            out = bb.emit_output(relax.op.add(d, d))
        bb.emit_func_output(out)
    return bb.get()


def _ops(mod) -> set[str]:
    names = set()

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
            names.add(e.op.name)

    relax.analysis.post_order_visit(mod["main"], visit)
    return names


def _run(mod, x: np.ndarray) -> np.ndarray:
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.uniform(-20, 20, (2, 3, 4)).astype(np.float32)
    # exact ties (k + 0.5) * scale in the scale's float32 arithmetic, and values far outside
    x.flat[:8] = (np.arange(-4, 4) + 0.5).astype(np.float32) * np.float32(SCALE)
    x.flat[8:10] = [1e4, -1e4]
    return x


@pytest.mark.parametrize("qdtype, zp", [("uint8", 128), ("uint8", 3), ("int8", 0),
                                        ("int8", -5)])
def test_a_per_tensor_pair_becomes_elementwise_and_computes_the_same(qdtype, zp):
    mod = _pair_module(qdtype, zp, SCALE)
    new = fake_quant()(mod)
    ops = _ops(new)
    assert "relax.quantize" not in ops and "relax.dequantize" not in ops
    assert {"relax.round", "relax.clip", "relax.divide"} <= ops
    x = _inputs()
    np.testing.assert_array_equal(_run(new, x), _run(mod, x))


def test_a_per_channel_pair_broadcasts_its_parameters_along_the_axis():
    scales = np.array([0.05, 0.1, 0.02], np.float32)
    zps = np.array([0, 7, -3], np.int8)
    mod = _pair_module("int8", zps, scales, axis=1)
    new = fake_quant()(mod)
    assert "relax.quantize" not in _ops(new)
    x = _inputs()
    np.testing.assert_array_equal(_run(new, x), _run(mod, x))


def test_a_pair_with_other_parameters_is_left_alone():
    mod = _pair_module("uint8", 128, SCALE, dq_scale=0.1)
    assert "relax.quantize" in _ops(fake_quant()(mod))
    mod = _pair_module("uint8", 128, SCALE, dq_zp=127)
    assert "relax.quantize" in _ops(fake_quant()(mod))


def test_a_lone_dequantize_is_left_alone():
    bb = relax.BlockBuilder()
    q = relax.Var("q", relax.TensorType((4,), "uint8"))
    with bb.function("main", [q]):
        with bb.dataflow():
            d = bb.emit_output(relax.op.dequantize(q, relax.const(0.5, "float32"),
                                                   relax.const(np.uint8(3), "uint8")))
        bb.emit_func_output(d)
    mod = bb.get()
    assert "relax.dequantize" in _ops(fake_quant()(mod))
