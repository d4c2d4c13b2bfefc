"""The wall-clock budget planner: predictions, refusals, and a real search inside a budget."""

from __future__ import annotations

import time

import pytest
from optuna.trial import TrialState

from mlplatform.search import budget, rungs, storage, tune
from mlplatform.search.budget import Observed
from support.small_search import small_data, small_params

HISTORY = [
    Observed("xgboost", 0, 100, 1.0),
    Observed("xgboost", 0, 100, 2.0),
    Observed("xgboost", 1, 300, 5.0),
    Observed("random_forest", 0, 100, 4.0),
]


def test_prediction_prefers_the_trial_itself():
    own = [{"rung": 0, "rows": 100, "seconds": 0.5}]
    assert budget.predict_seconds(HISTORY, "xgboost", 1, 300, own) == pytest.approx(1.5)


def test_prediction_from_the_family_at_the_rung_then_scaled():
    assert budget.predict_seconds(HISTORY, "xgboost", 0, 100, []) == 2.0  # the slowest
    assert budget.predict_seconds(HISTORY, "random_forest", 1, 300, []) == pytest.approx(12.0)
    assert budget.predict_seconds(HISTORY, "logistic_regression", 0, 100, []) is None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_planner_refuses_what_cannot_finish():
    clock = Clock()
    planner = budget.BudgetPlanner(10.0, margin=1.2, clock=clock)
    planner.check_prediction(8.0, "xgboost", 0)  # 9.6 s of 10 s: starts
    clock.now = 2.0
    with pytest.raises(rungs.BudgetExhausted, match="xgboost rung 1 not started"):
        planner.check_prediction(7.0, "xgboost", 1)  # 8.4 s > 8 s left
    planner.check_prediction(None, "logistic_regression", 0)  # unknown cost: starts
    clock.now = 10.0
    with pytest.raises(rungs.BudgetExhausted):
        planner.check_prediction(None, "logistic_regression", 0)  # nothing left


def test_search_inside_a_budget_starts_no_rung_it_cannot_finish():
    """A budget the search cannot fill: it stops early, and every fitted rung ended in time."""
    timeout = 6.0
    params = small_params(
        {
            "tune.n_trials": 500,
            "tune.timeout_s": timeout,
            "tune.fidelity.rungs": [1.0],  # one rung of all rows: whole trials
            "tune.families": {
                # Costs alike from trial to trial, so the slowest so far predicts the next.
                "random_forest": {"n_estimators": 30, "max_depth": {"low": 6, "high": 8}},
            },
        }
    )
    data = small_data(n=3000)
    study = storage.new_study(params)
    start = time.time()
    tune.run_search(study, params, data, params.tune.n_trials)
    ended = time.time()
    trials = study.get_trials()
    assert 2 <= len(trials) < 500
    refused = [t for t in trials if rungs.BUDGET_ATTR in t.user_attrs]
    assert refused, "the budget was never reached"
    for t in refused:
        assert t.state == TrialState.PRUNED
        assert "not started" in t.user_attrs[rungs.BUDGET_ATTR]
        assert t.user_attrs.get(rungs.RUNGS_ATTR) is None  # it fitted nothing
    finished = [r["finished_at"] for t in trials for r in t.user_attrs.get(rungs.RUNGS_ATTR, [])]
    assert finished and max(finished) <= start + timeout
    assert ended - start <= timeout + 1.0
    assert all(t.state == TrialState.COMPLETE for t in trials if t not in refused)


def test_no_budget_left_means_n_trials_decides():
    params = small_params({"tune.n_trials": 4, "tune.timeout_s": 3600})
    study = tune.run_search(storage.new_study(params), params, small_data(), 4)
    assert len(study.get_trials()) == 4
    assert not any(rungs.BUDGET_ATTR in t.user_attrs for t in study.get_trials())
