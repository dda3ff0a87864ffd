"""Contractions (conv2d in NCHW incl. 1x1, strided, depthwise and grouped; dense, matmul,
batch_matmul) with their fused epilogue.

Let ``v`` be the innermost spatial axis of the output (contiguous in memory) and ``r`` a *row*
axis that the operand read along ``v`` does not depend on (the output channel of a conv, the row
of a matmul), so the other operand's value is reused across it.

- register tile ``r_i x v_i``: ``v_i`` a divisor of ``v`` near the vector width (or all of ``v``
  when ``v`` is short), ``r_i`` a divisor of ``r`` such that ``r_i * ceil(v_i / lanes)``
  accumulators fit in the vector register file;
- loop order ``[spatial outer tiles] [reduction axes] [r_i (unrolled), v_i (vectorized)]``;
- the init is split off with ``decompose_reduction`` above the reduction loops;
- the epilogue (inlined into one block) is ``reverse_compute_at`` into the tile, so the
  accumulator buffer shrinks to the tile and stays in registers; without an epilogue a
  ``cache_write`` provides one;
- the outer spatial tiles are fused and run in parallel;
- a 1x1 stride-1 conv whose row width is no multiple of the vector width (56, 28, 14, 7) gets
  its ``y, x`` plane merged into one axis first (``_flatten_plane``).

Vector loops are always a divisor of the axis and at most one or two registers wide: a tail
predicate or an odd vector wider than a register makes LLVM emit scalar code (measured 15-20x
slower than an 11-wide vector on AVX-512). Padding producers stay separate and get the generic
schedule; other injective producers are inlined.
"""

from __future__ import annotations

import logging
import math

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.schedule import LoopRV, SBlockRV

from tvmforge.passes.schedule.analysis import (
    _CHILD_FIELDS,
    _column_step,
    _divisors,
    _extents,
    _inline_injective,
    _is_mac,
    _is_padding,
    _iter_kinds,
    _largest_divisor_at_most,
    _loops_match_iters,
    _parallelize,
    _uses_var,
    _vector_split,
)
from tvmforge.passes.schedule.generic import _is_root_level, _schedule_root_blocks
from tvmforge.passes.schedule.params import _SCHEDULE_ERRORS, CpuScheduleParams
from tvmforge.passes.schedule.rule import ScheduleRule

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Contractions: conv2d, dense, matmul, batch_matmul


def _main_contraction(sch: s_tir.Schedule) -> SBlockRV | None:
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    macs = [b for b in blocks if _is_mac(sch, b)]
    if len(macs) != 1:
        return None
    return macs[0]


def _row_axis(
    sch: s_tir.Schedule, block: SBlockRV, vec: int, spatial: list[int], extents: list[int]
) -> int | None:
    """A spatial axis that the operand read along ``vec`` does not depend on (reuse axis)."""
    stmt = sch.get(block)
    vars_ = [iv.var for iv in stmt.iter_vars]
    out_buf = stmt.writes[0].source
    along_vec = [
        r
        for r in stmt.reads
        if not r.source.same_as(out_buf) and any(_uses_var(x.min, vars_[vec]) for x in r.region)
    ]
    candidates = [
        i
        for i in spatial
        if i != vec
        and extents[i] > 1
        and all(not any(_uses_var(x.min, vars_[i]) for x in r.region) for r in along_vec)
    ]
    if candidates:
        return candidates[-1]
    rest = [i for i in spatial if i != vec and extents[i] > 1]
    return rest[-1] if rest else None


# Accumulators of a grouped conv's tile (channels x rows x vectors): three quarters of the
# AVX-512 registers (the rest hold the input vectors and the broadcast weights).
_GROUP_TILE_ACCUMULATORS = 24


def _row_vector_cost(width: int, lanes: int) -> tuple[int, int]:
    """``(loads, shuffles)`` of loading ``width`` contiguous floats as one vector: one load per
    full register; a ragged width (14, 7) is assembled by LLVM from power-of-two pieces
    (14 = 8 + 4 + 2: three loads, two inserts)."""
    full, rest = divmod(width, lanes)
    pieces = bin(rest).count("1")
    return full + pieces, max(pieces - 1, 0)


