"""Converters for ONNX's quantized operators (QOperator format) that TVM 0.27's importer lacks.

ONNX: ``QLinearConv``, ``QLinearMatMul``, ``ConvInteger``. ONNX Runtime contrib ops (domain
``com.microsoft``), as ``onnxruntime.quantization.quantize_static(..., QuantFormat.QOperator)``
emits them: ``QLinearAdd``, ``QLinearMul``, ``QLinearGlobalAveragePool``, ``QLinearAveragePool``,
``QLinearConcat``, ``QLinearSigmoid``, ``QLinearLeakyRelu``, ``QLinearSoftmax``, ``QGemm``. Also
an override of the stock ``DynamicQuantizeLinear`` (see below).

Notation: ``q = saturate(round_half_to_even(v / scale) + zp)`` quantizes a real ``v`` to the
8-bit type of ``zp``; ``real(q) = scale * (q - zp)``.

Lowerings, and how close each is to ONNX Runtime's CPU kernels:

- **Integer, exact.** ``ConvInteger``: ``conv((x - x_zp), (w - w_zp))`` in int32.
  ``QLinearConv`` / ``QLinearMatMul`` / ``QGemm`` / ``QLinearMul`` / ``QLinearGlobalAveragePool``
  accumulate exactly in int32 (``(x - x_zp) * (w - w_zp)`` plus the int32 bias, whose scale is
  ``x_scale * w_scale``) and then requantize once, the way MLAS does::

      y = saturate(round_half_to_even(float32(acc) * M) + y_zp)
      M = x_scale * w_scale / y_scale              (float32, that order; per output channel)

  ``M`` is ``alpha * a_scale * b_scale [/ y_scale]`` for QGemm (whose output is float32
  ``float32(acc) * M`` when ``y_scale`` is absent), ``a_scale * b_scale / c_scale`` for
  QLinearMul (acc = ``(a - a_zp) * (b - b_zp)``), and ``x_scale / (y_scale * H*W)`` for
  QLinearGlobalAveragePool (acc = ``sum(x) - x_zp * H*W``). These match ORT bit for bit.
- **Lookup table, exact up to f.** ``QLinearConcat``, ``QLinearSigmoid``, ``QLinearLeakyRelu``
  map each of the 256 codes through ``quantize(f(real(code)))``; like ORT we build that table
  (in numpy at import when the parameters are initializers, else in the graph) and gather
  from it. Identity and LeakyRelu match ORT exactly; Sigmoid can differ by one unit where
  MLAS's approximate logistic and a float32 ``exp`` land on opposite sides of a rounding tie.
- **Float emulation.** ``QLinearAdd``: ``round((a - a_zp) * (a_scale / c_scale) +
  (b - b_zp) * (b_scale / c_scale)) + c_zp`` (ORT fuses the same terms with FMAs, so x.5 ties
  may land one unit apart). ``QLinearAveragePool``: dequantize, float average pool, quantize
  (ORT does the same; the summation order differs).

Scales and zero points of activations are per tensor; weights (``w`` of QLinearConv /
ConvInteger, ``b`` of QLinearMatMul / QGemm) may be per output channel (a 1-D tensor; ORT
itself refuses a per-channel ConvInteger zero point, we follow the spec). Activations and
weights may each be uint8 or int8. Padding is applied to ``x - x_zp``, so padded positions
are real zeros, as the spec requires. The arithmetic is int32 throughout (no int8 dot-product
instructions yet): correct everywhere, not yet fast.

**Integer kernels** (``as_qdq()``): when the build gives a QOperator model tvmforge's int8
kernels (a target with int8 dot products, see ``driver/calibration.resolve_precision``),
``QLinearConv``, ``QLinearMatMul`` and ``QGemm`` (a constant ``b``) and ``QLinearAdd`` with
constant per-tensor activation parameters are written in the QDQ form instead: ``dequantize`` their
inputs, the float op (the weight's ``dequantize`` folds to a constant, an int32 bias becomes
``bias * x_scale * w_scale``), ``quantize`` the output. ``quantize_int8`` then takes each as a
QDQ model's layer (the same integers, the multiplier ``x_scale * w_scale / y_scale`` in
float32; outputs agree with the exact lowering but where a product lands on a rounding tie).
Other QOperator ops keep their exact lowerings; their integer outputs feed the next layer
through its ``dequantize``, whose parameters the int8 kernels read.

The stock ``DynamicQuantizeLinear`` divides by a zero scale when the input is all zeros (every
output 255, scale 0); ORT (and the sensible reading of the spec) uses scale 1 there. Overridden.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import numpy as np
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.frontend.converters import register

_Converter = onnx_frontend.OnnxOpConverter
_INT8_TYPES = ("uint8", "int8")
_AS_QDQ: contextvars.ContextVar[bool] = contextvars.ContextVar("tvmforge_as_qdq", default=False)


@contextlib.contextmanager
def as_qdq(enabled: bool = True) -> Iterator[None]:
    """Inside the block, QLinearConv / QLinearMatMul / QLinearAdd are written in the QDQ form
    (see the module docstring), for ``quantize_int8``'s integer kernels."""
    token = _AS_QDQ.set(enabled)
    try:
        yield
    finally:
        _AS_QDQ.reset(token)


