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
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax
from tvm.relax import op as R

from tvmforge.passes.graph._mutator import bound_constant, mutator_pass
from tvmforge.passes.graph._shapes import dims, static_but_batch

log = logging.getLogger(__name__)

__all__ = ["conv1d_as_conv2d", "why_not"]


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
