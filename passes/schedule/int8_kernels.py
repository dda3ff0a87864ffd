"""Int8 kernels for ``quantize_int8``: their TE definitions and their VNNI schedules.

Layouts
-------
Activations are NHWC ``uint8`` (channels innermost), so the four input channels one VNNI lane
multiplies are contiguous. Weights are int8, packed at compile time to
``[OC/16, KH, KW, IC/4, 16, 4]`` (:func:`pack_weight_vnni`): the 16 x 4 block that one
``vpdpbusd`` reads is 64 contiguous bytes. ``IC`` is padded to a multiple of 4 and ``OC`` to a
multiple of 16 with zero weights; a dense layer ``[M, K] x [K, N]`` is the 1x1 convolution of
the NHWC image ``[1, 1, M, K]``.

The maths (one output channel ``o``, input zero point ``zx``, symmetric weights)::

    acc[o]  = sum_k x_q[k] * w_q[o, k]                      (u8 x s8 -> i32, exact)
    t[o]    = float32(acc[o] + bias[o]) * mult[o]           (bias: i32, zx * sum_k w_q folded in)
            [+ float32(r - zr) * r_mult]                     (a fused residual, u8 or float)
    t[o]    = clip(t[o], lower, upper)                       (a fused ReLU / Clip)
    y[o]    = saturate_u8(round_half_even(t[o]) + zy)        (u8 output; float output: y = t)

Padding inserts ``zx`` (a real zero), so the zero-point term ``zx * sum_k w_q`` is the same at
every output position, borders included.

Schedule (:func:`schedule_vnni`): the output tile ``ow_i x oc_b_i`` pixels x 16-channel blocks is
held in int32 accumulators (registers); the reduction ``kh, kw, ic/4`` runs outside the tile; the
innermost ``16 x 4`` is tensorized with ``vpdpbusd``; the epilogue is computed per tile,
vectorized over 16 channels; outer tiles run in parallel. A tile of at most 15 accumulators is
tensorized with :data:`VNNI_STACK_INTRIN`, its accumulators in ``global`` scope: TVM puts such a
buffer under 1 KiB on the stack, where LLVM keeps it in registers. A bigger tile (up to 24) uses
:data:`VNNI_INTRIN`, as the tuning space does: ``local`` accumulators, a workspace allocation, a
memset and a free per tile.

TVM's own ``dot_16x4_vnni`` intrinsic does not build with the LLVM in TVM 0.27 (the LLVM 22
``vpdpbusd`` intrinsic takes ``<64 x i8>`` operands, TVM passes ``<16 x i32>``), and it wants
the accumulator in ``global`` memory; :data:`VNNI_INTRIN` is the same description with the
operand types LLVM wants and a ``local`` accumulator.

ARM (``+dotprod``: Cortex-A76, Neoverse-N1): :func:`schedule_sdot` is the same schedule with
:data:`SDOT_INTRIN`, the same ``16 x 4`` block as four ``sdot`` instructions (each a ``4 x 4``
block: 4 channels x 4 inputs, 16 contiguous bytes of the packed weight). ``sdot`` multiplies
s8 by s8, so the kernel's input stage (``signed=True``) stores ``x_q - 128`` as int8 (the
padding ``zx - 128``) and the caller adds ``128 * sum_k w_q`` to the bias: the sum is exactly
the u8 one, ``sum_k (x_q - 128) w_q + 128 sum_k w_q``. The ``4 x 16`` accumulator block is 4
NEON registers, so the register tile is at most 6 blocks (:func:`_tile_neon`).

AVX2 without a dot product (AMD Zen 2/3, Intel client CPUs): :func:`schedule_avx2` is the same
schedule with :data:`AVX2_STACK_INTRIN`, the same ``16 x 4`` block as two halves of 8 channels,
each ``vpmaddubsw`` (u8 x s8 pairs into saturating s16) + ``vpmaddwd`` with ones (s16 pairs
into s32) + ``vpaddd``: exact because ``quantize_int8`` gives this family 7-bit weights
(``|w| <= 64``: a pair is at most ``2 * 255 * 64 = 32640``). A block's accumulators are 2
``ymm`` of the 16, so the register tile is at most 6 blocks (:func:`_tile_avx2`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from tvm import s_tir, te, tirx

from tvmforge.passes.schedule.intrinsics.avx2 import AVX2_INTRIN, AVX2_STACK_INTRIN
from tvmforge.passes.schedule.intrinsics.sdot import SDOT_INTRIN
from tvmforge.passes.schedule.intrinsics.vnni import VNNI_INTRIN, VNNI_STACK_INTRIN

log = logging.getLogger(__name__)

__all__ = [
    "AVX2_INTRIN",
    "KERNEL_ATTR",
    "SDOT_INTRIN",
    "VNNI_INTRIN",
    "ConvSpec",
    "Epilogue",
    "apply_default_schedule",
    "pack_weight_vnni",
    "qconv2d_grouped_nhwc",
    "qconv2d_nhwc",
    "qmatmul",
    "schedule_avx2",
    "schedule_depthwise",
    "schedule_sdot",
    "schedule_vnni",
    "vnni_tuning_space",
]

KERNEL_ATTR = "tvmforge.int8_kernel"




# --------------------------------------------------------------------------------------------
# Weights


def pack_weight_vnni(w: np.ndarray) -> np.ndarray:
    """``[OC, IC, KH, KW]`` int8 → ``[ceil(OC/16), KH, KW, ceil(IC/4), 16, 4]``, zero-padded."""
    oc, ic, kh, kw = w.shape
    ocp, icp = -(-oc // 16) * 16, -(-ic // 4) * 4
    padded = np.zeros((ocp, icp, kh, kw), np.int8)
    padded[:oc, :ic] = w
    return np.ascontiguousarray(
        padded.reshape(ocp // 16, 16, icp // 4, 4, kh, kw).transpose(0, 4, 5, 2, 1, 3)
    )


# --------------------------------------------------------------------------------------------
# TE definitions


@dataclass(frozen=True)
class ConvSpec:
    """A 2-D convolution's geometry (NHWC data)."""

    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilation
        pt, pl, pb, pr = self.padding
        return (
            (h + pt + pb - (kh - 1) * dh - 1) // sh + 1,
            (w + pl + pr - (kw - 1) * dw - 1) // sw + 1,
        )