def _qdq_ready(*per_tensor: relax.Expr | None) -> bool:
    """Whether the QDQ form applies: enabled, and these parameters constant and per tensor."""
    if not _AS_QDQ.get():
        return False
    for p in per_tensor:
        if p is None:
            continue
        v = _value(p)
        if v is None or v.size != 1:
            return False
    return True


def _dq_axis(q: relax.Expr, scale: relax.Expr, zp: relax.Expr | None, axis: int) -> relax.Expr:
    """DequantizeLinear with a per-tensor or per-``axis`` scale (and zero point)."""
    if zp is None:
        zp = relax.const(np.zeros(_value(scale).shape, _dtype(q)), _dtype(q))
    return relax.op.dequantize(q, _float32(scale), zp, axis=axis, out_dtype="float32")

# Quantization parameters are nearly always initializers. Arithmetic on them is done here in
# numpy (IEEE float32, the same results TVM's kernels give) instead of leaving dozens of tiny
# ops for FoldConstant, which compiles a kernel for each (20 s on a quantized SqueezeNet).


def _value(expr: relax.Expr | None) -> np.ndarray | None:
    """The value of a constant (an initializer), else ``None``."""
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


def _dtype(expr: relax.Expr) -> str:
    return str(expr.ty.dtype.dtype)


def _qrange(dtype: str) -> tuple[int, int]:
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def _cast(expr: relax.Expr, dtype: str) -> relax.Expr:
    value = _value(expr)
    if value is not None:
        return relax.const(value.astype(dtype), dtype)
    return relax.op.astype(expr, dtype)


def _binary(op: str, x: relax.Expr, y: relax.Expr) -> relax.Expr:
    """``op`` (``add``, ``subtract``, ``multiply``, ``divide``), computed now on constants."""
    xv, yv = _value(x), _value(y)
    if xv is not None and yv is not None:
        result = np.asarray(getattr(np, op)(xv, yv))
        return relax.const(result, str(result.dtype))
    return getattr(relax.op, op)(x, y)


def _float32(expr: relax.Expr) -> relax.Expr:
    return _cast(expr, "float32")


def _emit(bb: relax.BlockBuilder, expr: relax.Expr) -> relax.Expr:
    return expr if isinstance(expr, tvm.ir.GenericConst) else bb.emit(expr)


def _per_axis(bb: relax.BlockBuilder, param: relax.Expr, ndim: int, axis: int) -> relax.Expr:
    """A scalar or 1-D quantization parameter shaped to broadcast along ``axis`` of an
    ``ndim``-D tensor (a scalar stays a scalar)."""
    shape: list[int] = [1] * ndim
    if ndim:
        shape[axis] = -1
    value = _value(param)
    if value is not None:
        return param if value.ndim == 0 else relax.const(value.reshape(shape), str(value.dtype))
    param = bb.normalize(param)
    return param if param.ty.ndim == 0 else relax.op.reshape(param, shape)


