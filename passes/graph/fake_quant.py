"""Rewrite a QDQ model's quantize-dequantize pairs as plain elementwise arithmetic.

Why
---
A QDQ model (``QuantizeLinear`` → ``DequantizeLinear`` around each layer, what ONNX Runtime's
``quantize_static`` writes) that is built with float kernels (a CPU without an int8
dot-product instruction, or ``--precision fp32``) keeps every pair as ``relax.quantize`` and
``relax.dequantize``. Those are opaque to the blocked layout (``nchwc_layout`` only carries
``NCHW{B}c`` values through ops it knows): every pair then costs a ``layout_transform`` on each
side, and the convs between them fall back to NCHW. ResNet-50's QDQ model ran 1.5x its float
model on an AVX2 EPYC that way.

What it does
------------
``dequantize(quantize(x, s, z), s, z)`` (the same scale and zero point, per tensor or along
the same axis; the integer tensor may have other users, which keep it) becomes::

    (clip(round(x / s) + z, qmin, qmax) - z) * s

in float32 with ``relax`` elementwise ops (``divide``, ``round``, ``add``, ``clip``,
``subtract``, ``multiply``) and constant operands: exactly the arithmetic TVM's own
legalization of the pair computes (``round`` is half-to-even in both), so outputs do not
change. Elementwise, the pair now fuses into the kernel before it and travels in any layout.
A per-axis pair's scale and zero point become constants shaped to broadcast along the axis.

Where it sits
-------------
In the graph stage after the caller's passes (``quantize_int8`` takes the pairs it turns into
integer kernels first) and before ``nchwc_layout``.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from tvmforge.passes.graph._mutator import bound_constant

__all__ = ["fake_quant"]


def _is(call: relax.Expr, name: str) -> bool:
    return (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
            and call.op.name == name)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.rewritten = 0

    def _param(self, expr: relax.Expr) -> np.ndarray | None:
        value = bound_constant(self, expr)
        return None if value is None else np.asarray(value)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not _is(call, "relax.dequantize") or not isinstance(call.args[0], relax.Var):
            return call
        quant = self.lookup_binding(call.args[0])
        if not _is(quant, "relax.quantize"):
            return call
        x = quant.args[0]
        if not (isinstance(x.ty, relax.TensorType) and x.ty.dtype == "float32"
                and call.ty.dtype == "float32"):
            return call
        qdtype = str(quant.ty.dtype)
        if qdtype not in ("uint8", "int8", "uint16", "int16"):
            return call
        ds, dz, qs, qz = (self._param(a) for a in (*call.args[1:3], *quant.args[1:3]))
        if any(p is None for p in (ds, dz, qs, qz)):
            return call
        if int(call.attrs.axis) != int(quant.attrs.axis) and ds.size > 1:
            return call
        if ds.shape != qs.shape or dz.shape != qz.shape or not (
                np.array_equal(ds, qs) and np.array_equal(dz, qz)):
            return call
        ndim = len(x.ty.shape) if x.ty.shape is not None else None
        if ndim is None:
            return call
        info = np.iinfo(np.dtype(qdtype))

        def const(v: np.ndarray) -> relax.Expr:
            v = np.asarray(v, np.float32)
            if v.size == 1:
                return relax.const(np.float32(v.reshape(())), "float32")
            axis = int(call.attrs.axis) % ndim
            shape = [1] * ndim
            shape[axis] = v.size
            return relax.const(v.reshape(shape), "float32")

        scale, zero = const(ds), const(dz.astype(np.float32))
        emit = self.builder_.emit
        q = emit(relax.op.round(emit(relax.op.divide(x, scale))))
        q = emit(relax.op.clip(emit(relax.op.add(q, zero)), float(info.min), float(info.max)))
        self.rewritten += 1
        return relax.op.multiply(emit(relax.op.subtract(q, zero)), scale)


@relax.transform.function_pass(opt_level=0, name="FakeQuant")
class _FakeQuant:
    def transform_function(
        self, func: relax.Function, mod: tvm.IRModule, _ctx: tvm.transform.PassContext
    ) -> relax.Function:
        if func.attrs is not None and "Primitive" in func.attrs:
            return func
        rewriter = _Rewriter(mod)
        new = rewriter.visit_expr(func)
        if not rewriter.rewritten:
            return func
        return relax.analysis.remove_all_unused(new)


def fake_quant() -> tvm.transform.Pass:
    """Quantize-dequantize pairs as elementwise float arithmetic (see the module docstring).

    Returns
    -------
    tvm.transform.Pass
        A Relax function pass.
    """
    return _FakeQuant()
