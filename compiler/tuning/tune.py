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

import contextlib
import csv
import inspect
import logging
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tvmforge.errors import CompileError, InputError
from tvmforge.targets import ResolvedTarget

log = logging.getLogger(__name__)

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"

COST_MODELS = ("xgb", "mlp", "random")
# MetaSchedule's default candidates per search iteration (``num_trials_per_iter``).
SEARCH_BATCH = 64
# MetaSchedule's default evolutionary population; tvmforge scales it down for small batches.
POPULATION = 512
_MIN_POPULATION = 64


# --------------------------------------------------------------------------------------------
# Databases


def shipped_roots() -> list[Path]:
    """Folders that may hold shipped ``tuning_logs/`` (source tree, then installed data)."""
    roots = [
        Path(__file__).resolve().parent.parent / "tuning_logs",
        Path(sys.prefix) / "share" / "tvmforge" / "tuning_logs",
    ]
    return [r for r in roots if r.is_dir()]


def user_cache() -> Path:
    """Where ``compile --tune-trials`` tunes without ``--tuning-log``: the user's cache."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tvmforge" / "tuning_logs"


def is_database(folder: Path) -> bool:
    return (folder / WORKLOADS).is_file() and (folder / RECORDS).is_file()


def database_dir(work_dir: Path, target: ResolvedTarget) -> Path:
    """The database folder that ``tune`` writes for ``target`` under ``work_dir``.

    A target without a tuning key (an arbitrary JSON target) tunes into ``work_dir`` itself.
    """
    return Path(work_dir) / target.tuning_key if target.tuning_key else Path(work_dir)


def count_records(folder: Path) -> int:
    """Tuning records in a database folder (one JSON line each)."""
    path = Path(folder) / RECORDS
    if not path.is_file():
        return 0
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def databases_for(
    target: ResolvedTarget, user_logs: list[Path] | tuple[Path, ...] = (), *,
    shipped: bool = True,
) -> list[Path]:
    """Databases whose records apply to ``target``: shipped ones, the user cache's (where
    ``tvmforge tune`` writes by default), then the ``--tuning-log`` folders given
    (``shipped=False``: only those).

    A user folder may be a database itself or hold one folder per tuning key.
    """
    found: list[Path] = []
    if target.tuning_key and shipped:
        for root in [*shipped_roots(), user_cache()]:
            db = root / target.tuning_key
            if is_database(db) and db not in found:
                found.append(db)
    for folder in user_logs:
        folder = Path(folder)
        if target.tuning_key and is_database(folder / target.tuning_key):
            found.append(folder / target.tuning_key)
        elif is_database(folder):
            found.append(folder)
    return found


# --------------------------------------------------------------------------------------------
# Budget


@dataclass(frozen=True)
class Budget:
    """How ``trials`` are spread over ``tasks``.

    Attributes
    ----------
    trials:
        The global budget (MetaSchedule's ``max_trials_global``).
    tasks:
        Tuning tasks (distinct kernels).
    per_iter:
        Candidates per search iteration: the first round gives every task one batch.
    per_task:
        The most trials one task may take (``max_trials_per_task``).
    """

    trials: int
    tasks: int
    per_iter: int
    per_task: int

    @property
    def population(self) -> int:
        """Evolutionary population: MetaSchedule's 512 for full batches, less for small ones.

        Evolving 512 candidates to pick 2 costs more than measuring them; 16 per pick keeps the
        cost model's choice meaningful at a fraction of the search time.
        """
        return max(_MIN_POPULATION, min(POPULATION, 16 * self.per_iter))

    @property
    def tasks_reached(self) -> int:
        return min(self.tasks, self.trials // self.per_iter)

    def summary(self) -> str:
        return (
            f"tuning {self.tasks} task(s) with {self.trials} trials: {self.per_iter} per task "
            f"per round, at most {self.per_task} per task"
        )

    def notes(self) -> list[str]:
        """Warnings about a budget too small to tune well; empty when it is not."""
        if self.trials < self.tasks:
            return [
                f"{self.trials} trials for {self.tasks} tasks: {self.tasks - self.tasks_reached}"
                f" task(s) get no trial and keep the default schedule; give --trials "
                f"{self.tasks} or more"
            ]
        if self.per_iter < SEARCH_BATCH:
            each = (f"{self.per_iter}" if self.per_iter == self.per_task
                    else f"{self.per_iter} to {self.per_task}")
            return [
                f"{self.trials} trials is below one search round ({SEARCH_BATCH} candidates) per "
                f"task: each gets {each}, too few for the search to learn much; --trials "
                f"{SEARCH_BATCH * self.tasks} gives every task a full round"
            ]
        return []


def plan_budget(trials: int, tasks: int, max_trials_per_task: int | None = None) -> Budget:
    """Spread ``trials`` over ``tasks`` so that the first round reaches every task."""
    if trials < 1 or tasks < 1:
        raise ValueError("trials and tasks must be positive")
    per_task = max_trials_per_task or math.ceil(trials / tasks)
    per_iter = max(1, min(SEARCH_BATCH, trials // tasks, per_task))
    per_task = math.ceil(per_task / per_iter) * per_iter
    return Budget(trials=trials, tasks=tasks, per_iter=per_iter, per_task=per_task)


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class TaskResult:
    """One tuning task (a distinct kernel) after tuning.

    Attributes
    ----------
    name:
        MetaSchedule's task name (the fused kernel's name).
    flops:
        Floating-point operations of one call (``estimate_tir_flops``).
    weight:
        How many times the model calls the kernel.
    trials:
        Candidates measured in this run (build and run failures included).
    best_s:
        The database's best latency for the kernel, in seconds (all runs); ``None`` if none.
    default_s:
        The default schedule's latency (measured only for a report); ``None`` otherwise.
    prior_best_s:
        The database's best latency before this run, if any.
    errors:
        Candidates of this run that failed to build or run.
    default_recorded:
        Whether this run stored the default schedule as a record (the kernel had none).
    """

    name: str
    flops: float
    weight: int
    trials: int = 0
    best_s: float | None = None
    default_s: float | None = None
    prior_best_s: float | None = None
    errors: int = 0
    default_recorded: bool = False

    @property
    def gflops(self) -> float | None:
        return self.flops / self.best_s / 1e9 if self.best_s else None

    def applied_s(self, best: float | None = None) -> float | None:
        """What ``compile`` would run: a tuned record if there is one, else the default."""
        best = self.best_s if best is None else best
        return best if best is not None else self.default_s


@dataclass
class TuneResult:
    """What ``tune`` did: the database, each task, and the tuning curve."""

    database: Path
    target: str
    budget: Budget | None
    tasks: list[TaskResult]
    trials: int = 0
    records_before: int = 0
    records_after: int = 0
    seconds: float = 0.0
    # (trials measured so far, estimated end-to-end seconds) after each measured batch.
    curve: list[tuple[int, float | None]] = field(default_factory=list)

    def estimate_s(self) -> float | None:
        """Sum over tasks of weight x latency of what compile applies; None if one is unknown."""
        parts = [t.applied_s() for t in self.tasks]
        if not parts or any(p is None for p in parts):
            return None
        return sum(t.weight * p for t, p in zip(self.tasks, parts, strict=True))


class TuningInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``tune``; every record measured before it is in the database.

    A ``KeyboardInterrupt``, so ``except KeyboardInterrupt`` still catches it.
    """

    def __init__(self, database: Path, records: int, new_records: int) -> None:
        self.database = database
        self.records = records
        self.new_records = new_records
        super().__init__(self.line())

    def line(self) -> str:
        return (
            f"interrupted; {self.records} records kept in {self.database} "
            f"({self.new_records} from this run)"
        )


