"""Fold cheap constant sub-expressions with numpy, before TVM's ``FoldConstant``.

Why
---
``relax.transform.FoldConstant`` evaluates a call on constants by legalizing it, compiling the
resulting TIR function with LLVM and running it: about 50-150 ms per distinct call. An imported
CNN has hundreds of such calls (the four ``expand_dims`` and the ``add``/``sqrt`` of every
decomposed BatchNorm, the ``reshape`` of every conv bias), which made ``FoldConstant`` 85-95 % of
the compile time of ResNet-50 and DenseNet-121. The same calls cost microseconds in numpy.

What it folds
-------------
A call whose arguments are all constants (or shapes) and whose operator is in ``FOLDERS``:
layout and shape operators (``reshape``, ``expand_dims``, ``squeeze``, ``permute_dims``,
``broadcast_to``, ``concat``, ``astype``) for any dtype, and elementwise arithmetic (``add``,
``subtract``, ``multiply``, ``divide``, ``sqrt``, ``rsqrt``, ...) for floating-point dtypes only
(integer division and overflow follow different rules in numpy and TIR). A result is kept only
when its shape and dtype are exactly what Relax inferred for the call; anything else is left
for ``FoldConstant``, so the pass never changes what the graph computes beyond float rounding of
the folded constants (numpy and the TIR kernel both compute in the constant's own dtype).

What is left
------------
With ``fallback=True`` (the default) the pass then runs ``relax.transform.FoldConstant`` on the
module, but only if a call on constants is still there. Even with nothing to fold,
``FoldConstant`` costs about as much as ``LegalizeOps`` on the whole module (2 s on ResNet-50),
so it is skipped when the numpy folding left no work for it.

Where it sits
-------------
Anywhere before ``LegalizeOps``, as a drop-in replacement for ``FoldConstant``; in tvmforge
right after import (so a conv bias is a constant for ``fold_conv_bn``) and again after
``DecomposeOpsForInference``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.ir.expr import Constant

__all__ = ["FOLDERS", "fold_constants_numpy", "has_constant_calls"]

Folder = Callable[[relax.Call, list[np.ndarray]], np.ndarray | None]


def _shape(expr: relax.Expr) -> list[int] | None:
    if not isinstance(expr, relax.ShapeExpr):
        return None
    values = []
    for v in expr.values:
        if not isinstance(v, tvm.tirx.IntImm):
            return None
        values.append(int(v.value))
    return values


def _ints(value) -> list[int] | None:
    return None if value is None else [int(v) for v in value]


def _float_only(fn: Callable[..., np.ndarray]) -> Folder:
    """An elementwise numpy function, applied only when every operand is floating point."""

    def fold(_call: relax.Call, args: list[np.ndarray]) -> np.ndarray | None:
        if not all(np.issubdtype(a.dtype, np.floating) for a in args):
            return None
        with np.errstate(all="ignore"):  # inf/nan follow IEEE, as in the compiled kernel
            return fn(*args)

    return fold


def _reshape(call: relax.Call, args: list[np.ndarray]) -> np.ndarray | None:
    shape = _shape(call.args[1])
    return None if shape is None else args[0].reshape(shape)


def _broadcast_to(call: relax.Call, args: list[np.ndarray]) -> np.ndarray | None:
    shape = _shape(call.args[1])
    return None if shape is None else np.broadcast_to(args[0], shape).copy()


def _expand_dims(call: relax.Call, args: list[np.ndarray]) -> np.ndarray:
    return np.expand_dims(args[0], tuple(_ints(call.attrs.axis)))


def _squeeze(call: relax.Call, args: list[np.ndarray]) -> np.ndarray:
    axis = _ints(call.attrs.axis)
    return np.squeeze(args[0], None if axis is None else tuple(axis))


def _permute_dims(call: relax.Call, args: list[np.ndarray]) -> np.ndarray:
    return np.transpose(args[0], _ints(call.attrs.axes))


def _concat(call: relax.Call, args: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(args, axis=int(call.attrs.axis))


def _astype(call: relax.Call, args: list[np.ndarray]) -> np.ndarray | None:
    src, dst = args[0].dtype, np.dtype(str(call.attrs.dtype))
    if not (np.issubdtype(src, np.floating) and np.issubdtype(dst, np.floating)):
        return None  # float->int rounding and int overflow differ between numpy and TIR
    return args[0].astype(dst)


# Operator name -> numpy evaluation (``None``: "not folded here, leave it to FoldConstant").
FOLDERS: dict[str, Folder] = {
    # shapes and layouts: exact for every dtype
    "relax.reshape": _reshape,
    "relax.broadcast_to": _broadcast_to,
    "relax.expand_dims": _expand_dims,
    "relax.squeeze": _squeeze,
    "relax.permute_dims": _permute_dims,
    "relax.concat": _concat,
    "relax.astype": _astype,
    # floating-point arithmetic, elementwise with numpy's (= Relax's) broadcasting
    "relax.add": _float_only(np.add),
    "relax.subtract": _float_only(np.subtract),
    "relax.multiply": _float_only(np.multiply),
    "relax.divide": _float_only(np.divide),
    "relax.maximum": _float_only(np.maximum),
    "relax.minimum": _float_only(np.minimum),
    "relax.power": _float_only(np.power),
    "relax.negative": _float_only(np.negative),
    "relax.sqrt": _float_only(np.sqrt),
    "relax.rsqrt": _float_only(lambda x: (1 / np.sqrt(x)).astype(x.dtype)),
    "relax.exp": _float_only(np.exp),
}


def _constant_args(call: relax.Call) -> list[np.ndarray] | None:
    """The call's tensor arguments as numpy arrays; ``None`` if one is not a constant."""
    out = []
    for arg in call.args:
        if isinstance(arg, relax.ShapeExpr):
            continue
        if isinstance(arg, relax.Tuple):
            items = list(arg.fields)
        else:
            items = [arg]
        for item in items:
            if not isinstance(item, Constant) or not hasattr(item, "value"):
                return None
            value = item.value
            if not hasattr(value, "numpy"):
                return None
            out.append(value.numpy())
    return out


