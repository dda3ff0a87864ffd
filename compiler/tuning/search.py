"""The search machinery around MetaSchedule: the parallel kernel builder, the measure
callback and task scheduler that track progress, the cost model, the runner's thread count,
the tune contexts and the progress bar."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import random
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tvmforge.errors import InputError
from tvmforge.tuning.budget import Budget
from tvmforge.tuning.results import BatchInfo, TaskResult

log = logging.getLogger(__name__)

COST_MODELS = ("xgb", "xgb-fresh", "mlp", "random")



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


def _make_kernel_builder(max_workers: int, timeout_s: float, *, shared: bool = False,
                         export_cc: str | None = None):
    """A MetaSchedule builder whose worker processes live for the whole run.

    The stock ``LocalBuilder`` starts new processes for every batch, and its build function
    imports ``tvm.s_tir.tensor_intrin`` in each (20-40 s on 2 cores): with batches of a few
    candidates that dwarfs the build itself. The kernels arrive already tensorized, so the
    intrinsic registry is not needed to build them.

    ``shared``: link each candidate here into a ``.so`` (with ``export_cc``, the target's cross
    linker, when given) instead of a ``.tar`` of objects that the runner links: an RPC device
    then needs no compiler, and an ARM one gets an ARM library.
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
        if shared:
            path = _os.path.join(_tempfile.mkdtemp(), "tvm_tmp_mod.so")
            lib.export_library(path, **({"cc": export_cc} if export_cc else {}))
            return path
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
        if self.interrupted:  # a signal arrived during this batch: stop here, records kept
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def catching_sigint(self) -> Iterator[None]:
        """Defer a Ctrl-C (SIGINT) or a SIGTERM to the next safe point.

        A ``KeyboardInterrupt`` raised wherever the signal lands (inside TVM's C++ code, its
        worker pools, a callback) crashed the process (exit 139) and lost the database's last
        writes. The first signal only notes the request; the tune stops after the batch being
        measured, whose records are committed first (``record``), or between default
        measurements. A second signal raises at once.
        """
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, frame: Any) -> None:
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
            log.warning("interrupted: stopping after the batch being measured (again to stop now)")

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


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


_RULE_ANNOTATION = re.compile(r'"schedule_rule": "([^"]+)"')


def _pass_through_unknown_rules(extracted: list[Any]) -> None:
    """Register a pass-through for each block ``schedule_rule`` the kernels name and TVM has no
    function for (``meta_schedule.pool_max``, which TVM's pooling sets on every pool block).

    Without one MetaSchedule's ``ApplyCustomRule`` logged "Unknown schedule rule" for every
    pool kernel on every tune, then removed the annotation and let the other rules schedule
    the block; the pass-through does exactly that, quietly. Rules TVM does define are left
    alone. Only the tuning space changes: the kernels and their workload hashes stay as they are,
    so the records still match what ``compile`` looks up.
    """
    import tvm

    for task in extracted:
        target = task.target
        for rule in set(_RULE_ANNOTATION.findall(task.dispatched[0].script())):
            if rule == "None":
                continue
            for key in target.keys:
                name = f"s_tir.meta_schedule.{key}.{rule}"
                if tvm.get_global_func(name, allow_missing=True) is None:
                    tvm.register_global_func(name, _unannotated)


def _unannotated(sch: Any, block: Any) -> list[Any]:
    sch.unannotate(block, "schedule_rule")
    return [sch]


def _tune_contexts(extracted: list[Any], db_dir: Path, budget: Budget, seed: int):
    """MetaSchedule's tune contexts: the target's default design space for every kernel,
    except the VNNI and AVX2 int8 kernels of ``quantize_int8``, whose space tensorizes their
    ``16 x 4`` blocks with ``vpdpbusd`` or ``vpmaddubsw`` (the default x86 rules have no such
    rule in TVM 0.27, so they would only search scalar int32 schedules)."""
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

    _pass_through_unknown_rules(extracted)
    dot = int8_kernels.TUNING_INTRINSICS
    rest = [t for t in extracted if kind(t) not in dot]
    contexts, weights = (list(x) for x in contexts_for(rest, "post-order-apply"))
    for family in dot:
        c, w = contexts_for([t for t in extracted if kind(t) == family],
                            int8_kernels.vnni_tuning_space(family))
        contexts += list(c)
        weights += list(w)
    return contexts, weights


def _progress_bar(total: int, show: bool | None):
    from tqdm import tqdm

    if show is None:
        show = sys.stderr.isatty()
    return tqdm(total=total, unit="step", desc="timing the defaults", disable=not show,
                leave=False)