@dataclass
class BatchInfo:
    """What ``tune(on_batch=...)`` is told after each measured batch."""

    task_id: int
    task_name: str
    measured: int
    total_measured: int
    latencies_s: list[float | None]


# --------------------------------------------------------------------------------------------
# MetaSchedule plumbing


@contextlib.contextmanager
def _quick_tvmscript_import() -> Iterator[None]:
    """Make the first ``import tvm.s_tir.tensor_intrin`` take seconds instead of a minute.

    Each of its ~250 ``@T.prim_func`` calls ``inspect.stack()``, which looks up the module of
    every frame; frames of pseudo-files (``<frozen importlib._bootstrap>``, ``<ast>``) are never
    cached and cost a scan of ``sys.modules`` each. Mapping them to no module gives the answer
    the scan would give (none), from the cache.
    """
    pseudo = {"<ast>", "<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>"}
    frame = inspect.currentframe()
    while frame is not None:  # the caller's own pseudo-files: <string>, <stdin>, <frozen runpy>
        if frame.f_code.co_filename.startswith("<"):
            pseudo.add(frame.f_code.co_filename)
        frame = frame.f_back
    added = [p for p in sorted(pseudo) if p not in inspect.modulesbyfile]
    for p in added:
        inspect.modulesbyfile[p] = ""
    try:
        yield
    finally:
        for p in added:
            inspect.modulesbyfile.pop(p, None)


