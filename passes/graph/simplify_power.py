"""Rewrite ``power(x, c)`` with a constant exponent as square roots and products.

Why
---
LLVM lowers a TIR ``pow`` with a non-integer exponent to a scalar ``powf`` call per element;
the loop cannot be vectorized. Inception's local response normalisation computes
``(k + alpha/n * sum(x^2))^0.75`` for every activation, and that ``pow`` alone made its two
LRN kernels 18 % of the model's time. ``sqrt`` is one vector instruction.

The rules (``RULES``: exponent -> rewrite)
-------------------------------------------
====  ================================  ====  ====================
 c    x^c                                c     x^c
====  ================================  ====  ====================
 1    ``x``                              0.5   ``sqrt(x)``
 2    ``x * x``                          0.25  ``sqrt(sqrt(x))``
 3    ``x * x * x``                      0.75  ``sqrt(x) * sqrt(sqrt(x))``
-1    ``1 / x``                         -0.5   ``rsqrt(x)``
====  ================================  ====  ====================

Only for floating-point ``x`` and an exponent that is a constant with a single value. The
results agree with ``powf`` to a few ulp; they differ only where no network cares: ``sqrt``
of ``-0`` is ``-0`` (``pow`` gives ``+0``) and of ``-inf`` NaN (``pow``: ``+inf``).

Where it sits
-------------
Anywhere before ``LegalizeOps``; in tvmforge in the graph stage, after constant folding (so the
exponent is a constant).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

__all__ = ["RULES", "simplify_power"]


def _cube(x: relax.Expr, emit: Callable[[relax.Expr], relax.Expr]) -> relax.Expr:
    return relax.op.multiply(emit(relax.op.multiply(x, x)), x)


def _three_quarters(x: relax.Expr, emit: Callable[[relax.Expr], relax.Expr]) -> relax.Expr:
    root = emit(relax.op.sqrt(x))
    return relax.op.multiply(root, emit(relax.op.sqrt(root)))


def _reciprocal(x: relax.Expr, _emit) -> relax.Expr:
    return relax.op.divide(relax.const(1.0, str(x.ty.dtype)), x)


# exponent -> (x, emit) -> replacement; ``emit`` binds an intermediate to a variable.
RULES: dict[float, Callable[[relax.Expr, Callable[[relax.Expr], relax.Expr]], relax.Expr]] = {
    1.0: lambda x, _emit: x,
    2.0: lambda x, _emit: relax.op.multiply(x, x),
    3.0: _cube,
    0.5: lambda x, _emit: relax.op.sqrt(x),
    0.25: lambda x, emit: relax.op.sqrt(emit(relax.op.sqrt(x))),
    0.75: _three_quarters,
    -0.5: lambda x, _emit: relax.op.rsqrt(x),
    -1.0: _reciprocal,
}


def _shape(expr: relax.Expr) -> tuple[int, ...] | None:
    shape = expr.ty.shape if isinstance(expr.ty, relax.TensorType) else None
    if not isinstance(shape, relax.ShapeExpr):
        return None
    if not all(isinstance(v, tvm.tirx.IntImm) for v in shape.values):
        return None
    return tuple(int(v.value) for v in shape.values)


def _exponent(expr: relax.Expr, lookup) -> float | None:
    if isinstance(expr, relax.Var):
        bound = lookup(expr)
        expr = expr if bound is None else bound
    if not (isinstance(expr, Constant) and hasattr(expr, "value")):
        return None
    values = np.unique(expr.value.numpy())
    return float(values[0]) if values.size == 1 else None


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.rewritten = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.power"):
            return call
        x, exponent = call.args
        ty = call.ty
        if not (isinstance(ty, relax.TensorType) and str(ty.dtype).startswith("float")):
            return call
        if not (isinstance(x.ty, relax.TensorType) and x.ty.dtype == ty.dtype):
            return call
        # the exponent may broadcast x to a larger shape: then the power stays
        if _shape(x) is None or _shape(x) != _shape(call):
            return call
        value = _exponent(exponent, self.lookup_binding)
        rule = RULES.get(value) if value is not None else None
        if rule is None:
            return call
        self.rewritten += 1
        return rule(x, self.builder_.emit)


@relax.transform.function_pass(opt_level=0, name="SimplifyPower")
class _SimplifyPower:
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


def simplify_power() -> tvm.transform.Pass:
    """Replace ``power`` by a constant exponent with ``sqrt``/products (see ``RULES``).

    Returns
    -------
    tvm.transform.Pass
        A Relax function pass.
    """
    return _SimplifyPower()
