"""Matmuls with packed weights (``pack_dense_weights``, column panels ``[N/B, K, B]``): an ``8 x
B`` register tile with the panel loop outermost."""

from __future__ import annotations

import logging

from tvm import s_tir
from tvm.s_tir.schedule import SBlockRV

from tvmforge.passes.schedule.analysis import (
    _extents,
    _inline_injective,
    _iter_kinds,
    _largest_divisor_at_most,
    _loops_match_iters,
    _parallelize,
)
from tvmforge.passes.schedule.contraction import _epilogue_at, _single_epilogue
from tvmforge.passes.schedule.generic import _schedule_root_blocks
from tvmforge.passes.schedule.params import CpuScheduleParams
from tvmforge.passes.schedule.rule import ScheduleRule
from tvmforge.passes.schedule.tiling import _ACC_SCOPE

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Matmuls with packed weights (``pack_dense_weights``): panels of columns, panels outermost

PACKED_DENSE_ATTR = "tvmforge.packed_dense"

# Rows of the register tile at most: 8 rows x 2 vectors = 16 accumulators. Measured on
# [128, 768] x [768, 3072], one thread: 8 x 32 148 GFLOP/s, 16 x 32 (32 accumulators, all
# the registers) 60, 16 x 16 63, 4 x 64 69.
_DENSE_TILE_ROWS = 8

# Matrix-vector products (the tile holds every row, a few at most): the tile takes this many
# panels side by side at most, each its own weight stream and its own accumulators.
_GEMV_MAX_PANELS = 6


def _gemv_panels(lead: list[int], ext_m: int, rows: int, panels: int, vregs: int,
                 params: CpuScheduleParams) -> int:
    """Panels one register tile sweeps together when the matmul is a matrix-vector product
    (``M`` rows, all in one tile, using at most half the accumulators); 1 otherwise.

    At ``M = 1`` the plain tile is one panel: ``B / lanes`` accumulators (2), each a chain of
    ``K`` dependent FMAs, and one weight stream. Measured on Zen 3 (AVX2, one thread,
    ``[1, K] x [K, N]``, interleaved in one process, shared 2-core machine): 4-6 panels side
    by side ran 0.66-0.80x the time of one for ``768 x 3072`` and ``3072 x 768`` with the
    weights cold (from memory: several streams in flight) and hot (L3), 0.71-0.84x for
    0.5-2 MB weights in L2; one 64-wide panel (the same accumulators, one stream) 0.7-0.86x
    hot and no gain cold. The count divides the panels and leaves each core a tile.
    """
    if any(e != 1 for e in lead) or rows != ext_m or 2 * ext_m * vregs > params.accumulators:
        return 1
    bound = min(params.accumulators // (ext_m * vregs), _GEMV_MAX_PANELS)
    cores = max(params.num_cores, 1)
    fits = [d for d in range(1, bound + 1) if panels % d == 0 and panels // d >= cores]
    return max(fits, default=1)


def _schedule_packed_dense(sch: s_tir.Schedule, main: SBlockRV, params: CpuScheduleParams) -> None:
    """Matmul ``x[.., M, K] x Wp[N/B, K, B]``: ``m_r`` rows x ``B`` columns in registers.

    Loop order ``[panel] [batch] [row tile] (k) [m_r (unrolled)] [B (vectorized)]``: the panel
    loop is outermost so one panel (``K * B`` floats, contiguous) stays in cache while every
    row tile streams through it, and the parallel threads split the panels. Per ``k`` the
    tile loads ``B / lanes`` weight vectors and broadcasts ``m_r`` inputs. The fused epilogue
    (bias, GELU, residual) runs on the tile. Measured on BERT's ``[128, 768] x [768, 3072]``,
    one thread: rows outermost (the contraction recipe's order) 59 GFLOP/s, panels outermost
    148. A matrix-vector product (``M`` of 1-3 rows) sweeps several panels side by side, under
    ``k``: ``[panels / p] (k) [m_r] [p (unrolled)] [B (vectorized)]`` (``_gemv_panels``).
    """
    main_name = sch.get(main).name_hint
    block = int(sch.get(main).annotations[PACKED_DENSE_ATTR])
    _inline_injective(sch, keep={main_name})
    main = sch.get_sblock(main_name)
    kinds = _iter_kinds(sch, main)
    if not _loops_match_iters(sch, main) or not kinds.endswith("SSR") or kinds.count("R") != 1:
        raise ValueError(f"packed matmul loops are not [.., m, n, k] ({kinds})")
    epilogue = _single_epilogue(sch, main)
    *lead, m, n, k = sch.get_loops(main)
    ext_m, ext_n = _extents(sch, [m, n])
    *epi_outer, epi_n = _extents(sch, sch.get_loops(epilogue))
    # the epilogue may slice off the zero columns that pad the panels (``pack_dense_weights``)
    if epi_outer != _extents(sch, [*lead, m]) or not ext_n - block < epi_n <= ext_n:
        raise ValueError("the epilogue is not elementwise on the matmul output")
    if ext_n % block:
        raise ValueError("columns not a multiple of the panel width")
    vregs = max(block // params.lanes, 1)
    rows = _largest_divisor_at_most(ext_m, min(params.accumulators // vregs, _DENSE_TILE_ROWS))
    side = _gemv_panels(_extents(sch, lead), ext_m, rows, ext_n // block, vregs, params)
    if side > 1:  # a matrix-vector product: ``side`` panels per tile, each its own stream
        n_o, n_p, n_i = sch.split(n, factors=[None, side, block])
    else:
        n_o, n_i = sch.split(n, factors=[None, block])
        n_p = None
    m_o, m_i = sch.split(m, factors=[None, rows])
    outer = [n_o, *lead, m_o]
    sch.reorder(*outer, k, m_i, *([n_p] if n_p is not None else []), n_i)
    _epilogue_at(sch, epilogue, outer[-1])
    sch.set_scope(main, 0, _ACC_SCOPE)
    sch.vectorize(n_i)
    if rows > 1:
        sch.unroll(m_i)
    if n_p is not None:
        sch.unroll(n_p)
    _parallelize(sch, outer, params)
    sch.decompose_reduction(main, k)
    epi_loops = sch.get_loops(epilogue)[len(outer) :]
    if epi_loops and n_p is not None:  # ``side`` panels: one vector loop per panel
        epi_p, epi_i = sch.split(epi_loops[-1], factors=[None, block])
        sch.unroll(epi_p)
        sch.vectorize(epi_i)
    elif epi_loops:
        sch.vectorize(epi_loops[-1])
    _schedule_root_blocks(sch, main, params)


class PackedDense(ScheduleRule):
    """Matmuls whose weights ``pack_dense_weights`` packed in column panels."""

    name = "packed_dense"

    def apply(self, func, params):
        from tvmforge.passes.schedule.contraction import _main_contraction

        sch = s_tir.Schedule(func)
        main = _main_contraction(sch)
        if main is None or PACKED_DENSE_ATTR not in sch.get(main).annotations:
            return None
        _schedule_packed_dense(sch, main, params)
        return sch
