"""Run NCHW elementwise regions between NHWC producers and NHWC consumers in NHWC.

Why
---
An int8 model's convs read and write NHWC (``quantize_int8``: ``u8`` activations, channels
innermost for the VNNI dot products), while the float ops the quantizer leaves between them
stay NCHW, as ONNX wrote them: a conv output goes ``permute_dims(.., [0, 3, 1, 2])`` to NCHW,
through adds, multiplies, clips, nearest resizes and channel concats, and back
``permute_dims(.., [0, 2, 3, 1])`` to NHWC for the next quantize. Fused, those kernels read
one layout and write the other, so one side is a strided gather: PP-OCRv4 det's FPN
(add of a lateral conv and a 2x-resized coarser map, four times, then a concat of four
resized branches) spent more time in them than in its int8 convs.

What it does
------------
Inside each dataflow block it finds the largest set ``S`` of 4-D float bindings that can be
computed in NHWC instead:

- ``permute_dims(x, [0, 3, 1, 2])``: its NHWC form is ``x``;
- elementwise unary ops and broadcasting binary ops whose 4-D operands are in ``S`` (or are
  small, ``[1, C, 1, 1]``-like, and get their own cheap permute), or are scalars;
- ``image.resize2d`` in ``NCHW`` (becomes ``NHWC``) and ``concat`` along the channels (becomes
  the last axis);

and keeps a binding in ``S`` only while every use of it is in ``S`` too or is a
``permute_dims(.., [0, 2, 3, 1])`` (which then reads the NHWC form directly), shrinking the
set to a fixed point. Each binding of ``S`` gets an NHWC twin; the NHWC consumers read the
twins and the NCHW originals are left for dead-code elimination. Nothing is computed twice,
no transpose is added on a full-size tensor, and the values are the same to the bit (the ops
are elementwise or gathers; only their index order changes).

Where it sits
-------------
In the graph stage after ``quantize_int8`` (which makes the pattern), before weight packing.
A float model without such transposes is returned unchanged.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax

from tvmforge.passes.graph._shapes import dims

__all__ = ["sink_transposes"]

TO_NCHW = (0, 3, 1, 2)
TO_NHWC = (0, 2, 3, 1)

UNARY = {
    "relax.clip", "relax.sigmoid", "relax.nn.relu", "relax.round", "relax.abs",
    "relax.negative", "relax.exp", "relax.tanh", "relax.sqrt", "relax.floor", "relax.ceil",
    "relax.nn.silu", "relax.nn.gelu", "relax.erf", "relax.nn.leakyrelu",
}
BINARY = {
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
    "relax.minimum", "relax.power",
}
# A 4-D operand outside S this small is permuted on its own ([1, C, 1, 1] gates and scales).
SMALL_ELEMENTS = 4096


def _op(expr) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def _axes(call: relax.Call) -> tuple[int, ...] | None:
    axes = call.attrs.axes
    return None if axes is None else tuple(int(a) for a in axes)


def _is_float4d(expr) -> bool:
    shape = dims(expr)
    return shape is not None and len(shape) == 4 and str(expr.ty.dtype).startswith("float")


class _Analysis:
    """Which bindings get an NHWC twin (``members``), and their sources (``sources``)."""

    def __init__(self, bindings: list[relax.VarBinding]) -> None:
        self.value = {b.var: b.value for b in bindings}
        self.order = [b.var for b in bindings]
        self.uses: dict[relax.Var, list[relax.Var]] = {v: [] for v in self.order}
        self.outside: set[relax.Var] = set()  # used by something that is not a binding here
        for b in bindings:
            for var in _vars_in(b.value):
                if var in self.uses:
                    self.uses[var].append(b.var)
        self.sources = {
            v: e.args[0] for v, e in self.value.items()
            if _op(e) == "relax.permute_dims" and _axes(e) == TO_NCHW and _is_float4d(e)
        }
        self.members = {v for v in self.order if self._candidate(v)}

    def mark_outside(self, used: set[relax.Var]) -> None:
        self.outside |= used & set(self.order)

    def _candidate(self, var: relax.Var) -> bool:
        expr = self.value[var]
        op = _op(expr)
        if not _is_float4d(expr):
            return False
        if op in UNARY:
            return True
        if op in BINARY:
            return True
        if op == "relax.image.resize2d":
            return str(expr.attrs.layout) == "NCHW"
        if op == "relax.concat":
            return int(expr.attrs.axis) in (1, -3) and isinstance(expr.args[0], relax.Tuple)
        return False

    def operands(self, var: relax.Var) -> list:
        expr = self.value[var]
        if _op(expr) == "relax.concat":
            return list(expr.args[0].fields)
        if _op(expr) == "relax.image.resize2d":
            return [expr.args[0]]
        return list(expr.args)

    def _nhwc_ready(self, x) -> bool:
        return isinstance(x, relax.Var) and (x in self.members or x in self.sources)

    def operand_ok(self, var: relax.Var, x) -> bool:
        if self._nhwc_ready(x):
            return True
        if not isinstance(x.ty, relax.TensorType):
            return True  # clip bounds and other non-tensor arguments pass through
        op = _op(self.value[var])
        if op in ("relax.concat", "relax.image.resize2d"):
            return False
        shape = dims(x)
        if shape is None:
            return False
        if len(shape) != 4 and all(d == 1 for d in shape):
            return True  # a scalar or all-ones shape broadcasts the same in any layout
        if any(not isinstance(d, int) for d in shape):
            return False
        return len(shape) == 4 and math.prod(shape) <= SMALL_ELEMENTS

    def _use_ok(self, user: relax.Var) -> bool:
        if user in self.members:
            return True
        expr = self.value[user]
        return _op(expr) == "relax.permute_dims" and _axes(expr) == TO_NHWC

    def solve(self) -> None:
        changed = True
        while changed:
            changed = False
            for var in list(self.members):
                ok = var not in self.outside and all(
                    self.operand_ok(var, x) for x in self.operands(var)
                ) and all(self._use_ok(u) for u in self.uses[var])
                if not ok:
                    self.members.discard(var)
                    changed = True
        # Worth doing only where an NHWC consumer reads a twin instead of a transpose.
        readers = [
            v for v, e in self.value.items()
            if _op(e) == "relax.permute_dims" and _axes(e) == TO_NHWC
            and isinstance(e.args[0], relax.Var) and e.args[0] in self.members
        ]
        if not readers:
            self.members.clear()


def _vars_in(expr) -> list[relax.Var]:
    out: list[relax.Var] = []

    def visit(e) -> None:
        if isinstance(e, relax.Var):
            out.append(e)

    relax.analysis.post_order_visit(expr, visit)
    return out


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, analysis: _Analysis) -> None:
        super().__init__(mod)
        self.a = analysis
        self.twin: dict[relax.Var, relax.Expr] = {}
        self.rewritten = 0

    def _nhwc(self, x) -> relax.Expr:
        if isinstance(x, relax.Var) and x in self.twin:
            return self.twin[x]
        if isinstance(x, relax.Var) and x in self.a.sources:
            return self.visit_expr(self.a.sources[x])
        shape = dims(x)
        x = self.visit_expr(x)
        if shape is not None and len(shape) == 4:
            return self.builder_.emit(relax.op.permute_dims(x, list(TO_NHWC)))
        return x

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = binding.value
        if _op(value) == "relax.permute_dims" and _axes(value) == TO_NHWC:
            src = value.args[0]
            if isinstance(src, relax.Var) and (src in self.twin or src in self.a.sources):
                twin = self._nhwc(src)
                if isinstance(binding.var, relax.DataflowVar):
                    self.set_var_remap(binding.var, twin)
                else:  # a block output: keep its var, bound to the twin
                    self.builder_.emit_normalized(relax.VarBinding(binding.var, twin))
                self.rewritten += 1
                return
        super().visit_var_binding_(binding)
        if binding.var in self.a.members:
            self.twin[binding.var] = self.builder_.emit(self._twin_of(value))

    def _twin_of(self, expr: relax.Call) -> relax.Expr:
        op = _op(expr)
        if op == "relax.concat":
            fields = [self._nhwc(f) for f in expr.args[0].fields]
            return relax.op.concat(fields, axis=3)
        if op == "relax.image.resize2d":
            at = expr.attrs
            return relax.op.image.resize2d(
                self._nhwc(expr.args[0]), expr.args[1], roi=tuple(float(r) for r in at.roi),
                layout="NHWC",
                method=at.method, coordinate_transformation_mode=at.coordinate_transformation_mode,
                rounding_method=at.rounding_method, cubic_alpha=at.cubic_alpha,
                cubic_exclude=at.cubic_exclude, extrapolation_value=at.extrapolation_value,
                out_dtype=at.out_dtype if at.out_dtype is not None and str(at.out_dtype) else None,
            )
        args = [self._nhwc(x) for x in expr.args]
        return relax.Call(expr.op, args, expr.attrs)


@relax.transform.function_pass(opt_level=0, name="SinkTransposes")
class _SinkTransposes:
    def transform_function(
        self, func: relax.Function, mod: tvm.IRModule, _ctx: tvm.transform.PassContext
    ) -> relax.Function:
        if func.attrs is not None and "Primitive" in func.attrs:
            return func
        body = func.body
        if not isinstance(body, relax.SeqExpr):
            return func
        bindings = [
            b for block in body.blocks for b in block.bindings if isinstance(b, relax.VarBinding)
        ]
        analysis = _Analysis(bindings)
        analysis.mark_outside(set(_vars_in(body.body)))
        for block in body.blocks:
            for b in block.bindings:
                if not isinstance(b, relax.VarBinding):
                    analysis.mark_outside(set(_vars_in(b.value)))
        analysis.solve()
        if not analysis.members:
            return func
        rewriter = _Rewriter(mod, analysis)
        new = rewriter.visit_expr(func)
        if not rewriter.rewritten:
            return func
        return relax.analysis.remove_all_unused(new)


def sink_transposes() -> tvm.transform.Pass:
    """Compute NCHW elementwise/resize/concat regions that sit between NHWC producers and NHWC
    consumers in NHWC, dropping the transposes around them.

    Returns
    -------
    tvm.transform.Pass
        A Relax function pass.
    """
    return _SinkTransposes()
