"""``ReduceMax`` / ``ReduceMin`` on booleans and over empty sets.

- A bool tensor (ONNX allows it from opset 20: max is "any", min is "all") is reduced as int8
  and cast back: TOPI has no min/max value for bool to start the reduction from.
- Reducing over a zero-sized axis gives the identity of the reduction (``-inf`` for max,
  ``+inf`` for min, the integer type's limits for integers): every output element reduces an
  empty set. The generic kernel read its first element instead.
"""

from __future__ import annotations

import numpy as np
from tvm import relax
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


def _reduce(cls, impl, bb, inputs, attr, params, *, largest: bool):
    x = inputs[0]
    dtype = str(x.ty.dtype)
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
