"""The generic schedule: every block at the root gets its injective producers inlined, its leading
spatial loops fused and parallelized and its innermost spatial loop vectorized (moved inside the
reduction loops first when it is the contiguous axis of the block's reads, as in pooling). Also
the schedule of producers (padding, packing) beside a scheduled contraction."""

from __future__ import annotations

import logging

from tvm import s_tir
from tvm.s_tir.schedule import SBlockRV

from tvmforge.passes.schedule.analysis import (
    _inline_injective,
    _loops_match_iters,
    _schedule_block_generic,
)
from tvmforge.passes.schedule.params import _SCHEDULE_ERRORS, CpuScheduleParams
from tvmforge.passes.schedule.row_reduction import _schedule_row_reduction
from tvmforge.passes.schedule.rule import ScheduleRule

log = logging.getLogger(__name__)


def _schedule_generic(
    sch: s_tir.Schedule, params: CpuScheduleParams, row_reductions: bool = False
) -> None:
    _inline_injective(sch)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        try:
            if row_reductions and _schedule_row_reduction(sch, block, params):
                continue
            _schedule_block_generic(sch, block, params)
        except _SCHEDULE_ERRORS as err:  # one block's failure leaves it serial
            if row_reductions:
                raise
            log.debug("generic schedule of block %s skipped: %s", sch.get(block).name_hint, err)


def _schedule_root_blocks(sch: s_tir.Schedule, main: SBlockRV, params: CpuScheduleParams) -> None:
    """The generic schedule for every block beside a scheduled contraction that has its own
    loop nest (a padding or packing producer); one that does not fit stays serial."""
    for other in sch.get_child_blocks(sch.get_sblock("root")):
        if _is_root_level(sch, other, main):
            try:
                _schedule_block_generic(sch, other, params)
            except _SCHEDULE_ERRORS as err:
                log.debug("producer %s left serial: %s", sch.get(other).name_hint, err)


def _is_root_level(sch: s_tir.Schedule, block: SBlockRV, main: SBlockRV) -> bool:
    """Whether the block has its own loop nest (not the contraction's tile)."""
    loops = sch.get_loops(block)
    if not loops:
        return False
    main_loops = sch.get_loops(main)
    if main_loops and sch.get(main_loops[0]).same_as(sch.get(loops[0])):
        return False
    return _loops_match_iters(sch, block)


# --------------------------------------------------------------------------------------------
# The pass


class RowReductions(ScheduleRule):
    """The generic schedule, with row reductions (softmax, norms) kept vectorized."""

    name = "row_reduction"

    def apply(self, func, params):
        sch = s_tir.Schedule(func)
        _schedule_generic(sch, params, row_reductions=True)
        return sch


class Generic(ScheduleRule):
    """Every kernel: parallel outer loops, a vectorized inner loop."""

    name = "generic"

    def apply(self, func, params):
        sch = s_tir.Schedule(func)
        _schedule_generic(sch, params)
        return sch
