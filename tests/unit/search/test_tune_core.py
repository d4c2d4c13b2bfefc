"""Tune internals: per-family pruning, trial -> run records, the journal, crash recovery."""

from __future__ import annotations

import datetime as dt
import functools
import types

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.pruners import NopPruner, PercentilePruner
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState, create_trial

from mlplatform.config import parse_params
from mlplatform.evaluation.metrics import objective
from mlplatform.search import pruning, storage, trial_runs, tune
from mlplatform.search import space as search_space
from support.mlflow_store import new_client
from support.project import make_params

FAMILY_DIST = CategoricalDistribution(["xgboost", "random_forest"])


def params_with(overrides=None):
    return parse_params(make_params(overrides))


# The search before tune.fidelity (one fit per trial, per-family percentile pruning).
FIDELITY_OFF = {
    "tune.fidelity": {"rungs": [1.0], "early_stopping_rounds": None, "forest_max_rows": None}
}


# --------------------------------------------------------------------------------------
# FamilyPruner


def _family_trial(family: str, value: float, state=TrialState.COMPLETE) -> FrozenTrial:
    return create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params={"family": family},
        distributions={"family": FAMILY_DIST},
        intermediate_values={1: value},
    )


@pytest.fixture
def two_family_study() -> optuna.Study:
    # xgboost trials score high at step 1, random forests low.
    study = optuna.create_study(direction="maximize")
    for family, value in [
        ("xgboost", 0.9),
        ("xgboost", 0.95),
        ("random_forest", 0.1),
        ("random_forest", 0.15),
    ]:
        study.add_trial(_family_trial(family, value))
    return study


def test_family_pruner_compares_within_family(two_family_study):
    inner = PercentilePruner(50.0, n_startup_trials=0)
    pruner = pruning.FamilyPruner(inner)
    rf = _family_trial("random_forest", 0.3, TrialState.RUNNING)
    xgb = _family_trial("xgboost", 0.6, TrialState.RUNNING)
    # All trials: median of (0.1, 0.15, 0.9, 0.95) is 0.525 -> rf pruned, xgb kept.
    assert bool(inner.prune(two_family_study, rf)) is True
    assert bool(inner.prune(two_family_study, xgb)) is False
    # Own family only: rf beats the forests' 0.125; xgb is below the boosters' 0.925.
    assert bool(pruner.prune(two_family_study, rf)) is False
    assert bool(pruner.prune(two_family_study, xgb)) is True


def test_family_pruner_counts_startup_trials_per_family(two_family_study):
    inner = PercentilePruner(50.0, n_startup_trials=3)
    bad_rf = _family_trial("random_forest", 0.01, TrialState.RUNNING)
    assert bool(inner.prune(two_family_study, bad_rf)) is True  # 4 completed trials overall
    # Only 2 completed random forests: still in the start-up phase for this family.
    assert bool(pruning.FamilyPruner(inner).prune(two_family_study, bad_rf)) is False


def test_family_view_filters_trials(two_family_study):
    view = pruning._FamilyView(two_family_study, "random_forest")
    trials = view.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert [t.value for t in trials] == [0.1, 0.15]
    assert view.direction == optuna.study.StudyDirection.MAXIMIZE
    assert view.study_name == two_family_study.study_name  # everything else delegates


def test_family_pruner_through_trial_api(two_family_study):
    study = optuna.create_study(
        direction="maximize",
        pruner=pruning.FamilyPruner(PercentilePruner(50.0, n_startup_trials=0)),
    )
    study.add_trials(two_family_study.trials)
    study.enqueue_trial({"family": "random_forest"})
    trial = study.ask()
    assert trial.suggest_categorical("family", ["xgboost", "random_forest"]) == "random_forest"
    trial.report(0.3, 1)
    assert bool(trial.should_prune()) is False
    study.tell(trial, state=TrialState.PRUNED)
    study.enqueue_trial({"family": "xgboost"})
    trial = study.ask()
    assert trial.suggest_categorical("family", ["xgboost", "random_forest"]) == "xgboost"
    trial.report(0.6, 1)
    assert bool(trial.should_prune()) is True


