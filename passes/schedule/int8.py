"""The int8 kernels ``quantize_int8`` made (marked ``tvmforge.int8_kernel = KIND``): their
hand schedule (``int8_kernels.apply_default_schedule``), register-tiled and tensorized with
the target's dot-product family (``vpdpbusd``, ``sdot``), or the depthwise one.

``quantize_int8`` leaves these kernels unscheduled so that ``tvmforge tune`` extracts them as
tasks (with a design space that tensorizes with ``vpdpbusd``) and tuning records apply; this
rule schedules what no record did. It comes first in the table: the float rules would
otherwise give these kernels a float recipe.
"""

from __future__ import annotations

from tvm import s_tir

from tvmforge.passes.schedule import int8_kernels as K
from tvmforge.passes.schedule.rule import ScheduleRule

__all__ = ["Int8Kernel"]


class Int8Kernel(ScheduleRule):
    name = "int8_kernel"

    def apply(self, func, params):
        kind = func.attrs.get(K.KERNEL_ATTR) if func.attrs is not None else None
        if kind is None:
            return None
        sch = s_tir.Schedule(func)
        K.apply_default_schedule(sch, str(kind), max(params.num_cores, 1))
        return sch
