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


def _schedule_packed_dense(sch: s_tir.Schedule, main: SBlockRV, params: CpuScheduleParams) -> None:
    """Matmul ``x[.., M, K] x Wp[N/B, K, B]``: ``m_r`` rows x ``B`` columns in registers.

    Loop order ``[panel] [batch] [row tile] (k) [m_r (unrolled)] [B (vectorized)]``: the panel
    loop is outermost so one panel (``K * B`` floats, contiguous) stays in cache while every
    row tile streams through it, and the parallel threads split the panels. Per ``k`` the
    tile loads ``B / lanes`` weight vectors and broadcasts ``m_r`` inputs. The fused epilogue
    (bias, GELU, residual) runs on the tile. Measured on BERT's ``[128, 768] x [768, 3072]``,
    one thread: rows outermost (the contraction recipe's order) 59 GFLOP/s, panels outermost
    148.
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
    n_o, n_i = sch.split(n, factors=[None, block])
    m_o, m_i = sch.split(m, factors=[None, rows])
    outer = [n_o, *lead, m_o]
    sch.reorder(*outer, k, m_i, n_i)
    _epilogue_at(sch, epilogue, outer[-1])
    sch.set_scope(main, 0, _ACC_SCOPE)
    sch.vectorize(n_i)
    if rows > 1:
        sch.unroll(m_i)
    _parallelize(sch, outer, params)
    sch.decompose_reduction(main, k)
    epi_loops = sch.get_loops(epilogue)[len(outer) :]
    if epi_loops:
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
