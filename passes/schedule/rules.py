"""Default CPU schedules for every fused TIR kernel, without tuning: the rule table and the
``ScheduleCpuDefault`` pass that applies it.

TVM's stock CPU pipeline schedules nothing: each kernel that ``LegalizeOps`` + ``FuseOps`` +
``FuseTIR`` produce is a naive, single-threaded loop nest. This pass gives each such
``PrimFunc`` a schedule derived from the target alone (vector width and registers from the
target's ``CpuFeatures``, parallelism from ``num-cores``), never from the model.

The rules (``RULES``), tried in order on each kernel; the first that returns a schedule wins,
and one that does not apply (``None``) or fails (a schedule error) passes the kernel on
unchanged to the next:

==================== =========================================================================
``int8_kernel``      the int8 kernels of ``quantize_int8`` (VNNI/sdot/depthwise hand schedule)
``int4_kernel``      4-bit weight-only matmuls (``quantize_int4``, ``MatMulNBits``)
``batch_outer``      dynamic-batch kernels: a loop over the batch-1 kernel, scheduled by this
                     table
``winograd_transform`` Winograd input/output transforms
``packed_dense``     matmuls with column-panel weights (``pack_dense_weights``)
``nchwc_conv``       convs on blocked ``NCHW{B}c`` activations and Winograd products
``packed_conv``      convs with packed weights on NCHW activations (``pack_conv_weights``)
``pool``             window pools
``contraction``      every other multiply-accumulate (NCHW convs, dense, matmul, batch matmul)
``row_reduction``    the generic schedule with row reductions (softmax, norms) vectorized
``generic``          everything else: parallel outer loops, a vectorized inner loop
==================== =========================================================================

A new kernel family is a new rule module and a row here. ``tvmforge tune`` records a kernel's
default schedule by calling the same table (``first_rule``), so the two cannot drift.

Where it sits
-------------
After ``FuseTIR`` and after ``MetaScheduleApplyDatabase``, before TVM's dataflow lowering.
Functions that already carry ``tirx.is_scheduled`` (tuning records, hand-written kernels) are
left as they are, except that the weight-prefetch marks a record replaying a default schedule
carries become their prefetch loops (``weight_prefetch``); every function this pass schedules
is marked with that attribute. The pass never changes what a kernel computes, only the order
of its loops; a kernel no rule schedules is left as it was. Reasons are logged at debug level.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import tvm
from tvm import s_tir, tirx

from tvmforge.passes.schedule.batch_outer import BatchOuter
from tvmforge.passes.schedule.contraction import Contraction
from tvmforge.passes.schedule.generic import Generic, RowReductions
from tvmforge.passes.schedule.int4 import Int4Kernel
from tvmforge.passes.schedule.int8 import Int8Kernel
from tvmforge.passes.schedule.nchwc_conv import NchwcConv
from tvmforge.passes.schedule.packed_conv import PackedConv
from tvmforge.passes.schedule.packed_dense import PackedDense
from tvmforge.passes.schedule.params import (
    _SCHEDULE_ERRORS,
    SCHEDULED_ATTR,
    CpuScheduleParams,
)
from tvmforge.passes.schedule.pool import WindowPool
from tvmforge.passes.schedule.rule import ScheduleRule
from tvmforge.passes.schedule.weight_prefetch import insert_weight_prefetches
from tvmforge.passes.schedule.winograd_transform import WinogradTransform

log = logging.getLogger(__name__)

__all__ = [
    "RULES",
    "CpuScheduleParams",
    "first_rule",
    "schedule_cpu_default",
    "schedule_prim_func",
]

RULES: tuple[ScheduleRule, ...] = (
    Int8Kernel(),
    Int4Kernel(),
    BatchOuter(),
    WinogradTransform(),
    PackedDense(),
    NchwcConv(),
    PackedConv(),
    WindowPool(),
    Contraction(),
    RowReductions(),
    Generic(),
)


def first_rule(
    func: tirx.PrimFunc,
    params: CpuScheduleParams,
    rules: Sequence[ScheduleRule] = RULES,
) -> tuple[ScheduleRule, s_tir.Schedule | tirx.PrimFunc] | None:
    """The first rule that schedules ``func``, with its result; ``None`` when none does."""
    for rule in rules:
        try:
            result = rule.apply(func, params)
        except _SCHEDULE_ERRORS as err:
            log.debug("rule %s failed, trying the next: %s", rule.name, err)
            continue
        if result is not None:
            return rule, result
    return None


def schedule_prim_func(func: tirx.PrimFunc, params: CpuScheduleParams) -> tirx.PrimFunc | None:
    """Schedule one fused kernel with the first rule that applies; ``None`` when none does.

    Parameters
    ----------
    func:
        An unscheduled PrimFunc from ``FuseTIR``.
    params:
        The CPU's vector width and core count.
    """
    if _has_undeclared_access(func.body):
        return None
    found = first_rule(func, params)
    if found is None:
        return None
    result = found[1]
    scheduled = result.mod["main"] if isinstance(result, s_tir.Schedule) else result
    # the schedule's weight-prefetch marks become prefetch loops
    return insert_weight_prefetches(scheduled)


def _has_undeclared_access(stmt) -> bool:
    """Whether a block of ``stmt`` reads and writes buffers without declaring them: TOPI's
    ``ir_builder`` kernels (NMS, searchsorted, sort) leave ``T.reads()``/``T.writes()`` empty
    around their loops. Schedule primitives trust the declarations, so ``compute_inline`` of
    a producer such a block reads deleted the buffer the block still used; such a kernel keeps
    the schedule TOPI wrote."""
    if isinstance(stmt, s_tir.SBlock):
        opaque = not stmt.iter_vars and not stmt.reads and not stmt.writes
        if opaque and stmt.name_hint != "root" and not isinstance(stmt.body, tirx.Evaluate):
            return True
    if isinstance(stmt, tirx.SeqStmt):
        return any(_has_undeclared_access(s) for s in stmt.seq)
    for field in ("block", "body", "init", "then_case", "else_case"):
        child = getattr(stmt, field, None)
        if child is not None and _has_undeclared_access(child):
            return True
    return False


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    attrs = func.attrs
    return attrs is not None and SCHEDULED_ATTR in attrs and bool(attrs[SCHEDULED_ATTR])


def schedule_cpu_default(target: tvm.target.Target | None = None) -> tvm.transform.Pass:
    """The default CPU schedules as a module pass.

    Parameters
    ----------
    target:
        An ``llvm`` target; ``None`` reads ``tvm.target.Target.current()`` when the pass runs.

    Returns
    -------
    tvm.transform.Pass
        A module pass that schedules every PrimFunc not yet marked ``tirx.is_scheduled``.
    """

    @tvm.transform.module_pass(opt_level=0, name="ScheduleCpuDefault")
    def _pass(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        tgt = target if target is not None else tvm.target.Target.current(allow_none=False)
        params = CpuScheduleParams.from_target(tgt)
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if _is_scheduled(func):
                # a tuning record replaying a default schedule carries its prefetch marks
                marked = insert_weight_prefetches(func)
                if not marked.same_as(func):
                    updates[gvar] = marked
                continue
            try:
                scheduled = schedule_prim_func(func, params)
            except Exception as err:
                log.debug("%s: scheduling failed, left as is: %s", gvar.name_hint, err)
                scheduled = None
            if scheduled is not None:
                updates[gvar] = scheduled.with_attr(SCHEDULED_ATTR, True)
        if not updates:
            return mod
        mod = mod.clone()  # never edit the caller's module in place
        for gvar, func in updates.items():
            mod.update_func(gvar, func)
        return mod

    return _pass
