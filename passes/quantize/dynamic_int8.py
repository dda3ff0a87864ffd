"""int8 matmuls with activation scales computed at run time (``--activation-scales dynamic``).

Why
---
Static int8 (``quantize_int8``) fixes every activation's range from calibration data. That
suits CNNs; a transformer's activations (attention outputs, the FFN's GELU, the residual
stream) move with the input, and a range fixed ahead is either clipped or wastes levels. ONNX
Runtime's ``quantize_dynamic`` answers with a scale per call: each matmul's input is quantized
with its own min/max at run time. This pass does the same for tvmforge's own quantization,
with no calibration data, and the matmuls run on the int8 kernels of ``quantize_int8``
(``int8_kernels.qconv2d_nhwc`` as a 1x1 conv; VNNI, ``sdot`` or AVX2 ``vpmaddubsw`` where the
target has them).

What it does
------------
Each ``relax.matmul(x, W)`` with a constant 2-D float32 ``W [K, N]`` and a float32 ``x`` of
static shape ``[..., K]`` becomes:

- ``W``: per output column symmetric int8, ``s_w[n] = max|W[:, n]| / qmax`` (``qmax`` 127, or
  64 for the AVX2 kernels, exact with 7-bit weights), packed for the kernels at compile time;
- ``x``: ``DynamicQuantizeLinear`` as ONNX defines it, per tensor, at run time:
  ``lo = min(0, min x)``, ``hi = max(0, max x)``, ``s = (hi - lo) / 255`` (1 when that is 0),
  ``z = saturate(round(-lo / s))``, ``x_q = saturate(round(x / s) + z)`` (uint8);
- the kernel accumulates ``sum_k x_q w_q`` in int32 and writes float32
  ``(acc - z * sum_k w_q[:, n]) * s * s_w[n]``: the ``z`` term and the multiplier are computed
  at run time (a vector of N values, in int32 and float32), so the kernel is the static
  one with run-time constants.

A matmul of two activations (attention's ``q @ k^T``, ``p @ v``), convolutions, and matmuls
with a dynamic dimension stay float. The bias add, GELU, LayerNorm and softmax around the
matmuls stay float and fuse as before. Per-tensor scales are ONNX Runtime's choice too; the
accuracy against fp32 is what ``benchmarks/bert_int8.py`` reports.

``lower_qmatmul_integer`` gives a ``quantize_dynamic`` model's own integer products
(``MatMulInteger``, ``DynamicQuantizeMatMul``, ``MatMulIntegerToFloat`` with a constant int8
``B``, imported as ``tvmforge.qmatmul_integer`` calls) the same kernels: their weights stay
int8 in the artifact instead of becoming int32 constants.

Where it sits
-------------
In the graph stage where ``quantize_int8`` goes (``build_model(quantize="int8",
activation_scales="dynamic")``), before ``pack_dense_weights`` takes the float matmuls that
are left.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from tvmforge.passes.quantize.qparams import weight_params
from tvmforge.passes.schedule import int8_kernels as K
from tvmforge.passes.schedule.intrinsics import int8_family

__all__ = ["DynamicInt8", "DynamicReport", "dynamic_int8", "lower_qmatmul_integer"]

log = logging.getLogger(__name__)


@dataclass
class DynamicReport:
    """What the pass did: the matmuls it quantized (name, K, N) and the kernel family."""

    kernel: str = "int32"
    layers: list[dict] = field(default_factory=list)
    left_float: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.layers)} matmul(s) int8 with dynamic activation scales "
                f"({self.kernel} kernels), {len(self.left_float)} left float")

    def to_json(self) -> dict:
        return {"activation_scales": "dynamic", "kernel": self.kernel, "layers": self.layers,
                "left_float": self.left_float, "summary": self.summary()}


def _const(expr: relax.Expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.GenericConst) else None


def _static_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    if not all(isinstance(v, tvm.tirx.IntImm) for v in ty.shape.values):
        return None
    return tuple(int(v.value) for v in ty.shape.values)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, family: str | None, owner: DynamicInt8):
        super().__init__(mod)
        self.family, self.owner = family, owner
        self.kernels: list[tuple[relax.Expr, str]] = []

    def _weight(self, expr: relax.Expr) -> np.ndarray | None:
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            expr = bound if bound is not None else expr
        value = _const(expr)
        if value is None or value.ndim != 2 or value.dtype != np.float32:
            return None
        return value

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.matmul"):
            return call
        x, w_expr = call.args
        w = self._weight(w_expr)
        if w is None:
            return call
        index = len(self.owner.report.layers) + len(self.owner.report.left_float)
        name = f"matmul_{index}"
        shape = _static_shape(x)
        if (shape is None or len(shape) < 2 or x.ty.dtype != "float32"
                or _static_shape(call) is None or name in self.owner.skip):
            self.owner.report.left_float.append(name)
            return call
        return self._quantized(x, w, shape, name)

    def _quantized(self, x: relax.Expr, w: np.ndarray, shape: tuple[int, ...], name: str):
        bb = self.builder_
        k, n = w.shape
        m = int(np.prod(shape[:-1]))
        family = self.family
        qmax = 64 if family == "avx2" else 127
        s_w, w_q = weight_params(np.ascontiguousarray(w.T)[:, :, None, None], axis=0, qmax=qmax)
        f32 = "float32"

        # DynamicQuantizeLinear of x, per tensor (ONNX's definition)
        zero = relax.const(0.0, f32)
        lo = bb.emit(relax.op.minimum(relax.op.min(x), zero))
        hi = bb.emit(relax.op.maximum(relax.op.max(x), zero))
        span = bb.emit(relax.op.subtract(hi, lo))
        scale = bb.emit(relax.op.where(relax.op.equal(span, zero), relax.const(1.0, f32),
                                       relax.op.divide(span, relax.const(255.0, f32))))
        zp = bb.emit(relax.op.clip(relax.op.round(relax.op.negative(
            relax.op.divide(lo, scale))), 0.0, 255.0))
        xq = relax.op.clip(relax.op.add(relax.op.round(relax.op.divide(x, scale)), zp),
                           0.0, 255.0)
        xq = bb.emit(relax.op.astype(xq, "uint8"))

        out, kvar, kind = _emit_kernel(bb, family, xq, zp, w_q, s_w, scale, shape,
                                       "qdense_dynamic")
        self.kernels.append((kvar, kind))
        self.owner.report.layers.append({"name": name, "k": k, "n": n, "m": m,
                                         "kernel": kind})
        return out


# ``compiler/frontend/converters/dynamic_quantized.py``'s placeholder for the integer product of
# a ``quantize_dynamic`` model (the frontend may not import the passes, where the kernels live)
QMATMUL_INTEGER = "tvmforge.qmatmul_integer"


def _integer_kernel(bb: relax.BlockBuilder, family: str | None, a_q: relax.Expr,
                    a_zp: relax.Expr, b: np.ndarray, shape: tuple[int, ...]):
    """``float32(sum_k (a_q - a_zp) b)`` for a uint8 ``a_q [..., K]`` on the int8 kernels,
    and the kernel's kind. ``b`` (int8 ``[K, N]``) is used as it is, except on the AVX2
    kernels, exact for ``|b| <= 64`` only: wider codes are halved there (rounded half to
    even) and the sum doubled, as ``quantize_int8`` rounds a QDQ model's weights to 7 bits."""
    n = b.shape[1]
    w = b.T.astype(np.int32)  # [N, K]
    factor = 1.0
    if family == "avx2" and np.abs(w).max() > 64:
        w, factor = np.round(w / 2.0), 2.0
    w_q = np.clip(w, -127, 127).astype(np.int8)[:, :, None, None]
    return _emit_kernel(bb, family, a_q, a_zp, w_q, np.full(n, factor, np.float32), None,
                        shape, "qmatmul_integer")