def test_make_pruner():
    pruner = pruning.make_pruner(
        params_with(
            {
                "tune.pruner": {"enabled": True, "n_startup_trials": 3, "percentile": 25.0},
                **FIDELITY_OFF,
            }
        )
    )
    assert isinstance(pruner, pruning.FamilyPruner)
    assert isinstance(pruner.inner, PercentilePruner)
    assert pruner.inner._n_startup_trials == 3
    assert pruner.inner._percentile == 25.0
    off = params_with({"tune.pruner.enabled": False, **FIDELITY_OFF})
    assert isinstance(pruning.make_pruner(off), NopPruner)


def test_new_study_direction_follows_metric():
    study = storage.new_study(params_with({"tune.metric": "log_loss", **FIDELITY_OFF}))
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert isinstance(study.pruner, pruning.FamilyPruner)
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    study = storage.new_study(params_with({"tune.metric": "roc_auc"}))
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE


# --------------------------------------------------------------------------------------
# trial_record

SPACES = {
    "xgboost": {"max_depth": IntDistribution(2, 8), "max_bin": 64},
    "random_forest": {"max_depth": IntDistribution(2, 8)},
}
METRIC = objective("average_precision")
T0 = dt.datetime(2024, 5, 1, 12, 0, 0)


def frozen(
    state: TrialState,
    *,
    number: int = 7,
    value: float | None = None,
    user_attrs=None,
    intermediate=None,
    seconds: float = 2.5,
) -> FrozenTrial:
    return FrozenTrial(
        number=number,
        state=state,
        value=value,
        datetime_start=T0,
        datetime_complete=T0 + dt.timedelta(seconds=seconds),
        params={"family": "xgboost", "xgboost.max_depth": 4},
        distributions={"family": FAMILY_DIST, "xgboost.max_depth": IntDistribution(2, 8)},
        user_attrs=user_attrs or {},
        system_attrs={},
        intermediate_values=intermediate or {},
        trial_id=number,
    )


def record(trial: FrozenTrial):
    return trial_runs.trial_record(
        trial,
        experiment_id="5",
        parent_run_id="parent123",
        name="study-x",
        metric=METRIC,
        spaces=SPACES,
    )


def test_trial_record_complete():
    trial = frozen(
        TrialState.COMPLETE,
        value=0.8,
        intermediate={25: 0.7, 50: 0.8},
        user_attrs={trial_runs.METRICS_ATTR: {"average_precision": 0.8, "roc_auc": 0.91}},
    )
    rec = record(trial)
    assert rec.status == "FINISHED"
    assert rec.experiment_id == "5"
    assert rec.run_name == "trial-007-xgboost"
    assert rec.params == {"family": "xgboost", "max_depth": 4, "max_bin": 64}
    assert rec.metrics == {
        "duration_s": 2.5,
        "valid_average_precision": 0.8,
        "valid_roc_auc": 0.91,
        "last_step": 50.0,
    }
    assert rec.step_metrics == [
        ("intermediate_average_precision", 0.7, 25),
        ("intermediate_average_precision", 0.8, 50),
    ]
    assert rec.tags == {
        "mlflow.parentRunId": "parent123",
        "optuna.study_name": "study-x",
        "optuna.trial_number": "7",
        "trial_state": "COMPLETE",
        "family": "xgboost",
    }
    start_ms = int(T0.timestamp() * 1000)
    assert (rec.start_ms, rec.end_ms) == (start_ms, start_ms + 2500)


def test_trial_record_pruned_uses_last_intermediate_value():
    rec = record(frozen(TrialState.PRUNED, intermediate={25: 0.4, 50: 0.35}))
    assert rec.status == "FINISHED"
    assert rec.tags["trial_state"] == "PRUNED"
    assert rec.metrics["valid_average_precision"] == 0.35
    assert rec.metrics["last_step"] == 50.0
    assert [s for _, _, s in rec.step_metrics] == [25, 50]


def test_trial_record_of_a_start_point_is_tagged():
    attrs = {search_space.START_POINT_ATTR: True}
    assert record(frozen(TrialState.COMPLETE, value=0.8, user_attrs=attrs)).tags["start_point"] == (
        "true"
    )
    assert "start_point" not in record(frozen(TrialState.COMPLETE, value=0.8)).tags


