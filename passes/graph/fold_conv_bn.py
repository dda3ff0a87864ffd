"""Fold inference BatchNorm (and any per-channel scale and shift) into the conv before it.

The maths
---------
In inference, ``batch_norm(x, gamma, beta, mean, var, eps)`` is the per-channel affine map
``x * s + t`` with ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``. After a
convolution ``y = conv2d(x, W) + b`` (``W`` in OIHW, ``b`` optional) it folds into the weights:

    W' = W * s[o]                  (each output channel o of W scaled by s[o])
    b' = (b - mean) * s + beta     (= b * s + t)

so ``conv2d(x, W') + b'`` replaces conv + BatchNorm, and ``s``, ``t``, ``W'``, ``b'`` are
computed here with numpy (in float64, stored in the weight's dtype). Nothing is left for
``FoldConstant``, which would compile and run a TIR kernel for every ``sqrt``, ``divide`` and
``expand_dims`` of every BatchNorm.

The rewrite is a small table of algebraic rules on constants (``RULES``), applied bottom-up
until none fires; chains such as DenseNet's ``conv -> BatchNorm -> Mul -> Add`` or a
conv bias followed by BatchNorm collapse into one conv and one bias add:

- ``batch_norm(x, ..)[0]``             -> ``x * s + t``
- ``conv2d(x, W) * c``                 -> ``conv2d(x, W * c)``      (c per output channel)
- ``(y + a) * c``                      -> ``y * c + a * c``         (only when ``y * c`` folds)
- ``(y * a) * c``                      -> ``y * (a * c)``
- ``(y + a) + c``                      -> ``y + (a + c)``

A BatchNorm with no conv before it (DenseNet's pre-activation blocks) still becomes one
multiply and one add by precomputed constants. An operand is only absorbed when the rewritten
expression is its sole user (a conv whose output is also used elsewhere is not duplicated).

Where it sits
-------------
Before ``DecomposeOpsForInference`` (it matches ``relax.nn.batch_norm`` itself) and after
``fold_constants_numpy`` (a conv bias arrives as ``reshape(const)``, which must already be a
constant to be recognised).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

from tvmforge.passes.graph._shapes import dims

log = logging.getLogger(__name__)

__all__ = ["RULES", "fold_conv_bn"]


def _op_name(expr: relax.Expr) -> str | None:
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


def _broadcast(a: list[int | str], b: list[int | str]) -> list[int | str] | None:
    """numpy's broadcast of two shapes whose symbolic dims are names; ``None`` if unknown."""
    a, b = [1] * (len(b) - len(a)) + list(a), [1] * (len(a) - len(b)) + list(b)
    out: list[int | str] = []
    for x, y in zip(a, b, strict=True):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return out


def _is_float(expr: relax.Expr) -> bool:
    ty = expr.ty
    return isinstance(ty, relax.TensorType) and str(ty.dtype).startswith(("float", "bfloat"))


@relax.expr_functor.visitor
class _UseCounter(relax.PyExprVisitor):
    def __init__(self) -> None:
        self.uses: collections.Counter = collections.Counter()

    def visit_var_(self, var: relax.Var) -> None:
        self.uses[var] += 1

    def visit_dataflow_var_(self, var: relax.DataflowVar) -> None:
        self.uses[var] += 1