def _shifted(bb: relax.BlockBuilder, q: relax.Expr, zp: relax.Expr | None, axis: int = 0):
    """``q - zp`` in int32 (exact); a 1-D ``zp`` is per ``axis``."""
    q32 = _cast(q, "int32")
    if zp is None:
        return _emit(bb, q32)
    zp32 = _per_axis(bb, _cast(zp, "int32"), q.ty.ndim, axis)
    return _emit(bb, _binary("subtract", q32, zp32))


def _out_dtype(zp: relax.Expr | None, default: str) -> str:
    return _dtype(zp) if zp is not None else default


def _scale_ratio(numerator: list[relax.Expr], denominator: relax.Expr | None) -> relax.Expr:
    """``(n0 * n1 * ...) / d`` in float32, multiplied left to right as ORT does."""
    result = _float32(numerator[0])
    for factor in numerator[1:]:
        result = _binary("multiply", result, _float32(factor))
    if denominator is not None:
        result = _binary("divide", result, _float32(denominator))
    return result


def _requantize(
    acc: relax.Expr, multiplier: relax.Expr, zp: relax.Expr | None, out_dtype: str
) -> relax.Expr:
    """``saturate(round_half_to_even(float32(acc) * multiplier) + zp)`` as ``out_dtype``."""
    lo, hi = _qrange(out_dtype)
    value = relax.op.round(relax.op.multiply(relax.op.astype(acc, "float32"), multiplier))
    if zp is not None:
        value = relax.op.add(value, _float32(zp))
    return relax.op.astype(relax.op.clip(value, lo, hi), out_dtype)


def _quantize(value: relax.Expr, scale: relax.Expr, zp: relax.Expr | None, out_dtype: str):
    """Per-tensor QuantizeLinear of a float32 tensor (divides by the scale, like MLAS)."""
    if zp is None:
        zp = relax.const(0, out_dtype)
    return relax.op.quantize(value, _float32(scale), zp, axis=-1, out_dtype=out_dtype)


def _dequantize(q: relax.Expr, scale: relax.Expr, zp: relax.Expr | None) -> relax.Expr:
    """Per-tensor DequantizeLinear: ``scale * (q - zp)`` in float32."""
    if zp is None:
        zp = relax.const(0, _dtype(q))
    return relax.op.dequantize(q, _float32(scale), zp, axis=-1, out_dtype="float32")


def _conv_int32(bb: relax.BlockBuilder, x: relax.Expr, w: relax.Expr, attr: dict, params):
    """Convolution of two int32 tensors (int32 result), with ONNX Conv's attributes.

    TVM's own Conv converter does the attribute work (1-D/2-D/3-D, group, strides, pads,
    dilations, auto_pad); padding inserts int32 zeros, i.e. real zeros of the shifted input.
    """
    conv_attr = {k: v for k, v in attr.items() if k != "tvm_custom"}
    return bb.normalize(onnx_frontend.Conv._impl_v11(bb, [x, w, None], conv_attr, params))


def _scalar(expr: relax.Expr | None, default: float, op: str) -> float | None:
    """A per-tensor constant parameter's value (``default`` when absent), else ``None``."""
    if expr is None:
        return default
    value = _value(expr)
    if value is None:
        return None
    if value.size != 1:
        raise ValueError(
            f"{op}: scales and zero points must be per tensor, got shape {value.shape}"
        )
    return value.reshape(()).item()


