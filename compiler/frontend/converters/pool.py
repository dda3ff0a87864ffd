"""``MaxPool``'s second output, ``Indices``: where in the input each maximum came from.

The index is into the flattened input: ``((n * C + c) * H + h) * W + w`` for 2-D (row major,
``storage_order=0``), or with the spatial axes in column-major order (``storage_order=1``:
``(n * C + c) * H * W + w * H + h``); padding never wins. Ties go to the first position of the
window in row-major order, as ONNX Runtime does. ``Y`` is TVM's pooling; ``Indices`` is a
TE reduction over the window with an (index, value) argmax reducer, on the output shape that
``Y`` has (so ``ceil_mode`` and ``auto_pad`` mean the same for both).
"""

from __future__ import annotations

from tvm import relax, te, tirx
from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.frontend.converters import register


def _argmax_reducer(dtype: str):
    def combine(lhs, rhs):
        keep = tirx.any(lhs[1] > rhs[1], tirx.all(lhs[1] == rhs[1], lhs[0] <= rhs[0]))
        return tirx.Select(keep, lhs[0], rhs[0]), tirx.Select(keep, lhs[1], rhs[1])

    def identity(t0, t1):
        return tirx.const(-1, t0), tirx.min_value(t1)

    return te.comm_reducer(combine, identity, name="argmax_window")


def _indices(x, out_shape, kernel, strides, dilations, begin, storage_order):
    shape = [int(d) for d in x.shape]
    spatial = len(shape) - 2
    reducer = _argmax_reducer(x.dtype)
    axes = [te.reduce_axis((0, k), name=f"k{i}") for i, k in enumerate(kernel)]
    size = 1
    for d in shape[2:]:
        size *= d

    def fcompute(n, c, *o):
        pos = [o[i] * strides[i] - begin[i] + axes[i] * dilations[i] for i in range(spatial)]
        inside = tirx.all(*[tirx.all(p >= 0, p < shape[2 + i]) for i, p in enumerate(pos)])
        safe = [tirx.Select(inside, p, 0) for p in pos]
        value = tirx.Select(inside, x[(n, c, *safe)], tirx.min_value(x.dtype))
        flat = 0
        order = range(spatial) if storage_order == 0 else reversed(range(spatial))
        for i in order:
            flat = flat * shape[2 + i] + pos[i]
        flat = (n * shape[1] + c) * size + flat
        return reducer((tirx.Cast("int64", flat), value), axis=axes)

    idx, _ = te.compute(out_shape, fcompute, name="maxpool_indices")
    return idx


@register("MaxPool")
class MaxPool(onnx_frontend.MaxPool):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        y = onnx_frontend.MaxPool._impl_v1.__func__(cls, bb, inputs, dict(attr), params)
        y = bb.normalize(y)
        if int(attr["tvm_custom"]["num_outputs"]) < 2:
            return y
        x = inputs[0]
        in_shape = [int(d) for d in x.ty.shape]
        out_shape = [int(d) for d in y.ty.shape]
        spatial = len(in_shape) - 2
        kernel = [int(k) for k in attr["kernel_shape"]]
        strides = [int(s) for s in attr.get("strides", [1] * spatial)]
        dilations = [int(d) for d in attr.get("dilations", [1] * spatial)]
        auto_pad = attr.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begin = []
            for i in range(spatial):
                total = max(
                    (out_shape[2 + i] - 1) * strides[i]
                    + (kernel[i] - 1) * dilations[i]
                    + 1
                    - in_shape[2 + i],
                    0,
                )
                begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
        elif auto_pad == "VALID":
            begin = [0] * spatial
        else:
            begin = [int(p) for p in attr.get("pads", [0] * (2 * spatial))[:spatial]]
        indices = bb.emit_te(
            _indices, x, out_shape, kernel, strides, dilations, begin,
            int(attr.get("storage_order", 0)),
        )
        return relax.Tuple([y, indices])