@relax.expr_functor.mutator
class _Folder(relax.PyExprMutator):
    """Applies ``RULES`` to every call (and BatchNorm's ``[0]``) after its arguments."""

    def __init__(self, mod: tvm.IRModule, uses: collections.Counter) -> None:
        super().__init__(mod)
        self.uses = uses
        self.fired: collections.Counter = collections.Counter()

    # --- helpers the rules use -------------------------------------------------------------

    def value(self, expr: relax.Expr) -> relax.Expr:
        """What a variable is bound to (in the rewritten function), else the expression."""
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if bound is not None:
                return bound
        return expr

    def const(self, expr: relax.Expr) -> np.ndarray | None:
        value = self.value(expr)
        if (
            isinstance(value, Constant)
            and hasattr(value, "value")
            and hasattr(value.value, "numpy")
        ):
            return value.value.numpy()
        return None

    def sole_use(self, expr: relax.Expr) -> relax.Call | None:
        """The call a variable is bound to, when the current expression is its only user."""
        if not isinstance(expr, relax.DataflowVar) or self.uses.get(expr, 1) != 1:
            return None
        value = self.lookup_binding(expr)
        return value if isinstance(value, relax.Call) else None

    def emit(self, expr: relax.Expr) -> relax.Expr:
        """Simplify a call a rule built and bind it to a fresh variable."""
        if isinstance(expr, relax.Call):
            expr = self.rewrite(expr)
        return self.builder_.emit(expr)

    def rewrite(self, expr: relax.Expr) -> relax.Expr:
        expr = self.builder_.normalize(expr)  # rules read the inferred type
        for name, rule in RULES:
            new = rule(self, expr)
            if new is not None:
                self.fired[name] += 1
                return self.rewrite(new)
        return expr

    # --- the traversal ---------------------------------------------------------------------

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        return self.rewrite(self.visit_expr_post_order(call))

    def visit_tuple_getitem_(self, item: relax.TupleGetItem) -> relax.Expr:
        return self.rewrite(self.visit_expr_post_order(item))


# --------------------------------------------------------------------------------------------
# Rules: (name, function) pairs; a function returns the replacement or ``None`` ("no match").

Rule = Callable[[_Folder, relax.Expr], relax.Expr | None]


def _const_expr(array: np.ndarray, dtype: str) -> Constant:
    return relax.const(np.ascontiguousarray(array.astype(dtype)), dtype)


def batch_norm_to_affine(f: _Folder, expr: relax.Expr) -> relax.Expr | None:
    """``batch_norm(x, gamma, beta, mean, var)[0]`` -> ``x * s + t`` with constant ``s, t``."""
    if not isinstance(expr, relax.TupleGetItem) or expr.index != 0:
        return None
    bn = f.value(expr.tuple_value)
    if _op_name(bn) != "relax.nn.batch_norm" or bool(bn.attrs.training):
        return None
    x = bn.args[0]
    params = [f.const(a) for a in bn.args[1:5]]
    shape = dims(x)
    if shape is None or any(p is None for p in params) or not _is_float(x):
        return None
    if not isinstance(shape[int(bn.attrs.axis) % len(shape)], int):
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    axis = int(bn.attrs.axis) % len(shape)
    if any(p.shape != (shape[axis],) for p in (gamma, beta, mean, var)):
        return None
    if not bool(bn.attrs.scale):
        gamma = np.ones_like(gamma)
    if not bool(bn.attrs.center):
        beta = np.zeros_like(beta)
    scale = gamma / np.sqrt(var + float(bn.attrs.epsilon))
    shift = beta - mean * scale
    bshape = [1] * len(shape)
    bshape[axis] = shape[axis]
    dtype = str(x.ty.dtype)
    scaled = f.emit(relax.op.multiply(x, _const_expr(scale.reshape(bshape), dtype)))
    return relax.op.add(scaled, _const_expr(shift.reshape(bshape), dtype))


def _per_output_channel(c: np.ndarray, out_channels: int) -> np.ndarray | None:
    """``c`` as a vector over the output channels of an NCHW tensor, if it broadcasts so."""
    if c.ndim > 4:
        return None
    c4 = c.reshape([1] * (4 - c.ndim) + list(c.shape))
    if c4.shape[0] != 1 or c4.shape[2] != 1 or c4.shape[3] != 1:
        return None
    if c4.shape[1] not in (1, out_channels):
        return None
    return np.broadcast_to(c4[0, :, 0, 0], (out_channels,))


def scale_into_conv(f: _Folder, expr: relax.Expr) -> relax.Expr | None:
    """``conv2d(x, W) * c`` -> ``conv2d(x, W * c[o])`` for a constant per-channel ``c``."""
    if _op_name(expr) != "relax.multiply":
        return None
    conv_var, c_expr = expr.args
    conv = f.sole_use(conv_var)
    if conv is None:
        conv_var, c_expr = c_expr, conv_var
        conv = f.sole_use(conv_var)
    if _op_name(conv) != "relax.nn.conv2d":
        return None
    attrs = conv.attrs
    if attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW":
        return None
    weight, c = f.const(conv.args[1]), f.const(c_expr)
    if weight is None or c is None or not _is_float(conv):
        return None
    if str(conv.ty.dtype) != str(expr.ty.dtype) or weight.dtype != c.dtype:
        return None
    per_channel = _per_output_channel(c, weight.shape[0])
    if per_channel is None:
        return None
    scaled = weight.astype(np.float64) * per_channel.astype(np.float64).reshape(-1, 1, 1, 1)
    new_weight = _const_expr(scaled, str(weight.dtype))
    return relax.Call(conv.op, [conv.args[0], new_weight], attrs, conv.ty_args)