def test_trial_record_failed_with_error():
    rec = record(frozen(TrialState.FAIL, user_attrs={trial_runs.ERROR_ATTR: "ValueError: boom"}))
    assert rec.status == "FAILED"
    assert rec.tags["trial_state"] == "FAIL"
    assert rec.tags["error"] == "ValueError: boom"
    assert rec.step_metrics == []
    assert set(rec.metrics) == {"duration_s"}


def test_trial_record_interrupted_is_killed():
    rec = record(
        frozen(TrialState.FAIL, user_attrs={trial_runs.INTERRUPTED_ATTR: True, "retry_of": 3})
    )
    assert rec.status == "KILLED"
    assert rec.tags["trial_state"] == "KILLED"
    assert rec.tags["optuna.retry_of"] == "3"


# --------------------------------------------------------------------------------------
# SingleWriterJournal


def _quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -2.0, 2.0)
    trial.report(x, 1)
    return -(x**2)


def _summary(study: optuna.Study):
    return [(t.number, t.state, t.params, t.value, t.intermediate_values) for t in study.trials]


@pytest.fixture
def journal(tmp_path):
    path = tmp_path / "state" / "optuna.journal"
    backend = storage.SingleWriterJournal(path)
    study = optuna.create_study(
        study_name="s",
        storage=JournalStorage(backend),
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.optimize(_quadratic, n_trials=4)
    study.set_user_attr("parent", "abc")
    backend.close()
    return path, _summary(study)


@pytest.mark.parametrize("reader", ["single_writer", "optuna_file_backend"])
def test_journal_reopens(journal, reader):
    path, expected = journal
    backend = (
        storage.SingleWriterJournal(path)
        if reader == "single_writer"
        else JournalFileBackend(str(path))
    )
    study = optuna.load_study(study_name="s", storage=JournalStorage(backend))
    assert _summary(study) == expected
    assert len(expected) == 4
    assert study.user_attrs == {"parent": "abc"}


def test_journal_lines_are_complete_json(journal):
    path, _ = journal
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    import json

    assert all(isinstance(json.loads(line), dict) for line in raw.splitlines())


def test_journal_drops_truncated_last_line(journal):
    path, expected = journal
    good = path.read_bytes()
    with open(path, "ab") as fh:
        fh.write(b'{"op_code": 1, "broken')
    backend = storage.SingleWriterJournal(path)
    assert path.read_bytes() == good  # the partial line is gone from the file too
    study = optuna.load_study(
        study_name="s",
        storage=JournalStorage(backend),
        sampler=optuna.samplers.RandomSampler(seed=1),
    )
    assert _summary(study) == expected
    # Appending continues on a clean line boundary: optuna's own reader sees 5 trials.
    study.optimize(_quadratic, n_trials=1)
    backend.close()
    again = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))
    assert [t.number for t in again.trials] == [0, 1, 2, 3, 4]
    assert _summary(again)[:4] == expected


def test_journal_only_partial_line_becomes_empty(tmp_path):
    path = tmp_path / "j.journal"
    path.write_bytes(b'{"op_code": 0, "study_na')
    backend = storage.SingleWriterJournal(path)
    assert path.read_bytes() == b""
    assert list(backend.read_logs(0)) == []
    backend.close()