def _lookup(
    bb: relax.BlockBuilder,
    x: relax.Expr,
    params: tuple[relax.Expr, relax.Expr | None, relax.Expr, relax.Expr | None],
    fn: tuple[Callable[[np.ndarray], np.ndarray], Callable[[relax.Expr], relax.Expr]],
    op: str,
) -> relax.Expr:
    """``y = quantize(f(real(x)))`` through a 256-entry table, as ORT computes it.

    ``params`` is ``(x_scale, x_zero_point, y_scale, y_zero_point)``; ``fn`` is ``f`` in numpy
    (used when the parameters are constants) and in Relax.
    """
    x_scale, x_zp, y_scale, y_zp = params
    dtype = _dtype(x)
    if dtype not in _INT8_TYPES:
        raise ValueError(f"{op}: input must be uint8 or int8, got {dtype}")
    out_dtype = _out_dtype(y_zp, dtype)
    lo, hi = _qrange(dtype)
    codes = np.arange(lo, hi + 1)
    consts = [_scalar(p, 0, op) for p in params]
    if all(c is not None for c in consts):
        xs, xz, ys, yz = consts
        real = np.float32(xs) * (codes - int(xz)).astype(np.float32)
        mapped = np.asarray(fn[0](real), dtype=np.float32)
        out_lo, out_hi = _qrange(out_dtype)
        quantized = np.clip(np.round(mapped / np.float32(ys)) + int(yz), out_lo, out_hi)
        table = relax.const(quantized.astype(out_dtype), out_dtype)
    else:
        real = _dequantize(relax.const(codes.astype(dtype), dtype), x_scale, x_zp)
        table = bb.emit(_quantize(fn[1](real), y_scale, y_zp, out_dtype))
    index = relax.op.astype(x, "int32")
    if lo:
        index = relax.op.subtract(index, relax.const(lo, "int32"))
    return relax.op.take(table, index, axis=0, mode="clip")


@register("ConvInteger")
class ConvInteger(_Converter):
    """``y = conv(x - x_zero_point, w - w_zero_point)`` in int32; exact."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        x, w, x_zp, w_zp = inputs[0], inputs[1], inputs[2], inputs[3]
        return _conv_int32(bb, _shifted(bb, x, x_zp), _shifted(bb, w, w_zp, 0), attr, params)


@register("QLinearConv")
class QLinearConv(_Converter):
    """Exact int32 convolution plus int32 bias, then one requantization (see module doc)."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias = (inputs[i] for i in range(9))
        if (_qdq_ready(x_scale, x_zp, y_scale, y_zp) and _value(w) is not None
                and _value(w_scale) is not None and (w_zp is None or _value(w_zp) is not None)
                and (bias is None or _value(bias) is not None)):
            xf = bb.normalize(_dequantize(x, x_scale, x_zp))
            wf = bb.normalize(_dq_axis(w, w_scale, w_zp, 0))
            conv_attr = {k: v for k, v in attr.items() if k != "tvm_custom"}
            y = bb.normalize(onnx_frontend.Conv._impl_v11(bb, [xf, wf, None], conv_attr, params))
            if bias is not None:
                b = (_value(bias).astype(np.float64) * np.float32(_value(x_scale).item())
                     * _value(w_scale).astype(np.float32)).astype(np.float32)
                shape = [1] * y.ty.ndim
                shape[1] = -1
                y = relax.op.add(y, relax.const(b.reshape(shape), "float32"))
            return _quantize(y, y_scale, y_zp, _out_dtype(y_zp, _dtype(x)))
        acc = _conv_int32(bb, _shifted(bb, x, x_zp), _shifted(bb, w, w_zp, 0), attr, params)
        ndim = acc.ty.ndim
        if bias is not None:
            acc = relax.op.add(acc, _per_axis(bb, _cast(bias, "int32"), ndim, 1))
        multiplier = _per_axis(bb, _scale_ratio([x_scale, w_scale], y_scale), ndim, 1)
        return _requantize(acc, multiplier, y_zp, _out_dtype(y_zp, _dtype(x)))


@register("QLinearMatMul")
class QLinearMatMul(_Converter):
    """Exact int32 ``(a - a_zp) @ (b - b_zp)``, then one requantization.

    ``a``'s scale and zero point may be per row (``[M]``), ``b``'s per column (``[N]``).
    """

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp = (inputs[i] for i in range(8))
        if (_qdq_ready(a_scale, a_zp, y_scale, y_zp) and _value(b) is not None
                and _value(b).ndim == 2 and _value(b_scale) is not None
                and (b_zp is None or _value(b_zp) is not None)):
            af = _dequantize(a, a_scale, a_zp)
            bf = _dq_axis(b, b_scale, b_zp, 1)
            y = relax.op.matmul(bb.normalize(af), bb.normalize(bf))
            return _quantize(y, y_scale, y_zp, _out_dtype(y_zp, _dtype(a)))
        rows = max(a.ty.ndim - 2, 0)  # the axis of M in a
        a_shifted = _shifted(bb, a, a_zp, rows)
        b_shifted = _shifted(bb, b, b_zp, b.ty.ndim - 1)
        acc = relax.op.matmul(a_shifted, b_shifted, out_dtype="int32")
        a_scale = _per_axis(bb, a_scale, 2, 0) if a.ty.ndim >= 2 else a_scale  # [M] -> [M, 1]
        multiplier = _scale_ratio([a_scale, b_scale], y_scale)
        return _requantize(acc, multiplier, y_zp, _out_dtype(y_zp, _dtype(a)))


