"""``Split`` into parts of any sizes, zero included.

The parts come from the ``split`` attribute (before opset 13) or input (13+, a constant: see
``value_inputs``), or, without them, from the number of outputs: equal parts, and from opset
18 on ``ceil(dim / num_outputs)`` each with a smaller last part. Parts are cut with
``relax.op.split``, which the graph passes understand; with a zero-sized part (which its
strictly increasing indices cannot express) each part is a strided slice, the empty ones
empty tensors.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.errors import CompileError
from tvmforge.frontend.converters import register


def _sizes(node: str, dim: int, splits, n_out: int, opset18: bool) -> list[int]:
    if splits is not None:
        sizes = [int(s) for s in splits]
        if sum(sizes) != dim or any(s < 0 for s in sizes):
            raise CompileError(
                f"node {node} (Split): split sizes {sizes} do not add up to the axis length "
                f"{dim}",
                hint="fix the model's split sizes",
            )
        return sizes
    if opset18:
        chunk = -(-dim // n_out)
        return [max(0, min(chunk, dim - k * chunk)) for k in range(n_out)]
    if dim % n_out:
        raise CompileError(
            f"node {node} (Split): an axis of length {dim} does not split into {n_out} equal "
            "parts",
            hint="give the model split sizes",
        )
    return [dim // n_out] * n_out


def _split(bb, x, axis: int, splits, attr, opset18: bool):
    node = attr["tvm_custom"]["name"] or "(unnamed)"
    n_out = int(attr["tvm_custom"]["num_outputs"])
    shape = x.ty.shape
    rank = len(shape)
    axis = axis + rank if axis < 0 else axis
    dim = shape[axis]
    if not isinstance(dim, tvm.tirx.IntImm):  # a symbolic axis: TVM's split handles it
        return None
    sizes = _sizes(node, int(dim), splits, n_out, opset18)
    if all(sizes):  # relax's split, which the graph passes (pruning, layouts) understand
        bounds = [sum(sizes[: k + 1]) for k in range(len(sizes) - 1)]
        return relax.op.split(x, bounds if bounds else 1, axis)
    parts, begin = [], 0
    for size in sizes:
        parts.append(
            bb.normalize(relax.op.strided_slice(x, axes=[axis], begin=[begin], end=[begin + size]))
        )
        begin += size
    return relax.Tuple(parts)


@register("Split")
class Split(onnx_frontend.Split):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        splits = attr.get("split")
        out = _split(bb, inputs[0], int(attr.get("axis", 0)), splits, attr, False)
        if out is None:
            return onnx_frontend.Split._impl_v1.__func__(cls, bb, inputs, attr, params)
        return out

    @classmethod
    def _from_input(cls, bb, inputs, attr, params, opset18: bool):
        """Opset 13+: split sizes from the (constant) second input, if any."""
        splits = inputs[1] if len(inputs) > 1 else None
        out = None
        if splits is not None:
            splits = onnx_frontend.get_constant(splits, params)
            if isinstance(splits, tvm.ir.GenericConst):
                splits = splits.value.numpy().reshape(-1).tolist()
                out = _split(bb, inputs[0], int(attr.get("axis", 0)), splits, attr, opset18)
        else:
            out = _split(bb, inputs[0], int(attr.get("axis", 0)), None, attr, opset18)
        if out is None:  # run-time sizes or a symbolic axis: TVM's converter
            return onnx_frontend.Split._impl_v13.__func__(cls, bb, inputs, attr, params)
        return out

    @classmethod
    def _impl_v13(cls, bb, inputs, attr, params):
        return cls._from_input(bb, inputs, attr, params, False)

    @classmethod
    def _impl_v18(cls, bb, inputs, attr, params):
        return cls._from_input(bb, inputs, attr, params, True)
