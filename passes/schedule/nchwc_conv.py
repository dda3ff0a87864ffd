"""Convolutions on blocked ``NCHW{B}c`` activations (``nchwc_layout``) and Winograd products:
register tiles of channel vectors x pixels, K-blocked variants for streamed weights and short
sweeps, weight prefetch marks (``weight_prefetch``)."""

from __future__ import annotations

import logging
import math

from tvm import s_tir, tirx
from tvm.s_tir.schedule import LoopRV, SBlockRV

from tvmforge.passes.schedule.analysis import _column_step, _divisors, _extents, _uses_var
from tvmforge.passes.schedule.contraction import _epilogue_at
from tvmforge.passes.schedule.generic import _schedule_root_blocks
from tvmforge.passes.schedule.packed_conv import (
    _FEW_ACCUMULATORS,
    _STREAMED_INPUT_BYTES,
    _WEIGHT_CACHE_BYTES,
    _input_bytes,
    _packed_block,
    _packed_conv_blocks,
    packed_conv_tile,
)
from tvmforge.passes.schedule.params import CpuScheduleParams
from tvmforge.passes.schedule.rule import ScheduleRule
from tvmforge.passes.schedule.tiling import (
    _ACC_SCOPE,
    _DIRECT_PREFETCH_DISTANCE,
    _K_BLOCKED_PLANE_BYTES,
    _K_BLOCKED_PREFETCH_DISTANCE,
    _K_BLOCKED_WINDOWS,
    _PREFETCH_WINOGRAD_PRODUCT,
    _WEIGHT_PREFETCH,
    _is_padded,
    _prefetch_weights,
    _stack_accumulators,
)

log = logging.getLogger(__name__)


# A 1x1 conv's channel block of weights re-read from L1 at every tile of the plane: at most
# this much (of a 48 KiB L1D).
_L1_WEIGHT_BLOCK_BYTES = 32 << 10


def _flat_conv_tile(
    channel_blocks: int, plane: int, registers: int, accumulators: int | None = None
) -> tuple[int, int] | None:
    """Register tile of a 1x1 stride-1 conv swept over the flattened plane block of channels
    by block: two vectors of channels by the largest divisor of the plane from 4 to 8 pixels
    (14-16 accumulators). Measured in ResNet-50 (1x1 256->1024 at 14x14 with its residual,
    x6, in the model): 2x7 by channel blocks 2.36 ms, the 4x4 input-tile order 2.86 ms."""
    limit = registers // 2 if accumulators is None else min(registers // 2, accumulators)
    pixels = [d for d in _divisors(plane) if 4 <= d <= 8 and 2 * d <= limit]
    if channel_blocks % 2 or not pixels:
        return None
    return 2, max(pixels)


# A K-blocked 1x1 conv re-reads a chunk of its input per block of output channels: only for
# inputs up to this size (measured up to ResNet-50's 512 x 28 x 28, 1.6 MB).
_K_BLOCKED_INPUT_BYTES = 2 << 20


def _merge_blocked_plane(
    sch: s_tir.Schedule, main: SBlockRV, epilogue: SBlockRV, width: int
) -> None:
    """``y, x`` -> one plane axis (``y * width + x``) in a blocked conv, its accumulator and
    its epilogue, so that a tile of the plane is an exact region (``reverse_compute_at``
    stays exact)."""

    def merge(ndim: int):
        return tirx.IndexMap.from_func(
            lambda *vs: [*vs[:2], vs[2] * width + vs[3], *vs[4:]], ndim=ndim
        )

    sch.transform_layout(main, ("write", 0), merge(5))
    sch.transform_block_layout(main, merge(8))
    sch.transform_block_layout(epilogue, merge(5))


# A block of weights that a flat conv's sweep re-reads over at most this many tiles is
# fetched (cold, from memory) at a rate its few tiles of compute cannot hide: such a conv
# runs K-blocked too, in chunks of at most _SHORT_SWEEP_CHUNK_BYTES of the block's weights.
# ResNet-50's Winograd product at 14x14 (256 -> 256 channels per point over 49 tiles: 7
# tiles of 7 per block of 32 KiB), two threads: cold weights 0.499 -> 0.432 ms (chunks of
# 128 channels 0.450, 32 0.430), warm 0.368 -> 0.346; at 28x28 (128 channels, 16 KiB
# blocks) chunking is slower (cold 0.244 -> 0.272), as for 1x1 256 -> 1024 at 14x14 (28
# tiles a block; cold 0.381 -> 0.432).
_SHORT_SWEEP_TILES = 8
_SHORT_SWEEP_CHUNK_BYTES = 8 << 10
_SHORT_SWEEP_MIN_BLOCK_BYTES = 32 << 10


