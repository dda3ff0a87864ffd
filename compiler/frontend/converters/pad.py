"""``Pad`` whose ``constant_value`` is fed at run time.

The pads fix the result's shape and must be constants (``value_inputs``), but the fill value
does not: TVM's converter read it as a constant and failed on a graph input. Here the input is
padded with zeros, and a mask padded the same way (ones inside, zeros in the border) selects
the run-time value in the border. Other modes ignore ``constant_value``.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.frontend.converters import register


def _run_time_value(inputs, params):
    value = inputs[2] if len(inputs) > 2 else None
    if value is None or isinstance(value, tvm.ir.GenericConst):
        return None
    if isinstance(onnx_frontend.get_constant(value, params), tvm.ir.GenericConst):
        return None
    return value


@register("Pad")
class Pad(onnx_frontend.Pad):
    @classmethod
    def _pad(cls, impl, bb, inputs, attr, params):
        value = _run_time_value(inputs, params)
        if value is None:
            return impl.__func__(cls, bb, inputs, attr, params)
        inputs = list(inputs)
        inputs[2] = None
        padded = bb.normalize(impl.__func__(cls, bb, inputs, attr, params))
        mode = attr.get("mode", b"constant")
        if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
            return padded
        x = inputs[0]
        inputs[0] = bb.normalize(relax.op.ones_like(x, "int8"))
        mask = bb.normalize(impl.__func__(cls, bb, inputs, attr, params))
        fill = relax.op.astype(relax.op.reshape(value, []), x.ty.dtype)
        return relax.op.where(relax.op.astype(mask, "bool"), padded, fill)

    @classmethod
    def _impl_v11(cls, bb, inputs, attr, params):
        return cls._pad(onnx_frontend.Pad._impl_v11, bb, inputs, attr, params)

    @classmethod
    def _impl_v18(cls, bb, inputs, attr, params):
        return cls._pad(onnx_frontend.Pad._impl_v18, bb, inputs, attr, params)

    @classmethod
    def _impl_v19(cls, bb, inputs, attr, params):
        return cls._pad(onnx_frontend.Pad._impl_v19, bb, inputs, attr, params)
