"""Software prefetch of a blocked conv's next weight block while the current one computes.

Why
---
ResNet-50's late layers stream more weight than they reuse: a 1x1 conv 512->2048 at 7x7
reads 4 MiB of weights to do 49 multiply-adds with each, a Winograd product at 14x14 4 MiB
for 49 tiles. Their weights come cold from L3 or memory at every inference, and the
hardware prefetcher, which follows a stream a few lines ahead, does not cover a block of
weights that is read once (into L1) and then reused by a dozen register tiles: the first
tile waits for every line. Measured on Emerald Rapids, two threads, one kernel with its
weights flushed from the caches (warm ms / flushed ms): 1x1 512->2048 at 7x7 0.35 / 0.51;
the same conv with its next weight block prefetched into L2 a block ahead, a few lines per
register tile: 0.35 / 0.43.

What
----
A schedule marks two loops with ``mark_weight_prefetch``: the *outer* loop (the kernel's
parallel loop) and the *step* loop (the outer loop itself, or a loop inside it that runs
outside the register tile's reduction). The weight buffer is a sequence of *blocks* (one per
block of output-channel vectors: ``rows`` rows of ``C * KH * KW * B`` floats), each read in
``chunks`` consecutive chunks; a *slice* is one chunk of a block's rows, and the kernel's
iterations use the slices in order, each for ``steps_per_slice`` consecutive steps.
``insert_weight_prefetches`` then puts at the head of the step loop's body::

    for i in range(lines):                  # lines = ceil(chunk lines / steps_per_slice)
        for r in range(rows):
            prefetch(W + base(s + distance) + r * row + ((g % steps_per_slice) * lines + i) * 64B)

where ``g`` is the step's global index (the outer loop's index, then the loops down to the
step, linearised) and ``s = g // steps_per_slice`` the slice it uses; ``base`` wraps at the
last slice. So the steps that use one slice fetch the whole slice ``distance`` ahead into L2
(``prefetcht1``), a few lines per step. Each thread of TVM's static parallel split runs
consecutive iterations, so the slice ahead is its own. The schedules: the blocked direct
conv (a block of weights over the output tiles sharing it, one slice ahead) and the
K-blocked convs (a chunk over the plane's tiles, two chunks ahead).

The prefetch must not sit inside the loop that carries the register tile's accumulators:
LLVM then stores every accumulator at every step (measured 2.6x slower), so a step loop is
always one that re-enters the tile's reduction.
"""

from __future__ import annotations

import math

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.schedule import LoopRV

__all__ = [
    "PREFETCH_ATTR",
    "PREFETCH_OUTER_ATTR",
    "insert_weight_prefetches",
    "mark_weight_prefetch",
]

PREFETCH_ATTR = "tvmforge.weight_prefetch"
PREFETCH_OUTER_ATTR = "tvmforge.weight_prefetch_outer"

CACHE_LINE_BYTES = 64
# At most this many prefetches per step: a burst longer than the core's fill buffers can
# take stalls the loads of the tile that follows.
MAX_LINES_PER_STEP = 96
# Locality 2: prefetcht1, into L2. Into L1 (3) measured equal or slower: the slice evicts
# the block the tile is reading.
_LOCALITY = 2


