"""A wall-clock budget the search plans around (``tune.timeout_s``).

Before each rung of a trial is fitted, its cost is predicted from what was measured so far;
if it would not finish inside what is left of the budget it is not started: the trial is
pruned there, marked ``budget``, and the search goes on with trials that still fit (another
family, an earlier rung) until ``tune.timeout_s`` ends the study. With a budget the search
does not reach, nothing changes: ``n_trials`` decides and results stay deterministic.

The prediction (``predict_seconds``), most specific first: this trial's previous rung scaled
by rows (same hyperparameters); the slowest trial of the same family at the same rung; the
slowest of the family at another rung, scaled by rows; nothing known: start it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from mlplatform.search import space as search_space
from mlplatform.search.rungs import RUNGS_ATTR, BudgetExhausted


@dataclass(frozen=True)
class Observed:
    family: str
    rung: int
    rows: int
    seconds: float


def predict_seconds(
    history: list[Observed], family: str, rung: int, rows: int, own: list[dict[str, Any]]
) -> float | None:
    """Predicted seconds of fitting ``family`` on ``rows`` rows at ``rung`` (None: unknown)."""
    if own:
        prev = own[-1]
        return float(prev["seconds"]) * rows / max(int(prev["rows"]), 1)
    same = [o.seconds for o in history if o.family == family and o.rung == rung]
    if same:
        return max(same)
    scaled = [o.seconds * rows / max(o.rows, 1) for o in history if o.family == family]
    if scaled:
        return max(scaled)
    return None


def observed(trials: list[optuna.trial.FrozenTrial]) -> list[Observed]:
    """Every fitted (not reused) rung recorded on these trials."""
    out = []
    for t in trials:
        family = t.params.get(search_space.FAMILY_PARAM)
        for r in t.user_attrs.get(RUNGS_ATTR, []):
            out.append(Observed(str(family), int(r["rung"]), int(r["rows"]), float(r["seconds"])))
    return out


class BudgetPlanner:
    """Refuses a rung that cannot finish before the deadline."""

    def __init__(
        self,
        timeout_s: float,
        margin: float = 1.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.deadline = clock() + timeout_s
        self.margin = margin

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def check(
        self, trial: optuna.Trial, family: str, rung: int, rows: int, own: list[dict[str, Any]]
    ) -> None:
        """Raises BudgetExhausted when the rung is predicted not to finish in time."""
        history = observed(
            [t for t in trial.study.get_trials(deepcopy=False) if t.number != trial.number]
        )
        self.check_prediction(predict_seconds(history, family, rung, rows, own), family, rung)

    def check_prediction(self, predicted: float | None, family: str, rung: int) -> None:
        left = self.remaining()
        if left <= 0 or (predicted is not None and predicted * self.margin > left):
            raise BudgetExhausted(
                f"{family} rung {rung} not started: predicted "
                f"{'?' if predicted is None else f'{predicted:.1f}'} s, {max(left, 0):.1f} s "
                "of tune.timeout_s left"
            )


def planner_for(params: Any) -> BudgetPlanner | None:
    timeout = params.tune.timeout_s
    return BudgetPlanner(timeout) if timeout else None
