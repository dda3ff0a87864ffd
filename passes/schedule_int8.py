"""Schedule the int8 kernels ``quantize_int8`` made, where no tuning record did.

Why
---
``quantize_int8`` marks its VNNI, ``sdot`` and depthwise kernels ``tvmforge.int8_kernel =
KIND`` and leaves them unscheduled, so that ``tvmforge tune`` extracts them as tasks (with a
design space that tensorizes with ``vpdpbusd``, ``int8_kernels.vnni_tuning_space``) and
``MetaScheduleApplyDatabase`` can apply the records. Whatever no record scheduled gets its
hand schedule here (``int8_kernels.apply_default_schedule``): the register-tiled,
``vpdpbusd``/``sdot``-tensorized one, or the depthwise one.

Where it sits
-------------
In the schedule stage, after ``MetaScheduleApplyDatabase`` and before ``schedule_cpu_default``
(which would otherwise give these kernels its generic float recipe). Functions already marked
``tirx.is_scheduled`` are left alone.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from . import int8_kernels as K

__all__ = ["schedule_int8"]


def schedule_int8(target: tvm.target.Target | None = None) -> tvm.transform.Pass:
    """Give every unscheduled ``tvmforge.int8_kernel`` its hand schedule.

    Parameters
    ----------
    target:
        Sizes the parallel loops (``num-cores``) [default: the current target].

    Returns
    -------
    tvm.transform.Pass
        A module pass.
    """

    @tvm.transform.module_pass(opt_level=0, name="tvmforge.ScheduleInt8")
    def _pass(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        tgt = target or tvm.target.Target.current(allow_none=True)
        cores = int(tgt.attrs.get("num-cores", 0) or 0) if tgt is not None else 1
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs is None:
                continue
            kind = func.attrs.get(K.KERNEL_ATTR)
            if kind is None or bool(func.attrs.get("tirx.is_scheduled", False)):
                continue
            sch = s_tir.Schedule(func)
            K.apply_default_schedule(sch, str(kind), max(cores, 1))
            updates[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        if not updates:
            return mod
        mod = mod.clone()  # never edit the caller's module in place
        for gv, func in updates.items():
            mod.update_func(gv, func)
        return mod

    return _pass

