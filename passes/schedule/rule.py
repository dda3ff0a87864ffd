"""What a default CPU schedule rule is: ``apply(func, params) -> Schedule | None``.

The shape is dlight's ``ScheduleRule``: a rule looks at one unscheduled kernel and either
returns its schedule or ``None`` ("does not apply"); a schedule error raised while it works
means the same, and the next rule of the table (``rules.RULES``) is tried on the kernel as it
was. A rule's schedule is a traced ``s_tir.Schedule``, so ``tvmforge tune`` records a kernel's
default by calling the same rule (its trace is the record); a rule whose result is not a plain
trace of the kernel (the batch-outer wrapper) says so with ``traceable = False``.
"""

from __future__ import annotations

from tvm import s_tir, tirx

from tvmforge.passes.schedule.params import CpuScheduleParams

__all__ = ["ScheduleRule"]


class ScheduleRule:
    """One default schedule. Subclasses set ``name`` and implement ``apply``."""

    name: str = ""
    traceable: bool = True

    def apply(
        self, func: tirx.PrimFunc, params: CpuScheduleParams
    ) -> s_tir.Schedule | tirx.PrimFunc | None:
        """The kernel's schedule, or ``None`` when the rule does not apply.

        Parameters
        ----------
        func:
            An unscheduled PrimFunc from ``FuseTIR``.
        params:
            The CPU facts the schedule is sized for (``CpuScheduleParams``).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<schedule rule {self.name}>"
