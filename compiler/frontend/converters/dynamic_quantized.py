"""Converters for the ONNX Runtime contrib ops of dynamic quantization (domain ``com.microsoft``).

``onnxruntime.quantization.quantize_dynamic`` writes ``DynamicQuantizeLinear → MatMulInteger
(ConvInteger) → Cast → Mul (→ Add)`` for MatMul, Gemm and Conv, which import with TVM's
``MatMulInteger`` and our ``ConvInteger`` / ``DynamicQuantizeLinear`` (quantized.py), and
``DynamicQuantizeLSTM`` for LSTM. ORT's graph optimizer fuses the MatMul chain into
``DynamicQuantizeMatMul`` or ``MatMulIntegerToFloat``; a model saved after ORT's optimization
(``SessionOptions.optimized_model_filepath``) holds those, and ``FusedMatMul`` where a
float MatMul is followed by a scale (attention's ``Q·Kᵀ / sqrt(d)``). Those four are here.

Notation: dynamic quantization of a float32 tensor ``v`` to uint8, all of it at once, exactly
as ORT's ``GetQuantizationParameter`` and ``MlasQuantizeLinear`` do::

    scale = (max(0, max v) - min(0, min v)) / 255        (1 where that range is 0)
    zp    = saturate(round_half_to_even(0 - min(0, min v) / scale))
    v_q   = saturate(round_half_to_even(v / scale) + zp)

Lowerings, and how close each is to ORT's CPU kernels (onnxruntime 1.31):

- ``DynamicQuantizeMatMul(A, B, b_scale, b_zero_point?, bias?)``: ``A`` quantized as above,
  ``acc = (A_q - zp) @ (B - b_zp)`` in int32 (exact), ``Y = float32(acc) * (scale * b_scale)
  + bias``; ``B`` int8 or uint8, its scale and zero point per tensor or per column ``[N]``.
- ``MatMulIntegerToFloat(A, B, a_scale, b_scale, a_zp?, b_zp?, bias?)``: the same with ``A``
  already quantized. A non-scalar ``a_scale`` (or a ``b_scale`` of a shape MLAS cannot use
  per column) is applied, like ORT does, by multiplying the finished output (bias included);
  the two scales are swapped first where ORT's kernel swaps them (fusion can misorder them).
  Both are exact in the integer part and do the float32 epilogue in ORT's order (multiply,
  then add the bias); LLVM may contract that into one FMA, so results agree to about 1 ulp
  (measured: max |diff| about 1e-7 * max |Y| on the test models). One exception: on an x86
  CPU without AVX-VNNI, ORT's u8 x s8 kernel (``vpmaddubsw``) adds pairs of products in int16
  with saturation, so with full-range int8 weights ORT itself is off where a pair exceeds
  32767 (on a small LSTM by 0.1); we compute the exact sum, as the spec and the ONNX
  reference evaluator do. ``quantize_dynamic(..., reduce_range=True)`` (7-bit weights) exists
  for exactly that, and with it ORT and we agree.
- ``FusedMatMul(A, B)``: ``alpha * (A' @ B')`` in float32 (``transA``/``transB`` swap the last
  two axes; ``transBatchA``/``transBatchB`` are refused with an ``InputError``).
- ``DynamicQuantizeLSTM``: an ONNX LSTM whose ``W`` ``[nd, I, 4H]`` and ``R`` ``[nd, H, 4H]``
  (note: transposed against LSTM's) are int8/uint8, with ``W_scale``/``W_zero_point``/
  ``R_scale``/``R_zero_point`` of shape ``[nd]`` (per tensor) or ``[nd, 4H]`` (per output
  column). ORT does not dequantize the weights: each of its GEMMs quantizes its float
  operand dynamically and multiplies in int32 (``rnn_helpers.cc`` ``ComputeGemm``), and so
  do we: ``X`` of all steps is quantized once (one scale for the whole ``[T*B, I]``),
  ``X·W`` is ``float32(acc) * (x_scale * W_scale)``; at every step ``H[t-1]`` (``[B, H]``)
  is quantized anew and ``float32(acc) * (h_scale * R_scale)`` is added to that step's
  gates. The gate maths is the project's LSTM (rnn.py), which this class extends. ORT checks
  that a per-column uint8 zero point is one value and an int8 one is 0; we compute per column
  in any case, which is the same wherever ORT accepts the model.
  Closeness: the integer GEMMs are exact; the rest is float32 with other rounding than ORT's
  (MLAS's sigmoid/tanh approximations, the bias added before rather than after ``H·R``),
  measured at <= 1.4e-7 on ``Y``, ``Y_h``, ``Y_c`` (values in [-1, 1]; the tests allow 1e-5).
  A float difference that moves an element of ``H`` across a rounding boundary of the next
  step's quantization would show as one code, ~1e-3; none occurs in the tests. ORT itself
  splits the batch across threads when ``batch > 4`` or ``batch >= 2`` and ``H <= 256`` and
  quantizes each part of ``H`` separately, so its results depend on its thread count (1 vs 2
  threads: 1.5e-3 apart on a 3-sequence batch); we match one thread (``intra_op_num_threads
  = 1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.errors import InputError
from tvmforge.frontend.converters import register, rnn
from tvmforge.frontend.converters.quantized import (
    _INT8_TYPES,
    DynamicQuantizeLinear,
    _cast,
    _Converter,
    _dtype,
    _per_axis,
    _shifted,
    _value,
)


def _where(op: str, attr: dict) -> str:
    name = attr.get("tvm_custom", {}).get("name")
    return f"{op} node {name!r}" if name else f"{op} node (unnamed)"


def _shape(bb: relax.BlockBuilder, expr: relax.Expr) -> list[int] | None:
    """The static shape of ``expr`` (``None`` where some dimension is symbolic)."""
    values = getattr(getattr(bb.normalize(expr).ty, "shape", None), "values", None)
    if values is None or not all(hasattr(v, "value") for v in values):
        return None
    return [int(v.value) for v in values]


def _require(where: str, inputs, names: dict[int, str]) -> None:
    """An ``InputError`` naming the first required input that the node leaves empty."""
    for index, name in names.items():
        if inputs[index] is None:
            raise InputError(
                f"{where}: required input {index} ({name}) is missing",
                hint="re-export or re-quantize the model; the operator needs it",
            )


def _require_dtype(where: str, what: str, expr: relax.Expr, allowed: tuple[str, ...]) -> None:
    dtype = _dtype(expr)
    if dtype not in allowed:
        raise InputError(f"{where}: {what} must be {' or '.join(allowed)}, got {dtype}")


def _dynamic_quantize(bb: relax.BlockBuilder, v: relax.Expr):
    """``(v_q, scale, zp)``: ``v`` quantized to uint8 as a whole, the way ORT does it (the
    project's ``DynamicQuantizeLinear``)."""
    v = bb.emit(v) if not isinstance(v, relax.Var) else v
    result = DynamicQuantizeLinear._impl_v11(bb, [v], {}, None)
    v_q, scale, zp = result.fields
    return bb.emit(v_q), scale, zp


def _is_scalar(bb: relax.BlockBuilder, expr: relax.Expr) -> bool:
    """A scalar or a one-element 1-D tensor (ORT's ``IsScalarOr1ElementVector``)."""
    shape = _shape(bb, expr)
    return shape is not None and (len(shape) == 0 or shape == [1])


def _as_scalar(bb: relax.BlockBuilder, expr: relax.Expr) -> relax.Expr:
    value = _value(expr)
    if value is not None:
        return relax.const(value.reshape(()), str(value.dtype))
    return bb.emit(relax.op.reshape(expr, []))


def _b_param_supported(param_shape: list[int] | None, b_shape: list[int] | None) -> bool:
    """ORT's ``IsBQuantParamSupported``: per tensor, or per column of ``B``."""
    if param_shape is None or b_shape is None:
        return False
    rank = len(param_shape)
    if rank == 0 or param_shape == [1]:
        return True
    if rank == 1 and len(b_shape) == 2 and param_shape[0] == b_shape[1]:
        return True
    return rank == len(b_shape) and param_shape[-2] == 1 and param_shape[-1] == b_shape[-1]


def _column_param(bb: relax.BlockBuilder, param: relax.Expr) -> relax.Expr:
    """A scale or zero point of ``B`` as it broadcasts over ``B`` and ``A @ B``: one value
    becomes a scalar; ``[N]`` and ``[..., 1, N]`` apply per column as they are."""
    return _as_scalar(bb, param) if _is_scalar(bb, param) else param


def _shift_b(bb: relax.BlockBuilder, b: relax.Expr, b_zp: relax.Expr | None) -> relax.Expr:
    """``B - b_zp`` in int32 (computed now when both are constants)."""
    if b_zp is None:
        return _shifted(bb, b, None)
    zp32 = _column_param(bb, _cast(b_zp, "int32"))
    b32 = _cast(b, "int32")
    bv, zv = _value(b32), _value(zp32)
    if bv is not None and zv is not None:
        return relax.const((bv - zv).astype(np.int32), "int32")
    return bb.emit(relax.op.subtract(b32, zp32))


# The extern name ``lower_qmatmul_integer`` (passes/quantize/dynamic_int8.py) lowers to the
# int8 kernels: ``call_dps_packed(QMATMUL_INTEGER, [A_q (uint8 [..., K]), a_zp (uint8 []),
# B (int8 [K, N], a constant)]) -> float32 [..., N]``, the value ``float32(sum_k (A_q - a_zp)
# B)``: exact where the sum fits float32's 24 bits, else rounded as ``Cast`` would round it.
QMATMUL_INTEGER = "tvmforge.qmatmul_integer"


def _kernel_ready(bb: relax.BlockBuilder, a_q: relax.Expr, a_zp: relax.Expr | None,
                  b: relax.Expr, b_zp: relax.Expr | None) -> bool:
    """Whether the int8 kernels take this product: uint8 ``A`` of static shape with a
    per-tensor zero point, a constant int8 ``[K, N]`` ``B`` with zero zero points (what
    ``quantize_dynamic`` writes by default)."""
    a_shape, b_value = _shape(bb, a_q), _value(b)
    if (a_shape is None or len(a_shape) < 2 or _dtype(a_q) != "uint8" or b_value is None
            or b_value.ndim != 2 or b_value.dtype != np.int8 or a_shape[-1] != b_value.shape[0]):
        return False
    if a_zp is not None and (not _is_scalar(bb, a_zp) or _dtype(a_zp) != "uint8"):
        return False
    if b_zp is not None:
        zp = _value(b_zp)
        if zp is None or np.any(zp != 0):
            return False
    return True


def _integer_matmul(
    bb: relax.BlockBuilder,
    a_q: relax.Expr,
    a_zp: relax.Expr | None,
    b: relax.Expr,
    b_zp: relax.Expr | None,
) -> relax.Expr:
    """``(A_q - a_zp) @ (B - b_zp)`` in int32 (``a_zp`` per tensor): on the int8 kernels
    where ``_kernel_ready`` (through ``QMATMUL_INTEGER``, whose float32 sum comes back as
    int32), else exact int32 arithmetic."""
    if _kernel_ready(bb, a_q, a_zp, b, b_zp):
        zp = (relax.const(np.uint8(0), "uint8") if a_zp is None
              else bb.normalize(relax.op.reshape(a_zp, [])))
        shape = [*_shape(bb, a_q)[:-1], int(_value(b).shape[1])]
        acc = bb.emit(relax.call_dps_packed(
            QMATMUL_INTEGER, relax.Tuple([a_q, zp, b]),
            relax.TensorType(shape, "float32")))
        return relax.op.astype(acc, "int32")
    a_shifted = _shifted(bb, a_q, _as_scalar(bb, a_zp) if a_zp is not None else None)
    return relax.op.matmul(a_shifted, _shift_b(bb, b, b_zp), out_dtype="int32")


@register("MatMulInteger")
class MatMulInteger(_Converter):
    """ONNX MatMulInteger: the int8 kernels where they take it (``_kernel_ready``: a
    constant int8 ``B`` with zero zero points, as ``quantize_dynamic`` writes), else TVM's
    own exact lowering."""

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        a, b = inputs[0], inputs[1]
        a_zp = inputs[2] if len(inputs) > 2 else None
        b_zp = inputs[3] if len(inputs) > 3 else None
        if _kernel_ready(bb, a, a_zp, b, b_zp):
            return _integer_matmul(bb, a, a_zp, b, b_zp)
        return onnx_frontend.MatMulInteger._impl_v10(bb, inputs, attr, params)


def _to_float(
    bb: relax.BlockBuilder,
    acc: relax.Expr,
    multiplier: relax.Expr,
    bias: relax.Expr | None,
) -> relax.Expr:
    """``float32(acc) * multiplier (+ bias)``, MLAS's scale-and-bias output step."""
    out = relax.op.multiply(relax.op.astype(acc, "float32"), multiplier)
    if bias is not None:
        out = relax.op.add(out, bias)
    return out


def _matmul_to_float(
    bb: relax.BlockBuilder,
    where: str,
    a_q: relax.Expr,
    a_scale: relax.Expr,
    a_zp: relax.Expr | None,
    operands: tuple[relax.Expr, relax.Expr, relax.Expr | None, relax.Expr | None],
) -> relax.Expr:
    """ORT's ``MatMulIntegerToFloatBase::ComputeCommon``: one int32 matmul and the float
    epilogue, ``a_scale`` a scalar; ``operands`` is ``(B, b_scale, b_zp, bias)``."""
    b, b_scale, b_zp, bias = operands
    _require_dtype(where, "B", b, _INT8_TYPES)
    b_shape = _shape(bb, b)
    if b_zp is not None and not _b_param_supported(_shape(bb, b_zp), b_shape):
        raise InputError(
            f"{where}: B's zero point of shape {_shape(bb, b_zp)} is neither per tensor nor "
            f"per column of B {b_shape}"
        )
    acc = _integer_matmul(bb, a_q, a_zp, b, b_zp)
    if _b_param_supported(_shape(bb, b_scale), b_shape):
        scale = _column_param(bb, b_scale)
        return _to_float(bb, acc, relax.op.multiply(a_scale, scale), bias)
    # ORT multiplies by a scale of another shape after the fact (numpy broadcasting).
    return relax.op.multiply(bb.emit(_to_float(bb, acc, a_scale, bias)), b_scale)


@register("DynamicQuantizeMatMul")
class DynamicQuantizeMatMul(_Converter):
    """``Y = float32((A_q - a_zp) @ (B - b_zp)) * (a_scale * b_scale) + bias`` with ``A``
    quantized to uint8 at run time (see the module doc)."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        where = _where("DynamicQuantizeMatMul", attr)
        _require(where, inputs, {0: "A", 1: "B", 2: "b_scale"})
        a, b, b_scale, b_zp, bias = (inputs[i] for i in range(5))
        _require_dtype(where, "A", a, ("float32",))
        a_q, a_scale, a_zp = _dynamic_quantize(bb, a)
        return _matmul_to_float(bb, where, a_q, a_scale, a_zp, (b, b_scale, b_zp, bias))


@register("MatMulIntegerToFloat")
class MatMulIntegerToFloat(_Converter):
    """``Y = float32((A - a_zp) @ (B - b_zp)) * (a_scale * b_scale) + bias`` (see the module
    doc for a non-scalar ``a_scale``)."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        where = _where("MatMulIntegerToFloat", attr)
        _require(where, inputs, {0: "A", 1: "B", 2: "a_scale", 3: "b_scale"})
        a, b, a_scale, b_scale, a_zp, b_zp, bias = (inputs[i] for i in range(7))
        _require_dtype(where, "A", a, _INT8_TYPES)
        if a_zp is not None and not _is_scalar(bb, a_zp):
            raise InputError(f"{where}: A's zero point must be per tensor (ORT's rule)")
        a_scale, b_scale = _fix_scale_order(bb, a_scale, b_scale)
        if _is_scalar(bb, a_scale):
            operands = (b, b_scale, b_zp, bias)
            return _matmul_to_float(bb, where, a, _as_scalar(bb, a_scale), a_zp, operands)
        one = relax.const(1.0, "float32")
        out = _matmul_to_float(bb, where, a, one, a_zp, (b, b_scale, b_zp, bias))
        return relax.op.multiply(bb.emit(out), a_scale)


def _fix_scale_order(bb: relax.BlockBuilder, a_scale: relax.Expr, b_scale: relax.Expr):
    """ORT's ``FixupScaleTensor``: its fusion may pass B's scale as A's; swap them back by
    their shapes, as the kernel does."""
    if not _is_scalar(bb, a_scale):
        shape = _shape(bb, a_scale) or []
        if len(shape) == 1 or (shape and shape[-1] != 1):
            return b_scale, a_scale
    elif not _is_scalar(bb, b_scale):
        shape = _shape(bb, b_scale) or []
        if len(shape) > 1 and shape[-2] != 1:
            return b_scale, a_scale
    return a_scale, b_scale


@register("FusedMatMul")
class FusedMatMul(_Converter):
    """com.microsoft ``FusedMatMul`` (ORT's ``MatMulScaleFusion`` and ``MatMulTransposeFusion``
    write it, e.g. for ``Q·Kᵀ / sqrt(d)`` next to the quantized MatMuls): ``Y = alpha *
    (A' @ B')``, ``A'``/``B'`` with their last two axes swapped where ``transA``/``transB``.
    ``transBatchA``/``transBatchB`` are refused."""

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        where = _where("FusedMatMul", attr)
        _require(where, inputs, {0: "A", 1: "B"})
        if int(attr.get("transBatchA", 0)) or int(attr.get("transBatchB", 0)):
            raise InputError(
                f"{where}: transBatchA/transBatchB are not supported",
                hint="export the model without ORT's graph optimizations (they write this op)",
            )
        a, b = inputs[0], inputs[1]
        if int(attr.get("transA", 0)):
            a = _swap_last_axes(bb, a)
        if int(attr.get("transB", 0)):
            b = _swap_last_axes(bb, b)
        product = relax.op.matmul(a, b)
        alpha = float(attr.get("alpha", 1.0))
        if alpha == 1.0:
            return product
        return relax.op.multiply(product, relax.const(alpha, _dtype(inputs[0])))


def _swap_last_axes(bb: relax.BlockBuilder, x: relax.Expr) -> relax.Expr:
    ndim = bb.normalize(x).ty.ndim
    if ndim < 2:
        return x
    axes = [*range(ndim - 2), ndim - 1, ndim - 2]
    return bb.emit(relax.op.permute_dims(x, axes))


# ---------------------------------------------------------------- DynamicQuantizeLSTM

_LSTM_REQUIRED = {
    0: "X",
    1: "W",
    2: "R",
    8: "W_scale",
    9: "W_zero_point",
    10: "R_scale",
    11: "R_zero_point",
}


@dataclass
class _QuantizedDirection(rnn._Direction):
    """A direction whose ``r_t`` is ``R - R_zero_point`` (int32, ``[H, 4H]``), with the
    scale that goes with it (a scalar or ``[4H]``)."""

    r_scale: relax.Expr | None = None


def _check_param(
    bb: relax.BlockBuilder, param: relax.Expr, nd: int, columns: int, where: str, what: str
) -> None:
    """ORT's rule: a scale or zero point is ``[nd]`` (per tensor) or ``[nd, 4H]``."""
    shape = _shape(bb, param)
    if shape not in ([nd], [nd, columns]):
        raise InputError(
            f"{where}: {what} must have shape [{nd}] (per tensor) or [{nd}, {columns}] "
            f"(per column), got {shape}"
        )


def _per_direction_param(
    bb: relax.BlockBuilder, param: relax.Expr, nd: int, columns: int
) -> list[relax.Expr]:
    """A ``[nd]`` or ``[nd, columns]`` scale or zero point (checked by ``_check_param``) as
    one scalar or ``[columns]`` tensor per direction."""
    per_column = len(_shape(bb, param)) == 2
    return rnn._per_direction(bb, param, nd, [columns] if per_column else [])


def _shift_columns(
    bb: relax.BlockBuilder, weight: relax.Expr, zp: relax.Expr, columns_axis: int
) -> relax.Expr:
    """``weight - zp`` in int32, ``zp`` a scalar or one value per column."""
    ndim = bb.normalize(weight).ty.ndim
    zp32 = _cast(zp, "int32")
    if bb.normalize(zp32).ty.ndim:
        zp32 = _per_axis(bb, zp32, ndim, columns_axis)
    w32 = _cast(weight, "int32")
    wv, zv = _value(w32), _value(zp32)
    if wv is not None and zv is not None:
        return relax.const((wv - zv).astype(np.int32), "int32")
    return bb.emit(relax.op.subtract(w32, zp32))


@register("DynamicQuantizeLSTM")
class DynamicQuantizeLSTM(rnn.LSTM):
    """ONNX Runtime's ``DynamicQuantizeLSTM``: rnn.py's LSTM with its two matrix products
    done as ORT does them, in int32 on dynamically quantized operands (module doc)."""

    op = "DynamicQuantizeLSTM"

    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        return cls._convert(bb, inputs, attr, params, layout=0)

    @classmethod
    def _convert(cls, bb, inputs, attr, params, layout):
        where = _where(cls.op, attr)
        _require(where, inputs, _LSTM_REQUIRED)
        x, w, r = inputs[0], inputs[1], inputs[2]
        _require_dtype(where, "X", x, ("float32",))
        _require_dtype(where, "W", w, _INT8_TYPES)
        _require_dtype(where, "R", r, _INT8_TYPES)
        x_shape, w_shape, r_shape = _shape(bb, x), _shape(bb, w), _shape(bb, r)
        if r_shape is None or len(r_shape) != 3:
            raise InputError(f"{where}: R must be [num_directions, H, 4H], got {r_shape}")
        hidden = int(attr.get("hidden_size", 0)) or r_shape[1]
        expected_w = [r_shape[0], x_shape[2] if x_shape else None, 4 * hidden]
        if w_shape != expected_w or r_shape != [r_shape[0], hidden, 4 * hidden]:
            raise InputError(
                f"{where}: W {w_shape} and R {r_shape} must be [num_directions, input_size, "
                f"4*hidden_size] and [num_directions, hidden_size, 4*hidden_size] "
                f"(hidden_size {hidden})"
            )
        for index in range(8, 12):
            _check_param(bb, inputs[index], r_shape[0], 4 * hidden, where, _LSTM_REQUIRED[index])
        attr = {**attr, "hidden_size": hidden}
        return super()._convert(bb, inputs, attr, params, layout=0)

    @classmethod
    def _project_inputs(cls, bb, x2d, inputs, rows, input_size):
        """``X·W`` for all steps and directions: ``X`` quantized once, one int32 matmul per
        direction, scaled by ``x_scale * W_scale`` (per column), side by side."""
        w, w_scale, w_zp = inputs[1], inputs[8], inputs[9]
        nd = _shape(bb, w)[0]
        columns = rows // nd
        scales = _per_direction_param(bb, w_scale, nd, columns)
        zps = _per_direction_param(bb, w_zp, nd, columns)
        weights = rnn._per_direction(bb, w, nd, [input_size, columns])
        x_q, x_scale, x_zp = _dynamic_quantize(bb, x2d)
        x_shifted = _shifted(bb, x_q, x_zp)
        parts = []
        for d in range(nd):
            w_shifted = _shift_columns(bb, weights[d], zps[d], 1)
            acc = relax.op.matmul(x_shifted, w_shifted, out_dtype="int32")
            multiplier = relax.op.multiply(x_scale, _float(scales[d]))
            parts.append(bb.emit(_to_float(bb, acc, multiplier, None)))
        return parts[0] if nd == 1 else relax.op.concat(parts, axis=1)

    @classmethod
    def _recur(cls, bb, h, dr):
        """``H[t-1]·R`` for one step: ``H`` quantized anew, int32 matmul, scaled."""
        h_q, h_scale, h_zp = _dynamic_quantize(bb, h)
        acc = relax.op.matmul(_shifted(bb, h_q, h_zp), dr.r_t, out_dtype="int32")
        return _to_float(bb, acc, relax.op.multiply(h_scale, dr.r_scale), None)

    @classmethod
    def _directions(
        cls, bb, inputs, attr, layout, nd, batch, hidden, dtype, direction, acts, rbh_all
    ):
        gh = 4 * hidden
        recurrences = rnn._per_direction(bb, inputs[2], nd, [hidden, gh])
        scales = _per_direction_param(bb, inputs[10], nd, gh)
        zps = _per_direction_param(bb, inputs[11], nd, gh)
        h0s = rnn._initial_states(bb, inputs[5], nd, batch, hidden, dtype, layout)
        c0s = rnn._initial_states(bb, inputs[6], nd, batch, hidden, dtype, layout)
        peeps = None
        if inputs[7] is not None:
            peeps = [
                tuple(rnn._split(bb, p, 3, axis=1))
                for p in rnn._per_direction(bb, inputs[7], nd, [1, 3 * hidden])
            ]
        per_dir = len(cls.default_activations)
        return [
            _QuantizedDirection(
                reverse=direction == "reverse" or d == 1,
                r_t=_shift_columns(bb, recurrences[d], zps[d], 1),
                h0=h0s[d],
                acts=acts[d * per_dir : (d + 1) * per_dir],
                c0=c0s[d],
                peep=peeps[d] if peeps is not None else None,  # type: ignore[arg-type]
                r_scale=_float(scales[d]),
            )
            for d in range(nd)
        ]


def _float(expr: relax.Expr) -> relax.Expr:
    return _cast(expr, "float32")
