"""How a global trial budget is spread over the tuning tasks so that every task gets trials
(MetaSchedule left alone lets a few tasks eat the budget)."""

from __future__ import annotations

import math
from dataclasses import dataclass

# MetaSchedule's default candidates per search iteration (``num_trials_per_iter``).
SEARCH_BATCH = 64
# MetaSchedule's default evolutionary population; tvmforge scales it down for small batches.
POPULATION = 512
_MIN_POPULATION = 64


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




