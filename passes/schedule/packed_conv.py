"""Convolutions with packed weights (``pack_conv_weights``, NCHW activations): vectors over output
channels instead of output columns, as oneDNN's and TVM's ``conv2d_NCHWc`` x86 kernels do.

The accumulators are ``nf`` vectors of ``B`` channels times ``xi`` output columns
(``packed_conv_tile``: at most half the registers, fewest loads per FMA), held across the whole
``(rc, ry, rx)`` reduction. The output tiles are ordered so that whichever of input tile and
weights is reused stays in cache. 1x1 stride-1 convs whose plane is a whole number of vectors,
or whose epilogue adds a residual, use a pixel tile instead (``packed_pixel_tile``): ``r``
channels x ``vp`` vectors of the flattened plane, weights broadcast, input and epilogue
contiguous.
"""

from __future__ import annotations

import logging
import math

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.schedule import SBlockRV

from tvmforge.passes.schedule.analysis import (
    _column_iter,
    _column_step,
    _divisors,
    _extents,
    _inline_injective,
    _iter_kinds,
    _loops_match_iters,
    _uses_var,
)
from tvmforge.passes.schedule.contraction import _epilogue_at, _flatten_plane, _single_epilogue
from tvmforge.passes.schedule.generic import _schedule_root_blocks
from tvmforge.passes.schedule.params import CpuScheduleParams
from tvmforge.passes.schedule.rule import ScheduleRule
from tvmforge.passes.schedule.tiling import _ACC_SCOPE

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Convolutions with packed weights (``pack_conv_weights``): vectors over output channels

PACKED_CONV_ATTR = "tvmforge.packed_conv"

# Weights up to this size stay in the (per-core) L2 cache while the output is swept tile by
# tile; larger weights are swept once per block of output channels instead.
_WEIGHT_CACHE_BYTES = 1 << 20
# Outputs bigger than this are written a block of channels at a time (the weight-block
# order), by tiles of at most ``_STREAMED_TILE_BLOCKS`` vectors of channels: each channel is
# a separate write stream in NCHW, and the tile-by-tile order over every channel keeps 64-256
# streams open, more than the prefetchers follow. Measured (2 threads, output cold in cache
# as in a model): SqueezeNet's first conv (3->64, 3x3 stride 2, 64x111x111 out) 1.07 ->
# 0.60 ms, ResNet-50's 1x1 64->256 at 56x56 with its residual 0.89 -> 0.65 ms.
_STREAMED_OUTPUT_BYTES = 1 << 20
_STREAMED_TILE_BLOCKS = 2
# ... as long as the input, read once per block of channels, fits this (1x1 256->128 at
# 56x56, 3.2 MB of input: 0.85 -> 1.73 ms in that order).
_STREAMED_INPUT_BYTES = 1 << 20


def _input_read(sch: s_tir.Schedule, main: SBlockRV) -> int | None:
    """Index in the conv block's reads of its input: the buffer read along the output
    columns (not the accumulator, not the weights), NCHW, blocked ``[n, c/B, h, w, B]`` or a
    Winograd product's ``[sample, point, c/B, 1, tile, B]``."""
    stmt = sch.get(main)
    x_var = _column_iter(stmt).var
    out = stmt.writes[0].source
    for index, region in enumerate(stmt.reads):
        rank = len(region.region)
        if (
            rank in (4, 5, 6)
            and not region.source.same_as(out)
            and _uses_var(region.region[rank - 2 if rank == 6 else 3].min, x_var)
        ):
            return index
    return None


def _input_bytes(sch: s_tir.Schedule, main: SBlockRV) -> int:
    """Bytes of the conv's input (0 when it is not found)."""
    index = _input_read(sch, main)
    if index is None:
        return 0
    buf = sch.get(main).reads[index].source
    return math.prod(int(d) for d in buf.shape) * tvm.runtime.DataType(buf.dtype).bits // 8


# The same for a 1x1 stride-1 conv's channel tile, which then reads its input packed by tile
# columns (``_pack_input_columns``). Measured in ResNet-50 (in the model, 2 threads, AVX-512):
# 1x1 256->1024 at 14x14 (1 MiB of weights) 0.72 -> 0.49 ms, 1024->512 (2 MiB) 1.00 -> 0.81;
# without the packing, a 3x3 or a strided 1x1 gains nothing from the earlier switch (1x1
# 256->512 stride 2, 512 KiB: 1.00 -> 1.29 ms).
_PACKED_INPUT_WEIGHT_CACHE_BYTES = 128 << 10


