"""``Gather`` with its indices checked at run time.

TVM's ``take`` reads out of bounds for an index past the axis (its fast mode: garbage for index
= rows, a segfault for a huge one), where ONNX Runtime refuses the run. Any model fed token ids
is exposed. Where the indices come from the graph at run time, this converter routes them
through a small kernel that checks each one against ``[-n, n)``, wraps the negative ones as
ONNX says, and fails the run with the indices' name where one is out of range; ``take`` then
reads only checked indices. Constant indices (most gathers: shapes, fixed slices) are TVM's as
before. The check is one pass over the indices: for BERT's 128 token ids, under a microsecond.

Indices whose shape is not static (a dynamic batch) keep TVM's unchecked lowering.
"""

from __future__ import annotations

import math

import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.frontend.converters import register
from tvmforge.runtime.executor import OUT_OF_RANGE


def _static_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    if not isinstance(ty.shape, relax.ShapeExpr):
        return None
    dims = []
    for d in ty.shape.values:
        if not isinstance(d, tvm.tirx.IntImm):
            return None
        dims.append(int(d.value))
    return tuple(dims)


def _check_kernel(shape: tuple[int, ...], dtype: str, extent: int, label: str):
    """A PrimFunc: ``out = idx + extent where idx < 0``, asserting ``-extent <= idx < extent``."""
    rank = len(shape)
    if rank == 0:
        return None
    names = [f"i{k}" for k in range(rank)]
    dims = ", ".join(f"T.int64({d})" for d in shape) + ("," if rank == 1 else "")
    index = ", ".join(f"v{k}" for k in range(rank))
    zero = f'T.{dtype}(0)'
    n = f"T.{dtype}({extent})"
    lines = [
        "@T.prim_func(private=True, s_tir=True)",
        f'def main(idx: T.Buffer(({dims}), "{dtype}"), out: T.Buffer(({dims}), "{dtype}")):',
        '    T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})',
        f"    for {', '.join(names)} in T.grid({dims}):",
        '        with T.sblock("check_index"):',
        f"            {index}{',' if rank == 1 else ''} = T.axis.remap("
        f'"{"S" * rank}", [{", ".join(names)}])',
        f"            assert idx[{index}] >= -{n} and idx[{index}] < {n}, "
        f'"{OUT_OF_RANGE}: {label} holds an index outside [-{extent}, {extent})"',
        f"            out[{index}] = T.if_then_else(idx[{index}] < {zero}, "
        f"idx[{index}] + {n}, idx[{index}])",
    ]
    return tvm.script.from_source("\n".join(lines))


@register("Gather")
class CheckedGather(onnx_frontend.Gather):
    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        data, indices = inputs[0], inputs[1]
        axis = attr.get("axis", 0)
        runtime_indices = not isinstance(indices, (tvm.ir.GenericConst, relax.ShapeExpr))
        data_shape = _static_shape(data) if isinstance(data, relax.Expr) else None
        index_shape = _static_shape(indices) if runtime_indices else None
        dtype = getattr(getattr(indices, "ty", None), "dtype", None)
        if (data_shape is None or not index_shape or str(dtype) not in ("int32", "int64")
                or isinstance(data, relax.ShapeExpr) or math.prod(index_shape) == 0):
            return super()._impl_v13(bb, inputs, attr, params)
        axis = axis + len(data_shape) if axis < 0 else axis
        extent = data_shape[axis]
        name = indices.name if isinstance(indices, relax.Var) else "an index tensor"
        label = f"input {name!r} of a Gather over {extent} entries"
        kernel = _check_kernel(index_shape, str(dtype), extent, label.replace('"', "'"))
        if kernel is None:
            return super()._impl_v13(bb, inputs, attr, params)
        gv = bb.add_func(kernel, "check_gather_indices")
        checked = bb.emit(relax.call_tir(gv, [indices], indices.ty))
        return relax.op.take(data, checked, axis)

    _impl_v1 = _impl_v13
    _impl_v11 = _impl_v13
