"""Window pooling (max/avg pool2d over NCHW or blocked layouts): output columns unrolled, window
taps unrolled when few, channels or columns vectorized."""

from __future__ import annotations

import logging
import math

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.schedule import SBlockRV

from tvmforge.passes.schedule.analysis import (
    _extents,
    _inline_injective,
    _is_mac,
    _iter_kinds,
    _largest_divisor_at_most,
    _uses_var,
    _vector_split,
)
from tvmforge.passes.schedule.params import CpuScheduleParams
from tvmforge.passes.schedule.rule import ScheduleRule

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Window pooling (max/avg pool2d over NCHW)

# Output columns a strided pool row is unrolled by (measured, ShuffleNet's 3x3 stride-2 max
# pool on 24x112x112, 2 threads: 0.19 ms with the generic schedule's 14-lane vectors, whose
# stride-2 loads are gathers; 0.05-0.07 ms unrolled by 2-8).
_POOL_UNROLL = 4
_POOL_MAX_UNROLLED_TAPS = 64


def _window_pool(sch: s_tir.Schedule) -> SBlockRV | None:
    """The one ``[n, c, y, x] x [ry, rx]`` reduction that is not a multiply-add, if any."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    reductions = [b for b in blocks if "R" in _iter_kinds(sch, b)]
    if len(reductions) != 1 or _is_mac(sch, reductions[0]):
        return None
    block = reductions[0]
    stmt = sch.get(block)
    if _iter_kinds(sch, block) != "SSSSRR" or stmt.init is None or len(stmt.writes) != 1:
        return None
    if len(stmt.writes[0].region) != 4:
        return None
    # a window that moves with the output pixel (not a global pooling: its "window" is the
    # whole plane, 160x160 taps in PP-OCRv4 det's squeeze-excitation means)
    y, x, ry, rx = (iv.var for iv in stmt.iter_vars[2:])
    out = stmt.writes[0].source
    windows = [
        r
        for r in stmt.reads
        if not r.source.same_as(out)
        and len(r.region) == 4
        and _uses_var(r.region[-1].min, x)
        and _uses_var(r.region[-1].min, rx)
        and _uses_var(r.region[-2].min, y)
        and _uses_var(r.region[-2].min, ry)
    ]
    if not windows:
        return None
    return block


def _schedule_pool(sch: s_tir.Schedule, main: SBlockRV, params: CpuScheduleParams) -> None:
    """One output row per step, channels in parallel, the padded input rows made per row.

    The padding block (``pad_temp``) is computed at the output row, so the window loop reads
    plain values instead of testing the border per element. A stride-1 window is vectorized
    along the row; a strided one is unrolled (its vector loads would be gathers).
    """
    main_name = sch.get(main).name_hint
    pads = [
        b
        for b in sch.get_producers(main)
        if "R" not in _iter_kinds(sch, b) and "pad" in sch.get(b).name_hint
    ]
    keep = {main_name} | {sch.get(b).name_hint for b in pads}
    _inline_injective(sch, keep=keep)
    main = sch.get_sblock(main_name)
    if len(sch.get_consumers(main)) > 1:
        raise ValueError("pool with several consumers")
    n, c, y, x, ry, rx = sch.get_loops(main)
    ext_n, ext_c, _ext_y, ext_x = _extents(sch, [n, c, y, x])
    stmt = sch.get(main)
    x_var = stmt.iter_vars[3].var
    stride = None
    for region in stmt.reads:
        if region.source.same_as(stmt.writes[0].source):
            continue
        coeffs = tvm.sym.detect_linear_equation(region.region[-1].min, [x_var])
        if len(coeffs) == 2 and isinstance(coeffs[0], tirx.IntImm):
            stride = int(coeffs[0].value)
    if stride is None:
        raise ValueError("pool window not linear in the output column")
    if stride == 1:
        inner = _vector_split(ext_x, params.lanes)
    else:
        inner = _largest_divisor_at_most(ext_x, _POOL_UNROLL)
    x_o, x_i = sch.split(x, factors=[None, inner])
    if stride == 1:
        sch.reorder(n, c, y, x_o, ry, rx, x_i)
    else:
        sch.reorder(n, c, y, x_o, x_i, ry, rx)
    outer = [n, c] if ext_n * ext_c >= 2 * params.num_cores else [n, c, y]
    fused = sch.fuse(*outer)
    row = fused if len(outer) == 3 else y
    consumers = sch.get_consumers(main)
    if consumers:  # the average's division, a fused activation
        sch.reverse_compute_at(consumers[0], row, preserve_unit_loops=True)
        last = sch.get_loops(consumers[0])[-1]
        cv = _vector_split(int(sch.get(last).extent), params.lanes)
        if cv >= 2:
            _, lane = sch.split(last, factors=[None, cv])
            sch.vectorize(lane)
    for pad in pads:
        sch.compute_at(sch.get_sblock(sch.get(pad).name_hint), row, preserve_unit_loops=True)
    if params.num_cores > 1:
        sch.parallel(fused)
    if stride == 1 and inner >= 2:
        sch.vectorize(x_i)  # the init stays inside: a lane-invariant branch
    elif math.prod(_extents(sch, [ry, rx])) <= _POOL_MAX_UNROLLED_TAPS:
        sch.unroll(ry)
        sch.unroll(rx)


class WindowPool(ScheduleRule):
    """Window pools (a kernel with no multiply-accumulate and a pooling window)."""

    name = "pool"

    def apply(self, func, params):
        from tvmforge.passes.schedule.contraction import _main_contraction

        sch = s_tir.Schedule(func)
        if _main_contraction(sch) is not None:
            return None
        pool = _window_pool(sch)
        if pool is None:
            return None
        _schedule_pool(sch, pool, params)
        return sch