def _packed_block(sch: s_tir.Schedule, block: SBlockRV) -> int | None:
    value = sch.get(block).annotations.get(PACKED_CONV_ATTR)
    return None if value is None else int(value)


def _packed_conv_blocks(
    sch: s_tir.Schedule, main: SBlockRV, kinds: str
) -> tuple[SBlockRV, int, SBlockRV]:
    """A packed conv's blocks after inlining its injective producers: the conv (its loops
    must bind its iterators in order, of the given kinds: ``SSSSRRR`` for NCHW,
    ``SSSSSRRR`` blocked, or with one more leading ``S``: a Winograd product's sample), its
    packing block size, and its single epilogue."""
    main_name = sch.get(main).name_hint
    block = _packed_block(sch, main)
    _inline_injective(sch, keep={main_name})
    main = sch.get_sblock(main_name)
    if not _loops_match_iters(sch, main) or _iter_kinds(sch, main) not in (kinds, "S" + kinds):
        raise ValueError(f"packed conv loops are not {kinds}")
    return main, block, _single_epilogue(sch, main)


def packed_conv_tile(
    channel_blocks: int,
    width: int,
    registers: int,
    kernel_w: int = 1,
    stride: int = 1,
    dilation: int = 1,
    max_blocks: int = 4,
    accumulators: int | None = None,
) -> tuple[int, int]:
    """Register tile ``(nf, xi)``: ``nf`` vectors of output channels by ``xi`` output columns.

    ``nf * xi`` accumulators take at most half the vector registers (the rest hold the weight
    vectors and the broadcast inputs; measured: 28 accumulators spill and run 30-50 % slower
    than 14-16). Among those tiles, the one with the fewest loads per FMA wins, then the wider
    one. Per ``(rc, ry)`` step a tile loads ``nf * kernel_w`` weight vectors and broadcasts
    the distinct input columns its ``xi`` outputs and ``kernel_w`` taps touch,
    ``(xi - 1) * stride + (kernel_w - 1) * dilation + 1`` (LLVM reuses a broadcast across
    taps), for ``nf * xi * kernel_w`` FMAs. ``nf`` divides the channel blocks and ``xi`` the
    output width, so no loop has a tail.

    Where the divisors leave only tiles of fewer than ``_FEW_ACCUMULATORS`` (a width of 13 or
    169 with 8 lanes and 16 registers, channel blocks of 125: SqueezeNet's 1000-class 1x1 conv
    at 13x13 got one accumulator, every FMA waiting on the last), more than ``max_blocks``
    channel vectors are allowed: 5 x 1 there, 5 FMAs in flight.
    """
    budget = max(registers // 2 if accumulators is None else min(registers // 2, accumulators), 1)

    def search(most_blocks: int) -> tuple[float, int, int, int] | None:
        best: tuple[float, int, int, int] | None = None
        for nf in _divisors(channel_blocks):
            for xi in _divisors(width):
                if nf * xi > budget or nf > most_blocks:
                    continue
                columns = min(xi * kernel_w, (xi - 1) * stride + (kernel_w - 1) * dilation + 1)
                loads = nf * kernel_w + columns
                key = (loads / (nf * xi * kernel_w), -xi, nf, xi)
                if best is None or key < best:
                    best = key
        return best

    best = search(max_blocks)
    if best is None or best[2] * best[3] < _FEW_ACCUMULATORS:
        wider = search(budget)
        if wider is not None and wider[2] * wider[3] > (0 if best is None else best[2] * best[3]):
            best = wider
    return (1, 1) if best is None else (best[2], best[3])


# A register tile with fewer accumulators than this leaves the FMA units waiting on latency
# (4 cycles, 2 units: 8 in flight keep them busy).
_FEW_ACCUMULATORS = 4


def packed_pixel_tile(block: int, plane_vectors: int, registers: int) -> tuple[int, int] | None:
    """Register tile ``(r, vp)`` of a 1x1 conv over the flattened plane, or ``None``.

    ``r`` output channels (a divisor of the packing block, so their weights are ``r``
    consecutive floats) by ``vp`` vectors of pixels (a divisor of the plane's vectors).
    Used only when it needs at most as many loads per FMA as an 8x2 tile, ``10/16``;
    otherwise the channel tile of ``packed_conv_tile`` is the better one.
    """
    budget = registers * 3 // 4
    best: tuple[float, int, int, int] | None = None
    for r in _divisors(block):
        for vp in _divisors(plane_vectors):
            if r < 2 or r * vp > budget:
                continue
            key = ((r + vp) / (r * vp), -vp, r, vp)
            if best is None or key < best:
                best = key
    if best is None or best[0] > 10 / 16:
        return None
    return best[2], best[3]


def _pack_input_columns(sch: s_tir.Schedule, main: SBlockRV, xi: int) -> None:
    """Copy a 1x1 conv's input to ``[n, y, x // xi, c, x % xi]`` (output pixels) first.

    The channel tile broadcasts ``xi`` input columns per reduction step; in NCHW those are
    ``xi`` floats of a different cache line every step (28 of 64 bytes for ``xi = 7``, fewer
    with a stride), so a 1x1 conv swept by weight blocks reads the input from L2 at line
    granularity. Packed, a tile's reduction streams ``xi * C`` consecutive floats. The copy
    (``reindex``: the input as the block's iterators see it, strides applied) is one pass
    over the input, next to ``C`` passes' worth of multiply-adds.
    """
    index = _input_read(sch, main)
    if index is None:
        return
    copy = sch.reindex(main, ("read", index))
    shape = [int(d) for d in sch.get(main).reads[index].source.shape]
    if len(shape) != 4 or shape[2] % xi:  # expected [n, y, x, c]
        return
    packed = tirx.IndexMap.from_func(lambda a, h, w, c: [a, h, w // xi, c, w % xi], ndim=4)
    sch.transform_layout(copy, ("write", 0), packed)
    sch.transform_block_layout(copy, packed)


def _schedule_packed_conv(sch: s_tir.Schedule, main: SBlockRV, params: CpuScheduleParams) -> None:
    """Direct convolution, NCHW in and out, weights ``[F/B, C, KH, KW, B]``.

    Channel tile (the general case): ``nf`` vectors of ``B`` output channels x ``xi`` output
    columns of one row, kept in registers (a ``local`` accumulator laid out ``[.., xi, B]`` so
    each accumulator is one vector) across the whole ``(rc, ry, rx)`` reduction; per reduction
    step ``nf`` weight vectors are loaded and ``xi`` input values broadcast. The epilogue
    (bias, activation, residual) runs on the tile, vectorized over the channels, and writes
    NCHW with a stride: a scatter, whose cost only matters when the reduction is short.
    Tiles run output-row by output-row with the weights held in cache, or, for weights too
    big for it, weight block by weight block; a 1x1 stride-1 conv then first packs its input
    by tile columns (``_pack_input_columns``).

    Pixel tile (1x1 stride-1 convs whose plane is a whole number of vectors, e.g. 56x56): ``r``
    output channels x ``vp`` vectors of the flattened ``y * W + x`` plane; the weights are
    broadcast (``r`` consecutive floats of the packed block) and the input and the epilogue
    are contiguous vectors, so no scatter.

    An epilogue that is not elementwise on the conv output (a squeeze-excitation gate
    multiplied into the whole feature map) is declined: the contraction recipe takes it.
    """
    main, block, epilogue = _packed_conv_blocks(sch, main, "SSSSRRR")
    n, f, y, x, rc, ry, rx = sch.get_loops(main)
    ext_f, ext_y, ext_x, ext_rc, ext_ry, ext_rx = _extents(sch, [f, y, x, rc, ry, rx])
    epi_ext, conv_ext = _extents(sch, sch.get_loops(epilogue)), _extents(sch, [n, f, y, x])
    cropped = (  # zero filters padded F to the vector width; the epilogue keeps the real ones
        len(epi_ext) == 4
        and epi_ext[0] == conv_ext[0]
        and epi_ext[2:] == conv_ext[2:]
        and conv_ext[1] - block < epi_ext[1] < conv_ext[1]
    )
    if epi_ext != conv_ext and not cropped:
        # e.g. a squeeze-excitation gate: a conv on a 1x1 pooled map whose epilogue multiplies
        # it into the whole feature map. Computed at the tile, that epilogue would be the
        # whole map per tile (and unrolled: minutes of LLVM on PP-OCRv4 det).
        raise ValueError("the epilogue is not elementwise on the conv output")
    if ext_f % block:
        raise ValueError("output channels not a multiple of the packing block")
    weight_bytes = ext_f * ext_rc * ext_ry * ext_rx * 4
    # A big output is written channel block by channel block (a few write streams at a
    # time) rather than tile by tile across every channel (one stream per channel).
    # Only when the input stays in cache across the channel blocks: each block reads it all.
    big_output = (
        ext_f * ext_y * ext_x * 4 > _STREAMED_OUTPUT_BYTES
        and _input_bytes(sch, main) <= _STREAMED_INPUT_BYTES
    )
    # Pixel vectors only where the plane is a whole number of registers: vectors of 14 for
    # a 14x14 plane (LLVM splits them 8 + 4 + 2) lose to the channel tile with a packed
    # input (1x1 256->1024 at 14x14 with its residual: 0.51 against 0.44 ms).
    plane_vector = params.lanes if (ext_y * ext_x) % params.lanes == 0 else None
    pixel = None
    if ext_ry == ext_rx == 1 and plane_vector:
        pixel = packed_pixel_tile(block, ext_y * ext_x // plane_vector, params.vector_registers)
    if pixel is not None:
        _flatten_plane(sch, main, epilogue, plane_vector, force=True)
        if len(sch.get_loops(main)) != 6:
            pixel = None  # not a plain [.., y, x] access (stride, padding): channel tile
    if pixel is not None:
        r, vp = pixel
        n, f, plane, rc, ry, rx = sch.get_loops(main)
        f_o, f_i = sch.split(f, factors=[None, r])
        p_o, p_v, p_l = sch.split(plane, factors=[None, vp, plane_vector])
        if weight_bytes <= _WEIGHT_CACHE_BYTES and not big_output:
            outer = [n, p_o, f_o]
        else:
            outer = [n, f_o, p_o]
        sch.reorder(*outer, rc, ry, rx, f_i, p_v, p_l)
        _epilogue_at(sch, epilogue, outer[-1])
        sch.set_scope(main, 0, _ACC_SCOPE)
        sch.vectorize(p_l)
        sch.unroll(p_v)
        sch.unroll(f_i)
    else:
        stride, dilation = _column_step(sch, main)
        nf, xi = packed_conv_tile(
            ext_f // block,
            ext_x,
            params.vector_registers,
            ext_rx,
            stride,
            dilation,
            max_blocks=_STREAMED_TILE_BLOCKS if big_output else 4,
        )
        f_o, f_v = sch.split(f, factors=[None, block])
        f_oo, f_oi = sch.split(f_o, factors=[None, nf])
        x_o, x_i = sch.split(x, factors=[None, xi])
        pack = ext_ry == ext_rx == 1  # the input packed by tile columns
        limit = _PACKED_INPUT_WEIGHT_CACHE_BYTES if pack else _WEIGHT_CACHE_BYTES
        if weight_bytes <= limit and not big_output:
            outer = [n, y, x_o, f_oo]  # input tile reused across all output channels
        else:
            outer = [n, f_oo, y, x_o]  # a block of weights reused across the whole output
            if pack:
                _pack_input_columns(sch, main, xi)
        sch.reorder(*outer, rc, ry, rx, f_oi, x_i, f_v)
        _epilogue_at(sch, epilogue, outer[-1])
        sch.set_scope(main, 0, _ACC_SCOPE)
        sch.transform_layout(
            main,
            ("write", 0),
            tirx.IndexMap.from_func(lambda a, b, c, d: [a, b // block, c, d, b % block], ndim=4),
        )
        sch.vectorize(f_v)
        sch.unroll(x_i)
        sch.unroll(f_oi)
    fused = sch.fuse(*outer)
    if params.num_cores > 1:
        sch.parallel(fused)
    sch.decompose_reduction(main, rc)
    epi_loops = sch.get_loops(epilogue)[1:]
    if pixel is not None:
        e_n, e_f, e_p = epi_loops
        e_pv, e_pl = sch.split(e_p, factors=[None, plane_vector])
        sch.vectorize(e_pl)
        sch.unroll(e_pv)
        sch.unroll(e_f)
    else:
        e_n, e_f, e_y, e_x = epi_loops
        e_fo, e_fi = sch.split(e_f, factors=[None, block])
        sch.reorder(e_n, e_y, e_fo, e_x, e_fi)
        sch.vectorize(e_fi)
        sch.unroll(e_x)
        sch.unroll(e_fo)
    _schedule_root_blocks(sch, main, params)


class PackedConv(ScheduleRule):
    """Convs whose weights ``pack_conv_weights`` packed, on NCHW activations."""

    name = "packed_conv"

    def apply(self, func, params):
        from tvmforge.passes.schedule.contraction import _main_contraction

        sch = s_tir.Schedule(func)
        main = _main_contraction(sch)
        if main is None or _packed_block(sch, main) is None:
            return None
        if len(sch.get(main).iter_vars) in (8, 9):  # blocked activations: NchwcConv's
            return None
        _schedule_packed_conv(sch, main, params)
        return sch