@contextlib.contextmanager
def _meta_schedule_console(verbose: bool) -> Iterator[None]:
    """MetaSchedule logs every trial to its files; keep its console handler to errors.

    Its console handler takes the level of the ``tvm.s_tir.meta_schedule`` logger when the
    task loggers are created, so set it for that moment; afterwards the logger itself must pass
    everything (DEBUG, as MetaSchedule leaves it) for the log files to get the details.
    """
    ms_log = logging.getLogger("tvm.s_tir.meta_schedule")
    ms_log.setLevel(logging.INFO if verbose else logging.ERROR)
    try:
        yield
    finally:
        ms_log.setLevel(logging.DEBUG)


def _make_kernel_builder(max_workers: int, timeout_s: float):
    """A MetaSchedule builder whose worker processes live for the whole run.

    The stock ``LocalBuilder`` starts new processes for every batch, and its build function
    imports ``tvm.s_tir.tensor_intrin`` in each (20-40 s on 2 cores): with batches of a few
    candidates that dwarfs the build itself. The kernels arrive already tensorized, so the
    intrinsic registry is not needed to build them.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    def build_and_export(mod, target) -> str:
        # Defined here so that cloudpickle ships it by value: workers need only ``tvm``.
        import os as _os
        import tempfile as _tempfile

        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
        from tvm.support.tar import tar

        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        lib = tvm_build(mod, target=target)
        path = _os.path.join(_tempfile.mkdtemp(), "tvm_tmp_mod." + tar.output_format)
        lib.export_library(path, fcompile=tar)
        return path

    @derived_object
    class KernelBuilder(PyBuilder):
        def __init__(self) -> None:
            super().__init__()
            self.pool = PopenPoolExecutor(
                max_workers=max_workers, timeout=timeout_s, maximum_process_uses=256
            )

        def build(self, build_inputs):
            results = []
            jobs = [(b.mod, b.target) for b in build_inputs]
            for res in self.pool.map_with_error_catching(lambda a: build_and_export(*a), jobs):
                if res.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(res.value, None))
                elif res.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"timeout after {timeout_s} s"))
                else:
                    results.append(BuilderResult(None, f"build failed: {res.value}"))
            return results

        def shutdown(self) -> None:
            self.pool.shutdown(wait=False)

    return KernelBuilder()


class _TuningState:
    """What the measure callback sees and the task scheduler and the report read."""

    def __init__(
        self,
        tasks: list[TaskResult],
        bar: Any,
        on_batch: Callable[[BatchInfo], None] | None,
    ) -> None:
        self.tasks = tasks
        self.bar = bar
        self.on_batch = on_batch
        self.measured = 0
        self.this_run_best: list[float | None] = [None] * len(tasks)
        # Best latency so far after each join, per task (the gradient scheduler's history).
        self.history: list[list[float]] = [[] for _ in tasks]
        self.curve: list[tuple[int, float | None]] = []
        # Set on Ctrl-C: TVM's FFI hands a KeyboardInterrupt raised inside a callback back as
        # a bare RuntimeError, so the type alone cannot tell.
        self.interrupted = False

    def best_known(self, i: int) -> float | None:
        """The database's best for task ``i`` so far: earlier runs, the default, this run."""
        t = self.tasks[i]
        default = t.default_s if t.default_recorded else None
        vals = [v for v in (t.prior_best_s, default, self.this_run_best[i]) if v is not None]
        return min(vals) if vals else None

    def estimate(self) -> float | None:
        total = 0.0
        for i, t in enumerate(self.tasks):
            lat = t.applied_s(self.best_known(i))
            if lat is None:
                return None
            total += t.weight * lat
        return total

    def record(self, task_id: int, results: Sequence[Any]) -> None:
        task = self.tasks[task_id]
        lats: list[float | None] = []
        for r in results:
            secs = None
            if r.error_msg is None and r.run_secs:
                vals = sorted(float(s) for s in r.run_secs)
                secs = vals[len(vals) // 2]
            lats.append(secs)
            task.trials += 1
            if secs is None:
                task.errors += 1
            elif self.this_run_best[task_id] is None or secs < self.this_run_best[task_id]:
                self.this_run_best[task_id] = secs
        self.measured += len(results)
        best = self.this_run_best[task_id]
        self.history[task_id].append(best if best is not None else 1e9)
        self.curve.append((self.measured, self.estimate()))
        if self.bar is not None:
            self.bar.update(len(results))
        if self.on_batch is not None:
            try:
                self.on_batch(BatchInfo(task_id, task.name, len(results), self.measured, lats))
            except KeyboardInterrupt:
                self.interrupted = True
                raise

    @contextlib.contextmanager
    def catching_sigint(self) -> Iterator[None]:
        """Note a Ctrl-C before Python raises it, wherever in TVM's callbacks it lands."""
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_sigint(signum: int, frame: Any) -> None:
            self.interrupted = True
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def _measure_callback(state: _TuningState):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Record(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results) -> None:
            state.record(task_id, runner_results)

    return Record()


def _gradient_scheduler(state: _TuningState, seed: int, alpha: float = 0.2, window: int = 3):
    """MetaSchedule's gradient task scheduler, joining each batch as soon as it is measured.

    Same rule as ``GradientBased`` (one round over every task, then the task whose weighted
    latency is falling fastest); the difference is that it touches every task before it picks
    the next, so each batch's records are committed to the database right away, not at the
    end of the first round.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

    rng = random.Random(seed)

    @derived_object
    class EagerGradient(PyTaskScheduler):
        def __init__(self) -> None:
            super().__init__()
            self.rounds = 0

        def next_task_id(self) -> int:
            sched = self._outer()
            tasks = sched.tasks_
            n = len(tasks)
            for i in range(n):
                sched.touch_task(i)
            if self.rounds < n:
                self.rounds += 1
                return self.rounds - 1
            alive = [i for i in range(n) if not tasks[i].is_terminated]
            if not alive:
                return -1
            grads = []
            for i in alive:
                hist = state.history[i]
                if hist and hist[-1] < 1e9:
                    best, k = hist[-1], len(hist)
                    g1 = (hist[k - 1 - window] - best) / window if k >= 1 + window else 0.0
                    g2 = best / k
                    grads.append((alpha * g1 + (1 - alpha) * g2) * float(tasks[i].task_weight))
                else:
                    grads.append(-1e9)
            if max(grads) == min(grads):
                task_id = alive[rng.randrange(len(alive))]
            else:
                task_id = alive[grads.index(max(grads))]
            if tasks[task_id].runner_futures is not None:
                sched.join_running_task(task_id)
            return task_id

    return EagerGradient()


def _cost_model(kind: str, seed: int):
    from tvm.s_tir.meta_schedule import cost_model

    if kind == "random":
        return cost_model.RandomModel(seed=seed)
    if kind == "mlp":
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise InputError(
                "--cost-model mlp needs PyTorch, which is not installed",
                hint="pip install torch, or use --cost-model xgb",
            )
        return kind
    # One training thread: the data is small, and OpenMP threads that spin-wait on cores shared
    # with the builders (or other jobs) made each boosting round 100x slower on 2 cores.
    return cost_model.XGBModel(num_tuning_cores=1)


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

    host = platform.machine().replace("arm64", "aarch64").replace("AMD64", "x86_64")
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
    from tvmforge.driver.pipeline import _device_of

    return _device_of(tvm_target)


def _measure_defaults(
    tasks: list[TaskResult], mods: list[Any], tvm_target: Any, builder: Any, runner: Any,
    database: Any,
) -> None:
    """Time each kernel's default schedule (what compile runs without a record).

    For a kernel the database has no record of yet, the default schedule is also committed as
    a record (its trace, its measured time): the database's best is then never slower than the
    default, so applying it can only help, and the search starts from the default.
    """
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.database import TuningRecord
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    schedules = [_traced_default_schedule(mod, tvm_target) for mod in mods]
    picked = [i for i, sch in enumerate(schedules) if sch is not None]
    built = builder.build([BuilderInput(schedules[i].mod, tvm_target) for i in picked])
    run_inputs, run_index = [], []
    for i, b in zip(picked, built, strict=True):
        if b.error_msg is None:
            args = ArgInfo.from_entry_func(schedules[i].mod, remove_preproc=True)
            run_inputs.append(RunnerInput(b.artifact_path, _device_of_target(tvm_target), args))
            run_index.append(i)
    for i, fut in zip(run_index, runner.run(run_inputs), strict=True):
        res = fut.result()
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


@contextlib.contextmanager
def _runner_threads(cores: int) -> Iterator[None]:
    """Measure candidates on ``cores`` threads, the ``num-cores`` they are compiled for.

    MetaSchedule's ``LocalRunner`` times each candidate in a worker process whose TVM thread
    pool, unless ``TVM_NUM_THREADS`` says otherwise, has half the logical CPUs on x86: one
    thread on a 2-core machine without SMT. Kernels compiled for two cores were then ranked
    by their one-thread times (records that won 2x per kernel lost end to end). The workers
    inherit the environment, so it is set while they start and run.
    """
    before = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(cores)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = before


def _tune_contexts(extracted: list[Any], db_dir: Path, budget: Budget, seed: int):
    """MetaSchedule's tune contexts: the target's default design space for every kernel,
    except the VNNI int8 kernels of ``quantize_int8``, whose space tensorizes their ``16 x 4``
    blocks with ``vpdpbusd`` (the default x86 rules have no VNNI rule in TVM 0.27, so they
    would only search scalar int32 schedules)."""
    from tvm.s_tir import meta_schedule as ms

    from tvmforge.passes.schedule import int8_kernels

    def kind(task: Any) -> str | None:
        attrs = task.dispatched[0]["main"].attrs
        value = attrs.get(int8_kernels.KERNEL_ATTR) if attrs is not None else None
        return None if value is None else str(value)

    def contexts_for(tasks: list[Any], space: Any) -> tuple[list[Any], list[float]]:
        if not tasks:
            return [], []
        return ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks,
            work_dir=str(db_dir),
            space=space,
            strategy=ms.search_strategy.EvolutionarySearch(population_size=budget.population),
            seed=seed,
        )

    vnni = [t for t in extracted if kind(t) == "vnni"]
    rest = [t for t in extracted if kind(t) != "vnni"]
    c_vnni, w_vnni = contexts_for(vnni, int8_kernels.vnni_tuning_space())
    c_rest, w_rest = contexts_for(rest, "post-order-apply")
    return list(c_rest) + list(c_vnni), list(w_rest) + list(w_vnni)


def _progress_bar(total: int, show: bool | None):
    from tqdm import tqdm

    if show is None:
        show = sys.stderr.isatty()
    return tqdm(total=total, unit="trial", desc="tuning", disable=not show, leave=False)


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
    threads: int | None = None,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = None,
    on_batch: Callable[[BatchInfo], None] | None = None,
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
        ``xgb`` (XGBoost, MetaSchedule's default), ``mlp`` (needs PyTorch) or ``random``.
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
    quantize, calibration, calibration_method, skip_layers, prune, prune_method:
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
    _check_can_measure(resolved)
    db_dir = database_dir(Path(work_dir) if work_dir is not None else user_cache(), resolved)
    t0 = time.perf_counter()

    onnx_model = model if isinstance(model, frontend.OnnxModel) else frontend.load(model)
    onnx_model = frontend.freeze_inputs(onnx_model, dict(frozen_inputs or {}))
    inputs = frontend.resolve_inputs(onnx_model, dict(input_shapes or {}))
    if prune is not None:
        from tvmforge.driver.build import _pruning_pass

        graph = [*graph, _pruning_pass(onnx_model, inputs, prune, prune_method, calibration,
                                       threads)]
    if quantize is not None:
        from tvmforge.driver.calibration import quantize_pass

        quantizer, _ = quantize_pass(
            onnx_model, inputs, quantize, calibration, calibration_method, skip_layers, threads
        )
        graph = [*graph, quantizer]
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
    for note in budget.notes():
        say(f"note: {note}")

    db_dir.mkdir(parents=True, exist_ok=True)
    verbose = logging.getLogger().isEnabledFor(logging.INFO)
    with _meta_schedule_console(verbose), _quick_tvmscript_import():
        contexts, weights = _tune_contexts(extracted, db_dir, budget, seed)
    if not contexts:  # every kernel came already scheduled (hand-written kernels)
        say("nothing to tune: every kernel is already scheduled")
        return TuneResult(db_dir, resolved.spec(), budget, [])
    from tvm.s_tir.analysis import estimate_tir_flops

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
    builder = _make_kernel_builder(max_workers=cores, timeout_s=60.0)
    bar = None
    state = _TuningState(results, None, on_batch)
    measuring = _runner_threads(cores)
    measuring.__enter__()
    runner = ms.runner.LocalRunner(timeout_sec=60.0)
    try:
        _measure_defaults(
            results, [c.mod for c in contexts], tvm_target, builder, runner, database
        )
        state.curve.append((0, state.estimate()))
        bar = _progress_bar(min(budget.trials, budget.per_task * budget.tasks), progress)
        state.bar = bar
        with state.catching_sigint():
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
    except KeyboardInterrupt:
        kept = count_records(db_dir)
        raise TuningInterrupted(db_dir, kept, kept - records_before) from None
    except Exception:
        if state.interrupted:
            kept = count_records(db_dir)
            raise TuningInterrupted(db_dir, kept, kept - records_before) from None
        raise
    finally:
        if bar is not None:
            bar.close()
        builder.shutdown()
        runner.pool.shutdown(wait=False)
        measuring.__exit__(None, None, None)

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
    )
    if report_dir is not None:
        write_report(result, Path(report_dir))
    return result


# --------------------------------------------------------------------------------------------
# Report


REPORT_COLUMNS = (
    "task", "flops", "weight", "trials", "errors", "best_us", "gflops", "default_us",
    "speedup_vs_default", "weighted_us",
)


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e6, 3)


def report_rows(result: TuneResult) -> list[dict[str, Any]]:
    """One row per task, heaviest (weight x latency) first."""
    rows = []
    for t in result.tasks:
        applied = t.applied_s()
        rows.append({
            "task": t.name,
            "flops": int(t.flops),
            "weight": t.weight,
            "trials": t.trials,
            "errors": t.errors,
            "best_us": _us(t.best_s),
            "gflops": None if t.gflops is None else round(t.gflops, 2),
            "default_us": _us(t.default_s),
            "speedup_vs_default": (
                round(t.default_s / t.best_s, 2) if t.default_s and t.best_s else None
            ),
            "weighted_us": _us(None if applied is None else applied * t.weight),
        })
    rows.sort(key=lambda r: -(r["weighted_us"] or 0.0))
    return rows


def write_report(result: TuneResult, out_dir: Path) -> list[Path]:
    """Write ``report.csv``, ``report.md`` and ``tuning_curve.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = report_rows(result)
    csv_path = out_dir / "report.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=REPORT_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})

    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)

    est = result.estimate_s()
    start = result.curve[0][1] if result.curve else None
    lines = [
        f"# Tuning report: {result.target}",
        "",
        f"- database: `{result.database}` ({result.records_before} records before, "
        f"{result.records_after} after)",
        f"- trials measured: {result.trials} in {result.seconds / 60:.1f} min"
        + (f"; {result.budget.summary()}" if result.budget else ""),
        f"- estimated end-to-end (sum of weight x latency): "
        f"{'-' if start is None else f'{start * 1e3:.3f} ms'} before, "
        f"{'-' if est is None else f'{est * 1e3:.3f} ms'} after",
        "- latencies are MetaSchedule's per-kernel measurements; `default` is tvmforge's "
        "untuned schedule; compile applies the best record where one exists",
        "",
        "| task | FLOPs | weight | trials | best (us) | GFLOP/s | default (us) | speedup |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| `{r['task']}` | {cell(r['flops'])} | {r['weight']} | {r['trials']} | "
            f"{cell(r['best_us'])} | {cell(r['gflops'])} | {cell(r['default_us'])} | "
            f"{cell(r['speedup_vs_default'])} |"
        )
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(lines) + "\n")
    png_path = out_dir / "tuning_curve.png"
    _plot_curve(result, png_path)
    return [csv_path, md_path, png_path]


def _plot_curve(result: TuneResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(n, s * 1e3) for n, s in result.curve if s is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if points:
        xs, ys = zip(*points, strict=True)
        ax.step(xs, ys, where="post", marker="o", markersize=3)
    else:
        ax.text(0.5, 0.5, "no estimate: some kernel has neither a record nor a default timing",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("trials measured")
    ax.set_ylabel("estimated latency (ms)")
    ax.set_title(f"{result.target}: sum over kernels of weight x best latency")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