def _emit_kernel(bb: relax.BlockBuilder, family: str | None, a_q: relax.Expr, a_zp: relax.Expr,
                 w_q: np.ndarray, column_mult: np.ndarray, scale: relax.Expr | None,
                 shape: tuple[int, ...], hint: str):
    """``float32(sum_k (a_q - a_zp) w_q[n, k]) * column_mult[n] (* scale)`` for a uint8
    ``a_q [..., K]`` and int8 ``w_q [N, K, 1, 1]``, as the int8 1x1-conv kernel of the
    target's family (``a_zp`` and ``scale``: run-time scalars); the output ``[..., N]``, the
    kernel's GlobalVar and its kind."""
    n, k = w_q.shape[:2]
    m = int(np.prod(shape[:-1]))
    ocp = -(-n // 16) * 16
    wsum = np.zeros(ocp, np.int32)
    wsum[:n] = w_q.reshape(n, -1).astype(np.int64).sum(axis=1)
    bias_q = relax.op.negative(relax.op.multiply(relax.op.astype(a_zp, "int32"),
                                                 relax.const(wsum, "int32")))
    if family == "sdot":  # sdot reads x_q - 128: the bias gives the 128 back
        bias_q = relax.op.add(bias_q, relax.const(128 * wsum, "int32"))
    mult = relax.const(np.pad(column_mult.astype(np.float32), (0, ocp - n),
                              constant_values=1.0))
    if scale is not None:
        mult = relax.op.multiply(mult, scale)
    kind = family if family in ("vnni", "sdot", "avx2") else "int32"
    epi = K.Epilogue(out_dtype="float32", zero_point=0, layout="NHWC")
    te_fn = functools.partial(K.qconv2d_nhwc, spec=K.ConvSpec(kernel=(1, 1)), epi=epi,
                              x_zero_point=0, out_channels=n)
    if kind == "sdot":
        te_fn = functools.partial(te_fn, signed=True)
    elif kind == "int32":
        te_fn = functools.partial(te_fn, flat=True)
    x = bb.emit(relax.op.reshape(a_q, [1, 1, m, k]))
    call = bb.call_te(te_fn, x, relax.const(K.pack_weight_vnni(w_q), "int8"), bb.emit(bias_q),
                      bb.emit(mult), primfunc_name_hint=f"{hint}_{kind}")
    out = bb.emit(call)
    return relax.op.reshape(out, [*shape[:-1], n]), call.args[0], kind


@relax.expr_functor.mutator
class _LowerInteger(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, family: str | None):
        super().__init__(mod)
        self.family = family
        self.kernels: list[tuple[relax.Expr, str]] = []

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_dps_packed"):
            return call
        fn = call.args[0]
        if not (isinstance(fn, relax.ExternFunc) and fn.global_symbol == QMATMUL_INTEGER):
            return call
        a_q, a_zp, b = call.args[1].fields
        if isinstance(b, relax.Var):
            bound = self.lookup_binding(b)
            b = bound if bound is not None else b
        value = _const(b)
        shape = _static_shape(a_q)
        if value is None or shape is None:
            raise ValueError(f"{QMATMUL_INTEGER}: B must be a constant and A of static shape")
        out, kvar, kind = _integer_kernel(self.builder_, self.family, a_q, a_zp, value, shape)
        self.kernels.append((kvar, kind))
        return out


def lower_qmatmul_integer() -> tvm.transform.Pass:
    """The dynamic-quantization converters' ``tvmforge.qmatmul_integer`` calls as int8 kernels
    (the target's family); a no-op on models without them."""

    @tvm.transform.module_pass(opt_level=0, name="LowerQMatMulInteger")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        family = int8_family(tvm.target.Target.current(allow_none=True))
        lower = _LowerInteger(mod, family)
        updates = {gv: lower.visit_expr(f) for gv, f in mod.functions_items()
                   if isinstance(f, relax.Function)}
        if not lower.kernels:
            return mod
        out = lower.builder_.get()
        for gv, func in updates.items():
            out.update_func(gv, func)
        for kvar, kind in lower.kernels:
            if kind in ("vnni", "sdot", "avx2"):
                out.update_func(kvar, out[kvar].with_attr(K.KERNEL_ATTR, kind)
                                .with_attr("op_pattern", 8))
        return out

    return _pass


@tvm.transform.module_pass(opt_level=0, name="DynamicInt8")
class DynamicInt8:
    """int8 matmuls with run-time activation scales (see the module docstring)."""

    def __init__(self, skip: tuple[str, ...] | list[str] = ()):
        self.skip = set(skip)
        self.report = DynamicReport()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        family = int8_family(tvm.target.Target.current(allow_none=True))
        self.report = DynamicReport(kernel=family or "int32")
        gv = next((g for g in mod.get_global_vars() if g.name_hint == "main"), None)
        if gv is None or not isinstance(mod[gv], relax.Function):
            return mod
        rewriter = _Rewriter(mod, family, self)
        new = relax.analysis.remove_all_unused(rewriter.visit_expr(mod[gv]))
        rewriter.builder_.update_func(gv, new)
        out = rewriter.builder_.get()
        for kvar, kind in rewriter.kernels:
            if kind in ("vnni", "sdot", "avx2"):
                # scheduled in the schedule stage (``schedule_int8``), opaque to fusion
                out.update_func(kvar, out[kvar].with_attr(K.KERNEL_ATTR, kind)
                                .with_attr("op_pattern", 8))
        log.info("dynamic_int8: %s", self.report.summary())
        return out


def dynamic_int8(skip: tuple[str, ...] | list[str] = ()) -> DynamicInt8:
    """The graph-stage pass for ``quantize="int8", activation_scales="dynamic"``."""
    return DynamicInt8(skip)
