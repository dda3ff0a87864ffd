"""Converters for old-opset forms that TVM's importer handles only in their newest form.

- ``Slice`` before opset 10 takes ``starts``/``ends``/``axes`` as attributes; TVM only has
  the input form (opset 10+), and fails on the old one.
- ``PRelu`` before opset 7 applies a 1-D slope of size C per channel (axis 1), not by numpy
  broadcasting (which would align it with the last axis); TVM asserts on it.
"""

from __future__ import annotations

from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.frontend.converters import register


@register("Slice")
class Slice(onnx_frontend.Slice):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        starts = [int(v) for v in attr["starts"]]
        ends = [int(v) for v in attr["ends"]]
        axes = [int(v) for v in attr.get("axes", range(len(starts)))]
        return relax.op.strided_slice(inputs[0], axes=axes, begin=starts, end=ends)

    @classmethod
    def _impl_v10(cls, bb, inputs, attr, params):
        return onnx_frontend.Slice._impl_v13.__func__(cls, bb, inputs, attr, params)


@register("PRelu")
class PRelu(onnx_frontend.PRelu):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        x, slope = inputs[0], inputs[1]
        x_shape = [int(d) for d in x.ty.shape]
        s_shape = [int(d) for d in slope.ty.shape]
        if len(s_shape) == 1 and len(x_shape) >= 2 and s_shape[0] == x_shape[1] > 1:
            slope = relax.op.reshape(slope, [s_shape[0]] + [1] * (len(x_shape) - 2))
        zero = relax.const(0, x.ty.dtype)
        return relax.op.where(relax.op.less(x, zero), relax.op.multiply(x, slope), x)

    @classmethod
    def _impl_v7(cls, bb, inputs, attr, params):
        return onnx_frontend.PRelu._impl_v1.__func__(cls, bb, inputs, attr, params)
