"""The wall-clock budget planner: predictions, refusals, and a real search inside a budget."""

from __future__ import annotations

import time

import numpy as np
import pytest
from optuna.trial import TrialState

from mlplatform.modeling import families
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
        # Not started, or stopped between chunks of trees: no rung recorded either way.
        assert any(w in t.user_attrs[rungs.BUDGET_ATTR] for w in ("not started", "mid-fit"))
        assert t.user_attrs.get(rungs.RUNGS_ATTR) is None
    finished = [r["finished_at"] for t in trials for r in t.user_attrs.get(rungs.RUNGS_ATTR, [])]
    assert finished and max(finished) <= start + timeout
    assert ended - start <= timeout + 1.0
    assert all(t.state == TrialState.COMPLETE for t in trials if t not in refused)


def test_no_budget_left_means_n_trials_decides():
    params = small_params({"tune.n_trials": 4, "tune.timeout_s": 3600})
    study = tune.run_search(storage.new_study(params), params, small_data(), 4)
    assert len(study.get_trials()) == 4
    assert not any(rungs.BUDGET_ATTR in t.user_attrs for t in study.get_trials())


def test_a_started_rung_stops_when_its_next_part_cannot_finish():
    clock = Clock()
    planner = budget.BudgetPlanner(10.0, margin=1.2, clock=clock)
    assert planner.stopper("random_forest", 1, 0.3) is None  # 30 x 0.3 s fit in 10 s
    check = planner.stopper("random_forest", 1, 0.4)
    assert planner.stopper("random_forest", 1, None) is not None  # unknown: watched
    clock.now = 5.0
    check(4.0)  # 4.8 s of 5 s left: goes on
    with pytest.raises(rungs.BudgetExhausted, match="random_forest rung 1 stopped mid-fit"):
        check(4.5)  # 5.4 s > 5 s


class StopAt:
    """A budget check that raises on its n-th call, counting the calls."""

    def __init__(self, n: int) -> None:
        self.n, self.calls, self.predictions = n, 0, []

    def __call__(self, predicted: float) -> None:
        self.calls += 1
        self.predictions.append(predicted)
        if self.calls >= self.n:
            raise rungs.BudgetExhausted("stop")


@pytest.mark.parametrize("family", ["random_forest", "extra_trees"])
def test_a_forest_grown_in_chunks_is_the_forest_of_one_fit(family):
    data = small_data(n=1500)
    hp = {"n_estimators": 37, "max_depth": 5, "max_samples": 300, "bootstrap": True}
    fitted = []
    for chunked in (False, True):
        est = families.make_estimator(
            family, hp, y=data.y_train, n_classes=2, class_weight="balanced", seed=3, n_jobs=1
        )
        x = data.x_train[False]
        if chunked:
            families.fit_within(family, est, x, data.y_train, {}, StopAt(10**6))
        else:
            est.fit(x, data.y_train)
        fitted.append(est.predict_proba(data.x_valid[False]))
    np.testing.assert_array_equal(fitted[0], fitted[1])


def test_fit_within_stops_a_forest_between_chunks_and_xgboost_between_rounds():
    data = small_data(n=1500)
    x, y = data.x_train[False], data.y_train
    forest = families.make_estimator(
        "random_forest",
        {"n_estimators": 80},
        y=y,
        n_classes=2,
        class_weight="none",
        seed=0,
        n_jobs=1,
    )
    check = StopAt(2)  # the first call comes after the first chunk (1/32: 3 of 80 trees)
    with pytest.raises(rungs.BudgetExhausted):
        families.fit_within("random_forest", forest, x, y, {}, check)
    assert len(forest.estimators_) == 10  # 3, then 1/8 of 80: stopped before 2/8
    assert check.predictions[0] > 0  # time per tree so far times the next chunk's trees
    boost = families.make_estimator(
        "xgboost", {"n_estimators": 300}, y=y, n_classes=2, class_weight="none", seed=0, n_jobs=1
    )
    check = StopAt(7)
    with pytest.raises(rungs.BudgetExhausted):
        families.fit_within("xgboost", boost, x, y, {}, check)
    assert check.calls == 7  # stopped after its 7th round of 300
    assert boost.get_params()["callbacks"] is None  # nothing left on the estimator


def test_a_rung_that_costs_far_more_than_predicted_stops_inside_the_budget():
    """The first fit of a family has no prediction; one that would run for many times the
    budget is stopped between chunks of trees, so the search ends near its budget."""
    timeout = 3.0
    params = small_params(
        {
            "tune.n_trials": 50,
            "tune.timeout_s": timeout,
            "tune.fidelity.rungs": [1.0],
            "tune.start_points": {},
            "tune.families": {"random_forest": {"n_estimators": 8000, "max_depth": 6}},
        }
    )
    study = storage.new_study(params)
    start = time.monotonic()
    tune.run_search(study, params, small_data(n=3000), params.tune.n_trials)
    ended = time.monotonic()
    first = study.get_trials()[0]
    assert first.state == TrialState.PRUNED
    assert "stopped mid-fit" in first.user_attrs[rungs.BUDGET_ATTR]
    assert first.user_attrs.get(rungs.RUNGS_ATTR) is None  # the stopped rung is not recorded
    assert ended - start <= timeout + 1.0  # not the ~20 s the whole forest takes