def grouped_tile(
    v_ext: int, row_ext: int, group: int, lanes: int, budget: int = _GROUP_TILE_ACCUMULATORS
) -> tuple[int, int, int]:
    """Register tile ``(v_in, r_in, c_in)`` of a grouped conv (``_schedule_contraction``):
    ``v_in`` contiguous outputs (one register, or the ragged row as ``_vector_split`` gives
    it) x ``r_in`` rows (a divisor of ``row_ext``) x ``c_in`` output channels of one group (a
    divisor of ``group``), at most ``budget`` accumulator registers. Per reduction step the
    tile loads ``r_in`` input vectors (each ``_row_vector_cost``) and broadcasts ``c_in``
    weights for ``r_in * c_in`` vector FMAs; the tile with the least time per useful
    multiply-add wins, counting two FMAs, two loads and one shuffle per cycle.

    Measured on ShuffleNet's grouped 1x1 convs (one thread, GFLOP/s, the old tile -> this
    one): 272 channels in 4 groups at 14x14, 2 channels x 7 rows of 14 -> 17 channels x 1
    row, 67 -> 104; 544 in 4 at 7x7, 2 x 7 rows -> 17 x 1, 40 -> 62; 112 in 4 at 28x28 (plane
    flattened), 8 channels across groups x 16 -> 14 x 16, 119 -> 128; 136 in 4 at 28x28,
    67 -> 111. Wider tiles of the flat plane (2-7 registers of pixels x fewer channels) ran
    10-30 % slower than one register x more channels, so ``v_in`` stays one register."""
    v_in = lanes if v_ext % lanes == 0 else _vector_split(v_ext, lanes)
    vregs = -(-v_in // lanes)
    loads, shuffles = _row_vector_cost(v_in, lanes)
    best: tuple[float, int, int, int] | None = None
    for r_in in _divisors(row_ext):
        for c_in in _divisors(group):
            fmas = r_in * c_in * vregs
            if fmas > budget:
                continue
            cycles = max(fmas / 2, (r_in * loads + c_in) / 2, r_in * shuffles)
            key = (cycles / (r_in * c_in * v_in), -fmas, r_in, c_in)
            if best is None or key < best:
                best = key
    assert best is not None  # (1, 1) always fits
    return v_in, best[2], best[3]


def _group_axis(
    sch: s_tir.Schedule, block: SBlockRV, vec: int, row: int | None, spatial: list[int]
) -> tuple[int, int] | None:
    """``(axis, G)`` when a spatial axis reaches the operand read along ``vec`` only as
    ``floordiv(axis, G)`` (a grouped conv's output channel picking its group's inputs)."""
    stmt = sch.get(block)
    vars_ = [iv.var for iv in stmt.iter_vars]
    out_buf = stmt.writes[0].source
    along_vec = [
        r
        for r in stmt.reads
        if not r.source.same_as(out_buf) and any(_uses_var(x.min, vars_[vec]) for x in r.region)
    ]
    for i in spatial:
        if i in (vec, row) or int(stmt.iter_vars[i].dom.extent) < 2:
            continue
        groups: set[int] = set()
        ok = True
        for region in along_vec:
            for rng in region.region:
                if not _uses_var(rng.min, vars_[i]):
                    continue
                divs = _floordivs_of(rng.min, vars_[i])
                if divs is None:
                    ok = False
                groups |= divs or set()
        if ok and len(groups) == 1:
            group = groups.pop()
            if 1 < group < int(stmt.iter_vars[i].dom.extent):
                return i, group
    return None


def _floordivs_of(expr, var: tirx.Var) -> set[int] | None:
    """The constants ``G`` of every ``floordiv(var, G)`` in ``expr``; ``None`` when ``var``
    also appears outside one."""
    found: set[int] = set()
    bare = False

    def walk(node) -> None:  # a bare use is one not directly under such a FloorDiv
        nonlocal bare
        if isinstance(node, tirx.Var):
            if node.same_as(var):
                bare = True
            return
        if (
            isinstance(node, tirx.FloorDiv)
            and isinstance(node.b, tirx.IntImm)
            and isinstance(node.a, tirx.Var)
            and node.a.same_as(var)
        ):
            found.add(int(node.b.value))
            return
        for field in _CHILD_FIELDS:
            child = getattr(node, field, None)
            if child is not None and isinstance(child, tvm.ir.expr.Expr):
                walk(child)

    walk(expr)
    return None if bare else found


def _flatten_plane(
    sch: s_tir.Schedule, main: SBlockRV, epilogue: SBlockRV, lanes: int, force: bool = False
) -> None:
    """Merge the last two spatial axes into one when every buffer stores them as one plane.

    That is the case of a 1x1, stride-1 conv2d in NCHW: ``out[n, f, y, x]`` and
    ``in[n, c, y, x]`` are both contiguous over ``y * W + x``, so the vector loop can run over
    the whole plane in full registers instead of over a row whose width (56, 28, 14, 7) is no
    multiple of the vector width. The block iterators and the accumulator buffer are
    re-indexed (``transform_block_layout``, ``transform_layout``) so that a tile of the plane is
    an exact region and ``reverse_compute_at`` of the epilogue stays exact. Does nothing when
    the row is already a multiple of ``lanes`` or the accesses are not plain ``[.., y, x]``.
    """
    from tvm.sym.analyzer import Analyzer

    stmt = sch.get(main)
    ivs = list(stmt.iter_vars)
    kinds = _iter_kinds(sch, main)
    spatial = [i for i, k in enumerate(kinds) if k == "S"]
    if len(spatial) < 2 or spatial[-1] != spatial[-2] + 1:
        return
    a, b = spatial[-2], spatial[-1]
    ext_a, ext_b = int(ivs[a].dom.extent), int(ivs[b].dom.extent)
    if ext_a == 1 or (not force and (ext_b % lanes == 0 or (ext_a * ext_b) % lanes != 0)):
        return
    ana = Analyzer()
    for iv in ivs:
        if int(iv.dom.extent) == 1:
            ana.bind(iv.var, iv.dom)
    va, vb = ivs[a].var, ivs[b].var
    for region in [*stmt.reads, *stmt.writes]:
        idx = [r.min for r in region.region]
        if not any(_uses_var(e, va) or _uses_var(e, vb) for e in idx):
            continue
        shape = [int(d) for d in region.source.shape]
        if len(idx) < 2 or shape[-2:] != [ext_a, ext_b]:
            return
        if not (ana.simplify(idx[-1]).same_as(vb) and ana.simplify(idx[-2]).same_as(va)):
            return
        if any(_uses_var(e, va) or _uses_var(e, vb) for e in idx[:-2]):
            return
    epi_ivs = list(sch.get(epilogue).iter_vars)
    if len(epi_ivs) < 2 or [int(iv.dom.extent) for iv in epi_ivs[-2:]] != [ext_a, ext_b]:
        return
    if a != len(epi_ivs) - 2:
        return

    def merge(n: int):
        def fmap(*vs):
            return [*vs[:a], vs[a] * ext_b + vs[a + 1], *vs[a + 2 :]]

        return tirx.IndexMap.from_func(fmap, ndim=n)

    buffer_ndim = len(sch.get(main).writes[0].region)
    if buffer_ndim != a + 2:
        return
    sch.transform_layout(main, ("write", 0), merge(buffer_ndim))
    sch.transform_block_layout(main, merge(len(ivs)))
    sch.transform_block_layout(epilogue, merge(len(epi_ivs)))


def _single_epilogue(sch: s_tir.Schedule, main: SBlockRV) -> SBlockRV:
    """Everything after the contraction inlined into one block (a ``cache_write`` if none)."""
    consumers = sch.get_consumers(main)
    if not consumers:
        return sch.cache_write(main, 0, "global")
    if len(consumers) != 1:
        raise ValueError("contraction with several consumers")
    epilogue = consumers[0]
    while True:
        nxt = sch.get_consumers(epilogue)
        if not nxt:
            break
        if len(nxt) != 1:
            raise ValueError("epilogue with several consumers")
        sch.compute_inline(epilogue)  # raises if not inlinable
        epilogue = nxt[0]
    if "R" in _iter_kinds(sch, epilogue):
        raise ValueError("reduction after the contraction")
    return epilogue


def _epilogue_at(sch: s_tir.Schedule, epilogue: SBlockRV, loop: LoopRV) -> None:
    """``reverse_compute_at`` the epilogue into the tile under ``loop``, checking that it now
    covers that tile only.

    When the epilogue's indexing hides which part of the accumulator it reads (an int8 dense
    with 10 outputs read as ``acc[c // 16, c % 16]`` from 16 padded channels), TVM computes the
    whole epilogue in every tile: each of the parallel tiles would then read accumulators that
    another thread is still summing (a race: wrong outputs with two threads, right ones with
    one). The same holds where the epilogue narrows but not to the tile: a tile of 8 of an int8
    dense's 16 padded lanes read as ``acc[c // 16, c % 16]`` over 128 outputs gave each of the
    two parallel tiles 120 outputs to compute, overlapping the other's (digits MLP int8 on an
    AVX2 CPU: 36 % top-1 instead of 99 %). Both raise ``ValueError`` (the tiles, each with its
    share of the epilogue, must add up to the epilogue exactly), and the caller falls back to a
    schedule that keeps the epilogue whole, after the contraction.
    """
    sch.reverse_compute_at(epilogue, loop, preserve_unit_loops=True)
    loops = sch.get_loops(epilogue)
    index = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(loop)))
    above = math.prod(_extents(sch, loops[: index + 1]))
    inside = math.prod(_extents(sch, loops[index + 1 :]))
    whole = math.prod(int(iv.dom.extent) for iv in sch.get(epilogue).iter_vars)
    if above > 1 and inside >= whole:
        raise ValueError("the epilogue does not narrow to the tile (it would run whole per tile)")
    if above * inside > whole and not _predicated(sch, epilogue):
        raise ValueError(
            f"the epilogue's tiles overlap ({above} x {inside} for {whole} outputs): its "
            "indexing hides which accumulators a tile reads"
        )