def scale_through_shift(f: _Folder, expr: relax.Expr) -> relax.Expr | None:
    """``(y + a) * c`` -> ``y * c + a * c``, when ``y * c`` then folds further."""
    if _op_name(expr) != "relax.multiply":
        return None
    add_var, c_expr = expr.args
    add = f.sole_use(add_var)
    c = f.const(c_expr)
    if _op_name(add) != "relax.add" or c is None or not _is_float(expr):
        return None
    y, a_expr = add.args
    a = f.const(a_expr)
    if a is None:
        y, a_expr = a_expr, y
        a = f.const(a_expr)
    if a is None or a.dtype != c.dtype:
        return None
    inner = relax.op.multiply(y, c_expr)
    folded = f.rewrite(inner)
    if folded.same_as(inner):
        return None  # nothing gained, keep the original order of operations
    return relax.op.add(f.builder_.emit(folded), _const_expr(a * c, str(a.dtype)))


def merge_scales(f: _Folder, expr: relax.Expr) -> relax.Expr | None:
    """``(y * a) * c`` -> ``y * (a * c)``."""
    return _merge(f, expr, "relax.multiply", np.multiply)


def merge_shifts(f: _Folder, expr: relax.Expr) -> relax.Expr | None:
    """``(y + a) + c`` -> ``y + (a + c)``."""
    return _merge(f, expr, "relax.add", np.add)


def _merge(f: _Folder, expr: relax.Expr, op: str, fn) -> relax.Expr | None:
    if _op_name(expr) != op or not _is_float(expr):
        return None
    inner_var, c_expr = expr.args
    c = f.const(c_expr)
    if c is None:
        inner_var, c_expr = c_expr, inner_var
        c = f.const(c_expr)
    inner = f.sole_use(inner_var)
    if c is None or _op_name(inner) != op:
        return None
    y, a_expr = inner.args
    a = f.const(a_expr)
    if a is None:
        y, a_expr = a_expr, y
        a = f.const(a_expr)
    if a is None or a.dtype != c.dtype or f.const(y) is not None:
        return None
    merged = fn(a, c)
    # the merged constant must not widen the result (it broadcasts against y as before)
    y_shape, out_shape = dims(y), dims(expr)
    if y_shape is None or _broadcast(list(y_shape), list(merged.shape)) != list(out_shape or ()):
        return None
    rebuilt = relax.op.multiply if op == "relax.multiply" else relax.op.add
    return rebuilt(y, _const_expr(merged, str(a.dtype)))


RULES: list[tuple[str, Rule]] = [
    ("batch_norm_to_affine", batch_norm_to_affine),
    ("scale_into_conv", scale_into_conv),
    ("merge_scales", merge_scales),
    ("merge_shifts", merge_shifts),
    ("scale_through_shift", scale_through_shift),
]


@relax.transform.function_pass(opt_level=0, name="FoldConvBatchNorm")
class _FoldConvBatchNorm:
    def transform_function(
        self, func: relax.Function, mod: tvm.IRModule, _ctx: tvm.transform.PassContext
    ) -> relax.Function:
        if func.attrs is not None and "Primitive" in func.attrs:
            return func
        counter = _UseCounter()
        counter.visit_expr(func)
        folder = _Folder(mod, counter.uses)
        new = folder.visit_expr(func)
        if not folder.fired:
            return func
        log.debug("fold_conv_bn: %s", dict(folder.fired))
        return relax.analysis.remove_all_unused(new)


def fold_conv_bn() -> tvm.transform.Pass:
    """Fold inference BatchNorm and per-channel constant scales/shifts into conv2d weights.

    Returns
    -------
    tvm.transform.Pass
        A Relax function pass; run it before ``DecomposeOpsForInference``.
    """
    return _FoldConvBatchNorm()
