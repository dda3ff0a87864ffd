"""Standard ONNX ops, batch 1: losses and element-wise maths TVM's importer lacks or gets wrong.

New converters (TVM 0.27 has none):

- ``NegativeLogLikelihoodLoss`` (12, 13, 22): ``loss[n, d..] = -x[n, t, d..] * w[t]`` with
  ``t = target[n, d..]`` (``w = 1`` without ``weight``), 0 where ``t == ignore_index``;
  ``reduction`` ``none`` (the per-element loss, shaped like ``target``), ``sum`` or ``mean``
  (``sum(loss) / sum(w_eff)``, ``w_eff`` the gathered weights with ignored entries 0: the
  weighted mean, or the mean over the entries not ignored). Inputs of any rank ``>= 2``
  (``[N, C]`` or ``[N, C, d1, .., dk]``). A target outside ``[0, C)`` that is not the
  ``ignore_index`` is undefined in ONNX; here it reads the nearest class (clipped).
- ``SoftmaxCrossEntropyLoss`` (12, 13): the same loss on ``log_softmax(scores, axis=1)``, and
  that ``log_prob`` as the optional second output.
- ``LpNormalization`` (1, 22): ``x / ||x||_p`` along ``axis`` (default -1), ``p`` 1 or 2
  (the only values ONNX defines; another raises ``CompileError``); a zero norm gives 0.
- ``CumProd`` (26): the running product along ``axis`` (a constant), ``exclusive`` (shifted by
  one, starting at 1) and ``reverse`` (from the end).
- ``Swish`` (24): ``x * sigmoid(alpha * x)``, ``alpha`` default 1.
- ``Det`` (11, 22): the determinant of the last two (square) dims, batched over the leading
  ones; LU with partial pivoting, in float64 whatever the input's float type.
- ``BitCast`` (26): the input's bits reinterpreted as ``to`` (same bit width; ``bool`` <->
  8-bit ints by value, 0/1). Strings, and widths that differ, raise ``CompileError``.

Fixes over TVM's converters (the rest is delegated to them):

- ``Cosh`` / ``Sinh``: TVM emits the ``tirx.cosh`` / ``tirx.sinh`` intrinsics, which LLVM
  lowering lacks; here they are computed from ``exp`` in float64 (a Taylor series near 0 for
  ``sinh``, so that small inputs keep their relative precision).
- ``Pow``: mixed base / exponent types (opset 12+) and integer bases. The result has the base's
  type. An integer base with an integer exponent is exact (square and multiply over all the
  exponent's bits, wrapping like numpy; a negative exponent gives the truncated real result:
  1, -1 or 0); any other mix is computed in float64 and cast to the base's type (truncated
  toward zero for an integer base).
- ``IsInf``: honours ``detect_negative`` / ``detect_positive`` (TVM ignores them).
- ``EyeLike``: the ``dtype`` attribute sets the output type (TVM refuses one that differs from
  the input's).
- ``Trilu``: a ``k`` computed at run time is a masking kernel that also handles zero-sized
  inputs (TVM's builds an ``arange`` that fails on them).
- ``Dropout``: the ``mask`` output is ``bool`` (opset 10+; the input's type before), all true
  in inference. Opset 12+ ``training_mode`` that is true (or only known at run time) applies
  real dropout: ``mask = u >= ratio`` with ``u`` uniform in ``[0, 1)`` from a counter-based
  hash of the element index and ``seed`` (0 when the attribute is absent; the draws are not
  those of ONNX Runtime or numpy, as ONNX leaves them unspecified), ``y = mask * x / (1 -
  ratio)``. Before opset 7 ``is_test = 0`` is treated as inference, like ONNX's reference.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx, topi
from tvm.relax.frontend.onnx import onnx_frontend
from tvm.relax.frontend.onnx.onnx_frontend import OnnxOpConverter, get_constant
from tvm.script import tirx as T

from tvmforge.errors import CompileError
from tvmforge.frontend.converters import register

_FLOATS = ("float16", "bfloat16", "float32", "float64")


# ---------------------------------------------------------------------------------------------
# helpers


def _name(attr: dict, op: str) -> str:
    return f"node {attr.get('tvm_custom', {}).get('name') or '?'} ({op})"


def _dtype(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def _rank(expr: relax.Expr) -> int:
    return int(expr.ty.ndim)


def _str_attr(attr: dict, key: str, default: str) -> str:
    value = attr.get(key, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _const_value(expr, params) -> np.ndarray | None:
    """The numpy value of a constant (initializer or folded) input, else ``None``."""
    if expr is None:
        return None
    if params is not None:
        expr = get_constant(expr, params)
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


def _is_tensor(expr) -> bool:
    return isinstance(getattr(expr, "ty", None), relax.TensorType)


def _onnx_dtype(code: int) -> str:
    from onnx import helper

    return str(np.dtype(helper.tensor_dtype_to_np_dtype(code)))


def _bits(dtype: str) -> int | None:
    """The bit width of a dtype (``bool``: 8, its storage), ``None`` when TVM lacks it."""
    if dtype == "bool":
        return 8
    try:
        return int(tvm.DataType(dtype).bits)
    except Exception:
        return None


def _onnx_dtype_name(code: int) -> str:
    from onnx import TensorProto

    return TensorProto.DataType.Name(code)


# ---------------------------------------------------------------------------------------------
# NegativeLogLikelihoodLoss / SoftmaxCrossEntropyLoss


def _nll(bb, attr, op, log_prob, target, weight):
    """The ONNX negative log-likelihood loss of ``log_prob[N, C, d..]`` against
    ``target[N, d..]`` (see the module docstring)."""
    reduction = _str_attr(attr, "reduction", "mean")
    if reduction not in ("none", "sum", "mean"):
        raise CompileError(
            f"{_name(attr, op)}: reduction {reduction!r} is not supported",
            hint="ONNX defines 'none', 'sum' and 'mean'",
        )
    if _rank(log_prob) < 2 or _rank(target) != _rank(log_prob) - 1:
        raise CompileError(
            f"{_name(attr, op)}: input of rank {_rank(log_prob)} with target of rank "
            f"{_rank(target)} is not supported",
            hint="ONNX takes input [N, C, d1..dk] and target [N, d1..dk]",
        )
    ignore = attr.get("ignore_index")
    dtype = _dtype(log_prob)

    def gathered(x, t, *w):
        classes = x.shape[1]
        zero = tirx.const(0, dtype)

        def cls_of(tv):
            tv = tv.astype("int64")
            return tirx.max(tirx.min(tv, classes.astype("int64") - 1), tirx.const(0, "int64"))

        def w_eff(*i):
            tv = t(*i)
            base = w[0](cls_of(tv)).astype(dtype) if w else tirx.const(1, dtype)
            if ignore is None:
                return base
            return tirx.Select(tv == tirx.const(int(ignore), t.dtype), zero, base)

        def loss(*i):
            tv = t(*i)
            value = -x(i[0], cls_of(tv), *i[1:]) * w_eff(*i)
            if ignore is None:
                return value
            return tirx.Select(tv == tirx.const(int(ignore), t.dtype), zero, value)

        return (
            te.compute(t.shape, loss, name="nll_loss"),
            te.compute(t.shape, w_eff, name="nll_weight"),
        )

    args = [log_prob, target] + ([weight] if weight is not None else [])
    pair = bb.emit_te(gathered, *args, primfunc_name_hint="nll_loss")
    loss = bb.emit(relax.TupleGetItem(pair, 0))
    if reduction == "none":
        return loss
    # half-precision losses are summed in float32
    acc = "float32" if dtype in ("float16", "bfloat16") else dtype

    def total(v):
        return relax.op.sum(v if acc == dtype else relax.op.astype(v, acc))

    if reduction == "sum":
        out = total(loss)
    else:
        out = relax.op.divide(total(loss), total(bb.emit(relax.TupleGetItem(pair, 1))))
    return out if acc == dtype else relax.op.astype(out, dtype)


@register("NegativeLogLikelihoodLoss")
class NegativeLogLikelihoodLoss(OnnxOpConverter):
    """ONNX ``NegativeLogLikelihoodLoss``: input ``[N, C, d..]`` of log-probabilities, target
    ``[N, d..]`` of class indices, optional ``weight[C]``; ``reduction`` and
    ``ignore_index`` as in the module docstring."""

    @classmethod
    def _impl_v12(cls, bb, inputs, attr, params):
        weight = inputs[2] if len(inputs) > 2 else None
        return _nll(bb, attr, "NegativeLogLikelihoodLoss", inputs[0], inputs[1], weight)


@register("SoftmaxCrossEntropyLoss")
class SoftmaxCrossEntropyLoss(OnnxOpConverter):
    """ONNX ``SoftmaxCrossEntropyLoss``: ``NegativeLogLikelihoodLoss`` of
    ``log_softmax(scores, axis=1)``; the optional second output is that ``log_prob``."""

    @classmethod
    def _impl_v12(cls, bb, inputs, attr, params):
        scores = inputs[0]
        if _rank(scores) < 2:
            raise CompileError(
                f"{_name(attr, 'SoftmaxCrossEntropyLoss')}: scores of rank {_rank(scores)} "
                "are not supported",
                hint="ONNX takes scores [N, C, d1..dk]",
            )
        log_prob = bb.emit(relax.op.nn.log_softmax(scores, axis=1))
        weight = inputs[2] if len(inputs) > 2 else None
        loss = _nll(bb, attr, "SoftmaxCrossEntropyLoss", log_prob, inputs[1], weight)
        if attr["tvm_custom"]["num_outputs"] > 1:
            return relax.Tuple([bb.normalize(loss), log_prob])
        return loss


# ---------------------------------------------------------------------------------------------
# LpNormalization, CumProd, Swish


@register("LpNormalization")
class LpNormalization(OnnxOpConverter):
    """ONNX ``LpNormalization``: ``x / ||x||_p`` along ``axis``; ``p`` 1 or 2; 0 where the
    norm is 0."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x = inputs[0]
        p = int(attr.get("p", 2))
        axis = int(attr.get("axis", -1))
        if p not in (1, 2):
            raise CompileError(
                f"{_name(attr, 'LpNormalization')}: p={p} is not supported",
                hint="ONNX defines p = 1 or 2",
            )
        dtype = _dtype(x)
        if p == 1:
            norm = relax.op.sum(relax.op.abs(x), axis=[axis], keepdims=True)
        else:
            norm = relax.op.sqrt(relax.op.sum(relax.op.multiply(x, x), axis=[axis], keepdims=True))
        norm = bb.emit(norm)
        zero = relax.const(0, dtype)
        is_zero = relax.op.equal(norm, zero)
        safe = relax.op.where(is_zero, relax.const(1, dtype), norm)
        return relax.op.where(is_zero, zero, relax.op.divide(x, safe))


