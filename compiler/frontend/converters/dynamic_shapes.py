"""Converters that keep a dynamic batch dimension working where TVM's importer assumes static
shapes.

- ``Expand`` with a constant target shape reads ``dim.value`` of every input dim, which a
  symbolic batch dim (``tirx.Var``) lacks. With a dynamic input, the constant target is handed
  to the importer's own shape-expression path instead, which applies ONNX broadcasting to
  symbolic dims (``compiler/simplify.py`` writes such targets: ``[B, 3, 4]`` → ``[1, 3, 4]``).
- ``Resize`` (``resize.py``) takes ``sizes`` that are a shape expression naming ``x``'s own
  symbolic dims for the axes it keeps (``Concat(Shape(x)[:2], [H, W])``).
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.frontend.converters import register


def _has_symbolic_dims(expr) -> bool:
    ty = getattr(expr, "ty", None)
    shape = getattr(ty, "shape", None)
    if not isinstance(shape, relax.ShapeExpr):
        return False
    return any(not isinstance(d, tirx.IntImm) for d in shape.values)


@register("Expand")
class Expand(onnx_frontend.Expand):
    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        data, shape = inputs[0], inputs[1]
        if isinstance(shape, tvm.ir.GenericConst) and _has_symbolic_dims(data):
            values = [int(v) for v in shape.value.numpy().reshape(-1)]
            inputs[1] = relax.ShapeExpr(values)
        return onnx_frontend.Expand._impl_v13.__func__(cls, bb, inputs, attr, params)
