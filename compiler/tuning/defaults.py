"""Each kernel's default schedule as a tuning record: traced from the same rule table compile
applies (``passes.schedule.rules``), measured, and committed where the database has no record,
so the database's best is never slower than the default."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tvmforge.tuning.databases import log
from tvmforge.tuning.results import TaskResult


def _best_in(database, mod) -> float | None:
    """The database's best latency for a workload, without adding the workload to it."""
    if not database.has_workload(mod):
        return None
    top = database.get_top_k(database.commit_workload(mod), 1)
    if not top or not top[0].run_secs:
        return None
    return min(float(s) for s in top[0].run_secs)


def _traced_default_schedule(mod: Any, tvm_target: Any) -> Any:
    """tvmforge's default CPU schedule of a kernel as a traced ``s_tir.Schedule``, or None.

    The schedule comes from the same rule table the ``ScheduleCpuDefault`` pass applies
    (``passes.schedule.rules.first_rule``), so what tuning records as a kernel's default is
    what compile would run without a record. A kernel whose first rule is not a plain trace
    of it (the batch-outer wrapper), or that no rule schedules, gets no default record.
    """
    from tvm import s_tir

    from tvmforge.passes.schedule.rules import CpuScheduleParams, first_rule

    if _device_of_target(tvm_target) != "cpu":
        return None
    try:
        found = first_rule(mod["main"], CpuScheduleParams.from_target(tvm_target))
    except Exception as err:
        log.info("no default schedule: %s", err)
        return None
    if found is None or not found[0].traceable or not isinstance(found[1], s_tir.Schedule):
        return None
    return found[1]


def _device_of_target(tvm_target: Any) -> str:
    from tvmforge.targets import device_of

    return device_of(tvm_target)


def _measure_defaults(
    tasks: list[TaskResult], mods: list[Any], tvm_target: Any, builder: Any, runner: Any,
    database: Any, stop: Callable[[], bool] = lambda: False,
    step: Callable[[int], None] = lambda _n: None, chunk: int = 2,
) -> None:
    """Time each kernel's default schedule (what compile runs without a record).

    For a kernel the database has no record of yet, the default schedule is also committed as
    a record (its trace, its measured time): the database's best is then never slower than the
    default, so applying it can only help, and the search starts from the default.

    ``stop`` is asked between kernels (a Ctrl-C or SIGTERM noted by the tune): true raises
    ``KeyboardInterrupt`` there, with every default measured so far committed. ``step(n)`` is
    told of each ``n`` kernels built and of each one measured (two steps a kernel; the progress
    bar moves from the first seconds of a tune), the builds going ``chunk`` at a time.
    """
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.database import TuningRecord
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    schedules = [_traced_default_schedule(mod, tvm_target) for mod in mods]
    picked = [i for i, sch in enumerate(schedules) if sch is not None]
    step(2 * (len(mods) - len(picked)))  # kernels with no default schedule: nothing to time
    built = []
    for start in range(0, len(picked), max(chunk, 1)):
        part = picked[start:start + max(chunk, 1)]
        built += builder.build([BuilderInput(schedules[i].mod, tvm_target) for i in part])
        step(len(part))
        if stop():
            raise KeyboardInterrupt
    run_inputs, run_index = [], []
    for i, b in zip(picked, built, strict=True):
        if b.error_msg is None:
            args = ArgInfo.from_entry_func(schedules[i].mod, remove_preproc=True)
            run_inputs.append(RunnerInput(b.artifact_path, _device_of_target(tvm_target), args))
            run_index.append(i)
    if stop():
        raise KeyboardInterrupt
    step(len(picked) - len(run_index))  # failed builds: nothing to run
    for i, fut in zip(run_index, runner.run(run_inputs), strict=True):
        if stop():
            raise KeyboardInterrupt
        res = fut.result()
        step(1)
        if res.error_msg is not None or not res.run_secs:
            continue
        tasks[i].default_s = min(float(s) for s in res.run_secs)
        if not database.has_workload(mods[i]) or not database.get_top_k(
            database.commit_workload(mods[i]), 1
        ):
            database.commit_tuning_record(
                TuningRecord(
                    schedules[i].trace,
                    database.commit_workload(mods[i]),
                    run_secs=list(res.run_secs),
                    target=tvm_target,
                    args_info=ArgInfo.from_prim_func(mods[i]["main"]),
                )
            )
            tasks[i].default_recorded = True




