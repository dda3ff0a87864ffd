"""``CumSum`` whose ``axis`` is only known at run time.

The result has the input's shape whatever the axis, so the axis need not be frozen: the
cumulative sum is computed along every axis and the run-time axis (negative ones too) picks
one. That is rank-times the work, for a form exported models rarely have (they pass a
constant, which keeps TVM's single kernel).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.frontend.converters import register


@register("CumSum")
class CumSum(onnx_frontend.CumSum):
    @classmethod
    def _impl_v14(cls, bb, inputs, attr, params):
        axis = inputs[1] if len(inputs) > 1 else None
        const = onnx_frontend.get_constant(axis, params) if axis is not None else None
        if axis is None or isinstance(const, tvm.ir.GenericConst):
            return onnx_frontend.CumSum._impl_v14.__func__(cls, bb, inputs, attr, params)
        x = inputs[0]
        rank = int(x.ty.ndim)
        which = bb.normalize(relax.op.reshape(relax.op.astype(axis, "int64"), []))
        result = None
        for k in reversed(range(rank)):
            fixed = relax.const(k, "int64")
            part = bb.normalize(
                onnx_frontend.CumSum._impl_v14.__func__(cls, bb, [x, fixed], dict(attr), params)
            )
            if result is None:
                result = part
                continue
            hit = relax.op.logical_or(
                relax.op.equal(which, fixed), relax.op.equal(which, relax.const(k - rank, "int64"))
            )
            result = bb.normalize(relax.op.where(hit, part, result))
        return result
