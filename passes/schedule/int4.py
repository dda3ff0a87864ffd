"""The 4-bit weight-only matmul kernels (``int4_kernels.int4_matmul``, marked
``tvmforge.int4_kernel``) that ``quantize_int4`` and the ``MatMulNBits`` converter emit: their
hand schedule (``int4_kernels.apply_default_schedule``), sized for the target's vector width
and cores.

Like the int8 kernels, these are left unscheduled and opaque to fusion until the schedule
stage, so tuning records could apply first; this rule schedules what no record did. It comes
before the float rules, which would otherwise give the kernel a float recipe (the
``contraction`` rule would find its ``acc`` reduction).
"""

from __future__ import annotations

from tvm import s_tir

from tvmforge.passes.schedule import int4_kernels as K
from tvmforge.passes.schedule.rule import ScheduleRule

__all__ = ["Int4Kernel"]


class Int4Kernel(ScheduleRule):
    name = "int4_kernel"

    def apply(self, func, params):
        if func.attrs is None or K.KERNEL_ATTR not in func.attrs:
            return None
        sch = s_tir.Schedule(func)
        K.apply_default_schedule(sch, params.lanes, max(params.num_cores, 1),
                                 params.accumulators)
        return sch