@dataclass(frozen=True)
class Epilogue:
    """What happens to the int32 accumulator (see the module docstring).

    ``lower``/``upper`` bound ``t`` (``None``: unbounded); ``residual`` is ``None``, ``"uint8"``
    (``float32(r - residual_zp) * residual_mult`` is added) or ``"float32"``
    (``r * residual_mult`` is added).
    """

    out_dtype: str = "uint8"
    zero_point: int = 0
    lower: float | None = None
    upper: float | None = None
    residual: str | None = None
    residual_zp: int = 0
    residual_mult: float = 1.0
    layout: str = "NHWC"  # of the output (and of a float residual); "NCHW" for float outputs
    # Fused float stages after the bias / residual / bounds, applied to the real value (then
    # ``mult`` is ``s_x s_w`` alone and the bounds are real): "affine" (``t * P[r] + P[r+1]``,
    # per channel, two rows of the ``post`` tensor), "hswish" (``t * clip(t + 3, 0, 6) / 6``),
    # "sigmoid", "relu", "fq" (a QDQ model's quantize-dequantize inside the chain:
    # ``(saturate(round(t * P[r]) + P[r+1]) - P[r+1]) * P[r+2]``, u8 codes; an s8 pair has its
    # zero point + 128), "residual" (the residual is added there instead of before the
    # bounds). With any stage (or ``requant``) a u8 output is
    # ``saturate(round(t * P[r]) + P[r+1])``: the last two rows, the output's inverse scale
    # and zero point per channel (per-tensor outputs repeat one value).
    post: tuple[str, ...] = ()
    requant: bool = False

    @property
    def has_post(self) -> bool:
        return bool(self.post) or self.requant


def _padded_input(x: te.Tensor, spec: ConvSpec, channels: int,
                  pad_value: int | te.Tensor) -> te.Tensor:
    """``x`` padded spatially with ``pad_value`` (a number, or a tensor ``[C]``: one per
    channel) and channel-wise up to ``channels``."""
    n, h, w, c = (int(d) for d in x.shape)
    pt, pl, pb, pr = spec.padding
    if not (pt or pl or pb or pr) and channels == c:
        return x

    def fill(k):
        if isinstance(pad_value, te.Tensor):
            return pad_value[tirx.min(k, c - 1)].astype(x.dtype)
        return tirx.const(pad_value, x.dtype)

    def value(b, i, j, k):
        inside = tirx.all(i >= pt, i < h + pt, j >= pl, j < w + pl, k < c)
        return tirx.if_then_else(
            inside, x[b, tirx.min(tirx.max(i - pt, 0), h - 1),
                      tirx.min(tirx.max(j - pl, 0), w - 1), tirx.min(k, c - 1)], fill(k))

    return te.compute((n, h + pt + pb, w + pl + pr, channels), value, name="pad")