def lines_per_step(row_bytes: int, steps_per_slice: int) -> int:
    """Prefetches per weight row per step to bring a slice's rows in over its steps."""
    lines = -(-row_bytes // CACHE_LINE_BYTES)
    return -(-lines // steps_per_slice)


def mark_weight_prefetch(
    sch: s_tir.Schedule,
    outer: LoopRV,
    step: LoopRV,
    *,
    weight: int,
    block_elems: int,
    rows: int,
    chunks: int = 1,
    steps_per_slice: int,
    distance: int = 1,
) -> bool:
    """Annotate ``outer`` and ``step`` for ``insert_weight_prefetches``; ``False`` (nothing
    marked) when a slice would need more than ``MAX_LINES_PER_STEP`` prefetches a step.

    The weight buffer (parameter ``weight``) is a sequence of *blocks* of ``block_elems``
    elements, each ``rows`` rows (one per output-channel vector of the register tile), each
    row read in ``chunks`` consecutive chunks; a *slice* is one chunk of a block's rows, and
    slices are used in order ``(block, chunk)``, each for ``steps_per_slice`` consecutive
    steps (iterations of ``step`` under ``outer``, counted across ``outer``'s iterations).
    At every step, the lines of slice ``current + distance`` are prefetched, a share each.
    """
    func = sch.mod["main"]
    buf = func.params[weight]
    if tvm.DataType(buf.dtype) != tvm.DataType("float32"):
        return False
    total = math.prod(int(d) for d in buf.shape)
    row_elems = block_elems // rows
    if block_elems <= 0 or total % block_elems or block_elems % rows or row_elems % chunks:
        return False
    lines = lines_per_step(row_elems // chunks * 4, steps_per_slice)
    if lines * rows > MAX_LINES_PER_STEP:
        return False
    sch.annotate(outer, PREFETCH_OUTER_ATTR, 1)
    sch.annotate(
        step,
        PREFETCH_ATTR,
        [weight, block_elems, rows, chunks, total // block_elems * chunks, steps_per_slice,
         lines, distance],
    )
    return True


def prefetch_offset(info, g: tirx.PrimExpr, i: tirx.PrimExpr, row: int) -> tirx.PrimExpr:
    """The element offset that step ``g`` prefetches as its ``i``-th line of weight row
    ``row``, for a mark's ``info`` (see ``mark_weight_prefetch``)."""
    _, block_elems, rows, chunks, slices, steps_per_slice, lines, distance = (
        int(x) for x in info
    )
    per_line = CACHE_LINE_BYTES // 4  # float32 weights only (``mark_weight_prefetch``)
    row_elems = block_elems // rows
    chunk_elems = row_elems // chunks
    dtype = g.ty.dtype
    c = lambda v: tirx.const(v, dtype)  # noqa: E731
    s = tirx.floormod(tirx.floordiv(g, c(steps_per_slice)) + c(distance), c(slices))
    base = tirx.floordiv(s, c(chunks)) * c(block_elems) + tirx.floormod(s, c(chunks)) * c(
        chunk_elems
    )
    # No clamp to the slice: the last step's lines may run past it, into the next chunk or
    # (last slice only) a few lines past the buffer; a prefetch never faults, and a clamp
    # costs 4 instructions per line in a loop that has to stay cheap.
    line = tirx.floormod(g, c(steps_per_slice)) * c(lines) + i
    return base + c(row * row_elems) + line * c(per_line)


def _prefetch_loop(buf, info, g: tirx.PrimExpr) -> tirx.Stmt:
    rows, lines = int(info[2]), int(info[6])
    dtype = g.ty.dtype
    i = tirx.Var("pf", dtype)
    stmts = [
        tirx.Evaluate(
            tirx.call_intrin(
                "void",
                "tirx.prefetch",
                buf.access_ptr("r", offset=prefetch_offset(info, g, i, j)),
                tirx.const(0, "int32"),
                tirx.const(_LOCALITY, "int32"),
                tirx.const(1, "int32"),
            )
        )
        for j in range(rows)
    ]
    body = tirx.SeqStmt(stmts) if rows > 1 else stmts[0]
    return tirx.For(i, tirx.const(0, dtype), tirx.const(lines, dtype), tirx.ForKind.SERIAL, body)


def _without(annotations, key):
    return {k: v for k, v in annotations.items() if k != key}


def insert_weight_prefetches(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Replace the marks of ``mark_weight_prefetch`` by the prefetch loops they describe."""
    params = list(func.params)
    found = [False]

    def visit(stmt, outer, chain):
        if isinstance(stmt, tirx.For):
            ann = stmt.annotations
            is_outer = PREFETCH_OUTER_ATTR in ann
            if is_outer:
                outer, chain = stmt.loop_var, []
            else:
                chain = [*chain, stmt] if outer is not None else chain
            body = visit(stmt.body, outer, chain)
            if PREFETCH_ATTR in ann:
                info = ann[PREFETCH_ATTR]
                if outer is None:
                    raise ValueError("a weight prefetch step outside its outer loop")
                # the step's global index: the outer loop's, then its loops down to the step
                g = outer
                for loop in chain:
                    g = g * loop.extent + (loop.loop_var - loop.min)
                body = tirx.SeqStmt([_prefetch_loop(params[int(info[0])], info, g), body])
                found[0] = True
                ann = _without(ann, PREFETCH_ATTR)
            if is_outer:
                ann = _without(ann, PREFETCH_OUTER_ATTR)
            return tirx.For(
                stmt.loop_var,
                stmt.min,
                stmt.extent,
                stmt.kind,
                body,
                stmt.thread_binding,
                ann,
            )
        if isinstance(stmt, tirx.SeqStmt):
            return tirx.SeqStmt([visit(s, outer, chain) for s in stmt.seq])
        if isinstance(stmt, s_tir.SBlockRealize):
            return s_tir.SBlockRealize(
                stmt.iter_values, stmt.predicate, visit(stmt.block, outer, chain)
            )
        if isinstance(stmt, s_tir.SBlock):
            return s_tir.SBlock(
                stmt.iter_vars,
                stmt.reads,
                stmt.writes,
                stmt.name_hint,
                visit(stmt.body, outer, chain),
                stmt.init,
                stmt.alloc_buffers,
                stmt.match_buffers,
                stmt.annotations,
            )
        return stmt

    body = visit(func.body, None, [])
    return func.with_body(body) if found[0] else func
