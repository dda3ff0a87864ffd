"""4-bit weight-only quantization of matmuls with constant weights (``quantize_int4``), and the
lowering of ONNX Runtime's ``MatMulNBits`` to the same kernel (``lower_matmul_nbits``).

What it matches
---------------
Every ``relax.matmul(x, W)`` whose ``W`` is a constant 2-D float32 ``[K, N]`` (what the
importer writes for ``MatMul`` and ``Gemm`` once constants are folded; a ``permute_dims`` of a
constant, Gemm's ``transB=1`` before folding, is read through) and whose ``x`` is float32
``[..., K]``. A bias add after it is left as it is (an elementwise kernel of its own). A matmul
of two computed tensors, convolutions and everything else are left alone; so are layers named
in ``skip`` (``matmul_<i>`` in graph order, the binding's variable name, or an ONNX node name
given by ``layer_names``).

The maths
---------
Per output column ``n`` and group of ``G`` consecutive ``k`` (``K`` padded with zeros to a
multiple of ``G``; the kernel reads ``x`` as 0 there), round to nearest (half to even):

- symmetric (``symmetric=True``): ``scale = max|w| / 7``, ``q = clip(round(w / scale), -8,
  7)``, stored ``q + 8`` (zero point 8, no zero-point tensor);
- asymmetric: ``lo = min(w, 0)``, ``hi = max(w, 0)`` (the range holds 0, so zero is exact),
  ``scale = (hi - lo) / 15``, ``zp = clip(round(-lo / scale), 0, 15)``, ``q = clip(round(w /
  scale) + zp, 0, 15)``.

An all-zero group gets scale 1. ``dequant = (q - zp) * scale``; the kernel
(``int4_kernels.int4_matmul``) applies it per group, in fp32.

Scale search (``search=True``): for each group, scales ``scale * f`` for ``f`` in
:data:`SEARCH_GRID` (1.0 down to 0.8: clipping the few largest weights to round the many small
ones more finely) are tried and the one with the smallest error kept. The error is the
group's contribution to the layer's output error, ``d^T H d`` with ``d = w - dequant(w)`` and
``H = X_g^T X_g`` (``X_g``: the group's columns of calibration inputs of the layer, from
``activations``); without activations for the layer, ``H = I``: the weight error ``|d|^2``.
Cross-group terms of the output error are ignored (each group is chosen on its own).

The report (``.report``, ``Int4Report``): per layer ``K``, ``N``, the weight bytes before
(fp32) and after (packed codes, scales, zero points, padding included) and the relative
weight error ``|W - dequant| / |W|``.

Where it sits
-------------
In the graph stage, where ``quantize_int8`` goes (after constant folding, before the layout
and packing passes, which leave the kernel calls alone); ``int4_pass`` builds it. The kernels
carry ``tvmforge.int4_kernel`` and are opaque to fusion; the schedule stage gives them their
hand schedule (``passes/schedule/int4.py``).

``lower_matmul_nbits``: the ONNX importer writes com.microsoft ``MatMulNBits`` as
``call_dps_packed("tvmforge.matmul_nbits", [x2d, B, scales, zero_points?])`` with MatMulNBits'
own constants (the frontend may not import the passes, where the kernel lives); this pass
rearranges the constants into the kernel's layout (``int4_kernels.from_matmul_nbits``: the
same codes) and replaces the call with the kernel. It must run in the graph stage of any model
that has the op (it does nothing on others).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import tvm
from tvm import relax, tirx

from tvmforge.passes.schedule import int4_kernels as K

log = logging.getLogger(__name__)

__all__ = [
    "MATMUL_NBITS",
    "SEARCH_GRID",
    "Int4Layer",
    "Int4Report",
    "PackedInt4",
    "QuantizeInt4",
    "emit_int4_matmul",
    "int4_pass",
    "lower_matmul_nbits",
    "quantize_int4",
    "quantize_weight",
]

# The extern name the MatMulNBits converter (frontend/converters/matmul_nbits.py) emits.
MATMUL_NBITS = "tvmforge.matmul_nbits"
SEARCH_GRID = (1.0, 0.95, 0.9, 0.85, 0.8)


# --------------------------------------------------------------------------------------------
# Quantizing one weight (numpy)


def _groups(w: np.ndarray, group: int) -> np.ndarray:
    """``[K, N]`` → ``[N, Kp/G, G]`` (zero-padded along ``K``), float64."""
    k, n = w.shape
    kp = -(-k // group) * group
    wt = np.zeros((n, kp), np.float64)
    wt[:, :k] = w.T
    return wt.reshape(n, kp // group, group)


def _rtn(g: np.ndarray, scale: np.ndarray, symmetric: bool):
    """Codes, zero points and dequantized values of groups ``g`` at ``scale`` ``[N, ng]``."""
    s = scale[..., None]
    if symmetric:
        q = np.clip(np.round(g / s), -8, 7) + 8
        zp = np.full(scale.shape, 8.0)
    else:
        lo = np.minimum(g.min(-1), 0.0)
        zp = np.clip(np.round(-lo / scale), 0, 15)
        q = np.clip(np.round(g / s) + zp[..., None], 0, 15)
    return q, zp, (q - zp[..., None]) * s


def quantize_weight(
    w: np.ndarray,
    group: int = 32,
    symmetric: bool = True,
    search: bool = False,
    activations: np.ndarray | None = None,
    grid: Iterable[float] = SEARCH_GRID,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Group-wise 4-bit quantization of ``w [K, N]`` along ``K`` (see the module docstring).

    Returns
    -------
    ``(q [N, Kp] uint8 codes 0..15, scales [N, Kp/G] fp32, zero points [N, Kp/G] uint8 or
    None when symmetric)``
    """
    if group not in K.GROUP_SIZES:
        raise ValueError(f"group size {group}: use one of {K.GROUP_SIZES}")
    w = np.asarray(w, np.float64)
    k = w.shape[0]
    g = _groups(w, group)
    if symmetric:
        base = np.abs(g).max(-1) / 7.0
    else:
        base = (np.maximum(g.max(-1), 0.0) - np.minimum(g.min(-1), 0.0)) / 15.0
    base = np.where(base > 0, base, 1.0)
    factors = list(grid) if search else [1.0]
    hess = None
    if search and activations is not None:
        x = np.asarray(activations, np.float64).reshape(-1, k)
        xp = np.zeros((len(x), g.shape[1] * group))
        xp[:, :k] = x
        xg = xp.reshape(len(x), g.shape[1], group)
        hess = np.einsum("sgi,sgj->gij", xg, xg)  # [ng, G, G]
    best_err = best_scale = None
    for f in factors:
        scale = (base * f).astype(np.float32).astype(np.float64)  # what is stored
        _, _, deq = _rtn(g, scale, symmetric)
        d = g - deq
        err = (np.einsum("ngi,gij,ngj->ng", d, hess, d) if hess is not None
               else (d * d).sum(-1))
        if best_err is None:
            best_err, best_scale = err, scale
        else:
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_scale = np.where(better, scale, best_scale)
    q, zp, _ = _rtn(g, best_scale, symmetric)
    n = w.shape[1]
    codes = q.reshape(n, -1).astype(np.uint8)
    return (codes, best_scale.astype(np.float32),
            None if symmetric else zp.astype(np.uint8))