@register("QGemm")
class QGemm(_Converter):
    """com.microsoft QGemm: ``acc = C + (A' - a_zp) @ (B' - b_zp)`` in int32, then
    ``float32(acc) * alpha*a_scale*b_scale`` (float output, no ``y_scale``) or requantized
    to ``y_scale``/``y_zero_point``. ``C`` is int32 with scale ``alpha*a_scale*b_scale``."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        a, a_scale, a_zp, b, b_scale, b_zp, c, y_scale, y_zp = (inputs[i] for i in range(9))
        trans_b = bool(attr.get("transB", 0))
        if (_qdq_ready(a_scale, a_zp, y_scale, y_zp) and not attr.get("transA", 0)
                and _value(b) is not None and _value(b).ndim == 2
                and _value(b_scale) is not None and (b_zp is None or _value(b_zp) is not None)
                and (c is None or _value(c) is not None)):
            bf = _dq_axis(b, b_scale, b_zp, 0 if trans_b else 1)
            if trans_b:
                bf = relax.op.permute_dims(bb.normalize(bf))
            y = relax.op.matmul(bb.normalize(_dequantize(a, a_scale, a_zp)), bb.normalize(bf))
            alpha = np.float32(attr.get("alpha", 1.0))
            if alpha != 1:
                y = relax.op.multiply(y, relax.const(alpha, "float32"))
            if c is not None:  # int32, at scale alpha * a_scale * b_scale
                scale = alpha * np.float32(_value(a_scale).item()) * _value(b_scale).astype(
                    np.float32)
                y = relax.op.add(y, relax.const((_value(c) * scale).astype(np.float32)))
            if y_scale is None:
                return y
            return _quantize(bb.normalize(y), y_scale, y_zp, _out_dtype(y_zp, _dtype(a)))
        a_shifted = _shifted(bb, a, a_zp)
        b_shifted = _shifted(bb, b, b_zp, 0 if attr.get("transB", 0) else 1)
        if attr.get("transA", 0):
            a_shifted = relax.op.permute_dims(a_shifted)
        if attr.get("transB", 0):
            b_shifted = relax.op.permute_dims(b_shifted)
        acc = relax.op.matmul(a_shifted, b_shifted, out_dtype="int32")
        if c is not None:
            acc = relax.op.add(acc, _cast(c, "int32"))
        alpha = relax.const(float(attr.get("alpha", 1.0)), "float32")
        multiplier = _scale_ratio([alpha, a_scale, b_scale], y_scale)
        if y_scale is None:
            return relax.op.multiply(relax.op.astype(acc, "float32"), multiplier)
        return _requantize(acc, multiplier, y_zp, _out_dtype(y_zp, _dtype(a)))


@register("QLinearMul")
class QLinearMul(_Converter):
    """``c = requantize((a - a_zp) * (b - b_zp), a_scale * b_scale / c_scale)``; exact
    integer product, like MLAS."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        a, a_scale, a_zp, b, b_scale, b_zp, c_scale, c_zp = (inputs[i] for i in range(8))
        acc = relax.op.multiply(_shifted(bb, a, a_zp), _shifted(bb, b, b_zp))
        multiplier = _scale_ratio([a_scale, b_scale], c_scale)
        return _requantize(acc, multiplier, c_zp, _out_dtype(c_zp, _dtype(a)))


