"""Winograd input and output transforms (the kernels ``passes/graph/winograd.py`` makes,
their block annotated ``tvmforge.winograd``): ``winograd.schedule_transform``."""

from __future__ import annotations

import math

from tvm import s_tir

from tvmforge.passes.graph.winograd import WINOGRAD_ATTR
from tvmforge.passes.schedule.analysis import _schedule_block_generic
from tvmforge.passes.schedule.params import _SCHEDULE_ERRORS
from tvmforge.passes.schedule.rule import ScheduleRule

__all__ = ["WinogradTransform", "schedule_transform"]



_INLINE_ERRORS = _SCHEDULE_ERRORS

# The first pass computed per row (input) or column (output) of the tile it feeds, on the
# stack, instead of whole per tile in a workspace allocation.
_TRANSFORM_ROWS = True


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def schedule_transform(sch, main, params) -> None:
    """One tile (``B`` channels of one ``alpha x alpha`` input tile, or of one ``m x m``
    output tile) per iteration of a parallel loop; its first pass (rows, columns) computed
    at the tile into registers; both passes' indices unrolled, so each ``Select`` folds to
    one sparse sum; the ``B`` channels one vector. The output transform takes the ops fused
    after it (bias, activation, residual) into its block first."""
    m = int(sch.get(main).annotations[WINOGRAD_ATTR])
    name = sch.get(main).name_hint
    first = sch.get_sblock(name + ("_rows" if name == "winograd_input" else "_cols"))
    if name == "winograd_input":
        b, e, c, z, p, v = sch.get_loops(main)
        sch.reorder(b, c, z, p, e, v)
        outer = sch.fuse(b, c, z, p)
        alpha = math.isqrt(_extent(sch, e))
        if _TRANSFORM_ROWS:
            e1, e2 = sch.split(e, factors=[alpha, alpha])
            sch.unroll(e1)
            sch.unroll(e2)
            at = e1  # V[e1, :] reads row e1 of the first pass only
        else:
            sch.unroll(e)
            at = outer
    else:
        _inline_epilogue(sch, main)
        b, k, y, x, v = sch.get_loops(main)
        ty, iy = sch.split(y, factors=[None, m])
        tx, ix = sch.split(x, factors=[None, m])
        if _TRANSFORM_ROWS:
            sch.reorder(b, k, ty, tx, ix, iy, v)
            at = ix  # output column ix reads column ix of the first pass only
        else:
            sch.reorder(b, k, ty, tx, iy, ix, v)
        outer = sch.fuse(b, k, ty, tx)
        if not _TRANSFORM_ROWS:
            at = outer
        sch.unroll(iy)
        sch.unroll(ix)
    sch.vectorize(v)
    if params.num_cores > 1:
        sch.parallel(outer)
    sch.compute_at(first, at, preserve_unit_loops=True)
    # global scope and one row of the first pass (under 1 KiB): an alloca in registers; a
    # local buffer, or a whole 6x6 tile (2.3 KiB), is a TVMBackendAllocWorkspace per tile
    sch.set_scope(first, 0, "global" if _TRANSFORM_ROWS else "local")
    *tile, first_v = sch.get_loops(first)[1:]
    for loop in tile:
        sch.unroll(loop)
    sch.vectorize(first_v)
    for block in sch.get_producers(first):
        _schedule_block_generic(sch, block, params)


def _inline_epilogue(sch, main) -> None:
    """Take the ops fused after the output transform into its block. A chain (bias, ReLU,
    residual add) is inlined consumer by consumer; a diamond, where the transform's value is
    read twice (SiLU ``x * sigmoid(x)``, hard-swish ``x * relu6(x + 3) / 6``), first has its
    side branch inlined into the block that joins it, until one consumer is left."""
    while True:
        consumers = sch.get_consumers(main)
        if not consumers:
            return
        if len(consumers) == 1:
            sch.reverse_compute_inline(consumers[0])
            continue
        for block in consumers:
            try:
                sch.compute_inline(block)  # an intermediate branch: into its consumers
                break
            except _INLINE_ERRORS:
                continue
        else:
            raise ValueError("Winograd output with several consumers that do not join")


class WinogradTransform(ScheduleRule):
    name = "winograd_transform"

    def apply(self, func, params):
        sch = s_tir.Schedule(func)
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            if WINOGRAD_ATTR in sch.get(block).annotations:
                schedule_transform(sch, block, params)
                return sch
        return None
