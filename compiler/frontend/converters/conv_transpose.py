"""``ConvTranspose`` with an ``output_shape`` attribute.

ONNX derives the pads from it: ``total = stride * (in - 1) + output_padding + (kernel - 1) *
dilation + 1 - out`` per spatial axis, split between begin and end (the larger half at the
end for ``SAME_UPPER``, at the begin otherwise). A negative total means the output is
*larger* than the transposed convolution covers: the missing rows are zeros at the end, i.e.
``output_padding``. TVM's converter ignored ``output_shape`` (and returned the shape the pads
gave). The resolved pads go to TVM's converter.
"""

from __future__ import annotations

from tvm.relax.frontend.onnx import onnx_frontend

from tvmforge.frontend.converters import register


@register("ConvTranspose")
class ConvTranspose(onnx_frontend.ConvTranspose):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        out_shape = attr.get("output_shape")
        if out_shape:
            attr = dict(attr)
            x_shape = [int(d) for d in inputs[0].ty.shape]
            w_shape = [int(d) for d in inputs[1].ty.shape]
            spatial = len(x_shape) - 2
            out_shape = [int(d) for d in out_shape][-spatial:]
            strides = list(attr.get("strides", [1] * spatial))
            dilations = list(attr.get("dilations", [1] * spatial))
            kernel = list(attr.get("kernel_shape", w_shape[2:]))
            out_pad = list(attr.get("output_padding", [0] * spatial))
            auto_pad = attr.pop("auto_pad", b"NOTSET")
            auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
            begin, end = [0] * spatial, [0] * spatial
            for i in range(spatial):
                total = (
                    strides[i] * (x_shape[2 + i] - 1)
                    + out_pad[i]
                    + (kernel[i] - 1) * dilations[i]
                    + 1
                    - out_shape[i]
                )
                if total < 0:
                    out_pad[i] -= total
                    continue
                small, large = total // 2, total - total // 2
                begin[i], end[i] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
            attr.pop("output_shape")
            attr["pads"] = begin + end
            attr["output_padding"] = out_pad
        return onnx_frontend.ConvTranspose._impl_v1.__func__(cls, bb, inputs, attr, params)
