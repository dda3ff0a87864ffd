"""Pack constant conv2d weights so the CPU kernel reads one vector of output channels at a time.

The layout
----------
A conv2d in NCHW with a constant OIHW weight ``W[F, C, KH, KW]`` becomes a ``call_tir`` to a
TE convolution that reads the weight packed as ``Wp[F/B, C, KH, KW, B]``:

    Wp[fo, c, ky, kx, fi] = W[fo * B + fi, c, ky, kx]        (B = fp32 lanes of the target)
    out[n, f, y, x] = sum_{c, ky, kx} pad(in)[n, c, y*sh + ky*dh, x*sw + kx*dw]
                                        * Wp[f // B, c, ky, kx, f % B]

Activations stay NCHW, so nothing else in the graph changes. The packing is done here with
numpy on the constant, once, at compile time. The conv block carries the annotation
``tvmforge.packed_conv = B``; ``schedule_cpu_default`` recognises it and gives it the
register tile of x86/ARM direct convolutions (oneDNN, TVM's ``conv2d_NCHWc``): ``B`` output
channels in one vector register, several vectors of channels times several output columns
as accumulators, the input value broadcast, the weights loaded as contiguous vectors.

What it rewrites
----------------
``relax.nn.conv2d`` with data/out layout NCHW, kernel layout OIHW, one group, float32
throughout, static shapes (a dynamic batch aside) and a constant weight. ``F`` off the
vector width is padded with zero filters to the next multiple of ``B`` (the conv computes
them, a crop drops them in the register tile) when that adds at most 1/8 to its work
(SqueezeNet's 1000 classes: 1008); others (PP-OCRv4's 24-channel convs: 32 would be a third
more) and depthwise, grouped or other dtypes or layouts are left to ``LegalizeOps``.
Half-register blocks (``B/2``) for such ``F`` were tried and measured no faster (SqueezeNet's
1000 classes: 60 against 57 GFLOP/s) or slower (PP-OCRv4's 96->24 3x3 at 160x160: 74
against 111) than the contraction recipe.

Where it sits
-------------
Not in tvmforge's default pipeline any more: ``nchwc_layout`` takes every conv this pass
would, packs its weights the same way (``pack_oihw``) and keeps the activations blocked
``NCHW{B}c`` between convs, which removes the NCHW epilogue's scatter (ResNet-50 1.13x ->
1.04x ONNX Runtime, DenseNet-121 0.87x -> 0.73x). This pass stays a registered Relax pass for
a pipeline that must keep NCHW activations: run it in the graph stage, after ``fold_conv_bn``
(which rewrites the weight it folds a BatchNorm into) and constant folding, before
``LegalizeOps`` (in tvmforge's pipeline: among the caller's ``graph`` passes, which run
before ``nchwc_layout``). It only applies when the current target is an ``llvm`` CPU target
(``tvm.target.Target.current()`` or the one passed in); elsewhere it returns the module
unchanged. This module also holds the TE definitions of the blocked convs
(``conv2d_nchwc_packed``, ``depthwise_conv2d_nchwc``).
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax, te, topi

from tvmforge.passes.graph._mutator import WeightPacker, cpu_lanes, mutator_pass
from tvmforge.passes.graph._shapes import static_but_batch

log = logging.getLogger(__name__)

__all__ = [
    "PACKED_CONV_ATTR",
    "conv2d_nchwc_packed",
    "depthwise_conv2d_nchwc",
    "pack_conv_weights",
    "pack_oihw",
]

# Block annotation on the packed conv's reduction block: its value is the block size B.
PACKED_CONV_ATTR = "tvmforge.packed_conv"


# Output channels off the vector width are padded with zero filters up to it when that wastes
# at most this fraction of the conv's work (SqueezeNet's 1000 classes: 1008, 0.8 %).
MAX_PAD_WASTE = 1 / 8


def pack_oihw(weight: np.ndarray, block: int) -> np.ndarray:
    """``W[F, C, KH, KW]`` -> ``Wp[ceil(F/block), C, KH, KW, block]`` (zero filters pad ``F``
    up to a multiple of ``block``)."""
    f, c, kh, kw = weight.shape
    if f % block:
        pad = np.zeros((block - f % block, c, kh, kw), weight.dtype)
        weight = np.concatenate([weight, pad])
        f = weight.shape[0]
    return np.ascontiguousarray(
        weight.reshape(f // block, block, c, kh, kw).transpose(0, 2, 3, 4, 1)
    )


def _pad_plane(
    data: te.Tensor,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
) -> tuple[te.Tensor, int, int]:
    """``data`` (``[N, C, H, W]`` or blocked ``[N, C/B, H, W, B]``) zero-padded on its plane
    (a ``pad_temp`` stage, only when there is padding), and the conv's output height and
    width."""
    h, w = int(data.shape[2]), int(data.shape[3])
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilation
    top, left, bottom, right = padding
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (w + left + right - dw * (kw - 1) - 1) // sw + 1
    if any(padding):
        tail = [0] * (len(data.shape) - 4)
        data = topi.nn.pad(
            data, [0, 0, top, left, *tail], [0, 0, bottom, right, *tail], name="pad_temp"
        )
    return data, oh, ow


def conv2d_nchw_packed(
    data: te.Tensor,
    weight: te.Tensor,
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
    channels: int | None = None,
) -> te.Tensor:
    """The TE definition: NCHW data, packed weight ``[F/B, C, KH, KW, B]``, NCHW output.

    ``channels`` below ``F`` (the weight padded with zero filters): the conv computes all
    ``F`` and a crop keeps the first ``channels``; the schedule computes the crop (and the
    epilogue fused after it) per register tile, so the padded channels never leave it."""
    n = data.shape[0]  # static, or a dynamic batch
    c = int(data.shape[1])
    fo, _c, kh, kw, block = (int(v) for v in weight.shape)
    sh, sw = strides
    dh, dw = dilation
    data, oh, ow = _pad_plane(data, (kh, kw), strides, padding, dilation)
    rc = te.reduce_axis((0, c), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    out = te.compute(
        (n, fo * block, oh, ow),
        lambda b, f, y, x: te.sum(
            data[b, rc, y * sh + ry * dh, x * sw + rx * dw]
            * weight[f // block, rc, ry, rx, f % block],
            axis=[rc, ry, rx],
        ),
        name="conv2d_nchw_packed",
        attrs={PACKED_CONV_ATTR: block},
    )
    if channels is None or channels == fo * block:
        return out
    return te.compute(
        (n, channels, oh, ow), lambda b, f, y, x: out[b, f, y, x], name="conv2d_nchw_crop"
    )


def conv2d_nchwc_packed(
    data: te.Tensor,
    weight: te.Tensor,
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
) -> te.Tensor:
    """The blocked-layout conv (``nchwc_layout``): weight ``[F/B, C, KH, KW, B]``, output
    ``[N, F/B, OH, OW, B]``; the input blocked ``[N, C/B, H, W, B]`` or plain NCHW.

    The reduction runs over the same ``(c, ky, kx)`` as ``conv2d_nchw_packed``; only the
    output's (and perhaps the input's) layout differ."""
    blocked_input = len(data.shape) == 5
    n = data.shape[0]  # static, or a dynamic batch
    bi = int(data.shape[4]) if blocked_input else 1
    c = int(data.shape[1]) * bi
    fo, _c, kh, kw, block = (int(v) for v in weight.shape)
    sh, sw = strides
    dh, dw = dilation
    data, oh, ow = _pad_plane(data, (kh, kw), strides, padding, dilation)
    rc = te.reduce_axis((0, c), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")

    def read(b, ch, yy, xx):
        if blocked_input:
            return data[b, ch // bi, yy, xx, ch % bi]
        return data[b, ch, yy, xx]

    return te.compute(
        (n, fo, oh, ow, block),
        lambda b, f, y, x, v: te.sum(
            read(b, rc, y * sh + ry * dh, x * sw + rx * dw) * weight[f, rc, ry, rx, v],
            axis=[rc, ry, rx],
        ),
        name="conv2d_nchwc_packed",
        attrs={PACKED_CONV_ATTR: block},
    )


def depthwise_conv2d_nchwc(
    data: te.Tensor,
    weight: te.Tensor,
    strides: tuple[int, int],
    padding: tuple[int, int, int, int],
    dilation: tuple[int, int],
) -> te.Tensor:
    """Depthwise conv in the blocked layout (``nchwc_layout``): input ``[N, C/B, H, W, B]``,
    weight ``[C/B, KH, KW, B]``, output ``[N, C/B, OH, OW, B]``; every output vector is a
    sum of ``KH * KW`` contiguous input vectors times weight vectors."""
    n = data.shape[0]
    cb, kh, kw, block = (int(v) for v in weight.shape)
    sh, sw = strides
    dh, dw = dilation
    data, oh, ow = _pad_plane(data, (kh, kw), strides, padding, dilation)
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    return te.compute(
        (n, cb, oh, ow, block),
        lambda b, c, y, x, v: te.sum(
            data[b, c, y * sh + ry * dh, x * sw + rx * dw, v] * weight[c, ry, rx, v],
            axis=[ry, rx],
        ),
        name="depthwise_conv2d_nchwc",
    )


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@relax.expr_functor.mutator
class _Packer(WeightPacker):
    def why_not(self, call: relax.Call) -> str | None:
        """``None`` when the conv can be packed, else the reason it is left alone."""
        attrs = call.attrs
        layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout)
        if layouts != ("NCHW", "OIHW", "NCHW"):
            return f"layouts {layouts}"
        if int(attrs.groups) != 1:
            return f"{int(attrs.groups)} groups"
        dtypes = {str(call.args[0].ty.dtype), str(call.args[1].ty.dtype), str(call.ty.dtype)}
        if dtypes != {"float32"}:
            return f"dtypes {sorted(dtypes)}"
        if static_but_batch(call.args[0]) is None or static_but_batch(call) is None:
            return "symbolic shape"
        weight = self._weight(call.args[1])
        if weight is None:
            return "the weight is not a constant"
        f = weight.shape[0]
        padded = -(-f // self.block) * self.block
        if padded - f > MAX_PAD_WASTE * f:
            return f"{f} output channels: padding them to {padded} would waste too much"
        return None

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.conv2d"):
            return call
        reason = self.why_not(call)
        if reason is not None:
            log.debug("conv2d not packed: %s", reason)
            return call
        attrs = call.attrs
        weight = self._weight(call.args[1])
        packed = pack_oihw(weight, self.block)
        self.packed += 1
        return self.builder_.call_te(
            conv2d_nchw_packed,
            call.args[0],
            relax.const(packed, "float32"),
            _ints(attrs.strides),
            _ints(attrs.padding),
            _ints(attrs.dilation),
            int(weight.shape[0]),
            primfunc_name_hint="conv2d_nchw_packed",
        )


def pack_conv_weights(block: int | None = None) -> tvm.transform.Pass:
    """Rewrite eligible conv2d calls to read their constant weights packed for the CPU.

    Parameters
    ----------
    block:
        Output channels per vector (``B``). ``None``: the fp32 lanes of the current target,
        and nothing is rewritten when there is no current target or it is not a CPU.

    Returns
    -------
    tvm.transform.Pass
        A Relax module pass (it adds one PrimFunc per packed conv shape).
    """

    return mutator_pass(
        "PackConvWeights",
        _Packer,
        lambda: block if block is not None else cpu_lanes(),
        count="packed",
        logger=log,
        message="packed %d conv2d weights in blocks of %d",
    )