def _signed_input(x: te.Tensor, spec: ConvSpec, channels: int, zero_point: int) -> te.Tensor:
    """``x - 128`` as int8, padded (spatially with ``zero_point - 128``, channel-wise up to
    ``channels``): always a stage of its own (named ``pad``), which ``sdot`` reads."""
    n, h, w, c = (int(d) for d in x.shape)
    pt, pl, pb, pr = spec.padding
    fill = tirx.const(int(zero_point) - 128, "int32")

    def value(b, i, j, k):
        inside = tirx.all(i >= pt, i < h + pt, j >= pl, j < w + pl, k < c)
        v = x[b, tirx.min(tirx.max(i - pt, 0), h - 1), tirx.min(tirx.max(j - pl, 0), w - 1),
              tirx.min(k, c - 1)].astype("int32") - tirx.const(128, "int32")
        return tirx.if_then_else(inside, v, fill).astype("int8")

    return te.compute((n, h + pt + pb, w + pl + pr, channels), value, name="pad")


def _epilogue(acc_at, bias, mult, residual, epi: Epilogue, shape, channels: int, post=None):
    """The output tensor: ``acc_at(n, y, x, c)`` is the int32 accumulator of channel ``c``."""
    f32 = "float32"
    if epi.has_post and post is None:
        raise ValueError("an epilogue with post stages needs the post tensor")

    def value(b, i, j, c):
        t = (acc_at(b, i, j, c) + bias[c]).astype(f32) * mult[c]

        def add_residual(t):
            if epi.residual == "uint8":
                r = residual[b, i, j, c].astype(f32) - tirx.const(float(epi.residual_zp), f32)
                return t + r * tirx.const(epi.residual_mult, f32)
            if epi.residual == "float32":
                r = residual[b, c, i, j] if epi.layout == "NCHW" else residual[b, i, j, c]
                return t + r * tirx.const(epi.residual_mult, f32)
            return t

        if "residual" not in epi.post:
            t = add_residual(t)
        if epi.lower is not None:
            t = tirx.max(t, tirx.const(epi.lower, f32))
        if epi.upper is not None:
            t = tirx.min(t, tirx.const(epi.upper, f32))
        row = 0
        for stage in epi.post:
            if stage == "affine":
                t = t * post[row, c] + post[row + 1, c]
                row += 2
            elif stage == "hswish":
                r6 = tirx.min(tirx.max(t + tirx.const(3.0, f32), tirx.const(0.0, f32)),
                              tirx.const(6.0, f32))
                t = t * r6 / tirx.const(6.0, f32)
            elif stage == "relu":
                t = tirx.max(t, tirx.const(0.0, f32))
            elif stage == "sigmoid":
                t = tirx.sigmoid(t)
            elif stage == "fq":  # quantize-dequantize: rows 1/s, zero point, s
                q = tirx.round(t * post[row, c]) + post[row + 1, c]
                q = tirx.min(tirx.max(q, tirx.const(0.0, f32)), tirx.const(255.0, f32))
                t = (q - post[row + 1, c]) * post[row + 2, c]
                row += 3
            elif stage == "residual":
                t = add_residual(t)
            else:
                raise ValueError(f"unknown epilogue stage {stage!r}")
        if epi.out_dtype == f32:
            return t
        info = np.iinfo(np.dtype(epi.out_dtype))
        if epi.has_post:
            q = tirx.round(t * post[row, c]) + post[row + 1, c]
        else:
            q = tirx.round(t) + tirx.const(float(epi.zero_point), f32)
        lo, hi = tirx.const(float(info.min), f32), tirx.const(float(info.max), f32)
        q = tirx.min(tirx.max(q, lo), hi)
        return q.astype(epi.out_dtype)

    del channels
    if epi.layout == "NCHW":
        if epi.out_dtype != f32:
            raise ValueError("an NCHW output is float32 (uint8 outputs are NHWC)")
        n, h, w, c = shape
        return te.compute((n, c, h, w), lambda b, o, i, j: value(b, i, j, o), name="out_nchw")
    return te.compute(shape, value, name="out")