@register("QLinearAdd")
class QLinearAdd(_Converter):
    """``c = saturate(round((a - a_zp) * a_scale/c_scale + (b - b_zp) * b_scale/c_scale)
    + c_zp)`` in float32 (numpy broadcasting)."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        a, a_scale, a_zp, b, b_scale, b_zp, c_scale, c_zp = (inputs[i] for i in range(8))
        if (_qdq_ready(a_scale, a_zp, b_scale, b_zp, c_scale, c_zp)
                and _dtype(a) == _dtype(b)):
            y = relax.op.add(bb.normalize(_dequantize(a, a_scale, a_zp)),
                             bb.normalize(_dequantize(b, b_scale, b_zp)))
            return _quantize(y, c_scale, c_zp, _out_dtype(c_zp, _dtype(a)))

        def term(q, scale, zp):
            real = relax.op.astype(_shifted(bb, q, zp), "float32")
            return relax.op.multiply(real, _scale_ratio([scale], c_scale))

        value = relax.op.add(term(a, a_scale, a_zp), term(b, b_scale, b_zp))
        return _requantize(value, relax.const(1.0, "float32"), c_zp, _out_dtype(c_zp, _dtype(a)))


@register("QLinearGlobalAveragePool")
class QLinearGlobalAveragePool(_Converter):
    """``y = requantize(sum(x) - x_zp*HW, x_scale / (y_scale * HW))``: exact int32 sum,
    one requantization, like MLAS. ``channels_last=1`` reads NHWC."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, x_scale, x_zp, y_scale, y_zp = (inputs[i] for i in range(5))
        rank = x.ty.ndim
        spatial = list(range(1, rank - 1) if attr.get("channels_last", 0) else range(2, rank))
        image = int(np.prod([int(x.ty.shape.values[i]) for i in spatial]))
        total = relax.op.sum(relax.op.astype(x, "int32"), axis=spatial, keepdims=True)
        if x_zp is not None:
            offset = _binary("multiply", _cast(x_zp, "int32"), relax.const(image, "int32"))
            total = relax.op.subtract(total, offset)
        image_scale = _scale_ratio([y_scale, relax.const(float(image), "float32")], None)
        multiplier = _scale_ratio([x_scale], image_scale)
        return _requantize(total, multiplier, y_zp, _out_dtype(y_zp, _dtype(x)))


