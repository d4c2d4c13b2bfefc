"""A wall-clock budget the search plans around (``tune.timeout_s``).

Before each rung of a trial is fitted, its cost is predicted from what was measured so far;
if it would not finish inside what is left of the budget it is not started: the trial is
pruned there, marked ``budget``, and the search goes on with trials that still fit (another
family, an earlier rung) until ``tune.timeout_s`` ends the study. With a budget the search
does not reach, nothing changes: ``n_trials`` decides and results stay deterministic.

The prediction (``predict_seconds``), most specific first: this trial's previous rung scaled
by rows (same hyperparameters); the slowest trial of the same family at the same rung; the
slowest of the family at another rung, scaled by rows; nothing known: start it.

A prediction can be far off (on 100,000 rows one random forest took 21.5 s on the first
rung where the family's slowest so far took 1.3 s), so a rung that has started is checked
again between its parts (``stopper``: chunks of trees, boosting rounds) and stopped when
the next part would not finish in time; its trial is pruned there, marked ``budget``. Only
rungs whose prediction is unknown or within 1/30 of what is left are watched like this.
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
        wild: float = 30.0,
    ) -> None:
        self.clock = clock
        self.deadline = clock() + timeout_s
        self.margin = margin
        self.wild = wild  # how far off a prediction has been seen (17x), with room

    def remaining(self) -> float:
        return self.deadline - self.clock()

    def check(
        self, trial: optuna.Trial, family: str, rung: int, rows: int, own: list[dict[str, Any]]
    ) -> float | None:
        """Raises BudgetExhausted when the rung is predicted not to finish in time; returns
        the prediction (None: unknown)."""
        history = observed(
            [t for t in trial.study.get_trials(deepcopy=False) if t.number != trial.number]
        )
        predicted = predict_seconds(history, family, rung, rows, own)
        self.check_prediction(predicted, family, rung)
        return predicted

    def check_prediction(self, predicted: float | None, family: str, rung: int) -> None:
        left = self.remaining()
        if left <= 0 or (predicted is not None and predicted * self.margin > left):
            raise BudgetExhausted(
                f"{family} rung {rung} not started: predicted "
                f"{'?' if predicted is None else f'{predicted:.1f}'} s, {max(left, 0):.1f} s "
                "of tune.timeout_s left"
            )

    def stopper(
        self, family: str, rung: int, predicted: float | None
    ) -> Callable[[float], None] | None:
        """A check for the parts of a rung's fit that has started (chunks of trees, boosting
        rounds): the prediction of a rung's cost can be wrong (another configuration of
        the family may cost many times more), so the fit stops when its next part would
        not finish in time, instead of overrunning the budget by the whole rung.

        None (fit at once: chunks cost a forest up to 1.45x on 1,400 rows) while the budget
        is not at risk: the prediction is known and ``wild`` times it still fits.
        """
        if predicted is not None and predicted * self.wild <= self.remaining():
            return None

        def check(predicted: float) -> None:
            left = self.remaining()
            if predicted * self.margin > left:
                raise BudgetExhausted(
                    f"{family} rung {rung} stopped mid-fit: its next part would take "
                    f"{predicted:.1f} s, {max(left, 0):.1f} s of tune.timeout_s left"
                )

        return check


def planner_for(params: Any) -> BudgetPlanner | None:
    timeout = params.tune.timeout_s
    return BudgetPlanner(timeout) if timeout else None