def qconv2d_nhwc(
    x: te.Tensor,
    w: te.Tensor,
    bias: te.Tensor,
    mult: te.Tensor,
    residual: te.Tensor | None = None,
    post: te.Tensor | None = None,
    *,
    spec: ConvSpec,
    epi: Epilogue,
    x_zero_point: int,
    out_channels: int,
    signed: bool = False,
    flat: bool = False,
) -> te.Tensor:
    """u8 NHWC ``x`` (any C) conv VNNI-packed s8 ``w`` (:func:`pack_weight_vnni`), groups 1.

    ``bias`` and ``mult`` have ``OC`` padded to a multiple of 16; the result has
    ``out_channels`` channels. ``signed``: the input stage stores ``x - 128`` as int8 (for
    ``sdot``), so the accumulator is ``sum_k (x - 128) w`` and ``bias`` must carry
    ``128 * sum_k w`` (see the module docstring).

    ``flat``: the accumulator's channels are one axis (``[.., OC]``) instead of blocks of 16
    (``[.., OC/16, 16]``, the dot-product intrinsics' shape), for CPUs without a dot-product
    instruction: the float schedule rules then tile the channels and read the epilogue's
    accumulator without ``c // 16, c % 16`` (whose tiles they cannot narrow).
    """
    if epi.residual is None and post is None:  # positional: the post tensor, no residual
        residual, post = None, residual
    n, h, wd, _ = (int(d) for d in x.shape)
    ob, kh, kw, cb = (int(d) for d in w.shape[:4])
    oh, ow = spec.out_hw(h, wd)
    (sh, sw), (dh, dw) = spec.strides, spec.dilation
    if signed:
        data = _signed_input(x, spec, cb * 4, x_zero_point)
    else:
        data = _padded_input(x, spec, cb * 4, x_zero_point)
    rkh = te.reduce_axis((0, kh), "kh")
    rkw = te.reduce_axis((0, kw), "kw")
    rcb = te.reduce_axis((0, cb), "icb")
    rci = te.reduce_axis((0, 4), "ici")
    if flat:
        acc = te.compute(
            (n, oh, ow, ob * 16),
            lambda b, i, j, o: te.sum(
                data[b, i * sh + rkh * dh, j * sw + rkw * dw, rcb * 4 + rci].astype("int32")
                * w[o // 16, rkh, rkw, rcb, o % 16, rci].astype("int32"),
                axis=[rkh, rkw, rcb, rci],
            ),
            name="acc",
        )
        return _epilogue(
            lambda b, i, j, c: acc[b, i, j, c],
            bias, mult, residual, epi, (n, oh, ow, out_channels), out_channels, post,
        )
    acc = te.compute(
        (n, oh, ow, ob, 16),
        lambda b, i, j, o, oi: te.sum(
            data[b, i * sh + rkh * dh, j * sw + rkw * dw, rcb * 4 + rci].astype("int32")
            * w[o, rkh, rkw, rcb, oi, rci].astype("int32"),
            axis=[rkh, rkw, rcb, rci],
        ),
        name="acc",
    )
    return _epilogue(
        lambda b, i, j, c: acc[b, i, j, c // 16, c % 16],
        bias, mult, residual, epi, (n, oh, ow, out_channels), out_channels, post,
    )


def qconv2d_grouped_nhwc(
    x: te.Tensor,
    w: te.Tensor,
    bias: te.Tensor,
    mult: te.Tensor,
    *extra: te.Tensor,
    spec: ConvSpec,
    epi: Epilogue,
    x_zero_point: int | None,
    out_channels: int,
) -> te.Tensor:
    """u8 NHWC ``x`` conv s8 ``w`` laid out ``[KH, KW, IC/groups, OC]`` (grouped, depthwise).

    ``extra``: the residual (when ``epi.residual``), then, when ``x_zero_point`` is ``None``
    (a depthwise conv whose input is quantized per channel), the input's zero points
    ``uint8 [IC]``, which the padding inserts. Plain int32 arithmetic (no dot-product
    instruction): the reduction of a depthwise conv is over ``KH x KW`` only, which VNNI's
    4-wide channel sums do not fit.
    """
    extra = list(extra)
    residual = extra.pop(0) if epi.residual else None
    pad_value = extra.pop(0) if x_zero_point is None else x_zero_point
    post = extra.pop(0) if epi.has_post else None
    n, h, wd, c = (int(d) for d in x.shape)
    kh, kw, icg, oc = (int(d) for d in w.shape)
    ocg = oc // spec.groups
    oh, ow = spec.out_hw(h, wd)
    (sh, sw), (dh, dw) = spec.strides, spec.dilation
    data = _padded_input(x, spec, c, pad_value)
    rkh = te.reduce_axis((0, kh), "kh")
    rkw = te.reduce_axis((0, kw), "kw")
    rc = te.reduce_axis((0, icg), "icg")
    acc = te.compute(
        (n, oh, ow, oc),
        lambda b, i, j, o: te.sum(
            data[b, i * sh + rkh * dh, j * sw + rkw * dw, (o // ocg) * icg + rc].astype("int32")
            * w[rkh, rkw, rc, o].astype("int32"),
            axis=[rkh, rkw, rc],
        ),
        name="acc",
    )
    return _epilogue(
        lambda b, i, j, o: acc[b, i, j, o], bias, mult, residual, epi, (n, oh, ow, oc),
        out_channels, post,
    )


def qmatmul(
    a: te.Tensor,
    b: te.Tensor,
    *,
    a_zero_point: int,
    b_zero_point: int,
    mult: float,
    epi: Epilogue,
) -> te.Tensor:
    """``a @ b`` of two quantized activations: u8 ``a [..., M, K]`` and u8 ``b [..., K, N]``
    (``b`` may be 2-D; other batch dimensions must match), each with its own per-tensor zero
    point. The int32 accumulator ``sum_k (a - za)(b - zb)`` is exact for ``K < 33025`` (the
    product of two centred u8 values is at most 255^2); the epilogue scales it by ``mult``
    (``s_a s_b``, or ``s_a s_b / s_y`` for a u8 output with zero point ``epi.zero_point``)
    and bounds it by ``epi.lower``/``epi.upper`` (no bias or residual)."""
    ash = [int(d) for d in a.shape]
    bsh = [int(d) for d in b.shape]
    m, k = ash[-2:]
    n = bsh[-1]
    if bsh[-2] != k or (len(bsh) > 2 and bsh[:-2] != ash[:-2]):
        raise ValueError(f"qmatmul: shapes {ash} x {bsh} do not match")
    batch = len(ash) - 2
    rk = te.reduce_axis((0, k), "k")
    za = tirx.const(a_zero_point, "int32")
    zb = tirx.const(b_zero_point, "int32")

    def acc_value(*idx):
        bi, i, j = idx[:batch], idx[batch], idx[batch + 1]
        bb = bi if len(bsh) > 2 else ()
        return te.sum(
            (a[(*bi, i, rk)].astype("int32") - za) * (b[(*bb, rk, j)].astype("int32") - zb),
            axis=rk,
        )

    acc = te.compute((*ash[:-2], m, n), acc_value, name="acc")
    f32 = "float32"

    def out_value(*idx):
        t = acc[idx].astype(f32) * tirx.const(float(np.float32(mult)), f32)
        if epi.lower is not None:
            t = tirx.max(t, tirx.const(epi.lower, f32))
        if epi.upper is not None:
            t = tirx.min(t, tirx.const(epi.upper, f32))
        if epi.out_dtype == f32:
            return t
        q = tirx.round(t) + tirx.const(float(epi.zero_point), f32)
        q = tirx.min(tirx.max(q, tirx.const(0.0, f32)), tirx.const(255.0, f32))
        return q.astype(epi.out_dtype)

    return te.compute((*ash[:-2], m, n), out_value, name="out")


# --------------------------------------------------------------------------------------------
# VNNI schedule


def _largest_divisor(n: int, bound: int) -> int:
    return max(d for d in range(1, n + 1) if n % d == 0 and d <= max(bound, 1))


# A VNNI register tile of at most this many accumulators (15 vectors of 16 int32: 960 bytes,
# under LowerTVMBuiltin's 1 KiB) is a ``global`` buffer on the stack; a bigger one stays
# ``local`` (a workspace allocation per tile). ``None``: every tile local. Capping every tile
# at 15 instead (10 x 2 -> 10 x 1, 8 x 3 -> 5 x 3) measured slower: PP-OCRv4 det int8 17.86
# -> 18.91 ms.
_VNNI_STACK_ACCUMULATORS: int | None = 15


def _tile(ow: int, ob: int, limit: int = 24) -> tuple[int, int]:
    """Register tile: ``ow_i`` pixels x ``ob_i`` 16-channel blocks, at most ``limit``
    accumulators (24 of AVX-512's 32 registers; the rest hold the weights and the broadcast
    input)."""
    best = (1, 1)
    for ow_i in sorted({_largest_divisor(ow, b) for b in (4, 5, 6, 7, 8, 12, 14, 15, 16)}):
        if ow_i > limit:
            continue
        ob_i = _largest_divisor(ob, min(4, limit // ow_i))
        score = (ow_i * ob_i, ow_i)
        if score > (best[0] * best[1], best[0]) and ow_i * ob_i <= limit:
            best = (ow_i, ob_i)
    return best


def _dot_intrin_for(tile: tuple[int, int]) -> str:
    """The VNNI intrinsic the default schedule tensorizes a ``tile`` with: the stack one
    (``global`` accumulators) when the tile fits under the stack limit."""
    if _VNNI_STACK_ACCUMULATORS and tile[0] * tile[1] <= _VNNI_STACK_ACCUMULATORS:
        return VNNI_STACK_INTRIN
    return VNNI_INTRIN


def _tile_neon(ow: int, ob: int) -> tuple[int, int]:
    """Register tile for ``sdot``: ``ow_i`` pixels x ``ob_i`` 16-channel blocks, each block 4
    NEON registers of accumulators; with the ``ob_i`` blocks of weights (4 registers each) and
    one broadcast input, within the 32 registers."""
    best = (1, 1)
    for ow_i in sorted({_largest_divisor(ow, b) for b in (2, 3, 4, 5, 6)}):
        for ob_i in sorted({_largest_divisor(ob, b) for b in (1, 2, 3)}):
            if 4 * ow_i * ob_i + 4 * ob_i + 1 > 32:
                continue
            if (ow_i * ob_i, ow_i) > (best[0] * best[1], best[0]):
                best = (ow_i, ob_i)
    return best


def _tile_avx2(ow: int, ob: int) -> tuple[int, int]:
    """Register tile for the AVX2 block (:data:`AVX2_STACK_INTRIN`): ``ow_i`` pixels x
    ``ob_i`` 16-channel blocks, each block 2 ``ymm`` of accumulators. Of the 16 ``ymm``, the
    broadcast input, the ``vpmaddwd`` ones, the temporaries and one block's weights take 4 to
    6, leaving at most 6 blocks (``_tile``'s choice). A row of at most 7 pixels (ResNet's last
    stage) is one tile of 1 block instead: its weights (up to 73 KB a block) are re-read from
    L2 once per tile, and 7 pixels a tile read them a seventh as often as 1 pixel x 4 blocks
    (1.6x faster on ResNet-50's 7x7 convs on a Zen 3 EPYC), though 7 blocks spill a little."""
    if ow <= 7:
        return ow, 1
    return _tile(ow, ob, limit=6)


def schedule_vnni(func: tirx.PrimFunc, num_cores: int) -> tirx.PrimFunc:
    """Schedule a :func:`qconv2d_nhwc` kernel with VNNI (see the module docstring).

    Raises
    ------
    RuntimeError, ValueError
        When the function is not such a kernel (a schedule step fails).
    """
    return _schedule_dot(func, num_cores, VNNI_INTRIN, _tile)


def schedule_sdot(func: tirx.PrimFunc, num_cores: int) -> tirx.PrimFunc:
    """Schedule a :func:`qconv2d_nhwc` kernel built with ``signed=True`` with the ARM
    ``sdot`` intrinsic (:data:`SDOT_INTRIN`); the same schedule as :func:`schedule_vnni`."""
    return _schedule_dot(func, num_cores, SDOT_INTRIN, _tile_neon)


def schedule_avx2(func: tirx.PrimFunc, num_cores: int) -> tirx.PrimFunc:
    """Schedule a :func:`qconv2d_nhwc` kernel with 7-bit weights with the AVX2 block
    (:data:`AVX2_STACK_INTRIN`, ``vpmaddubsw`` + ``vpmaddwd``); the same schedule as
    :func:`schedule_vnni` with a register tile for 16 ``ymm`` registers."""
    return _schedule_dot(func, num_cores, AVX2_STACK_INTRIN, _tile_avx2)


def _schedule_dot(func: tirx.PrimFunc, num_cores: int, intrin: str, tile) -> tirx.PrimFunc:
    sch = s_tir.Schedule(func)
    _apply_dot(sch, num_cores, intrin, tile)
    return sch.mod["main"]


def _apply_dot(sch: s_tir.Schedule, num_cores: int, intrin: str, tile) -> None:
    acc = sch.get_sblock("acc")
    names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
    nchw = "out_nchw" in names
    out = sch.get_sblock("out_nchw" if nchw else "out")
    n, oh, ow, ob, oi, kh, kw, icb, _ici = sch.get_loops(acc)
    ow_ext, ob_ext = (int(sch.get(lp).extent) for lp in (ow, ob))
    ow_i, ob_i = tile(ow_ext, ob_ext)
    if intrin == VNNI_INTRIN:
        intrin = _dot_intrin_for((ow_i, ob_i))
    ow_o, ow_in = sch.split(ow, [None, ow_i])
    ob_o, ob_in = sch.split(ob, [None, ob_i])
    sch.reorder(n, oh, ow_o, ob_o, kh, kw, icb, ow_in, ob_in, oi, _ici)
    sch.reverse_compute_at(out, ob_o, preserve_unit_loops=True)
    sch.set_scope(acc, 0, "global" if intrin in (VNNI_STACK_INTRIN, AVX2_STACK_INTRIN)
                  else "local")
    outer = sch.fuse(n, oh, ow_o, ob_o)
    if num_cores > 1:
        sch.parallel(outer)
    sch.unroll(ow_in)
    sch.unroll(ob_in)
    init = sch.decompose_reduction(acc, kh)
    sch.tensorize(oi, intrin)
    sch.vectorize(sch.get_loops(init)[-1])
    epi_loops = sch.get_loops(out)
    inner = int(sch.get(epi_loops[-1]).extent)
    if nchw:  # the innermost loop runs over ow_i pixels of one channel (contiguous)
        if inner in (4, 8, 16):
            sch.vectorize(epi_loops[-1])
    elif inner % 16 == 0:
        _, c_in = sch.split(epi_loops[-1], [None, 16])
        sch.vectorize(c_in)
    elif inner % 8 == 0 or inner % 4 == 0:  # e.g. 24 channels: 8 lanes (was scalar)
        _vectorize_inner(sch, epi_loops[-1])
    if "pad" in names:
        pad = sch.get_sblock("pad")
        loops = sch.get_loops(pad)
        fused = sch.fuse(*loops[:2])
        if num_cores > 1:
            sch.parallel(fused)
        c_ext = int(sch.get(loops[-1]).extent)
        if c_ext in (4, 8, 16, 32, 64):
            sch.vectorize(loops[-1])


# --------------------------------------------------------------------------------------------
# Depthwise schedule


def _vector_width(extent: int) -> int | None:
    return next((v for v in (16, 8, 4) if extent % v == 0), None)


def _vectorize_inner(sch, loop) -> None:
    """Vectorize ``loop`` (contiguous channels) by 16, 8 or 4 lanes, whichever divides it."""
    ext = int(sch.get(loop).extent)
    v = _vector_width(ext)
    if v is None:
        return
    if ext == v:
        sch.vectorize(loop)
    else:
        _, inner = sch.split(loop, [None, v])
        sch.vectorize(inner)


def schedule_depthwise(func: tirx.PrimFunc, num_cores: int) -> tirx.PrimFunc:
    """Schedule a depthwise :func:`qconv2d_grouped_nhwc` kernel (one input channel per group):
    NHWC, so channels are contiguous in the input, the ``[KH, KW, 1, OC]`` weight and the
    output; the accumulators of ``ow_i`` pixels x ``V`` channels (``V`` = 16, 8 or 4 lanes)
    are registers, the ``KH x KW`` reduction runs outside them, the epilogue is computed per
    tile, vectorized over channels; rows run in parallel.

    Raises
    ------
    RuntimeError, ValueError
        When the function is not such a kernel (a schedule step fails).
    """
    sch = s_tir.Schedule(func)
    _apply_depthwise(sch, num_cores)
    return sch.mod["main"]


def _apply_depthwise(sch: s_tir.Schedule, num_cores: int) -> None:
    acc = sch.get_sblock("acc")
    names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
    out = sch.get_sblock("out")
    n, oh, ow, oc, kh, kw, icg = sch.get_loops(acc)
    if int(sch.get(icg).extent) != 1:
        raise ValueError("not a depthwise kernel")
    v = _vector_width(int(sch.get(oc).extent))
    if v is None:
        raise ValueError("channels are not a multiple of 4")
    ow_i = _largest_divisor(int(sch.get(ow).extent), 8)
    ow_o, ow_in = sch.split(ow, [None, ow_i])
    oc_o, oc_in = sch.split(oc, [None, v])
    sch.reorder(n, oh, ow_o, oc_o, kh, kw, icg, ow_in, oc_in)
    sch.reverse_compute_at(out, oc_o, preserve_unit_loops=True)
    # at most 8 x 16 int32 (512 bytes): on the stack when global (see VNNI_STACK_INTRIN)
    sch.set_scope(acc, 0, "global" if _VNNI_STACK_ACCUMULATORS else "local")
    outer = sch.fuse(n, oh)
    if num_cores > 1:
        sch.parallel(outer)
    sch.unroll(ow_in)
    sch.vectorize(oc_in)
    sch.vectorize(sch.get_loops(out)[-1])
    init = sch.decompose_reduction(acc, kh)
    last = sch.get_loops(init)[-1]
    if sch.get(last).kind != tirx.ForKind.VECTORIZED:
        sch.vectorize(last)
    if "pad" in names:
        pad = sch.get_sblock("pad")
        loops = sch.get_loops(pad)
        fused = sch.fuse(*loops[:2])
        if num_cores > 1:
            sch.parallel(fused)
        _vectorize_inner(sch, loops[-1])


def apply_default_schedule(sch: s_tir.Schedule, kind: str, num_cores: int) -> None:
    """Apply the hand schedule of a ``kind`` kernel (``vnni``, ``sdot``, ``avx2``,
    ``depthwise``: the value of its :data:`KERNEL_ATTR`) to ``sch``, in place (traceable, so
    that tuning can record it as the kernel's default)."""
    if kind == "vnni":
        _apply_dot(sch, num_cores, VNNI_INTRIN, _tile)
    elif kind == "sdot":
        _apply_dot(sch, num_cores, SDOT_INTRIN, _tile_neon)
    elif kind == "avx2":
        _apply_dot(sch, num_cores, AVX2_STACK_INTRIN, _tile_avx2)
    elif kind == "depthwise":
        _apply_depthwise(sch, num_cores)
    else:
        raise ValueError(f"no int8 schedule for kernel kind {kind!r}")


# The kernel kinds whose ``16 x 4`` block a tuning space tensorizes, and with what
TUNING_INTRINSICS = {"vnni": VNNI_INTRIN, "avx2": AVX2_INTRIN}


def vnni_tuning_space(kind: str = "vnni"):
    """MetaSchedule's design space for tuning a ``vnni`` (or ``avx2``) kernel: multi-level
    tiling whose innermost ``16 x 4`` block is tensorized with :data:`VNNI_INTRIN` (or
    :data:`AVX2_INTRIN`; TVM 0.27 ships no x86 VNNI rule set, and its own ``dot_16x4_vnni``
    intrinsic does not build), then LLVM's parallelize/vectorize/unroll, as TVM's former
    ``DefaultVNNI`` rules did."""
    from tvm.s_tir import meta_schedule as ms

    rule, post = ms.schedule_rule, ms.postproc
    rules = [
        rule.AutoInline(into_producer=False, into_consumer=True, inline_const_tensor=True,
                        disallow_if_then_else=True, require_injective=True,
                        require_ordered=True, disallow_op=["tirx.exp"]),
        rule.MultiLevelTilingWithIntrin(
            TUNING_INTRINSICS[kind], structure="SSRSRS", tile_binds=None, max_innermost_factor=64,
            vector_load_lens=None, reuse_read=None,
            reuse_write=rule.ReuseType(req="may", levels=[1, 2], scope="local"),
        ),
        rule.ParallelizeVectorizeUnroll(max_jobs_per_core=16, max_vectorize_extent=64,
                                        unroll_max_steps=[0, 16, 64, 512], unroll_explicit=True),
        rule.RandomComputeLocation(),
    ]
    postprocs = [post.DisallowDynamicLoop(), post.RewriteParallelVectorizeUnroll(),
                 post.RewriteReductionBlock(), post.RewriteTensorize(vectorize_init_loop=True)]
    return ms.space_generator.PostOrderApply(
        sch_rules=rules, postprocs=postprocs, mutator_probs="llvm"
    )
