"""A stop that lands inside XGBoost's data iterator (a ctypes callback, where ctypes drops
the KeyboardInterrupt) still stops the search, and the trial is marked stopped, not failed.

The signal is real (SIGTERM to this process); only its moment is chosen, by sending it from
the iterator's ``next`` the way a user's ``kill`` landed there in CI."""

from __future__ import annotations

import os
import signal

import pytest
import xgboost
from optuna.trial import TrialState
from xgboost.data import SingleBatchInternalIter

from mlplatform.search import interrupt, storage, tune
from mlplatform.search.trial_runs import ERROR_ATTR, INTERRUPTED_ATTR
from support.small_search import small_data, small_params

# ctypes reports the KeyboardInterrupt it dropped: that is the point of these tests.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
def sigterm_in_the_data_iterator(monkeypatch):
    """Send SIGTERM from inside XGBoost's data iterator on the nth call of its ``next``."""
    calls = {"n": 0, "at": None}
    original = SingleBatchInternalIter.next

    def next_(self, input_data):
        calls["n"] += 1
        if calls["n"] == calls["at"]:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, input_data)

    monkeypatch.setattr(SingleBatchInternalIter, "next", next_)
    return calls


def test_a_signal_in_the_data_iterator_comes_out_as_an_xgboost_error_but_is_remembered(
    sigterm_in_the_data_iterator,
):
    sigterm_in_the_data_iterator["at"] = 1
    data = small_data(n=400)
    with interrupt.signals_as_interrupt():
        # Why the flag exists: the KeyboardInterrupt does not come out of the fit.
        with pytest.raises(xgboost.core.XGBoostError):
            xgboost.XGBClassifier(n_estimators=5, tree_method="hist").fit(
                data.x_train[True], data.y_train
            )
        assert interrupt.requested()
        with pytest.raises(KeyboardInterrupt):
            interrupt.raise_if_requested()
    assert not interrupt.requested()  # a later search starts clean


def test_a_search_stopped_inside_the_data_iterator_stops_and_marks_the_trial_stopped(
    sigterm_in_the_data_iterator,
):
    params = small_params(
        {
            "tune.n_trials": 6,
            "tune.fidelity.rungs": [1.0],
            "tune.families": {"xgboost": {"n_estimators": 20, "max_depth": {"low": 2, "high": 4}}},
        }
    )
    data = small_data(n=600)
    study = storage.new_study(params)
    tune.run_search(study, params, data, 2)
    calls = sigterm_in_the_data_iterator["n"]
    assert calls >= 2  # each fit builds its matrices through the iterator
    sigterm_in_the_data_iterator["at"] = calls + 1  # inside the third trial's fit
    with interrupt.signals_as_interrupt(), pytest.raises(KeyboardInterrupt):
        tune.run_search(study, params, data, 4)
    trials = study.get_trials()
    assert len(trials) == 3, "the search went on after it was stopped"
    stopped = trials[-1]
    assert stopped.state == TrialState.FAIL
    assert stopped.user_attrs.get(INTERRUPTED_ATTR) is True
    assert ERROR_ATTR not in stopped.user_attrs
    assert all(t.state == TrialState.COMPLETE for t in trials[:2])


def test_an_error_without_a_stop_is_still_an_error():
    params = small_params({"tune.n_trials": 1})

    def broken(trial):
        raise ValueError("a real bug")

    guarded = interrupt.guard(broken)
    study = storage.new_study(params)
    with interrupt.signals_as_interrupt():
        study.optimize(guarded, n_trials=1, catch=(ValueError,))
    (trial,) = study.get_trials()
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs[ERROR_ATTR] == "ValueError: a real bug"
    assert INTERRUPTED_ATTR not in trial.user_attrs
