"""1-D convolutions as 2-D ones of height 1, so that they get the 2-D convs' kernels.

Audio models convolve along time: the STFT of a log-mel front end is a ``Conv`` over the raw
samples (openWakeWord's ``melspectrogram``: 1 input channel, 257 outputs, kernel 512,
stride 160; silero-vad's: kernel 256, stride 128), and TCN/wav2vec-style encoders stack 1-D
convs. TVM legalizes ``conv1d`` to a plain TE contraction that no tvmforge schedule blocks
for the vector unit (the generic contraction rule ran the melspectrogram's two STFT convs at
1.6 GFLOP/s: 32 ms against ONNX Runtime's 0.8 ms). Every 2-D conv path (blocked ``NCHW{B}c``
layout with packed weights, register tiles from ``CpuFeatures``, tuning) applies to a 1-D conv
written as a 2-D one over a ``1 x W`` image:

    conv1d(x[N, C, W], w[O, C/g, K]) == squeeze(conv2d(x[N, C, 1, W], w[O, C/g, 1, K]), 2)

with strides ``(1, s)``, padding ``(0, l, 0, r)``, dilation ``(1, d)`` and the same groups.
The rewrite is exact (the same products summed in the same order per output) and takes
``conv1d`` calls in ``NCW``/``OIW`` layout with float32 data and static shapes (a dynamic
batch allowed); others are left as they are. A constant weight is reshaped in place so the
weight packing sees a constant.

Column convs
------------
Exporters that have no 1-D conv write one as a 2-D conv over a *column*: Keras/jax2tf
``Conv1D`` becomes ``ExpandDims`` + ``Conv2D`` with kernel ``k x 1`` on ``[N, C, L, 1]``
(Google Magika: 256 -> 512 channels, kernel 5 x 1, L = 512). The blocked conv kernels put
their register tile along the output row, one pixel wide here, so such a conv ran at 64
GFLOP/s against ONNX Runtime's 160. A conv2d whose input is one pixel wide, with a ``k x 1``
kernel and no padding along the width, is the same conv over the row ``[N, C, 1, L]``, and
``[N, C, L, 1]`` and ``[N, C, 1, L]`` are the same bytes: it becomes ``reshape``, a ``1 x k``
conv with the height's stride, padding and dilation moved to the width, and ``reshape`` back
(exact; no data moves).
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax
from tvm.relax import op as R

from tvmforge.passes.graph._mutator import bound_constant, mutator_pass
from tvmforge.passes.graph._shapes import dims, static_but_batch

log = logging.getLogger(__name__)

__all__ = ["conv1d_as_conv2d", "why_not", "why_not_column"]


def why_not(call: relax.Call) -> str | None:
    """``None`` when the 1-D conv can run as a 2-D one, else the reason."""
    attrs = call.attrs
    layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout)
    if layouts != ("NCW", "OIW", "NCW"):
        return f"layouts {layouts}"
    dtypes = {str(call.args[0].ty.dtype), str(call.args[1].ty.dtype), str(call.ty.dtype)}
    if dtypes != {"float32"}:
        return f"dtypes {sorted(dtypes)}"
    weight = dims(call.args[1])
    if static_but_batch(call.args[0]) is None or weight is None or "$" in str(weight):
        return "symbolic shape"
    return None


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.rewritten = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d":
            return self._column(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv1d"):
            return call
        reason = why_not(call)
        if reason is not None:
            log.debug("conv1d left to LegalizeOps: %s", reason)
            return call
        self.rewritten += 1
        data, weight = call.args
        attrs = call.attrs
        o, c, k = dims(weight)
        value = bound_constant(self, weight)
        if value is not None:  # a constant stays one, so the weight packing sees it
            w2 = relax.const(value.reshape(o, c, 1, k), "float32")
        else:
            w2 = self.builder_.emit(R.reshape(weight, [o, c, 1, k]))
        left, right = (int(p) for p in attrs.padding)
        y = self.builder_.emit(
            R.nn.conv2d(
                self.builder_.emit(R.expand_dims(data, 2)),
                w2,
                strides=(1, int(attrs.strides[0])),
                padding=(0, left, 0, right),
                dilation=(1, int(attrs.dilation[0])),
                groups=int(attrs.groups),
            )
        )
        return R.squeeze(y, [2])


    def _column(self, call: relax.Call) -> relax.Expr:
        """A ``k x 1`` conv over a one-pixel-wide image as a ``1 x k`` conv over the row."""
        reason = why_not_column(call)
        if reason is not None:
            return call
        self.rewritten += 1
        data, weight = call.args
        attrs = call.attrs
        _n, c, h, _w = static_but_batch(data)
        o, ci, k, _ = dims(weight)
        out = static_but_batch(call)
        value = bound_constant(self, weight)
        if value is not None:
            w2 = relax.const(value.reshape(o, ci, 1, k), "float32")
        else:
            w2 = self.builder_.emit(R.reshape(weight, [o, ci, 1, k]))
        batch = data.ty.shape.values[0]
        top, _left, bottom, _right = (int(p) for p in attrs.padding)
        y = self.builder_.emit(
            R.nn.conv2d(
                self.builder_.emit(R.reshape(data, [batch, c, 1, h])),
                w2,
                strides=(1, int(attrs.strides[0])),
                padding=(0, top, 0, bottom),
                dilation=(1, int(attrs.dilation[0])),
                groups=int(attrs.groups),
            )
        )
        return R.reshape(y, [batch, out[1], out[2], 1])


def why_not_column(call: relax.Call) -> str | None:
    """``None`` when the conv2d is a ``k x 1`` conv over a one-pixel-wide image (k > 1)."""
    attrs = call.attrs
    if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) != ("NCHW", "OIHW", "NCHW"):
        return "layouts"
    dtypes = {str(call.args[0].ty.dtype), str(call.args[1].ty.dtype), str(call.ty.dtype)}
    if dtypes != {"float32"}:
        return "dtypes"
    data, weight = static_but_batch(call.args[0]), dims(call.args[1])
    if data is None or weight is None or "$" in str(weight) or static_but_batch(call) is None:
        return "symbolic shape"
    if data[3] != 1 or weight[3] != 1 or weight[2] == 1:
        return "not a k x 1 conv over a one-pixel-wide image"
    if int(attrs.padding[1]) or int(attrs.padding[3]):
        return "padded along the width"
    return None


def conv1d_as_conv2d() -> tvm.transform.Pass:
    """Rewrite float32 ``conv1d`` calls (static shapes but perhaps the batch) as ``conv2d``
    over a height-1 image, on every target.

    Returns
    -------
    tvm.transform.Pass
        A Relax module pass.
    """
    return mutator_pass(
        "Conv1dAsConv2d",
        lambda mod, _size: _Rewriter(mod),
        lambda: 1,  # the height of the image a 1-D conv becomes
        count="rewritten",
        logger=log,
        message="rewrote %d conv1d as conv2d of height %d",
    )