@register("CumProd")
class CumProd(OnnxOpConverter):
    """ONNX ``CumProd``: running product along the constant ``axis``; ``exclusive`` and
    ``reverse`` as ONNX defines them."""

    @classmethod
    def _impl_v26(cls, bb, inputs, attr, params):
        data = inputs[0]
        axis_value = _const_value(inputs[1], params)
        if axis_value is None or axis_value.size != 1:
            raise CompileError(
                f"{_name(attr, 'CumProd')}: an axis that is not one constant value is not "
                "supported",
                hint="freeze the axis input to a constant",
            )
        axis = int(axis_value.reshape(()))
        axis = axis + _rank(data) if axis < 0 else axis
        reverse = int(attr.get("reverse", 0)) != 0
        exclusive = int(attr.get("exclusive", 0)) != 0
        if reverse:
            data = bb.emit_te(topi.flip, data, axis=axis)
        out = bb.emit(relax.op.cumprod(data, axis, exclusive=exclusive))
        if reverse:
            out = bb.emit_te(topi.flip, out, axis=axis)
        return out


@register("Swish")
class Swish(OnnxOpConverter):
    """ONNX ``Swish``: ``x * sigmoid(alpha * x)``."""

    @classmethod
    def _impl_v24(cls, bb, inputs, attr, params):
        x = inputs[0]
        alpha = float(attr.get("alpha", 1.0))
        scaled = x if alpha == 1.0 else relax.op.multiply(x, relax.const(alpha, _dtype(x)))
        return relax.op.multiply(x, relax.op.sigmoid(scaled))


