"""Shape helpers shared by the graph passes."""

from __future__ import annotations

import tvm
from tvm import relax

__all__ = ["dims", "static_but_batch"]


def dims(expr: relax.Expr) -> tuple[int | str, ...] | None:
    """``expr``'s shape: static dims as ints, a symbolic dim (a dynamic batch) as ``"$name"``
    (comparable with ``==``, unlike a ``tirx.Var``); ``None`` for an unknown shape or a dim
    that is an expression."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    out: list[int | str] = []
    for v in ty.shape.values:
        if isinstance(v, tvm.tirx.IntImm):
            out.append(int(v.value))
        elif isinstance(v, tvm.tirx.Var):
            out.append(f"${v.name}")
        else:
            return None
    return tuple(out)


def static_but_batch(expr: relax.Expr) -> tuple[int | str, ...] | None:
    """``dims(expr)`` when every dim is static except perhaps the leading one (a dynamic batch,
    which ``passes/batch_outer.py`` schedules per sample); else ``None``."""
    shape = dims(expr)
    if shape is None or not all(isinstance(d, int) for d in shape[1:]):
        return None
    return shape