def _fold(call: relax.Call) -> Constant | None:
    if not isinstance(call.op, tvm.ir.Op):
        return None
    folder = FOLDERS.get(call.op.name)
    ty = call.ty
    if folder is None or not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    args = _constant_args(call)
    if args is None:
        return None
    try:
        result = folder(call, args)
    except (ValueError, TypeError, IndexError):  # malformed attributes: leave it to TVM
        return None
    if result is None:
        return None
    result = np.asarray(result)
    expected = _shape(ty.shape) if isinstance(ty.shape, relax.ShapeExpr) else None
    if expected is None or list(result.shape) != expected or str(result.dtype) != ty.dtype:
        return None
    return relax.const(np.ascontiguousarray(result), ty.dtype)


@relax.expr_functor.mutator
class _NumpyFolder(relax.PyExprMutator):
    """Post-order: arguments bound to folded constants are substituted, then the call folded."""

    def visit_var_(self, var: relax.Var) -> relax.Expr:
        return self._constant_or(super().visit_var_(var))

    def visit_dataflow_var_(self, var: relax.DataflowVar) -> relax.Expr:
        return self._constant_or(super().visit_dataflow_var_(var))

    def _constant_or(self, var: relax.Expr) -> relax.Expr:
        bound = self.lookup_binding(var) if isinstance(var, relax.Var) else None
        return bound if isinstance(bound, Constant) and hasattr(bound, "value") else var

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        folded = _fold(call)
        return folded if folded is not None else call


@relax.expr_functor.visitor
class _ConstantCallFinder(relax.PyExprVisitor):
    """Finds a call none of whose arguments is a variable (what ``FoldConstant`` may fold)."""

    def __init__(self) -> None:
        self.found = False

    def visit_call_(self, call: relax.Call) -> None:
        if not self.found and not any(_mentions_var(a) for a in call.args):
            self.found = True
        super().visit_call_(call)


def _mentions_var(expr: relax.Expr) -> bool:
    if isinstance(expr, relax.Var):
        return True
    if isinstance(expr, relax.Tuple):
        return any(_mentions_var(f) for f in expr.fields)
    return False


def has_constant_calls(mod: tvm.IRModule) -> bool:
    """Whether some Relax function still calls an operator on constants only."""
    for _gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            finder = _ConstantCallFinder()
            finder.visit_expr(func)
            if finder.found:
                return True
    return False


def _dangling(mod: tvm.IRModule) -> bool:
    """Whether a Relax function refers to a function the module does not define."""
    defined = {gv.name_hint for gv in mod.get_global_vars()}
    return any(
        gv.name_hint not in defined
        for _gv, func in mod.functions_items()
        if isinstance(func, relax.Function)
        for gv in relax.analysis.all_global_vars(func)
    )


@relax.transform.function_pass(opt_level=0, name="FoldConstantsNumpy")
class _FoldConstantsNumpy:
    def transform_function(
        self, func: relax.Function, mod: tvm.IRModule, _ctx: tvm.transform.PassContext
    ) -> relax.Function:
        if func.attrs is not None and "Primitive" in func.attrs:
            return func
        folded = _NumpyFolder(mod).visit_expr(func)
        return relax.analysis.remove_all_unused(folded)


def fold_constants_numpy(fallback: bool = True) -> tvm.transform.Pass:
    """Fold calls on constants with numpy (see the module docstring for which ones).

    Parameters
    ----------
    fallback:
        Then run ``relax.transform.FoldConstant`` if calls on constants are left.

    Returns
    -------
    tvm.transform.Pass
        A module pass, a drop-in replacement for ``relax.transform.FoldConstant``.
    """
    numpy_pass = _FoldConstantsNumpy()
    if not fallback:
        return numpy_pass

    @tvm.transform.module_pass(opt_level=0, name="FoldConstantsNumpyThenTVM")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        mod = numpy_pass(mod)
        if has_constant_calls(mod):
            folded = relax.transform.FoldConstant()(mod)
            # TVM 0.27's FoldConstant can leave a call to a shape function it dropped (a
            # ``dynamic_strided_slice`` beside folded calls): keep the unfolded module then.
            if _dangling(folded):
                return mod
            mod = folded
        return mod

    return _pass
