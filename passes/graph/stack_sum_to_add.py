"""Rewrite ``sum(stack([a, b, ..]), axis)`` (ONNX ``Sum``) as ``a + b + ..``.

Why
---
The ONNX importer turns ``Sum(a, b)`` into ``broadcast_to`` of each input, a ``stack`` along a
new axis and a ``sum`` over it. ``FuseOps`` cannot fuse a reduction into the conv before it,
so in ResNet every residual connection cost three extra kernels (stack+sum, then the ReLU on
its own) and two round trips of the activation through memory. As ``a + b`` the residual add
and the ReLU after it join the conv's epilogue.

The maths
---------
``sum(stack([x0, .., xk]), axis=a)`` with the stack axis reduced and not kept is
``((x0 + x1) + ..) + xk``, in that order (TIR's reduction starts at 0 and adds the elements in
order; ``0 + x0 == x0``), so the result is the same to the last bit, sign of zero aside. A
``broadcast_to(x, s)`` whose input already has shape ``s`` is dropped; one that really
broadcasts stays.

Where it sits
-------------
Anywhere before ``LegalizeOps``; in tvmforge in the graph stage.
"""

from __future__ import annotations

import tvm
from tvm import relax

from tvmforge.passes.graph._shapes import dims

__all__ = ["stack_sum_to_add"]


def _op_name(expr: relax.Expr) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.rewritten = 0

    def _value(self, expr: relax.Expr) -> relax.Expr:
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if bound is not None:
                return bound
        return expr

    def _unbroadcast(self, expr: relax.Expr, shape: tuple[int, ...]) -> relax.Expr:
        value = self._value(expr)
        if _op_name(value) == "relax.broadcast_to" and dims(value.args[0]) == shape:
            return value.args[0]
        return expr

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        terms = self._terms(call)
        if terms is None:
            return call
        out = terms[0]
        for term in terms[1:-1]:
            out = self.builder_.emit(relax.op.add(out, term))
        self.rewritten += 1
        return relax.op.add(out, terms[-1])

    def _terms(self, call: relax.Call) -> list[relax.Expr] | None:
        """The stacked tensors when ``call`` is a sum over exactly the stack axis."""
        if _op_name(call) != "relax.sum" or bool(call.attrs.keepdims):
            return None
        axis = call.attrs.axis
        if axis is None or len(axis) != 1:
            return None
        stack = self._value(call.args[0])
        if _op_name(stack) != "relax.stack":
            return None
        ndim = len(dims(stack) or ())
        if ndim == 0 or int(axis[0]) % ndim != int(stack.attrs.axis) % ndim:
            return None
        out_shape = dims(call)
        tensors = self._value(stack.args[0])
        if out_shape is None or not isinstance(tensors, relax.Tuple) or len(tensors.fields) < 2:
            return None
        terms = [self._unbroadcast(t, out_shape) for t in tensors.fields]
        if any(dims(t) is None for t in terms):
            return None
        if not str(call.ty.dtype).startswith("float"):
            return None
        return terms


@relax.transform.function_pass(opt_level=0, name="StackSumToAdd")
class _StackSumToAdd:
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


def stack_sum_to_add() -> tvm.transform.Pass:
    """Replace ``sum(stack(xs))`` over the stacked axis by a chain of adds.

    Returns
    -------
    tvm.transform.Pass
        A Relax function pass.
    """
    return _StackSumToAdd()