# ---------------------------------------------------------------------------------------------
# Det


def _det_kernel(dtype: str):
    """A PrimFunc ``D[b] = det(A[b])`` for ``A[b, n, n]``: Gaussian elimination with partial
    pivoting, in float64, one matrix after another."""

    @T.prim_func(private=True, s_tir=True)
    def det(a_handle: T.handle, out_handle: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        b = T.int64()
        n = T.int64()
        A = T.match_buffer(a_handle, (b, n, n), dtype)
        D = T.match_buffer(out_handle, (b,), dtype)
        with T.sblock("root"):
            M = T.alloc_buffer((n, n), "float64")
            for bi in T.serial(b):
                for i, j in T.grid(n, n):
                    M[i, j] = T.Cast("float64", A[bi, i, j])
                acc: T.float64 = T.float64(1)
                for k in T.serial(n):
                    piv: T.int64 = k
                    for i in T.serial(k + 1, n):
                        if T.fabs(M[i, k]) > T.fabs(M[piv, k]):
                            piv = i
                    if piv != k:
                        for j in T.serial(k, n):
                            t: T.float64 = M[k, j]
                            M[k, j] = M[piv, j]
                            M[piv, j] = t
                        acc = -acc
                    acc = acc * M[k, k]
                    if M[k, k] != T.float64(0):
                        for i in T.serial(k + 1, n):
                            f: T.float64 = M[i, k] / M[k, k]
                            for j in T.serial(k + 1, n):
                                M[i, j] = M[i, j] - f * M[k, j]
                D[bi] = T.Cast(dtype, acc)

    return det


@register("Det")
class Det(OnnxOpConverter):
    """ONNX ``Det``: determinant of ``x[..., M, M]``, shaped ``x.shape[:-2]``."""

    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        x = inputs[0]
        dtype = _dtype(x)
        shape = list(x.ty.shape.values) if isinstance(x.ty.shape, relax.ShapeExpr) else None
        if shape is None or len(shape) < 2:
            raise CompileError(
                f"{_name(attr, 'Det')}: an input of unknown shape or rank < 2 is not supported",
                hint="Det takes [..., M, M]",
            )
        if dtype not in _FLOATS:
            raise CompileError(
                f"{_name(attr, 'Det')}: input type {dtype} is not supported",
                hint="ONNX defines Det for float types",
            )
        lead = shape[:-2]
        batch = 1
        for d in lead:
            batch = batch * d
        flat = bb.emit(relax.op.reshape(x, [batch, shape[-2], shape[-1]]))
        gv = bb.add_func(_det_kernel(dtype), "det")
        out = bb.emit(relax.call_tir(gv, [flat], relax.TensorType([batch], dtype)))
        return relax.op.reshape(out, lead)


# ---------------------------------------------------------------------------------------------
# BitCast


@register("BitCast")
class BitCast(OnnxOpConverter):
    """ONNX ``BitCast``: the same bits read as type ``to`` (equal bit widths only)."""

    @classmethod
    def _impl_v26(cls, bb, inputs, attr, params):
        x = inputs[0]
        src = _dtype(x)
        code = int(attr["to"])
        from onnx import TensorProto

        if code == TensorProto.STRING or src == "string":
            raise CompileError(
                f"{_name(attr, 'BitCast')}: string tensors are not supported",
                hint="BitCast is defined between numeric types",
            )
        try:
            dst = _onnx_dtype(code)
        except Exception:
            dst = None
        if dst is None or dst == "object":
            raise CompileError(
                f"{_name(attr, 'BitCast')}: target type {_onnx_dtype_name(code)} is not supported",
                hint="cast through a supported numeric type",
            )
        if dst == src:
            return x
        bits = {d: _bits(d) for d in (src, dst)}
        if None in bits.values():
            raise CompileError(
                f"{_name(attr, 'BitCast')}: {src} to {dst} is not supported",
                hint="BitCast is supported between TVM's numeric types",
            )
        if bits[src] != bits[dst]:
            raise CompileError(
                f"{_name(attr, 'BitCast')}: {src} ({bits[src]} bits) to {dst} ({bits[dst]} "
                "bits) is not supported",
                hint="BitCast needs types of the same bit width",
            )
        if "bool" in (src, dst):  # bool is one byte holding 0 or 1: the same bits by value
            if dst == "bool":
                return relax.op.not_equal(x, relax.const(0, src))
            return relax.op.astype(x, dst)
        return bb.emit_te(
            lambda t: te.compute(t.shape, lambda *i: tirx.reinterpret(dst, t(*i)), "bitcast"),
            x,
            primfunc_name_hint="bitcast",
        )


# ---------------------------------------------------------------------------------------------
# Cosh, Sinh


def _wide(x: relax.Expr) -> tuple[relax.Expr, str]:
    dtype = _dtype(x)
    if dtype == "float64":
        return x, dtype
    return relax.op.astype(x, "float64"), dtype


@register("Cosh")
class Cosh(onnx_frontend.Cosh):
    """ONNX ``Cosh``: ``(exp(x) + exp(-x)) / 2``, in float64."""

    @classmethod
    def _impl_v9(cls, bb, inputs, attr, params):
        x, dtype = _wide(inputs[0])
        half = relax.const(0.5, "float64")
        y = relax.op.multiply(
            half, relax.op.add(relax.op.exp(x), relax.op.exp(relax.op.negative(x)))
        )
        return y if dtype == "float64" else relax.op.astype(y, dtype)


@register("Sinh")
class Sinh(onnx_frontend.Sinh):
    """ONNX ``Sinh``: ``(exp(x) - exp(-x)) / 2`` in float64; ``x + x³/6 + x⁵/120 + x⁷/5040``
    for ``|x| < 1e-2``, where the difference would lose relative precision."""

    @classmethod
    def _impl_v9(cls, bb, inputs, attr, params):
        x, dtype = _wide(inputs[0])
        x = bb.emit(x) if dtype != "float64" else x

        def c(v):
            return relax.const(v, "float64")

        far = relax.op.multiply(
            c(0.5), relax.op.subtract(relax.op.exp(x), relax.op.exp(relax.op.negative(x)))
        )
        x2 = relax.op.multiply(x, x)
        # x * (1 + x2/6 * (1 + x2/20 * (1 + x2/42)))
        poly = relax.op.add(c(1.0), relax.op.multiply(x2, c(1.0 / 42.0)))
        poly = relax.op.add(c(1.0), relax.op.multiply(relax.op.multiply(x2, c(1.0 / 20.0)), poly))
        poly = relax.op.add(c(1.0), relax.op.multiply(relax.op.multiply(x2, c(1.0 / 6.0)), poly))
        near = relax.op.multiply(x, poly)
        y = relax.op.where(relax.op.less(relax.op.abs(x), c(1e-2)), near, far)
        return y if dtype == "float64" else relax.op.astype(y, dtype)


# ---------------------------------------------------------------------------------------------
# Pow


def _broadcast_shape(a_shape, b_shape) -> list:
    """The numpy broadcast of two shapes (ints or TIR expressions; a symbolic dim against 1 is
    the symbolic dim, two symbolic dims are taken as equal)."""
    rank = max(len(a_shape), len(b_shape))
    a = [None] * (rank - len(a_shape)) + list(a_shape)
    b = [None] * (rank - len(b_shape)) + list(b_shape)
    out = []
    for x, y in zip(a, b, strict=True):
        if x is None:
            out.append(y)
        elif y is None or (isinstance(y, tirx.IntImm) and int(y) == 1):
            out.append(x)
        else:
            out.append(y)
    return out


def _int_pow_kernel(base_dtype: str, exp_dtype: str):
    """A PrimFunc ``out[i] = base[i] ** exp[i]`` over flat integer buffers: exact and wrapping
    (square and multiply over the exponent's bits); a negative exponent gives the truncated
    real power (1 for base 1, ±1 for base -1, else 0)."""
    bits = tvm.DataType(exp_dtype).bits
    signed_exp = exp_dtype.startswith("int")
    b, e = f"T.{base_dtype}", f"T.{exp_dtype}"
    lines = [
        "@T.prim_func(private=True, s_tir=True)",
        "def main(a_handle: T.handle, e_handle: T.handle, o_handle: T.handle):",
        '    T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})',
        "    n = T.int64()",
        f'    A = T.match_buffer(a_handle, (n,), "{base_dtype}")',
        f'    E = T.match_buffer(e_handle, (n,), "{exp_dtype}")',
        f'    O = T.match_buffer(o_handle, (n,), "{base_dtype}")',
        '    with T.sblock("root"):',
        "        for i in T.serial(n):",
        f"            r: {b} = {b}(1)",
        f"            x: {b} = A[i]",
        f"            for k in T.serial({bits - (1 if signed_exp else 0)}):",
        f"                if T.bitwise_and(T.shift_right(E[i], {e}(k)), {e}(1)) != {e}(0):",
        "                    r = r * x",
        "                x = x * x",
    ]
    if signed_exp:
        if base_dtype.startswith("int"):
            neg = (
                f"T.if_then_else(A[i] == {b}(-1), T.if_then_else(T.bitwise_and(E[i], "
                f"{e}(1)) != {e}(0), {b}(-1), {b}(1)), {b}(0))"
            )
        else:
            neg = f"{b}(0)"
        lines += [
            f"            if E[i] < {e}(0):",
            f"                r = T.if_then_else(A[i] == {b}(1), {b}(1), {neg})",
        ]
    lines.append("            O[i] = r")
    return tvm.script.from_source("\n".join(lines))


@register("Pow")
class Pow(onnx_frontend.Pow):
    """ONNX ``Pow``: result of the base's type; mixed and integer types as in the module
    docstring, same-type floats as TVM converts them."""

    @classmethod
    def _impl_v7(cls, bb, inputs, attr, params):
        base, exp = inputs[0], inputs[1]
        if not (_is_tensor(base) and _is_tensor(exp)):
            return super()._impl_v7(bb, inputs, attr, params)
        bt, et = _dtype(base), _dtype(exp)
        if bt == et and bt in _FLOATS:
            return super()._impl_v7(bb, inputs, attr, params)
        b_val, e_val = _const_value(base, None), _const_value(exp, None)
        if (
            b_val is not None
            and e_val is not None
            and not (b_val.dtype.kind in "iu" and e_val.dtype.kind in "iu")
        ):
            with np.errstate(all="ignore"):
                folded = np.power(b_val.astype(np.float64), e_val.astype(np.float64))
                return relax.const(folded.astype(bt), bt)
        if bt not in _FLOATS and et not in _FLOATS:
            base, exp = bb.normalize(base), bb.normalize(exp)
            shape = _broadcast_shape(base.ty.shape.values, exp.ty.shape.values)
            size = 1
            for d in shape:
                size = size * d
            flat = [
                bb.emit(relax.op.reshape(relax.op.broadcast_to(v, shape), [size]))
                for v in (base, exp)
            ]
            gv = bb.add_func(_int_pow_kernel(bt, et), "int_pow")
            out = bb.emit(relax.call_tir(gv, flat, relax.TensorType([size], bt)))
            return relax.op.reshape(out, shape)
        wide = relax.op.power(relax.op.astype(base, "float64"), relax.op.astype(exp, "float64"))
        return relax.op.astype(wide, bt)

    _impl_v12 = _impl_v7
    _impl_v13 = _impl_v7
    _impl_v15 = _impl_v7


# ---------------------------------------------------------------------------------------------
# IsInf, EyeLike, Trilu


@register("IsInf")
class IsInf(onnx_frontend.IsInf):
    """ONNX ``IsInf``: true at +inf when ``detect_positive`` (default 1), at -inf when
    ``detect_negative`` (default 1)."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        x = inputs[0]
        pos = int(attr.get("detect_positive", 1)) != 0
        neg = int(attr.get("detect_negative", 1)) != 0
        inf = relax.op.isinf(x)
        if pos and neg:
            return inf
        if not pos and not neg:
            return relax.op.zeros_like(x, "bool")
        zero = relax.const(0, _dtype(x))
        side = relax.op.greater(x, zero) if pos else relax.op.less(x, zero)
        return relax.op.logical_and(inf, side)


@register("EyeLike")
class EyeLike(onnx_frontend.EyeLike):
    """ONNX ``EyeLike``: ones on diagonal ``k`` of a 2-D tensor shaped like the input, of type
    ``dtype`` (default: the input's)."""

    @classmethod
    def _impl_v9(cls, bb, inputs, attr, params):
        x = inputs[0]
        dtype = _onnx_dtype(int(attr["dtype"])) if "dtype" in attr else _dtype(x)
        if _rank(x) != 2:
            raise CompileError(
                f"{_name(attr, 'EyeLike')}: an input of rank {_rank(x)} is not supported",
                hint="EyeLike takes a 2-D tensor",
            )
        rows, cols = x.ty.shape.values
        # not eye_like: its legalization drops ``dtype`` and uses the input's
        return relax.op.eye(rows, cols, int(attr.get("k", 0)), dtype)


@register("Trilu")
class Trilu(onnx_frontend.Trilu):
    """ONNX ``Trilu``: the upper (``upper=1``, default) or lower triangle of the last two dims
    from diagonal ``k``; a run-time ``k`` is a masking kernel."""

    @classmethod
    def _impl_v14(cls, bb, inputs, attr, params):
        k = inputs[1] if len(inputs) > 1 else None
        k = k if k is None else get_constant(k, params)
        if k is None or isinstance(k, tvm.ir.GenericConst) or not _is_tensor(k):
            return super()._impl_v14(bb, inputs, attr, params)
        upper = int(attr.get("upper", 1)) != 0

        def mask(t, kk):
            def f(*i):
                diff = i[-1].astype("int64") - i[-2].astype("int64")
                kv = kk().astype("int64") if len(kk.shape) == 0 else kk(0).astype("int64")
                keep = diff >= kv if upper else diff <= kv
                return tirx.Select(keep, t(*i), tirx.const(0, t.dtype))

            return te.compute(t.shape, f, name="trilu")

        return bb.emit_te(mask, inputs[0], k, primfunc_name_hint="trilu")


# ---------------------------------------------------------------------------------------------
# Dropout


def _uniform(index: tirx.PrimExpr, seed: int) -> tirx.PrimExpr:
    """A float32 in ``[0, 1)`` from a 32-bit integer hash of ``index`` and ``seed``."""

    def u32(v):
        return tirx.const(v, "uint32")

    h = index.astype("uint32") * u32(0x9E3779B9) + u32(seed & 0xFFFFFFFF)
    for mult in (0x7FEB352D, 0x846CA68B):
        h = tirx.bitwise_xor(h, tirx.shift_right(h, u32(16))) * u32(mult)
    h = tirx.bitwise_xor(h, tirx.shift_right(h, u32(16)))
    return tirx.shift_right(h, u32(8)).astype("float32") * tirx.const(1.0 / (1 << 24), "float32")


def _training_dropout(bb, x, ratio, training, seed: int, with_mask: bool):
    dtype = _dtype(x)

    def kernel(t, r, m):
        def flat(i):
            idx = tirx.const(0, "int64")
            for k, d in enumerate(t.shape):
                idx = idx * d.astype("int64") + i[k].astype("int64")
            return idx

        def keep(*i):
            on = m() if len(m.shape) == 0 else m(0)
            rv = (r() if len(r.shape) == 0 else r(0)).astype("float32")
            return tirx.Or(tirx.Not(on), _uniform(flat(i), seed) >= rv)

        mask = te.compute(t.shape, keep, name="dropout_mask")

        def out(*i):
            on = m() if len(m.shape) == 0 else m(0)
            rv = (r() if len(r.shape) == 0 else r(0)).astype("float64")
            scale = tirx.Select(on, 1.0 / (1.0 - rv), tirx.const(1.0, "float64"))
            value = (t(*i).astype("float64") * scale).astype(dtype)
            return tirx.Select(mask(*i), value, tirx.const(0, dtype))

        y = te.compute(t.shape, out, name="dropout")
        return (y, mask) if with_mask else y

    out = bb.emit_te(kernel, x, ratio, training, primfunc_name_hint="dropout")
    if with_mask:
        return relax.Tuple(
            [bb.emit(relax.TupleGetItem(out, 0)), bb.emit(relax.TupleGetItem(out, 1))]
        )
    return out


@register("Dropout")
class Dropout(onnx_frontend.Dropout):
    """ONNX ``Dropout`` (see the module docstring): identity with an all-true mask in
    inference, real dropout when ``training_mode`` is true or known only at run time."""

    @classmethod
    def _inference(cls, x, attr, mask_dtype):
        if attr["tvm_custom"]["num_outputs"] < 2:
            return x
        ones = relax.op.ones_like(x, mask_dtype)
        return relax.Tuple([x, ones])

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        return cls._inference(inputs[0], attr, _dtype(inputs[0]))

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        return cls._inference(inputs[0], attr, "bool")

    @classmethod
    def _impl_v12(cls, bb, inputs, attr, params):
        x = inputs[0]
        ratio = inputs[1] if len(inputs) > 1 else None
        training = inputs[2] if len(inputs) > 2 else None
        if training is None:
            return cls._inference(x, attr, "bool")
        flag = _const_value(training, params)
        if flag is not None and not bool(flag.reshape(-1)[0]):
            return cls._inference(x, attr, "bool")
        if ratio is None:
            ratio = relax.const(0.5, "float32")
        else:
            ratio = get_constant(ratio, params)
        if flag is not None:
            training = relax.const(True, "bool")
        with_mask = attr["tvm_custom"]["num_outputs"] > 1
        return _training_dropout(bb, x, ratio, training, int(attr.get("seed", 0)), with_mask)