# --------------------------------------------------------------------------------------------
# Emitting the kernel


@dataclass
class PackedInt4:
    """A weight in the kernel's layout (``int4_kernels.pack_weights``) and its true sizes."""

    wp: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    group: int
    k: int
    n: int

    @classmethod
    def from_codes(cls, q, scales, zero_points, group: int, k: int) -> PackedInt4:
        wp, s, zp = K.pack_weights(q, scales, zero_points, group)
        return cls(wp, s, zp, group, k, int(q.shape[0]))

    @property
    def nbytes(self) -> int:
        zp = 0 if self.zero_points is None else self.zero_points.nbytes
        return self.wp.nbytes + self.scales.nbytes + zp


def _dims(expr: relax.Expr) -> list | None:
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    return [int(d) if isinstance(d, tirx.IntImm) else d for d in ty.shape.values]


def emit_int4_matmul(bb: relax.BlockBuilder, x: relax.Expr, packed: PackedInt4) -> relax.Expr:
    """``x [..., K] @ dequant(W) [K, N]`` as a call of the int4 kernel (marked for its
    schedule, opaque to fusion); ``x`` is reshaped to 2-D and back."""
    dims = _dims(x)
    lead = dims[:-1]
    rows = functools.reduce(lambda a, b: a * b, lead, 1)
    x2 = x if len(lead) == 1 else bb.emit(relax.op.reshape(x, [rows, packed.k]))
    args = [x2, relax.const(packed.wp, "uint8"), relax.const(packed.scales, "float32")]
    if packed.zero_points is not None:
        args.append(relax.const(packed.zero_points, str(packed.zero_points.dtype)))
    call = bb.call_te(functools.partial(K.int4_matmul, group=packed.group), *args,
                      primfunc_name_hint="int4_matmul")
    gv = call.args[0]
    func = bb.get()[gv]
    if K.KERNEL_ATTR not in (func.attrs or {}):
        bb.update_func(gv, func.with_attr(K.KERNEL_ATTR, "matmul").with_attr("op_pattern", 8))
    y = bb.emit(call)
    if packed.wp.shape[0] * K.PANEL != packed.n:  # the padded columns of the last panel
        y = bb.emit(relax.op.strided_slice(y, axes=[1], begin=[0], end=[packed.n]))
    if len(lead) != 1:
        y = bb.emit(relax.op.reshape(y, [*lead, packed.n]))
    return y