def _predicated(sch: s_tir.Schedule, block: SBlockRV) -> bool:
    """Whether the block runs under a predicate (a ragged last tile: the tiles' loops cover
    more than the block, and the predicate cuts off the excess without overlap)."""
    realize = _block_realize(sch, block)
    return realize is not None and not (
        isinstance(realize.predicate, tirx.IntImm) and int(realize.predicate.value) == 1
    )


def _block_realize(sch: s_tir.Schedule, block: SBlockRV):
    """The ``SBlockRealize`` of a block, found under its innermost loop."""
    loops = sch.get_loops(block)
    if not loops:
        return None
    body = sch.get(loops[-1]).body
    stmts = list(body.seq) if isinstance(body, tirx.SeqStmt) else [body]
    target = sch.get(block)
    for stmt in stmts:
        if isinstance(stmt, s_tir.SBlockRealize) and stmt.block.same_as(target):
            return stmt
    return None


def _schedule_contraction(sch: s_tir.Schedule, main: SBlockRV, params: CpuScheduleParams) -> None:
    main_name = sch.get(main).name_hint
    _inline_injective(sch, keep={main_name})
    main = sch.get_sblock(main_name)
    if not _loops_match_iters(sch, main):
        raise ValueError("loops of the contraction do not match its iterators")
    kinds = _iter_kinds(sch, main)
    if kinds != "S" * kinds.count("S") + "R" * kinds.count("R"):
        raise ValueError(f"unexpected iterator order {kinds}")

    epilogue = _single_epilogue(sch, main)
    _flatten_plane(sch, main, epilogue, params.lanes)
    kinds = _iter_kinds(sch, main)

    loops = sch.get_loops(main)
    extents = _extents(sch, loops)
    spatial = [i for i, k in enumerate(kinds) if k == "S"]
    reduce_ = [i for i, k in enumerate(kinds) if k == "R"]
    # unit iterators (a 1x1 kernel's, after _flatten_plane) are no candidates
    vec = next((i for i in reversed(spatial) if extents[i] > 1), spatial[-1])
    v_ext = extents[vec]
    lanes = params.lanes
    # A grouped conv's output channels share their input within a group: several of them
    # (a divisor of the group) join the tile, each input vector then serves them all.
    chan, c_in = None, 1
    grouped = _group_axis(sch, main, vec, None, spatial)
    if grouped is not None:
        chan, group = grouped
        row = _row_axis(sch, main, vec, [i for i in spatial if i != chan], extents)
        v_in, r_in, c_in = grouped_tile(v_ext, 1 if row is None else extents[row], group, lanes)
        if c_in < 2:
            chan, c_in = None, 1
    else:
        if v_ext % (2 * lanes) == 0 and v_ext >= 4 * lanes:
            v_in = 2 * lanes
        else:
            v_in = _vector_split(v_ext, lanes)
        vregs = math.ceil(v_in / lanes)
        row = _row_axis(sch, main, vec, spatial, extents)
        r_in = 1
        if row is not None:
            budget = max(params.accumulators // vregs, 1)
            r_in = _largest_divisor_at_most(extents[row], min(budget, 8))

    outer: list[LoopRV] = []
    inner: list[LoopRV] = []
    for i in spatial:
        if i == vec and grouped is not None and v_in > lanes:
            # several registers of a row: unrolled, one register per vector (a 112-wide
            # vector would be legalized into scalar code)
            o, k, n = sch.split(loops[i], factors=[None, v_in // lanes, lanes])
            outer.append(o)
            inner += [k, n]
        elif i == vec and v_in < v_ext:
            o, n = sch.split(loops[i], factors=[None, v_in])
            outer.append(o)
            inner.append(n)
        elif i == vec:
            inner.append(loops[i])
        elif i == row and 1 < r_in < extents[i]:
            o, n = sch.split(loops[i], factors=[None, r_in])
            outer.append(o)
            inner.insert(0, n)
        elif i == row and r_in == extents[i]:
            inner.insert(0, loops[i])
        elif i == chan:
            o, n = sch.split(loops[i], factors=[None, c_in])
            outer.append(o)
            inner.insert(0, n)
        else:
            outer.append(loops[i])
    red = [loops[i] for i in reduce_]
    sch.reorder(*outer, *red, *inner)

    if not outer:
        raise ValueError("the whole output fits one register tile")
    _epilogue_at(sch, epilogue, outer[-1])
    # Inner tile: unroll the row (and group channel) loops, vectorize the contiguous one.
    # Both before decompose_reduction (which copies the loop kinds to the init), as
    # MetaSchedule's postprocessors do: afterwards the update block is no longer a reduction.
    sch.vectorize(inner[-1])
    for loop in inner[:-1]:
        sch.unroll(loop)
    _parallelize(sch, outer, params)
    sch.decompose_reduction(main, red[0])
    epi_loops = sch.get_loops(epilogue)[len(outer) :]
    if epi_loops:
        sch.vectorize(epi_loops[-1])
    _pad_per_tile(sch, main)
    _schedule_root_blocks(sch, main, params)


# A padding producer computed inside the contraction's outermost loop may redo at most this
# fraction more work than computing it once (the halo rows of neighbouring tiles).
_PAD_PER_TILE_REDO = 1.25


def _pad_per_tile(sch: s_tir.Schedule, main: SBlockRV) -> None:
    """A depthwise conv's padding, computed per tile of the outermost (parallel) loop into a
    buffer that stays in L1, instead of for the whole tensor before the conv: each channel
    reads only its own input plane. Taken only when that redoes at most
    ``_PAD_PER_TILE_REDO`` of the padding's work (a dense conv's tile reads every channel).
    For a stride-2 conv the padded plane is also stored column-deinterleaved (even columns,
    then odd) and written in that order, one vector per half row, so each tap reads a
    contiguous vector instead of a stride-2 gather.

    Measured on ShuffleNet's NCHW depthwise 3x3 convs (one thread, the padding before the conv
    -> per channel): stride 2, 112 channels at 56x56 0.39 -> 0.18 ms (0.29 without the
    deinterleave), 136 at 28x28 0.099 -> 0.042, 272 at 14x14 0.049 -> 0.024 (0.147 with the
    deinterleaved plane written by scalars: vector loads right after scalar stores to the
    same lines stall); stride 1, 136 at 28x28 0.093 -> 0.044, 272 at 14x14 0.037 -> 0.028,
    544 at 7x7 0.033 -> 0.020. ShuffleNet's first conv (3 -> 24, stride 2, padding per row
    tile) stays at 0.38 ms."""
    loops = sch.get_loops(main)
    if not loops:
        return
    for pad in sch.get_producers(main):
        if not _is_padding(sch, pad) or not _is_root_level(sch, pad, main):
            continue
        total = math.prod(_extents(sch, sch.get_loops(pad)))
        trial = sch.copy()
        try:
            trial.compute_at(pad, loops[0])
        except _SCHEDULE_ERRORS:
            continue
        inside = trial.get_loops(pad)[1:]
        if math.prod(_extents(trial, inside)) * _extents(sch, loops[:1])[0] > (
            _PAD_PER_TILE_REDO * total
        ):
            continue
        stride, dilation = _column_step(sch, main)
        shape = sch.get(pad).writes[0].source.shape
        if stride == 2 and dilation == 1 and int(shape[-1]) % 2 == 0:
            split = tirx.IndexMap.from_func(
                lambda *i: [*i[:-1], i[-1] % 2, i[-1] // 2], ndim=len(shape)
            )
            sch.transform_layout(pad, ("write", 0), split)
            sch.transform_block_layout(pad, split)
        sch.compute_at(pad, loops[0])
        half_row = sch.get_loops(pad)[-1]
        if _extents(sch, [half_row])[0] <= 16:
            sch.vectorize(half_row)


class Contraction(ScheduleRule):
    """Any multiply-accumulate kernel: convs in NCHW, dense, matmul, batch matmul."""

    name = "contraction"

    def apply(self, func, params):
        sch = s_tir.Schedule(func)
        main = _main_contraction(sch)
        if main is None:
            return None
        _schedule_contraction(sch, main, params)
        return sch
