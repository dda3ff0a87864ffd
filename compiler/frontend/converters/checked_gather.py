"""``Gather`` with its indices checked at run time.

TVM's ``take`` reads out of bounds for an index past the axis (its fast mode: garbage for index
= rows, a segfault for a huge one), where ONNX Runtime refuses the run. Any model fed token ids
is exposed. Where the indices come from the graph at run time, this converter routes them
through a small kernel that checks each one against ``[-n, n)``, wraps the negative ones as
ONNX says, and fails the run with the indices' name where one is out of range; ``take`` then
reads only checked indices. Constant indices (most gathers: shapes, fixed slices) are TVM's as
before. The check is one pass over the indices: for BERT's 128 token ids, under a microsecond.

Indices of any rank are checked, 0-d ones and those with symbolic dims (a dynamic batch) too;
only a gather along an axis whose length is itself dynamic keeps TVM's unchecked lowering.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.frontend.converters import register
from tvmforge.runtime.executor import OUT_OF_RANGE


def _shape_dims(expr: relax.Expr) -> list | None:
    """The dims of a tensor's shape: ints, or TIR variables for symbolic ones (a dynamic
    batch); ``None`` when only the rank (or nothing) is known."""
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    dims: list = []
    for d in ty.shape.values:
        if isinstance(d, tvm.tirx.IntImm):
            dims.append(int(d.value))
        elif isinstance(d, tvm.tirx.Var):
            dims.append(d)
        else:  # an expression of variables (n * 2): leave it to TVM
            return None
    return dims


def _check_kernel(dims: list, dtype: str, extent: int, label: str):
    """A PrimFunc: ``out = idx + extent where idx < 0``, asserting ``-extent <= idx < extent``.

    ``dims`` are ints or TIR variables (symbolic dims, matched from the buffer at run time);
    a 0-d index is one checked scalar."""
    rank = len(dims)
    symbols: dict[str, str] = {}
    shape = []
    for d in dims:
        if isinstance(d, int):
            shape.append(f"T.int64({d})")
        else:
            name = symbols.setdefault(str(d.name), f"s{len(symbols)}")
            shape.append(name)
    dims_text = ", ".join(shape) + ("," if rank == 1 else "")
    zero = f"T.{dtype}(0)"
    n = f"T.{dtype}({extent})"
    lines = [
        "@T.prim_func(private=True, s_tir=True)",
        "def main(idx_handle: T.handle, out_handle: T.handle):",
        '    T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True, "op_pattern": 8})',
        *(f"    {name} = T.int64()" for name in symbols.values()),
        f'    idx = T.match_buffer(idx_handle, ({dims_text}), "{dtype}")',
        f'    out = T.match_buffer(out_handle, ({dims_text}), "{dtype}")',
    ]
    if rank == 0:
        index, indent = "()", "    "
        lines.append('    with T.sblock("check_index"):')
    else:
        names = [f"i{k}" for k in range(rank)]
        index, indent = ", ".join(f"v{k}" for k in range(rank)), "        "
        lines += [
            f"    for {', '.join(names)} in T.grid({dims_text}):",
            '        with T.sblock("check_index"):',
            # one axis: T.axis.spatial (TVMScript cannot unpack ``v0, = T.axis.remap``)
            f"            v0 = T.axis.spatial({shape[0]}, i0)"
            if rank == 1
            else f'            {index} = T.axis.remap("{"S" * rank}", [{", ".join(names)}])',
        ]
    at = f"idx[{index}]"
    lines += [
        f"{indent}    assert {at} >= -{n} and {at} < {n}, "
        f'"{OUT_OF_RANGE}: {label} holds an index outside [-{extent}, {extent})"',
        f"{indent}    out[{index}] = T.if_then_else({at} < {zero}, {at} + {n}, {at})",
    ]
    return tvm.script.from_source("\n".join(lines))


@register("Gather")
class CheckedGather(onnx_frontend.Gather):
    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        data, indices = inputs[0], inputs[1]
        axis = attr.get("axis", 0)
        runtime_indices = not isinstance(indices, (tvm.ir.GenericConst, relax.ShapeExpr))
        data_shape = _shape_dims(data) if isinstance(data, relax.Expr) else None
        index_dims = _shape_dims(indices) if runtime_indices else None
        dtype = getattr(getattr(indices, "ty", None), "dtype", None)
        if (data_shape is None or index_dims is None or str(dtype) not in ("int32", "int64")
                or isinstance(data, relax.ShapeExpr) or 0 in index_dims):
            return super()._impl_v13(bb, inputs, attr, params)
        axis = axis + len(data_shape) if axis < 0 else axis
        extent = data_shape[axis] if 0 <= axis < len(data_shape) else None
        if not isinstance(extent, int):  # a dynamic axis: nothing fixed to check against
            return super()._impl_v13(bb, inputs, attr, params)
        name = indices.name if isinstance(indices, relax.Var) else "an index tensor"
        label = f"input {name!r} of a Gather over {extent} entries"
        kernel = _check_kernel(index_dims, str(dtype), extent, label.replace('"', "'"))
        gv = bb.add_func(kernel, "check_gather_indices")
        checked = bb.emit(relax.call_tir(gv, [indices], indices.ty))
        return relax.op.take(data, checked, axis)

    _impl_v1 = _impl_v13
    _impl_v11 = _impl_v13
