"""Tuning: MetaSchedule databases, which of them apply to a target, and ``tvmforge tune``.

Databases
---------
``tuning_logs/<tuning-key>/`` holds JSON databases (``database_workload.json`` +
``database_tuning_record.json``). The JSON database does not check the target when it answers a
query (apache/tvm#15549), so the folder key *is* the check: a record is only offered to targets
whose ``tuning_key`` names that folder.

Tuning
------
``tune`` extracts the kernels that ``compile`` will look up (``pipeline.to_kernels``: the same
passes, so the same workloads) and tunes them with MetaSchedule's evolutionary search and
XGBoost cost model into ``WORK_DIR/<tuning-key>/``.

- **Budget.** Every task gets trials: the per-iteration batch is ``trials // tasks`` (at most
  MetaSchedule's 64), so the first round reaches every task, and a task's cap is
  ``ceil(trials / tasks)`` rounded up to that batch. MetaSchedule's gradient task scheduler
  spends what the first round leaves where it gains most (weight x latency). The evolutionary
  population shrinks with the batch (16 per candidate, 64 to MetaSchedule's 512).
- **Never slower than untuned.** Before the search, each kernel's default schedule (the one
  ``compile`` gives it without records) is measured, and stored as a record when the database
  has none for that kernel yet. ``compile`` applies a kernel's best record, so a few unlucky
  trials cannot replace a good default with a worse schedule; and the search starts from it.
- **Records are kept as they are measured.** The JSON database appends one line per record on
  commit. Stock MetaSchedule's gradient scheduler commits a round's records only after the whole
  round has run, so Ctrl-C during the first round (the whole run for a small budget) would lose
  everything; tvmforge's scheduler (the same gradient rule) joins each batch as soon as it is
  measured, so an interrupted tune keeps every record but those of the batch in flight.
- **Continuing.** Running ``tune`` again into the same folder appends to the same database: for
  each task the evolutionary search seeds its initial population with the best records the
  database already holds for that workload (``init_measured_ratio``: up to a fifth of the
  population), so it continues from the best schedules found so far instead of from scratch.
  The cost model starts untrained, and the new trials count against the new budget only.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tvmforge.errors import CompileError, InputError
from tvmforge.targets import ResolvedTarget
from tvmforge.tuning import transfer
from tvmforge.tuning.budget import plan_budget
from tvmforge.tuning.databases import (
    count_records,
    database_dir,
    repair,
    user_cache,
    writer_lock,
)
from tvmforge.tuning.defaults import _best_in, _measure_defaults
from tvmforge.tuning.fleet import Fleet, check_fleet, make_runner
from tvmforge.tuning.fleet import usage as fleet_usage
from tvmforge.tuning.report import write_report
from tvmforge.tuning.results import BatchInfo, TaskResult, TuneResult, TuningInterrupted
from tvmforge.tuning.search import (
    COST_MODELS,
    _cost_model,
    _gradient_scheduler,
    _make_kernel_builder,
    _measure_callback,
    _meta_schedule_console,
    _progress_bar,
    _quick_tvmscript_import,
    _runner_threads,
    _tune_contexts,
    _TuningState,
)


def _resolve_target(target: str | ResolvedTarget, threads: int | None) -> ResolvedTarget:
    if isinstance(target, ResolvedTarget):
        return target
    from tvmforge.targets import TargetSpecError, resolve

    try:
        return resolve(target, threads=threads)
    except TargetSpecError as err:
        raise InputError(str(err)) from None


def _check_can_measure(target: ResolvedTarget) -> None:
    """Tuning runs every candidate here: the target must run on this machine as it is."""
    from tvmforge.runtime import executor as runtime
    from tvmforge.targets import REGISTRY
    from tvmforge.targets.features import host_arch

    host = host_arch()
    if target.device == "cpu" and target.arch != host:
        raise InputError(
            f"cannot tune for {target.spec()} ({target.arch}) here: tuning measures every "
            f"candidate on this {host} machine",
            hint="tune on the device itself and pass its logs with --tuning-log",
        )
    fam = REGISTRY.get(target.key)
    if target.device != "cpu" and fam is not None and not fam.can_run():
        raise InputError(
            f"cannot tune for {target.spec()} here: {fam.can_run().reason}",
            hint="tune on a machine with that device and pass its logs with --tuning-log",
        )
    from tvmforge.errors import TvmforgeError

    try:
        runtime._check_host_can_run(Path("tune"), target.describe())
    except TvmforgeError as err:
        raise InputError(
            f"cannot tune for {target.spec()} ({target.tuning_key}) on this CPU: "
            f"{err.message.split(': ', 1)[-1]}",
            hint="tune with a --target this CPU has (x86 picks it), or tune on such a CPU",
        ) from None




def _check_can_build(target: ResolvedTarget) -> None:
    """A fleet measures elsewhere, but the candidates are built (and linked) here."""
    from tvmforge.targets import REGISTRY

    fam = REGISTRY.get(target.key)
    can = fam.can_build() if fam is not None else None
    if can is not None and not can:
        raise InputError(f"cannot build for {target.spec()} here: {can.reason}")


# --------------------------------------------------------------------------------------------
# tune


def tune(
    model: Any,
    target: str | ResolvedTarget = "x86",
    *,
    trials: int,
    work_dir: str | Path | None = None,
    cost_model: str = "xgb",
    seed: int = 0,
    max_trials_per_task: int | None = None,
    report_dir: str | Path | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    frozen_inputs: dict[str, list[float]] | None = None,
    graph: Sequence[Any] = (),
    quantize: str | None = None,
    calibration: Any = None,
    calibration_method: str = "minmax",
    skip_layers: Sequence[str] = (),
    prune: float | None = None,
    prune_method: str = "l1",
    precision: str = "auto",
    group_size: int = 32,
    asymmetric: bool = False,
    scale_search: bool = False,
    activation_scales: str = "static",
    threads: int | None = None,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = None,
    on_batch: Callable[[BatchInfo], None] | None = None,
    rpc: Fleet | None = None,
) -> TuneResult:
    """Tune a model's kernels for a target into a MetaSchedule JSON database.

    The database is ``work_dir/<target's tuning key>/``; ``compile`` applies it when given
    ``--tuning-log work_dir``. Records are appended as they are measured; running ``tune``
    again into the same ``work_dir`` continues: each task's search starts from the best
    records the database already holds (see the module docstring).

    Parameters
    ----------
    model:
        Path to an ``.onnx`` file, ``zoo:NAME``, or an ``onnx.ModelProto``.
    target:
        As for ``compile``; it must run on this machine (tuning measures every candidate).
    trials:
        Candidates to measure in all (MetaSchedule's ``max_trials_global``).
    work_dir:
        Folder holding one database per tuning key [default: ``user_cache()``].
    cost_model:
        ``xgb`` (XGBoost, MetaSchedule's default, starting from the pre-trained model of the
        tuning key where one is shipped or lies beside the database: ``transfer``),
        ``xgb-fresh`` (XGBoost from nothing), ``mlp`` (needs PyTorch) or ``random``.
    seed:
        Seeds the search, the task scheduler and the random cost model. Measurements vary
        from run to run, so the records still may.
    max_trials_per_task:
        Cap per task [default: ``ceil(trials / tasks)``, rounded up to the batch].
    report_dir:
        Write ``report.csv``, ``report.md`` (per kernel: FLOPs, weight, trials, best and
        default latency) and ``tuning_curve.png`` (estimated model latency vs trials) there.
    input_shapes:
        Fixes dynamic input dimensions, as ``--input-shape``.
    frozen_inputs:
        Inputs compiled in as constants, as ``--freeze``.
    quantize, calibration, calibration_method, skip_layers, prune, prune_method, precision,
    group_size, asymmetric, scale_search, activation_scales:
        As for ``compile``: tune the kernels of the pruned and/or int8 model (the VNNI int8
        kernels with a design space that tensorizes with ``vpdpbusd``). Their records apply
        to a compile with the same flags and calibration data (pruned channel counts and the
        requantization constants are part of each kernel).
    graph:
        The graph passes compile will run (``tvmforge_pipeline(graph=...)``): they change the
        kernels, and records only apply to the kernels they were tuned on.
    threads:
        Cores the kernels are tuned for (the target's ``num-cores``) [default: all].
    progress:
        Show a progress bar on stderr; ``None``: only when stderr is a terminal.
    echo:
        Called with the plan and warnings about the budget, before tuning starts.
    on_batch:
        Called after each measured batch (after its records are in the database).
    rpc:
        Measure on the devices an RPC tracker lends under a key (``fleet.Fleet``) instead of
        this machine: candidates are built here (cross-compiled, linked with the target's
        linker) and timed on as many devices at once as the tracker has under the key. The
        target need not run here.

    Raises
    ------
    InputError
        For bad input: the model, shapes, target, a cost model that cannot be used here.
    CompileError
        When the model cannot be imported or lowered to kernels.
    TuningInterrupted
        On Ctrl-C; the records measured so far stay in the database.
    """
    from tvm.s_tir import meta_schedule as ms

    from tvmforge.driver.pipeline import to_kernels
    from tvmforge.frontend import importer as frontend

    say = echo or (lambda _msg: None)
    if trials < 1:
        raise InputError(f"--trials must be at least 1, not {trials}")
    if cost_model not in COST_MODELS:
        raise InputError(
            f"unknown cost model {cost_model!r}", hint=f"use one of {', '.join(COST_MODELS)}"
        )
    model_cost = _cost_model(cost_model, seed)
    resolved = _resolve_target(target, threads)
    servers: list[str] = []
    if rpc is None:
        _check_can_measure(resolved)
    else:
        _check_can_build(resolved)
        servers = check_fleet(rpc)
    db_dir = database_dir(Path(work_dir) if work_dir is not None else user_cache(), resolved)
    if cost_model == "xgb":
        pretrained = transfer.pretrained_for(db_dir, shipped_roots())
        if pretrained is not None:
            model_cost = transfer.load(pretrained)
            say(f"cost model: {transfer.describe(pretrained)}")
    t0 = time.perf_counter()

    onnx_model = model if isinstance(model, frontend.OnnxModel) else frontend.load(model)
    onnx_model = frontend.freeze_inputs(onnx_model, dict(frozen_inputs or {}))
    inputs = frontend.resolve_inputs(onnx_model, dict(input_shapes or {}))
    if prune is not None:
        from tvmforge.driver.build import _pruning_pass

        graph = [*graph, _pruning_pass(onnx_model, inputs, prune, prune_method, calibration,
                                       threads)]
    from tvmforge.driver.calibration import resolve_precision

    quantize, precision_note = resolve_precision(onnx_model, inputs, resolved.tvm_target(),
                                                 quantize, precision)
    if quantize is not None:
        from tvmforge.driver.calibration import quantize_pass

        quantizer, _ = quantize_pass(
            onnx_model, inputs, quantize, calibration, calibration_method, skip_layers, threads,
            group_size=group_size, asymmetric=asymmetric, scale_search=scale_search,
            activation_scales=activation_scales,
        )
        graph = [*graph, quantizer]
    from tvmforge.frontend.converters.quantized import as_qdq

    with as_qdq(precision_note["model"] == "qoperator" and quantize == "int8"):
        mod = frontend.to_relax(onnx_model, inputs)
    tvm_target = resolved.tvm_target()
    try:
        kernels = to_kernels(mod, tvm_target, graph)
        extracted = list(ms.relax_integration.extract_tasks(kernels, tvm_target))
    except Exception as err:
        raise CompileError(
            f"{onnx_model.path}: lowering to kernels for {resolved.spec()} failed: "
            f"{frontend._first_line(err)}",
            hint="rerun with --verbose for the compiler's trace",
        ) from err
    if not extracted:
        say("nothing to tune: the model has no kernels")
        return TuneResult(db_dir, resolved.spec(), None, [])
    budget = plan_budget(trials, len(extracted), max_trials_per_task)
    say(f"{budget.summary()}; database {db_dir}")
    if rpc is not None:
        s = "s" if len(servers) != 1 else ""
        say(f"measuring on {len(servers)} device{s} under key {rpc.key!r} of the RPC tracker "
            f"at {rpc.address()}: {', '.join(servers)}")
        if resolved.preset == "native":
            say(f"note: --target {resolved.key} is this machine's CPU ({resolved.tuning_key}); "
                f"name the devices' level (`tvmforge targets` lists them) if theirs differs")
    for note in budget.notes():
        say(f"note: {note}")

    with writer_lock(db_dir, say):
        return _tune_into(
            db_dir, extracted, budget, seed, model_cost, resolved, tvm_target, progress,
            on_batch, report_dir, t0, say, rpc, len(servers),
        )


def _tune_into(
    db_dir, extracted, budget, seed, model_cost, resolved, tvm_target, progress, on_batch,
    report_dir, t0, say, rpc=None, devices=0,
) -> TuneResult:
    """``tune``'s search, with the database's writer lock held."""
    from tvm.s_tir import meta_schedule as ms

    verbose = logging.getLogger().isEnabledFor(logging.INFO)
    with _meta_schedule_console(verbose), _quick_tvmscript_import():
        contexts, weights = _tune_contexts(extracted, db_dir, budget, seed)
    if not contexts:  # every kernel came already scheduled (hand-written kernels)
        say("nothing to tune: every kernel is already scheduled")
        return TuneResult(db_dir, resolved.spec(), budget, [])
    from tvm.s_tir.analysis import estimate_tir_flops

    repair(db_dir)  # damaged lines out of the way, or the reader fails on them
    database = ms.database.JSONDatabase(work_dir=str(db_dir))
    records_before = count_records(db_dir)
    results = [
        TaskResult(
            name=str(ctx.task_name),
            flops=float(estimate_tir_flops(ctx.mod)),
            weight=int(w),
            prior_best_s=_best_in(database, ctx.mod),
        )
        for ctx, w in zip(contexts, weights, strict=True)
    ]
    cores = int(contexts[0].num_threads)
    builder = _make_kernel_builder(max_workers=cores, timeout_s=60.0, shared=rpc is not None,
                                   export_cc=resolved.export_cc)
    bar = None
    state = _TuningState(results, None, on_batch)
    measuring = _runner_threads(cores)
    measuring.__enter__()
    usage_dir = tempfile.TemporaryDirectory(prefix="tvmforge-fleet-")
    usage_file = Path(usage_dir.name) / "devices"
    if rpc is None:
        runner = ms.runner.LocalRunner(timeout_sec=60.0)
    else:
        runner = make_runner(rpc, devices, usage_file)
    signals = state.catching_sigint()
    signals.__enter__()
    try:
        # one bar from the start: the defaults (built and timed: two steps a kernel), then
        # the trials; its rate gives the ETA
        bar = _progress_bar(
            2 * len(contexts) + min(budget.trials, budget.per_task * budget.tasks), progress
        )
        _measure_defaults(
            results, [c.mod for c in contexts], tvm_target, builder, runner, database,
            stop=lambda: state.interrupted, step=bar.update, chunk=cores,
        )
        bar.set_description("tuning")
        state.curve.append((0, state.estimate()))
        state.bar = bar
        ms.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=str(db_dir),
            max_trials_global=budget.trials,
            max_trials_per_task=budget.per_task,
            num_trials_per_iter=budget.per_iter,
            builder=builder,
            runner=runner,
            database=database,
            cost_model=model_cost,
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                               _measure_callback(state)],
            task_scheduler=_gradient_scheduler(state, seed),
        )
        if state.interrupted:  # the signal came with the last batch
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        kept = count_records(db_dir)
        raise TuningInterrupted(db_dir, kept, kept - records_before) from None
    except Exception:
        if state.interrupted:
            kept = count_records(db_dir)
            raise TuningInterrupted(db_dir, kept, kept - records_before) from None
        raise
    finally:
        signals.__exit__(None, None, None)
        if bar is not None:
            bar.close()
        builder.shutdown()
        runner.pool.shutdown(wait=False)
        measuring.__exit__(None, None, None)
        per_device = fleet_usage(usage_file)
        usage_dir.cleanup()

    for ctx, res in zip(contexts, results, strict=True):
        res.best_s = _best_in(database, ctx.mod)
    result = TuneResult(
        database=db_dir,
        target=resolved.spec(),
        budget=budget,
        tasks=results,
        trials=state.measured,
        records_before=records_before,
        records_after=count_records(db_dir),
        seconds=time.perf_counter() - t0,
        curve=state.curve,
        devices=per_device,
    )
    if report_dir is not None:
        write_report(result, Path(report_dir))
    return result

# The names callers reach through this module (``from tvmforge.tuning import tune as
# tuning``): the tune entry point and what it is made of.
from tvmforge.tuning.budget import Budget  # noqa: E402
from tvmforge.tuning.databases import (  # noqa: E402
    RECORDS,
    WORKLOADS,
    databases_for,
    is_database,
    shipped_roots,
)
from tvmforge.tuning.defaults import _traced_default_schedule  # noqa: E402
from tvmforge.tuning.report import report_rows  # noqa: E402

__all__ = [
    "COST_MODELS", "RECORDS", "WORKLOADS", "BatchInfo", "Budget", "TaskResult", "TuneResult",
    "TuningInterrupted", "_runner_threads", "_traced_default_schedule", "count_records",
    "database_dir", "databases_for", "is_database", "plan_budget", "report_rows",
    "shipped_roots", "tune", "user_cache", "write_report",
]
