"""Converters that keep a dynamic batch dimension working where TVM's importer assumes static
shapes.

- ``Expand`` with a constant target shape reads ``dim.value`` of every input dim, which a
  symbolic batch dim (``tirx.Var``) lacks. With a dynamic input, the constant target is handed
  to the importer's own shape-expression path instead, which applies ONNX broadcasting to
  symbolic dims (``compiler/simplify.py`` writes such targets: ``[B, 3, 4]`` → ``[1, 3, 4]``).
- ``Resize`` whose ``sizes`` come from ``Concat(Shape(x)[:2], [H, W])`` gets them as a shape
  expression ``[B, C, H, W]`` and reads ``.value`` of every entry, though only the spatial
  ones count (TVM resizes spatial axes only). Batch and channel entries that are ``x``'s own
  dims (unchanged by the resize, as ONNX then means too) are passed on as placeholders.
"""

from __future__ import annotations

import tvm
import tvm_ffi
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


@register("Resize")
class Resize(onnx_frontend.Resize):
    @classmethod
    def _impl_v18(cls, bb, inputs, attr, params):
        x = inputs[0]
        sizes = inputs[3] if len(inputs) > 3 else None
        if isinstance(sizes, relax.ShapeExpr) and _has_symbolic_dims(x):
            values = list(sizes.values)
            dims = list(x.ty.shape.values)
            kept = all(
                isinstance(v, tirx.IntImm) or tvm_ffi.structural_equal(v, d)
                for v, d in zip(values[:2], dims[:2], strict=False)
            )
            if kept and len(values) == len(dims):
                inputs[3] = relax.ShapeExpr([1, 1, *values[2:]])
        return onnx_frontend.Resize._impl_v18.__func__(cls, bb, inputs, attr, params)
