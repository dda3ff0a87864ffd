"""What a tune returns: per-task results, the whole run's result, and the interruption that keeps
what was measured."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tvmforge.tuning.budget import Budget

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
    # Candidates measured per device (``host:port``) when tuned on an RPC fleet.
    devices: dict[str, int] = field(default_factory=dict)

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