def test_journal_reads_optuna_file_backend_output(tmp_path):
    path = tmp_path / "j.journal"
    study = optuna.create_study(
        study_name="s",
        storage=JournalStorage(JournalFileBackend(str(path))),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.optimize(_quadratic, n_trials=3)
    reopened = optuna.load_study(
        study_name="s", storage=JournalStorage(storage.SingleWriterJournal(path))
    )
    assert _summary(reopened) == _summary(study)


# --------------------------------------------------------------------------------------
# reconcile


@pytest.fixture
def tracked(tmp_path):
    """A journal-backed study, an MLflow store with a parent run, and the record callable."""
    params = params_with({"tune.start_points": {}})  # the trials here are made by hand
    spaces = search_space.parse(params.tune)
    metric = objective(params.tune.metric)
    backend = storage.SingleWriterJournal(tmp_path / "optuna.journal")
    study = storage.new_study(params, JournalStorage(backend), "study-x")
    client = new_client(tmp_path)
    exp_id = client.create_experiment("exp")
    parent_id = client.create_run(exp_id, run_name="parent").info.run_id
    rec = functools.partial(
        trial_runs.trial_record,
        experiment_id=exp_id,
        parent_run_id=parent_id,
        name="study-x",
        metric=metric,
        spaces=spaces,
    )
    yield types.SimpleNamespace(
        study=study,
        spaces=spaces,
        client=client,
        exp_id=exp_id,
        parent_id=parent_id,
        record=rec,
        journal=tmp_path / "optuna.journal",
    )
    backend.close()


def _child_runs(t, view="ACTIVE_ONLY"):
    from mlflow.entities import ViewType

    return t.client.search_runs(
        [t.exp_id],
        filter_string=f"tags.mlflow.parentRunId = '{t.parent_id}'",
        run_view_type=getattr(ViewType, view),
    )


def _reconcile(t):
    return trial_runs.reconcile(t.study, t.client, t.exp_id, t.parent_id, t.record)


def _finished_trial(t, state: TrialState, family: str = "logistic_regression") -> int:
    t.study.enqueue_trial({"family": family})
    trial = t.study.ask()
    search_space.suggest(trial, t.spaces)
    trial.report(0.5, 1)
    if state == TrialState.COMPLETE:
        trial.set_user_attr(trial_runs.METRICS_ATTR, {"average_precision": 0.6, "roc_auc": 0.7})
        t.study.tell(trial, 0.6)
    elif state == TrialState.FAIL:
        trial.set_user_attr(trial_runs.ERROR_ATTR, "ValueError: bad")
        t.study.tell(trial, state=TrialState.FAIL)
    else:
        t.study.tell(trial, state=state)
    return trial.number


def test_reconcile_after_crash(tracked):
    t = tracked
    complete = _finished_trial(t, TrialState.COMPLETE)
    pruned = _finished_trial(t, TrialState.PRUNED, "xgboost")
    failed = _finished_trial(t, TrialState.FAIL)
    # A trial left RUNNING by a dead process, after it drew its family.
    running = t.study.ask()
    running.suggest_categorical(search_space.FAMILY_PARAM, list(t.spaces))
    stale = running.number

    fixed = _reconcile(t)
    assert fixed == {"stale_trials": 1, "requeued": 1, "runs_written": 4, "runs_replaced": 0}

    trials = {tr.number: tr for tr in t.study.get_trials()}
    assert trials[stale].state == TrialState.FAIL
    assert trials[stale].user_attrs[trial_runs.INTERRUPTED_ATTR] is True
    assert trials[failed].state == TrialState.FAIL
    assert trial_runs.INTERRUPTED_ATTR not in trials[failed].user_attrs
    waiting = [tr for tr in trials.values() if tr.state == TrialState.WAITING]
    assert len(waiting) == 1
    assert waiting[0].user_attrs["retry_of"] == stale
    assert waiting[0].system_attrs["fixed_params"] == trials[stale].params

    runs = _child_runs(t)
    by_number = {}
    for run in runs:
        by_number.setdefault(int(run.data.tags["optuna.trial_number"]), []).append(run)
    assert sorted(by_number) == sorted([complete, pruned, failed, stale])
    assert all(len(v) == 1 for v in by_number.values())
    status = {n: v[0].info.status for n, v in by_number.items()}
    assert status == {complete: "FINISHED", pruned: "FINISHED", failed: "FAILED", stale: "KILLED"}
    assert by_number[stale][0].data.tags["trial_state"] == "KILLED"
    assert by_number[failed][0].data.tags["error"] == "ValueError: bad"
    done = by_number[complete][0].data
    assert done.metrics["valid_roc_auc"] == 0.7
    assert done.params["family"] == "logistic_regression"
    assert "C" in done.params

    # A second pass changes nothing: no second retry, no duplicate runs.
    again = _reconcile(t)
    assert again == {"stale_trials": 0, "requeued": 0, "runs_written": 0, "runs_replaced": 0}
    assert len([tr for tr in t.study.get_trials() if tr.state == TrialState.WAITING]) == 1
    assert len(_child_runs(t)) == 4


def test_reconcile_state_is_in_the_journal(tracked):
    t = tracked
    running = t.study.ask()
    running.suggest_categorical(search_space.FAMILY_PARAM, list(t.spaces))
    _reconcile(t)
    t.study._storage._backend.close()
    reopened = optuna.load_study(
        study_name="study-x", storage=JournalStorage(JournalFileBackend(str(t.journal)))
    )
    states = [(tr.state, dict(tr.user_attrs)) for tr in reopened.get_trials()]
    assert states == [
        (TrialState.FAIL, {trial_runs.INTERRUPTED_ATTR: True}),
        (TrialState.WAITING, {"retry_of": running.number}),
    ]


def test_reconcile_replaces_half_written_run(tracked):
    t = tracked
    number = _finished_trial(t, TrialState.COMPLETE)
    half = t.client.create_run(
        t.exp_id,
        tags={"mlflow.parentRunId": t.parent_id, "optuna.trial_number": str(number)},
        run_name="half-written",
    )
    assert t.client.get_run(half.info.run_id).info.status == "RUNNING"

    fixed = _reconcile(t)
    assert fixed == {"stale_trials": 0, "requeued": 0, "runs_written": 1, "runs_replaced": 1}
    assert t.client.get_run(half.info.run_id).info.lifecycle_stage == "deleted"
    runs = _child_runs(t)
    assert len(runs) == 1
    assert runs[0].info.run_id != half.info.run_id
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["optuna.trial_number"] == str(number)
    assert runs[0].info.run_name == f"trial-{number:03d}-logistic_regression"


def test_reconcile_keeps_finished_runs(tracked):
    t = tracked
    number = _finished_trial(t, TrialState.COMPLETE)
    assert _reconcile(t)["runs_written"] == 1
    first = _child_runs(t)[0].info.run_id
    assert _reconcile(t)["runs_written"] == 0
    assert [r.info.run_id for r in _child_runs(t)] == [first]
    assert _child_runs(t)[0].data.tags["optuna.trial_number"] == str(number)


def test_reconcile_trial_interrupted_before_drawing_family(tracked):
    t = tracked
    _finished_trial(t, TrialState.COMPLETE)
    t.study.ask()  # killed before suggest(): no params at all
    fixed = _reconcile(t)
    assert fixed["stale_trials"] == 1
    assert fixed["requeued"] == 0  # nothing to retry: it drew no parameters
    states = [tr.state for tr in t.study.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.FAIL]


# --------------------------------------------------------------------------------------
# run_search on a tiny in-memory problem


def _search_data(seed: int = 0, single_class: bool = False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(160, 4))
    y = (x[:, 0] + 0.5 * rng.normal(size=160) > 0).astype(np.int64)
    y_train = np.zeros(120, dtype=np.int64) if single_class else y[:120]
    return tune.SearchData(
        schema=types.SimpleNamespace(classes=["no", "yes"]),
        y_train=y_train,
        y_valid=y[120:],
        x_train={True: x[:120], False: x[:120]},
        x_valid={True: x[120:], False: x[120:]},
    )


def test_run_search_records_validation_metrics():
    params = params_with(
        {
            "tune.families": {
                "logistic_regression": {"C": {"low": 0.01, "high": 10.0, "log": True}}
            },
            "tune.n_jobs": 1,
        }
    )
    study = tune.run_search(storage.new_study(params), params, _search_data(), n_trials=3)
    trials = study.get_trials()
    assert [tr.state for tr in trials] == [TrialState.COMPLETE] * 3
    for tr in trials:
        assert set(tr.params) == {"family", "logistic_regression.C"}
        figures = tr.user_attrs[trial_runs.METRICS_ATTR]
        assert tr.value == figures["average_precision"]
        assert set(figures) == {
            "average_precision",
            "roc_auc",
            "log_loss",
            "brier",
            "f1",
            "balanced_accuracy",
        }
        # 120 training rows are below tune.fidelity.min_rows: one rung, at all rows.
        assert tr.intermediate_values.keys() == {120}


def test_run_search_records_errors_and_continues():
    params = params_with({"tune.families": {"logistic_regression": {"C": 1.0}}, "tune.n_jobs": 1})
    study = tune.run_search(
        storage.new_study(params), params, _search_data(single_class=True), n_trials=2
    )
    trials = study.get_trials()
    assert [tr.state for tr in trials] == [TrialState.FAIL] * 2
    assert trials[0].user_attrs[trial_runs.ERROR_ATTR].startswith("ValueError:")
    assert trial_runs.INTERRUPTED_ATTR not in trials[0].user_attrs