# --------------------------------------------------------------------------------------------
# Report


@dataclass
class Int4Layer:
    name: str
    k: int
    n: int
    bytes_before: int
    bytes_after: int
    error: float  # |W - dequant(W)| / |W|
    skipped: bool = False


@dataclass
class Int4Report:
    """What ``quantize_int4`` did, layer by layer."""

    group_size: int
    symmetric: bool
    search: bool
    layers: list[Int4Layer] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # "where: why" for matmuls left alone

    @property
    def quantized(self) -> list[Int4Layer]:
        return [layer for layer in self.layers if not layer.skipped]

    @property
    def bytes_before(self) -> int:
        return sum(layer.bytes_before for layer in self.quantized)

    @property
    def bytes_after(self) -> int:
        return sum(layer.bytes_after for layer in self.quantized)

    def summary(self) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric"
        ratio = self.bytes_before / self.bytes_after if self.bytes_after else 0.0
        return (f"{len(self.quantized)} matmul(s) int4 (group {self.group_size}, {kind}), "
                f"{len(self.layers) - len(self.quantized)} skipped; weights "
                f"{self.bytes_before} -> {self.bytes_after} bytes ({ratio:.1f}x smaller)")

    def to_json(self) -> dict:
        return {"group_size": self.group_size, "symmetric": self.symmetric,
                "search": self.search, "layers": [asdict(layer) for layer in self.layers],
                "refused": self.refused, "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after, "summary": self.summary()}


# --------------------------------------------------------------------------------------------
# The pass


def _const(expr: relax.Expr) -> np.ndarray | None:
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, owner: QuantizeInt4):
        super().__init__(mod)
        self.owner = owner
        self.index = 0

    def _weight(self, expr: relax.Expr) -> np.ndarray | None:
        """``expr`` as a constant ``[K, N]``: a constant, or a transpose of one."""
        value = _const(expr)
        if value is not None:
            return value
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if (isinstance(bound, relax.Call) and isinstance(bound.op, tvm.ir.Op)
                    and bound.op.name == "relax.permute_dims"):
                inner = _const(bound.args[0])
                axes = bound.attrs.axes
                if inner is not None and inner.ndim == 2 and (
                        axes is None or [int(a) for a in axes] == [1, 0]):
                    return inner.T
        return None

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = binding.value
        if (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
                and value.op.name == "relax.matmul"):
            new = self._site(binding.var, value)
            if new is not None:
                if not isinstance(binding.var, relax.DataflowVar):
                    new = self.builder_.emit_output(new, name_hint=binding.var.name)
                self.set_var_remap(binding.var, new)
                return
        super().visit_var_binding_(binding)

    def _site(self, var: relax.Var, call: relax.Call) -> relax.Expr | None:
        owner, report = self.owner, self.owner.report
        w = self._weight(call.args[1])
        if w is None:
            return None  # two computed tensors: not a layer
        x = self.visit_expr(call.args[0])
        dims = _dims(x)
        where = var.name
        if w.ndim != 2 or w.dtype != np.float32:
            report.refused.append(f"{where}: weight {list(w.shape)} {w.dtype} (want 2-D float32)")
            return None
        if (dims is None or len(dims) < 2 or str(x.ty.dtype) != "float32"
                or dims[-1] != w.shape[0] or str(var.ty.dtype) != "float32"):
            report.refused.append(f"{where}: input is not float32 [.., M, {w.shape[0]}]")
            return None
        name = owner.layer_name(w, self.index, where)
        self.index += 1
        k, n = w.shape
        if {name, where} & owner.skip:
            report.layers.append(Int4Layer(name, k, n, w.nbytes, w.nbytes, 0.0, skipped=True))
            return None
        acts = owner.activations.get(name, owner.activations.get(where))
        q, s, zp = quantize_weight(w, owner.group_size, owner.symmetric, owner.search, acts)
        packed = PackedInt4.from_codes(q, s, zp, owner.group_size, k)
        deq = K.dequantize_np(q, s, zp, owner.group_size)[:, :k].T
        err = float(np.linalg.norm(deq - w) / max(np.linalg.norm(w), 1e-30))
        report.layers.append(Int4Layer(name, k, n, w.nbytes, packed.nbytes, round(err, 5)))
        return emit_int4_matmul(self.builder_, x, packed)


