"""Parallel search workers: the worker count, threads, the shared budget, dead trials, and
runs written exactly once (real Optuna storages, a real sqlite MLflow store)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from mlplatform.config import parse_params
from mlplatform.errors import MlplatformError
from mlplatform.search import shared, workers
from mlplatform.search.trial_runs import INTERRUPTED_ATTR, RunRecord
from support.mlflow_store import new_client
from support.project import make_params


def params_with(overrides=None):
    return parse_params(make_params(overrides))


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(workers.WORKERS_ENV, raising=False)
    monkeypatch.delenv(workers.STORAGE_ENV, raising=False)


def test_worker_count_sources_in_order(monkeypatch):
    params = params_with({"search_workers.workers": 3})
    assert workers.worker_count(params_with()) is None  # the single search, as before
    assert workers.worker_count(params) == 3
    monkeypatch.setenv(workers.WORKERS_ENV, "4")
    assert workers.worker_count(params) == 4
    assert workers.worker_count(params, cli=2) == 2


def test_one_local_worker_is_the_single_search_but_joins_a_shared_storage(monkeypatch):
    assert workers.worker_count(params_with(), cli=1) is None
    monkeypatch.setenv(workers.STORAGE_ENV, "postgresql://u@h/db")
    assert workers.worker_count(params_with(), cli=1) == 1


@pytest.mark.parametrize("raw", ["zero", "0", "-2", "1.5"])
def test_a_bad_worker_count_is_one_line_naming_the_variable(monkeypatch, raw):
    monkeypatch.setenv(workers.WORKERS_ENV, raw)
    with pytest.raises(MlplatformError, match=f"MLPLATFORM_TUNE_WORKERS='{raw}'"):
        workers.worker_count(params_with())


def test_threads_split_the_cores(monkeypatch):
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert workers.threads_per_worker(params_with(), 1) == 4
    assert workers.threads_per_worker(params_with(), 2) == 2
    assert workers.threads_per_worker(params_with(), 3) == 1
    assert workers.threads_per_worker(params_with(), 8) == 1
    assert workers.threads_per_worker(params_with({"search_workers.threads": 1}), 1) == 1


def _study() -> optuna.Study:
    return optuna.create_study(direction="maximize")


def _ask(study: optuna.Study, worker: str) -> optuna.Trial:
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr(shared.WORKER_ATTR, worker)
    return trial


def test_the_budget_counts_finished_running_and_errors_not_dead_trials():
    study = _study()
    study.tell(_ask(study, "a"), 0.5)
    _ask(study, "a")  # running
    err = _ask(study, "b")
    err.set_user_attr("error", "ValueError: boom")
    study.tell(err, state=TrialState.FAIL)
    assert shared.budget_used(study) == 3
    dead = _ask(study, "b")
    assert shared.budget_used(study) == 4
    assert shared.fail_running(study, "b") == [dead.number]
    assert shared.budget_used(study) == 3  # the dead one is retried, not counted


def test_a_dead_workers_trials_fail_and_are_queued_once():
    study = _study()
    mine, theirs = _ask(study, "a"), _ask(study, "b")
    assert shared.fail_running(study, "b") == [theirs.number]
    assert shared.fail_running(study, "b") == []  # already failed: not queued twice
    trials = study.get_trials()
    assert trials[theirs.number].state == TrialState.FAIL
    assert trials[theirs.number].user_attrs[INTERRUPTED_ATTR] is True
    assert trials[mine.number].state == TrialState.RUNNING  # a live worker's trial is kept
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1
    assert waiting[0].system_attrs["fixed_params"] == trials[theirs.number].params
    assert waiting[0].user_attrs["retry_of"] == theirs.number
    again = _ask(study, "c")  # the next claim takes the queued parameters
    assert again.params == trials[theirs.number].params


def test_stale_trials_are_failed_after_the_grace_period(tmp_path):
    import time

    settings = params_with(
        {"search_workers.heartbeat_interval_s": 1, "search_workers.grace_period_s": 2}
    ).search_workers
    storage = shared.open_storage(settings, tmp_path / "j", f"sqlite:///{tmp_path}/o.db")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    trial = _ask(study, "gone")
    storage.record_heartbeat(trial._trial_id)  # its worker then dies: no more beats
    assert shared.fail_stale(study) == []  # within the grace period
    failed, deadline = [], time.monotonic() + 15  # heartbeats are stored in whole seconds
    while not failed and time.monotonic() < deadline:
        time.sleep(0.5)
        failed = shared.fail_stale(study)
    assert failed == [trial.number]
    assert shared.fail_stale(study) == []  # failed once
    frozen = study.get_trials()[trial.number]
    assert frozen.state == TrialState.FAIL and frozen.user_attrs[shared.STALE_ATTR] is True


def test_a_refused_rdb_storage_is_one_masked_line(tmp_path):
    url = "postgresql+psycopg2://team:hunter2@127.0.0.1:1/optuna"
    with pytest.raises(MlplatformError) as info:
        shared.open_storage(params_with().search_workers, tmp_path / "j", url)
    message = str(info.value)
    assert "\n" not in message and "hunter2" not in message
    assert "team:***@127.0.0.1:1/optuna: cannot connect" in message


def _record(exp_id: str, parent: str, number: int) -> RunRecord:
    return RunRecord(
        experiment_id=exp_id,
        run_name=f"trial-{number:03d}",
        start_ms=1_700_000_000_000,
        end_ms=1_700_000_001_000,
        status="FINISHED",
        params={"x": 0.5},
        metrics={"valid_average_precision": 0.5},
        tags={"mlflow.parentRunId": parent, "optuna.trial_number": str(number)},
    )


def test_a_trial_run_is_written_once_and_reconcile_fixes_the_rest(tmp_path):
    client = new_client(tmp_path)
    exp_id = client.create_experiment("exp")
    parent = client.create_run(exp_id).info.run_id
    locks = shared.StudyLocks("s", None, tmp_path / "state")
    write = shared.WriteOnce(locks, parent)
    assert write(client, _record(exp_id, parent, 0)) is not None
    assert write(client, _record(exp_id, parent, 0)) is None  # another worker got there first
    # A duplicate (a retried create) and a half-written run of a dead writer.
    from mlplatform.search.trial_runs import write_run

    write_run(client, _record(exp_id, parent, 0))
    half = client.create_run(exp_id, tags=_record(exp_id, parent, 1).tags).info.run_id

    study = _study()
    for value in (0.4, 0.6):
        study.tell(_ask(study, "a"), value)
    fixed = shared.reconcile_runs(
        study, client, exp_id, parent, lambda t: _record(exp_id, parent, t.number), locks
    )
    assert fixed == {"runs_written": 1, "runs_replaced": 1, "duplicates_deleted": 1}
    runs = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.data.tags["optuna.trial_number"] for r in runs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert half not in {r.info.run_id for r in runs}