def _short_sweep_chunk(channels: int, tile: tuple[int, int], plane: int, block: int) -> int | None:
    """The reduction chunk for a flat conv whose weight block (``tile[0]`` vectors of
    ``block`` channels x ``channels``) is swept over at most ``_SHORT_SWEEP_TILES`` tiles of
    ``tile[1]`` pixels, or ``None`` when the sweep is long or the block small."""
    nf, xi = tile
    block_bytes = nf * block * channels * 4
    if _SHORT_SWEEP_TILES is None or plane // xi > _SHORT_SWEEP_TILES:
        return None
    if block_bytes < _SHORT_SWEEP_MIN_BLOCK_BYTES:
        return None
    return _largest_chunk(channels, _SHORT_SWEEP_CHUNK_BYTES // (nf * block * 4))


def _largest_chunk(channels: int, limit: int) -> int | None:
    """The largest proper divisor of ``channels`` that is a multiple of 16 and at most
    ``limit``, or ``None``."""
    fits = [d for d in _divisors(channels) if d <= limit and d % 16 == 0 and d < channels]
    return max(fits) if fits else None


def _reduction_chunk(
    channels: int, tile_channels: int, taps: int = 1, budget: int = _L1_WEIGHT_BLOCK_BYTES // 2
) -> int | None:
    """Input channels per reduction chunk of a K-blocked conv: the largest divisor of
    ``channels`` (a multiple of 16) whose weights for ``tile_channels`` output channels and
    ``taps`` window taps fit ``budget`` bytes (1x1: half of ``_L1_WEIGHT_BLOCK_BYTES``, 128
    channels for a tile of 32; 3x3: all of it, 16 channels); ``None`` when the whole
    reduction fits ``_L1_WEIGHT_BLOCK_BYTES`` (nothing to block) or no such divisor exists."""
    if tile_channels * channels * taps * 4 <= _L1_WEIGHT_BLOCK_BYTES:
        return None
    # (the whole reduction overflows the budget here, so a fitting chunk is a proper divisor)
    return _largest_chunk(channels, budget // (tile_channels * taps * 4))


def _schedule_flat_conv_k_blocked(
    sch: s_tir.Schedule,
    main: SBlockRV,
    epilogue: SBlockRV,
    tile: tuple[int, int],
    chunk: int,
    row: int | None,
    params: CpuScheduleParams,
) -> None:
    """A 1x1 stride-1 blocked conv whose channel block's weights overflow L1 (512 input
    channels and more): per block of ``tile[0]`` channel vectors (in parallel), the reduction
    runs in chunks of ``chunk`` input channels, each chunk's weights (16 KiB) held in L1 while
    the register tile sweeps the whole flattened plane, the block's partial sums kept in a
    buffer of one plane (L1/L2) between chunks; the epilogue runs on the block at the end.
    ``row``: the plane's width when ``y, x`` still need merging into one axis. Measured in
    ResNet-50 (2 threads, interleaved A/B, shipped logs): 29.11 -> 28.07 ms; per kernel on one
    thread, 1x1 1024->256 at 14x14 0.68 -> 0.63 ms, 2048->512 at 7x7 0.74 -> 0.69, 512->128 at
    28x28 0.68 -> 0.65 (the input-tile order streamed the whole weight once per plane tile).

    A windowed conv (3x3, any stride) whose weights stream and whose plane is small takes the
    same schedule over its ``y, x`` rows, a chunk's ``[c, ky, kx]`` innermost as its weights
    lie: ResNet-50's 3x3 512 at 7x7 (9.4 MB of weights), two threads, cold weights 1.01 ->
    0.81 ms; the model 26.28 -> 25.26 ms (the whole block's 576 KiB was fetched by the first
    row of tiles, then re-read from L2 by the next six)."""
    nf, xi = tile
    if row is not None:
        _merge_blocked_plane(sch, main, epilogue, row)
        n, f, plane, v, rc, ry, rx = sch.get_loops(main)
        rows = [plane]
    else:
        n, f, y, plane, v, rc, ry, rx = sch.get_loops(main)
        rows = [y, plane]
    block_elems = nf * math.prod(_extents(sch, [v, rc, ry, rx]))  # one block's weights
    p_o, x_i = sch.split(rows[-1], factors=[None, xi])
    f_o, f_i = sch.split(f, factors=[None, nf])
    rc_o, rc_i = sch.split(rc, factors=[None, chunk])
    chunk_loops = _by_input_block(sch, main, rc_i)
    if _extents(sch, [ry, rx]) == [1, 1]:
        sch.reorder(n, f_o, rc_o, *rows[:-1], p_o, ry, rx, *chunk_loops, f_i, x_i, v)
    else:  # a chunk's weights [c, ky, kx, b] in the order they lie in memory
        sch.reorder(n, f_o, rc_o, *rows[:-1], p_o, *chunk_loops, ry, rx, f_i, x_i, v)
    _epilogue_at(sch, epilogue, f_o)
    sch.vectorize(v)
    sch.unroll(x_i)
    sch.unroll(f_i)
    fused = sch.fuse(n, f_o)
    if params.num_cores > 1:
        sch.parallel(fused)
    sch.decompose_reduction(main, rc_o)
    sch.vectorize(sch.get_loops(epilogue)[-1])
    if _WEIGHT_PREFETCH:
        _prefetch_weights(
            sch,
            main,
            fused,
            p_o,
            block_elems=block_elems,
            rows=nf,
            chunks=_extents(sch, [rc_o])[0],
            steps_per_slice=math.prod(_extents(sch, [*rows[:-1], p_o])),
            distance=_K_BLOCKED_PREFETCH_DISTANCE,
        )
    _schedule_root_blocks(sch, main, params)


def _input_block(sch: s_tir.Schedule, main: SBlockRV) -> int | None:
    """The channel block of a blocked conv's input (``[n, c/B, h, w, B]``, or a Winograd
    product's ``[sample, point, c/B, 1, tile, B]``), or ``None`` for an NCHW input: the read
    that is neither the accumulator nor the weights (the last read) and whose innermost index
    is taken along the reduction over channels (``packed_conv._input_read`` looks for the
    output column, which a merged plane no longer has)."""
    stmt = sch.get(main)
    rc = next(iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.CommReduce)
    out = stmt.writes[0].source
    for region in stmt.reads[:-1]:
        buf = region.source
        if buf.same_as(out) or len(buf.shape) not in (5, 6):
            continue
        if _uses_var(region.region[-1].min, rc):
            return int(buf.shape[-1])
    return None


def _by_input_block(
    sch: s_tir.Schedule, main: SBlockRV, rc: LoopRV, block: int | None = None
) -> list[LoopRV]:
    """The reduction loop ``rc`` split as ``[rc / B, B]`` by the blocked input's channel block
    ``B`` (``block``, else read off the conv), or ``[rc]`` as it is (an NCHW input, or ``rc``
    not a multiple of more than one block).

    Over one loop, the input's address ``(c / B) * plane * B + p * B + c % B`` is a division
    and a remainder at every step: LLVM computed it with a shift, a mask, a multiply and a
    sign extension per channel (8 integer instructions per 8 FMAs of a 2x4 tile) and could not
    unroll the loop. Split, both parts are induction variables. Measured (AMD EPYC Zen 3, 2
    threads, AVX2): 1x1 256->256 at 14x14 on a blocked input, in a chain of four, 1.36 ->
    0.73 ms (76 -> 142 GFLOP/s); the same conv on an NCHW input ran 129 GFLOP/s."""
    block = _input_block(sch, main) if block is None else block
    (ext,) = _extents(sch, [rc])
    if block is None or ext % block or ext <= block:
        return [rc]
    return list(sch.split(rc, factors=[None, block]))


def _ragged_tile(
    channel_blocks: int, width: int, registers: int, accumulators: int | None, tasks: int = 1
) -> tuple[int, int] | None:
    """A register tile ``(nf, xi)`` whose ``xi`` need not divide ``width``, for a conv whose
    divisor tiles leave fewer than ``_FEW_ACCUMULATORS`` accumulators (an output width that is
    prime: 97 columns by 3 blocks of 11 gave 3 x 1): ``nf`` a divisor of the channel blocks up
    to 4, ``xi`` as many columns as the accumulator budget leaves (at most 8, fewer than
    ``width``), at least ``_FEW_ACCUMULATORS`` accumulators; the fewest loads per FMA (``nf``
    weight vectors and ``xi`` broadcasts for ``nf * xi`` FMAs), then the most accumulators.
    openWakeWord's STFT conv: 3 x 2 105 GFLOP/s, 1 x 8 68 (the loads), 3 x 1 61 (the FMAs'
    latency). ``nf`` leaves at least ``tasks`` parallel blocks (channel blocks times output
    rows, per core) where some divisor does. ``None`` when no such tile exists."""
    budget = registers // 2 if accumulators is None else min(registers // 2, accumulators)
    best = None
    sizes = [d for d in _divisors(channel_blocks) if d <= 4]
    sizes = [d for d in sizes if channel_blocks // d >= tasks] or sizes[:1]
    for nf in sizes:
        xi = min(budget // nf, 8, width - 1)
        if nf * xi < _FEW_ACCUMULATORS:
            continue
        key = ((nf + xi) / (nf * xi), -nf * xi)
        if best is None or key < best[0]:
            best = (key, (nf, xi))
    return None if best is None else best[1]


def _schedule_conv_ragged(
    sch: s_tir.Schedule,
    main: SBlockRV,
    epilogue: SBlockRV,
    tile: tuple[int, int],
    params: CpuScheduleParams,
) -> None:
    """A blocked conv whose register tile ``(nf, xi)`` does not divide the output width: per
    block of ``nf`` channel vectors and output row (in parallel), the row is swept in whole
    tiles of ``xi`` columns and one tail tile of the rest (``loop_partition``: two copies of
    the conv with the same channel tile); the epilogue runs on the row after it.
    openWakeWord's melspectrogram (AMD EPYC, AVX2, 2 threads, ``tvmforge profile``): its
    STFT conv (1 -> 264 channels, 1 x 512 taps, stride 160, 97 columns, so the divisor tiles
    were 3 x 1) 0.866 -> 0.498 ms for its two calls, 61 -> 105 GFLOP/s."""
    nf, xi = tile
    input_block = _input_block(sch, main)
    n, f, y, x, v, rc, ry, rx = sch.get_loops(main)
    (width,) = _extents(sch, [x])
    f_o, f_i = sch.split(f, factors=[None, nf])
    sch.reorder(n, f_o, y, x, f_i, v, rc, ry, rx)
    _epilogue_at(sch, epilogue, y)  # before the partition hides the conv's region
    name = sch.get(main).name_hint
    whole = width - width % xi
    parts = [(main, True)]
    if whole != width:
        var = sch.get(x).loop_var.name
        sch.loop_partition(x, [whole, None])
        whole_part, tail_part = (sch.get_sblock(f"{name}_{var}{i}") for i in (0, 1))
        parts = [(whole_part, True), (tail_part, False)]
    for block, tiled in parts:
        col, f_i, v, rc, ry, rx = sch.get_loops(block)[-6:]
        if tiled:
            x_o, x_i = sch.split(col, factors=[None, xi])
            outer = [x_o]
        else:  # the tail: one tile (its loop starts past the whole tiles, so it stays whole)
            x_i, outer = col, []
        reduction = _by_input_block(sch, block, rc, input_block)
        sch.reorder(*outer, *reduction, ry, rx, f_i, x_i, v)
        sch.vectorize(v)
        sch.unroll(x_i)
        sch.unroll(f_i)
        sch.decompose_reduction(block, reduction[0])
    sch.vectorize(sch.get_loops(epilogue)[-1])
    fused = sch.fuse(n, f_o, y)  # blocks of channels by output rows
    if params.num_cores > 1:
        sch.parallel(fused)
    _schedule_root_blocks(sch, parts[0][0], params)


def _schedule_packed_conv_nchwc(
    sch: s_tir.Schedule, main: SBlockRV, params: CpuScheduleParams
) -> None:
    """Direct convolution with a blocked output ``[N, F/B, OH, OW, B]`` (``nchwc_layout``).

    The channel tile of ``_schedule_packed_conv`` (``nf`` vectors of ``B`` output channels x
    ``xi`` output columns in registers across the whole reduction, weight vectors loaded,
    inputs broadcast), but the tile *is* a block of the output: the accumulators, the
    epilogue (bias, activation, residual) and the store are contiguous vectors, with no
    scatter or gather. A 1x1 stride-1 conv runs its tile over the flattened plane (its
    input and output are ``[.., H * W, B]`` in memory), so ``xi`` divides ``H * W`` rather
    than a ragged row (14, 7). Tiles run output-row by output-row with the weights held in
    cache, or, for weights too big for it, weight block by weight block. A 1x1 conv sweeps the
    plane block by block of two channel vectors when that block's weights fit L1 and its input
    fits L2 (``_flat_conv_tile``). Measured in ResNet-50 (in the model, 2 threads, both orders
    interleaved): 1x1 256->1024 at 14x14 with its residual 2.86 -> 2.36 ms for the six,
    128->512 at 28x28 1.63 -> 1.52 ms for the four; with a 3 MB input the input-tile order
    stays faster (256->64 at 56x56: 0.72 against 1.18 ms). With 512 or more input channels (a
    block of 64 KiB) that sweep lost to the input-tile order (512->128 at 28x28: 1.44 against
    1.07 ms); such convs split their reduction into chunks whose weights fit L1 instead
    (``_schedule_flat_conv_k_blocked``).
    """
    main, block, epilogue = _packed_conv_blocks(sch, main, "SSSSSRRR")
    winograd_product = len(sch.get_loops(main)) == 9
    if winograd_product:  # its sample and point are the batch
        if _extents(sch, sch.get_loops(epilogue)) != _extents(sch, sch.get_loops(main)[:6]):
            raise ValueError("the epilogue is not elementwise on the Winograd product")
        sch.fuse(*sch.get_loops(main)[:2])
        sch.fuse(*sch.get_loops(epilogue)[:2])
    n, f, y, x, v, rc, ry, rx = sch.get_loops(main)
    ext_f, ext_y, ext_x, ext_v, ext_rc, ext_ry, ext_rx = _extents(sch, [f, y, x, v, rc, ry, rx])
    if ext_v != block or _extents(sch, sch.get_loops(epilogue)) != _extents(sch, [n, f, y, x, v]):
        raise ValueError("the epilogue is not elementwise on the conv output")
    stride, dilation = _column_step(sch, main)
    weight_bytes = ext_f * block * ext_rc * ext_ry * ext_rx * 4
    flat = ext_ry == ext_rx == 1 and stride == 1 and not _is_padded(sch, main)
    width = ext_y * ext_x if flat else ext_x
    stack = _stack_accumulators(block)
    nf, xi = packed_conv_tile(
        ext_f,
        width,
        params.vector_registers,
        1 if flat else ext_rx,
        stride,
        dilation,
        accumulators=stack,
    )
    weight_outer = weight_bytes > _WEIGHT_CACHE_BYTES
    if not flat and not winograd_product and nf * xi < _FEW_ACCUMULATORS:
        # the divisors of the width leave too few accumulators: a tile with a tail
        ragged = _ragged_tile(
            ext_f, ext_x, params.vector_registers, stack, -(-params.num_cores // ext_y)
        )
        if ragged is not None:
            _schedule_conv_ragged(sch, main, epilogue, ragged, params)
            return
    if flat:
        # Swept block of channels by block of channels, a tile's weights are re-read at every
        # tile of the plane: from L1 when they fit it, and the input (re-read per block) from
        # L2 when it fits that. Otherwise the input tile stays put and the weights stream.
        flat_tile = _flat_conv_tile(ext_f, width, params.vector_registers, stack)
        if (
            flat_tile is not None
            and flat_tile[0] * block * ext_rc * 4 <= _L1_WEIGHT_BLOCK_BYTES
            and _input_bytes(sch, main) <= _STREAMED_INPUT_BYTES
        ):
            chunk = _short_sweep_chunk(ext_rc, flat_tile, width, block)
            if chunk is not None:
                _schedule_flat_conv_k_blocked(
                    sch, main, epilogue, flat_tile, chunk, ext_x if ext_y > 1 else None, params
                )
                return
            nf, xi = flat_tile
            weight_outer = True
        elif flat_tile is not None and _input_bytes(sch, main) <= _K_BLOCKED_INPUT_BYTES:
            chunk = _reduction_chunk(ext_rc, flat_tile[0] * block)
            if chunk is not None:
                _schedule_flat_conv_k_blocked(
                    sch, main, epilogue, flat_tile, chunk, ext_x if ext_y > 1 else None, params
                )
                return
    if (
        _K_BLOCKED_WINDOWS
        and not flat
        and not winograd_product
        and weight_outer
        and ext_f % 2 == 0
        and 2 * ext_y * ext_x * block * 4 <= _K_BLOCKED_PLANE_BYTES
    ):
        # a windowed conv whose weights stream (3x3 with 256-512 channels at 7x7-14x14): the
        # same chunked reduction, each chunk's weights re-read from L1 over the whole plane
        chunk = _reduction_chunk(ext_rc, 2 * block, ext_ry * ext_rx, budget=_L1_WEIGHT_BLOCK_BYTES)
        tile = packed_conv_tile(
            ext_f,
            ext_x,
            params.vector_registers,
            ext_rx,
            stride,
            dilation,
            max_blocks=2,
            accumulators=stack,
        )
        if chunk is not None and tile[0] == 2:
            _schedule_flat_conv_k_blocked(sch, main, epilogue, tile, chunk, None, params)
            return
    merged = flat and ext_y > 1  # a plane of one row (Winograd's tiles) is flat already
    if merged:
        _merge_blocked_plane(sch, main, epilogue, ext_x)
        n, f, plane, v, rc, ry, rx = sch.get_loops(main)
        p_o, x_i = sch.split(plane, factors=[None, xi])
        rows = [p_o]
    else:
        x_o, x_i = sch.split(x, factors=[None, xi])
        rows = [y, x_o]
    f_o, f_i = sch.split(f, factors=[None, nf])
    if not weight_outer:
        outer = [n, *rows, f_o]  # an input tile reused across all output channels
    else:
        outer = [n, f_o, *rows]  # a block of weights reused across the whole output
    reduction = _by_input_block(sch, main, rc)
    rc = reduction[0]  # the outermost reduction loop, where the accumulators are initialized
    sch.reorder(*outer, *reduction, ry, rx, f_i, x_i, v)
    _epilogue_at(sch, epilogue, outer[-1])
    sch.set_scope(main, 0, _ACC_SCOPE)
    sch.vectorize(v)
    sch.unroll(x_i)
    sch.unroll(f_i)
    iters_per_slice = math.prod(_extents(sch, rows)) if weight_outer else 1
    fused = sch.fuse(*outer)
    if params.num_cores > 1:
        sch.parallel(fused)
    sch.decompose_reduction(main, rc)
    if _WEIGHT_PREFETCH and (_PREFETCH_WINOGRAD_PRODUCT or not winograd_product):
        # the next block of weights, a share per output tile of the current block; skipped
        # (too many lines a tile) for the 3x3 convs whose block is re-read over few tiles:
        # spreading those over chunks of the reduction measured slower (3x3 512 at 7x7,
        # 0.77 -> 0.84 ms warm, no gain cold).
        _prefetch_weights(
            sch,
            main,
            fused,
            fused,
            block_elems=nf * block * ext_rc * ext_ry * ext_rx,
            rows=nf,
            steps_per_slice=iters_per_slice,
            distance=_DIRECT_PREFETCH_DISTANCE,
        )
    epi_loops = sch.get_loops(epilogue)
    inner = epi_loops[-3:] if merged else epi_loops[-4:]  # the tile's [f, (y,) x, b]
    sch.vectorize(inner[-1])
    for loop in inner[:-1]:
        sch.unroll(loop)
    _schedule_root_blocks(sch, main, params)


class NchwcConv(ScheduleRule):
    """Convs on blocked activations (8 iterators) and Winograd products (9)."""

    name = "nchwc_conv"

    def apply(self, func, params):
        from tvmforge.passes.schedule.contraction import _main_contraction

        sch = s_tir.Schedule(func)
        main = _main_contraction(sch)
        if main is None or _packed_block(sch, main) is None:
            return None
        if len(sch.get(main).iter_vars) not in (8, 9):
            return None
        _schedule_packed_conv_nchwc(sch, main, params)
        return sch