@tvm.transform.module_pass(opt_level=0, name="QuantizeInt4")
class QuantizeInt4:
    """4-bit weight-only quantization of ``main``'s constant-weight matmuls (module docstring)."""

    def __init__(self, group_size: int = 32, symmetric: bool = True, skip: Iterable[str] = (),
                 search: bool = False, activations: Mapping[str, np.ndarray] | None = None,
                 layer_names: Mapping[str, str] | None = None):
        if group_size not in K.GROUP_SIZES:
            raise ValueError(f"group_size {group_size}: use one of {K.GROUP_SIZES}")
        self.group_size, self.symmetric, self.search = group_size, symmetric, search
        self.skip = set(skip)
        self.activations = dict(activations or {})
        self.layer_names = dict(layer_names or {})
        self.report: Int4Report | None = None

    def layer_name(self, w: np.ndarray, index: int, var_name: str) -> str:
        if self.layer_names:
            from tvmforge.passes.prune.keys import weight_key

            name = self.layer_names.get(weight_key(w)) or self.layer_names.get(
                weight_key(np.ascontiguousarray(w.T)))
            if name:
                return name
        del var_name
        return f"matmul_{index}"

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.report = Int4Report(self.group_size, self.symmetric, self.search)
        gv = next((g for g in mod.get_global_vars() if g.name_hint == "main"), None)
        if gv is None or not isinstance(mod[gv], relax.Function):
            return mod
        rewriter = _Rewriter(mod, self)
        new_main = rewriter.visit_expr(mod[gv])
        if not self.report.quantized:
            log.info("quantize_int4: no matmul to quantize")
            return mod
        out = rewriter.builder_.get()
        out.update_func(gv, new_main)
        out = relax.transform.DeadCodeElimination(["main"])(out)
        log.info("quantize_int4: %s", self.report.summary())
        return out


def quantize_int4(group_size: int = 32, symmetric: bool = True, skip: Iterable[str] = (),
                  search: bool = False, activations: Mapping[str, np.ndarray] | None = None,
                  layer_names: Mapping[str, str] | None = None) -> QuantizeInt4:
    """4-bit weight-only quantization as a module pass (see the module docstring).

    Parameters
    ----------
    group_size:
        Weights per scale along ``K``: 16, 32, 64 or 128.
    symmetric:
        Zero point 8 and ``scale = max|w| / 7`` (``True``), or a min/max range per group with
        its own zero point.
    skip:
        Layers left float: ``matmul_<i>`` (graph order), the Relax variable's name, or the
        name ``layer_names`` gives.
    search:
        Try :data:`SEARCH_GRID` multiples of each group's scale and keep the one with the
        smallest output error on ``activations`` (weight error without them).
    activations:
        Calibration inputs of a layer ``[S, K]`` by layer name (for ``search``).
    layer_names:
        ``prune.keys.weight_key(W) -> name`` (ONNX node names), as ``quantize_int8`` takes.
    """
    return QuantizeInt4(group_size, symmetric, skip, search, activations, layer_names)


def int4_pass(group_size: int = 32, symmetric: bool = True, search: bool = False,
              skip: Iterable[str] = ()) -> QuantizeInt4:
    """The graph-stage pass for ``quantize="int4"`` (``.report`` holds what it did)."""
    return quantize_int4(group_size, symmetric, skip, search)


# --------------------------------------------------------------------------------------------
# MatMulNBits


@relax.expr_functor.mutator
class _LowerNBits(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.count = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_dps_packed"):
            return call
        fn = call.args[0]
        if not (isinstance(fn, relax.ExternFunc) and fn.global_symbol == MATMUL_NBITS):
            return call
        x, b, scales, *zp = call.args[1].fields
        bv, sv = _const(b), _const(scales)
        zv = _const(zp[0]) if zp else None
        if bv is None or sv is None or (zp and zv is None):
            raise ValueError("MatMulNBits: B, scales and zero points must be constants")
        n, _, blob = bv.shape
        k = int(_dims(x)[-1])
        wp, s, z = K.from_matmul_nbits(bv, sv, zv, k, n, 2 * blob)
        self.count += 1
        return emit_int4_matmul(self.builder_, x, PackedInt4(wp, s, z, 2 * blob, k, n))


def lower_matmul_nbits() -> tvm.transform.Pass:
    """The converter's ``call_dps_packed("tvmforge.matmul_nbits", ...)`` calls as int4
    kernels (see the module docstring); a no-op on models without them."""

    @tvm.transform.module_pass(opt_level=0, name="LowerMatMulNBits")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updates = {}
        lower = _LowerNBits(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                updates[gv] = lower.visit_expr(func)
        if not lower.count:
            return mod
        out = lower.builder_.get()
        for gv, func in updates.items():
            out.update_func(gv, func)
        return out

    return _pass
