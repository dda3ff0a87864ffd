"""``Max``, ``Min``, ``Sum`` and ``Mean`` over any number of inputs, folded pairwise.

ONNX broadcasts their inputs against each other. TVM's converter broadcast every input to the
common shape, stacked them and reduced the new axis: a copy of every input, and it failed to
build when a 0-d input met a 1-d one. The pairwise ``maximum``/``minimum``/``add`` broadcasts
by itself and fuses into one elementwise kernel; all-constant inputs still fold at import.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.frontend.converters import register


def _pairwise(cls, base, bb, inputs, attr, params):
    if all(isinstance(i, tvm.ir.GenericConst) for i in inputs):
        return base._impl_v1.__func__(cls, bb, inputs, attr, params)
    return cls._impl_dynamic(bb, inputs)


@register("Max")
class Max(onnx_frontend.Max):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        return _pairwise(cls, onnx_frontend.Max, bb, inputs, attr, params)


@register("Min")
class Min(onnx_frontend.Min):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        return _pairwise(cls, onnx_frontend.Min, bb, inputs, attr, params)


@register("Sum")
class Sum(onnx_frontend.Sum):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        return _pairwise(cls, onnx_frontend.Sum, bb, inputs, attr, params)


@register("Mean")
class Mean(onnx_frontend.Mean):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        if all(isinstance(i, tvm.ir.GenericConst) for i in inputs):
            return onnx_frontend.Mean._impl_v1.__func__(cls, bb, inputs, attr, params)
        total = onnx_frontend.MultiInputBase._impl_dynamic.__func__(cls, bb, inputs)
        return relax.op.divide(total, relax.const(len(inputs), str(inputs[0].ty.dtype)))
