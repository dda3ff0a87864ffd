"""``ReduceMax`` / ``ReduceMin`` on booleans and over empty sets.

- A bool tensor (ONNX allows it from opset 20: max is "any", min is "all") is reduced as int8
  and cast back: TOPI has no min/max value for bool to start the reduction from.
- Floats reduce from ``-inf`` (max) or ``+inf`` (min), as ONNX Runtime does: TOPI starts
  from the largest finite value, so a row of ``-inf`` (an attention row masked out entirely)
  came out as ``-3.4e38`` and a model's ``Equal(ReduceMax(x), -inf)`` guard never fired.
- Reducing over a zero-sized axis gives the identity of the reduction (``-inf`` for max,
  ``+inf`` for min, the integer type's limits for integers): every output element reduces an
  empty set. The generic kernel read its first element instead.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.frontend.converters import register


def _static_shape(expr) -> list[int] | None:
    shape = getattr(expr.ty, "shape", None)
    if not isinstance(shape, relax.ShapeExpr):
        return None
    try:
        return [int(d) for d in shape.values]
    except TypeError:
        return None


def _axes(inputs, attr, params, rank: int, from_input: bool):
    """The reduced axes (sorted, non-negative); ``None`` for a no-op or unknown axes."""
    if from_input:
        given = inputs[1] if len(inputs) > 1 else None
        values: list[int] = []
        if given is not None:
            const = onnx_frontend.get_constant(given, params)
            if not isinstance(const, tvm.ir.GenericConst):
                return None
            values = [int(v) for v in const.value.numpy().reshape(-1)]
        if not values and int(attr.get("noop_with_empty_axes", 0)):
            return None
    else:
        values = [int(v) for v in attr.get("axes", [])]
    return sorted({v % rank for v in values}) if values else list(range(rank))


def _extreme(x, axes: list[int], keepdims: bool, largest: bool):
    """max/min over ``axes`` starting from -inf/+inf (a TE reduction)."""
    rank = len(x.shape)
    init = float("-inf") if largest else float("inf")
    reducer = te.comm_reducer(
        (lambda a, b: tirx.max(a, b)) if largest else (lambda a, b: tirx.min(a, b)),
        lambda t: tirx.const(init, t),
        name="max_from_inf" if largest else "min_from_inf",
    )
    raxes = {a: te.reduce_axis((0, x.shape[a]), name=f"r{a}") for a in axes}
    if keepdims:
        out_shape = [1 if a in raxes else x.shape[a] for a in range(rank)]
    else:
        out_shape = [x.shape[a] for a in range(rank) if a not in raxes]

    def fcompute(*index):
        it = iter(index)
        full = []
        for a in range(rank):
            if a in raxes:
                full.append(raxes[a])
                if keepdims:
                    next(it)
            else:
                full.append(next(it))
        return reducer(x[tuple(full)], axis=[raxes[a] for a in axes])

    return te.compute(out_shape, fcompute, name="reduce_max" if largest else "reduce_min")


def _reduce(cls, impl, bb, inputs, attr, params, *, largest: bool):
    x = inputs[0]
    dtype = str(x.ty.dtype)
    shape = _static_shape(x)
    if np.dtype(dtype).kind == "f" and shape is not None:
        axes = _axes(inputs, attr, params, len(shape), "_impl_v18" in impl.__qualname__)
        if axes is not None:
            keepdims = bool(int(attr.get("keepdims", 1)))
            if any(shape[a] == 0 for a in axes):  # every element reduces an empty set
                kept = [1 if a in axes else d for a, d in enumerate(shape)]
                out = kept if keepdims else [d for a, d in enumerate(shape) if a not in axes]
                fill = -np.inf if largest else np.inf
                return relax.const(np.full(out, fill, dtype=dtype))
            return bb.emit_te(_extreme, x, axes, keepdims, largest)
    if dtype == "bool":
        inputs = [bb.normalize(relax.op.astype(x, "int8")), *inputs[1:]]
        out = bb.normalize(_reduce(cls, impl, bb, inputs, attr, params, largest=largest))
        # > 0, not a cast: the empty-set identities (-128, 127) mean False and True
        return relax.op.greater(out, relax.const(0, "int8"))
    out = bb.normalize(impl.__func__(cls, bb, inputs, attr, params))
    in_shape, out_shape = _static_shape(x), _static_shape(out)
    if in_shape is not None and out_shape is not None and 0 in in_shape and 0 not in out_shape:
        if np.dtype(dtype).kind == "f":
            fill = -np.inf if largest else np.inf
        else:
            info = np.iinfo(np.dtype(dtype))
            fill = info.min if largest else info.max
        return relax.const(np.full(out_shape, fill, dtype=dtype))
    return out


@register("ReduceMax")
class ReduceMax(onnx_frontend.ReduceMax):
    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        return _reduce(cls, onnx_frontend.ReduceMax._impl_v11, bb, inputs, attr, params,
                       largest=True)

    @classmethod
    def _impl_v18(cls, bb, inputs, attr, params):
        return _reduce(cls, onnx_frontend.ReduceMax._impl_v18, bb, inputs, attr, params,
                       largest=True)


@register("ReduceMin")
class ReduceMin(onnx_frontend.ReduceMin):
    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        return _reduce(cls, onnx_frontend.ReduceMin._impl_v11, bb, inputs, attr, params,
                       largest=False)

    @classmethod
    def _impl_v18(cls, bb, inputs, attr, params):
        return _reduce(cls, onnx_frontend.ReduceMin._impl_v18, bb, inputs, attr, params,
                       largest=False)