@register("QLinearAveragePool")
class QLinearAveragePool(_Converter):
    """Dequantize, ONNX AveragePool in float32 (TVM's converter), quantize."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, x_scale, x_zp, y_scale, y_zp = (inputs[i] for i in range(5))
        channels_last = attr.get("channels_last", 0)
        real = _dequantize(x, x_scale, x_zp)
        rank = x.ty.ndim
        if channels_last:
            real = relax.op.permute_dims(real, [0, rank - 1, *range(1, rank - 1)])
        pool_attr = {k: v for k, v in attr.items() if k not in ("tvm_custom", "channels_last")}
        pooled = onnx_frontend.AveragePool._impl_v1(bb, [bb.normalize(real)], pool_attr, params)
        if channels_last:
            pooled = relax.op.permute_dims(pooled, [0, *range(2, rank), 1])
        return _quantize(pooled, y_scale, y_zp, _out_dtype(y_zp, _dtype(x)))


@register("QLinearSoftmax")
class QLinearSoftmax(_Converter):
    """com.microsoft QLinearSoftmax: dequantize, Softmax in float32, quantize. ``opset`` (the
    original Softmax's) below 13 means the old semantics: the input flattened to 2-D at
    ``axis``, normalized over the second dimension. ORT computes ``exp`` through a 256-entry
    table and divides in float; the results agree to a unit where the rounding is close."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, x_scale, x_zp, y_scale, y_zp = (inputs[i] for i in range(5))
        ndim = x.ty.ndim
        axis = int(attr.get("axis", -1))
        axis = axis + ndim if axis < 0 else axis
        real = bb.normalize(_dequantize(x, x_scale, x_zp))
        if int(attr.get("opset", 13)) < 13 and axis != ndim - 1:
            shape = [int(d) for d in x.ty.shape.values]
            rows = int(np.prod(shape[:axis], dtype=np.int64))
            flat = bb.normalize(relax.op.reshape(real, [rows, -1]))
            out = relax.op.reshape(relax.op.nn.softmax(flat, axis=1), shape)
        else:
            out = relax.op.nn.softmax(real, axis=axis)
        return _quantize(bb.normalize(out), y_scale, y_zp, _out_dtype(y_zp, _dtype(x)))


def _identity(v: np.ndarray | relax.Expr) -> np.ndarray | relax.Expr:
    return v


@register("QLinearConcat")
class QLinearConcat(_Converter):
    """Inputs ``Y_scale, Y_zero_point, (X, X_scale, X_zero_point)...``: each input is
    requantized to the output's parameters (a 256-entry table, or as is when they agree)."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        y_scale, y_zp = inputs[0], inputs[1]
        parts = []
        for i in range(2, len(inputs), 3):
            x, x_scale, x_zp = inputs[i], inputs[i + 1], inputs[i + 2]
            if _same_constant(x_scale, y_scale) and _same_constant(x_zp, y_zp):
                parts.append(x)
                continue
            qparams = (x_scale, x_zp, y_scale, y_zp)
            requantized = _lookup(bb, x, qparams, (_identity, _identity), "QLinearConcat")
            parts.append(bb.emit(requantized))
        return relax.op.concat(parts, axis=attr["axis"])


def _np_sigmoid(v: np.ndarray) -> np.ndarray:
    return (np.float32(1) / (np.float32(1) + np.exp(-v))).astype(np.float32)


@register("QLinearSigmoid")
class QLinearSigmoid(_Converter):
    """``y = quantize(sigmoid(real(x)))`` through a 256-entry table."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, *qparams = (inputs[i] for i in range(5))
        fn = (_np_sigmoid, relax.op.sigmoid)
        return _lookup(bb, x, tuple(qparams), fn, "QLinearSigmoid")


@register("QLinearLeakyRelu")
class QLinearLeakyRelu(_Converter):
    """``y = quantize(leaky_relu(real(x), alpha))`` through a 256-entry table."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, *qparams = (inputs[i] for i in range(5))
        alpha = float(attr.get("alpha", 0.01))

        def np_fn(v: np.ndarray) -> np.ndarray:
            return np.where(v >= 0, v, v * np.float32(alpha))

        fn = (np_fn, lambda v: relax.op.nn.leakyrelu(v, alpha))
        return _lookup(bb, x, tuple(qparams), fn, "QLinearLeakyRelu")


@register("DynamicQuantizeLinear")
class DynamicQuantizeLinear(_Converter):
    """ONNX DynamicQuantizeLinear (uint8), with ORT's scale of 1 for an all-zero input.

    ``scale = (max(0, max x) - min(0, min x)) / 255`` (1 where that range is 0),
    ``zp = round(saturate(0 - min(0, min x) / scale))``, ``y = quantize(x, scale, zp)``.
    """

    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        x = inputs[0]
        dtype = _dtype(x)
        zero = relax.const(0, dtype)
        x_max = relax.op.maximum(zero, relax.op.max(x))
        x_min = relax.op.minimum(zero, relax.op.min(x))
        span = bb.emit(relax.op.subtract(x_max, x_min))
        scale = bb.emit(
            relax.op.where(
                relax.op.equal(span, zero),
                relax.const(1, dtype),
                relax.op.divide(span, relax.const(255, dtype)),
            )
        )
        zp_real = relax.op.subtract(zero, relax.op.divide(x_min, scale))
        zp = bb.emit(relax.op.astype(relax.op.round(relax.op.clip(zp_real, 0, 255)), "uint8"))
        y = relax.op.quantize(x, scale, zp, axis=0, out_dtype="uint8")
        return relax.Tuple([y, scale, zp])


def _same_constant(a: relax.Expr | None, b: relax.Expr | None) -> bool:
    """Whether two optional quantization parameters are constants with equal values."""
    if a is None or b is None:
        return a is None and b is None
    va, vb = _value(a), _value(b)
    if va is None or vb is None:
        return False
    return va.dtype == vb.dtype and va.size == vb.size and bool(np.all(va.ravel() == vb.ravel()))
