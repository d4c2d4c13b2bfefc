"""Parallel search workers against the real tracking server and a PostgreSQL Optuna storage:
two "machines" (project copies) sharing one study and one parent run; a machine killed
mid-search then resumed; the tracking server restarted mid-search; PostgreSQL refusing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from support.project import CLI, cli_env, run_cli, run_stages, write_project

pytestmark = pytest.mark.e2e

SMALL = {
    "tune.n_trials": 6,
    "tune.fidelity.rungs": [1.0],  # whole trials: these tests count COMPLETE ones
    "tune.pruner.enabled": False,
    "search_workers.heartbeat_interval_s": 1,
    "search_workers.grace_period_s": 5,
    "tune.families": {
        "logistic_regression": {"C": {"low": 0.001, "high": 100.0, "log": True}},
        "xgboost": {
            "n_estimators": {"low": 20, "high": 80, "step": 20},
            "max_depth": {"low": 2, "high": 5},
            "learning_rate": {"low": 0.03, "high": 0.3, "log": True},
        },
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, team_server):
    with team_server(tmp_path_factory.mktemp("workers-server")) as srv:
        yield srv


@pytest.fixture
def optuna_db(pg):
    """A fresh PostgreSQL database for the Optuna study, dropped afterwards."""
    from mlplatform.team.database import drop_database, ensure_database, with_driver

    uri = pg.fresh_uri("optuna")
    assert not pg.exists(uri)
    ensure_database(uri)
    try:
        yield with_driver(uri)
    finally:
        store = _STORES.pop(with_driver(uri), None)
        if store is not None:
            store.engine.dispose()
        drop_database(uri)


def _machines(tmp_path: Path, experiment: str, overrides=None, n: int = 2) -> list[Path]:
    """n checkouts of one project with the same prepared data (as on n machines)."""
    first = write_project(
        tmp_path / "m0", {**SMALL, "mlflow.experiment": experiment, **(overrides or {})}
    )
    run_stages(first, "ingest", "prepare")
    others = []
    for i in range(1, n):
        other = tmp_path / f"m{i}"
        shutil.copytree(first, other, ignore=shutil.ignore_patterns("mlflow.db", ".mlplatform"))
        others.append(other)
    return [first, *others]


def _env(server, storage: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": server.uri, "MLPLATFORM_OPTUNA_STORAGE": storage}


def _tune(project: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(CLI), "tune", *args],
        cwd=project,
        env=cli_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 0, out[-4000:]
    return out


# One storage (one connection pool) per study database for the whole test: the tests poll
# the study every 0.1 s, and a storage per poll kept a pool of idle connections each until
# garbage collection, enough to exhaust PostgreSQL's max_connections (100) in CI.
_STORES: dict[str, optuna.storages.RDBStorage] = {}


def _study(storage: str) -> optuna.Study:
    store = _STORES.get(storage)
    if store is None:
        store = _STORES[storage] = optuna.storages.RDBStorage(storage)
    (summary,) = optuna.get_all_study_summaries(store)
    return optuna.load_study(study_name=summary.study_name, storage=store)


def _children(server, tune_report: dict) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server.uri)
    return client.search_runs(
        [tune_report["experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{tune_report['parent_run_id']}'",
        max_results=10_000,
    )


def _check_one_run_per_trial(server, report: dict, study: optuna.Study) -> dict[int, object]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server.uri)
    assert client.get_run(report["parent_run_id"]).info.status == "FINISHED"
    children = _children(server, report)
    numbers = [int(r.data.tags["optuna.trial_number"]) for r in children]
    assert sorted(numbers) == sorted(t.number for t in study.trials if t.state.is_finished())
    assert len(numbers) == len(set(numbers)), "a trial has more than one run"
    assert all(r.info.status in ("FINISHED", "FAILED", "KILLED") for r in children)
    running = client.search_runs([report["experiment_id"]], "attributes.status = 'RUNNING'")
    assert running == []
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            run = by_number[t.number]
            assert run.data.metrics["valid_average_precision"] == pytest.approx(t.value)
            assert run.data.params["family"] == t.params["family"]
    return by_number


def _no_repeats(study: optuna.Study) -> None:
    fresh = [t for t in study.trials if t.user_attrs.get("retry_of") is None]
    keys = [tuple(sorted(t.params.items())) for t in fresh]
    assert len(keys) == len(set(keys)), "two trials share a parameter set"


def test_two_machines_share_one_study_and_one_parent_run(tmp_path, server, optuna_db):
    a, b = _machines(tmp_path, "workers-share")
    env = _env(server, optuna_db)
    procs = [_tune(a, env, "--workers", "2"), _tune(b, env, "--workers", "1")]
    for proc in procs:
        _finish(proc)
    reports = [json.loads((m / "reports/tune.json").read_text()) for m in (a, b)]
    study = _study(optuna_db)

    # One study, exactly n_trials trials, each run by exactly one of the three workers.
    assert len(study.trials) == SMALL["tune.n_trials"]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    ran = [n for r in reports for w in r["workers"] for n in w["trials"]]
    assert sorted(ran) == [t.number for t in study.trials]
    assert len(reports[0]["workers"]) == 2 and len(reports[1]["workers"]) == 1
    cores = len(os.sched_getaffinity(0))
    assert {w["threads"] for w in reports[0]["workers"]} == {max(1, cores // 2)}
    assert reports[1]["workers"][0]["threads"] == cores
    assert len({w["pid"] for r in reports for w in r["workers"]}) == 3

    # One parent run, one child per trial; no repeated parameter set.
    assert reports[0]["parent_run_id"] == reports[1]["parent_run_id"]
    assert reports[0]["study_name"] == reports[1]["study_name"] == study.study_name
    _check_one_run_per_trial(server, reports[0], study)
    _no_repeats(study)

    # The same best trial whichever machine reports it (and on the parent run).
    from mlflow import MlflowClient

    best = study.best_trial
    assert {r["best"]["number"] for r in reports} == {best.number}
    parent = MlflowClient(tracking_uri=server.uri).get_run(reports[0]["parent_run_id"])
    assert parent.data.tags["best_trial_number"] == str(best.number)
    assert parent.data.metrics["best_valid_average_precision"] == pytest.approx(best.value)


def _running_trial(storage: str, deadline: float) -> tuple[optuna.Study, object]:
    """Wait until a tagged trial runs after two finished; return the study and it."""
    while time.time() < deadline:
        try:
            study = _study(storage)
        except ValueError:  # the study is not created yet
            time.sleep(0.2)
            continue
        trials = study.trials
        # A trial is asked, then tagged with its worker: wait for the tag, or the
        # caller finds no worker to kill (a race CI lost once).
        running = [t for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
        if sum(t.state.is_finished() for t in trials) >= 2 and running:
            return study, running[0]
        time.sleep(0.1)
    raise AssertionError("no trial to kill before the deadline")


def _frozen_running_trial(storage: str, deadline: float, space: dict) -> tuple[object, int]:
    """A running trial with all its parameters (``space``: tune.families of one family),
    whose worker is stopped (SIGSTOP) mid-trial.

    A trial seen running may finish before a kill lands (XGBoost stops early on this
    data), and then the kill hits a worker between trials: CI lost that race twice. A
    stopped worker cannot tell its trial, so a re-read that still shows it running means
    the kill that follows interrupts exactly that trial.
    """
    ((family, hps),) = space.items()
    names = {f"{family}.{name}" for name in hps}
    while time.time() < deadline:
        _, trial = _running_trial(storage, deadline)
        pid = int(trial.user_attrs["worker"].rsplit(":", 1)[1])
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        time.sleep(0.5)  # a tell already sent reaches PostgreSQL
        now = _study(storage).trials[trial.number]
        # Stopped between ask and its last suggest, the trial has nothing (or only part)
        # to queue again: a real outcome, but not the one these tests are about.
        if now.state == TrialState.RUNNING and names <= set(now.params):
            return now, pid
        os.kill(pid, signal.SIGCONT)
    raise AssertionError("no trial to kill before the deadline")


def test_a_killed_machine_leaves_a_failed_trial_and_no_running_run(tmp_path, server, optuna_db):
    slow = {
        "tune.n_trials": 6,
        "tune.fidelity.rungs": [1.0],  # whole trials: these tests count COMPLETE ones
        "tune.families": {
            "xgboost": {
                "n_estimators": {"low": 400, "high": 800, "step": 100},
                "max_depth": {"low": 4, "high": 8},
                "learning_rate": {"low": 0.01, "high": 0.1, "log": True},
            }
        },
    }
    (project,) = _machines(tmp_path, "workers-kill", slow, n=1)
    env = _env(server, optuna_db)
    proc = _tune(project, env, "--workers", "1")
    try:
        victim, worker_pid = _frozen_running_trial(
            optuna_db, time.time() + 300, slow["tune.families"]
        )
        # The machine dies: its tune and (through PR_SET_PDEATHSIG) its worker.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for _ in range(100):
            if not Path(f"/proc/{worker_pid}").exists():
                break
            time.sleep(0.1)
        assert not Path(f"/proc/{worker_pid}").exists(), "the worker outlived its tune"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert _study(optuna_db).trials[victim.number].state == TrialState.RUNNING  # as it died

    _finish(_tune(project, env, "--workers", "1"))  # resume

    study = _study(optuna_db)
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL
    assert killed.user_attrs.get("interrupted") is True
    assert killed.user_attrs.get("stale") is True  # failed by its missing heartbeat
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    counted = [t for t in study.trials if t.number != victim.number]
    assert len(counted) == slow["tune.n_trials"]
    assert all(t.state == TrialState.COMPLETE for t in counted)
    report = json.loads((project / "reports/tune.json").read_text())
    by_number = _check_one_run_per_trial(server, report, study)
    assert by_number[victim.number].info.status == "KILLED"
    _no_repeats(study)


def test_a_killed_worker_is_failed_at_once_by_its_tune(tmp_path, server, optuna_db):
    slow = {
        "tune.n_trials": 6,
        "tune.fidelity.rungs": [1.0],  # whole trials: these tests count COMPLETE ones
        "search_workers.grace_period_s": 600,  # not the heartbeat: the tune notices
        "tune.families": {
            "xgboost": {
                "n_estimators": {"low": 300, "high": 600, "step": 100},
                "max_depth": {"low": 4, "high": 8},
                "learning_rate": {"low": 0.01, "high": 0.1, "log": True},
            }
        },
    }
    (project,) = _machines(tmp_path, "workers-kill-one", slow, n=1)
    proc = _tune(project, _env(server, optuna_db), "--workers", "2")
    try:
        victim, worker_pid = _frozen_running_trial(
            optuna_db, time.time() + 300, slow["tune.families"]
        )
        os.kill(worker_pid, signal.SIGKILL)
        out = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert "exited with signal 9" in out
    study = _study(optuna_db)
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL and killed.user_attrs.get("interrupted") is True
    # The other worker ran its parameters again and the budget is whole.
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE, [
        (t.number, t.state.name, t.params, t.user_attrs) for t in study.trials
    ]
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == slow["tune.n_trials"]
    report = json.loads((project / "reports/tune.json").read_text())
    assert sum(len(w["trials"]) for w in report["workers"]) == len(study.trials)
    _check_one_run_per_trial(server, report, study)


def test_a_tracking_server_restart_mid_search_loses_no_trial(tmp_path, team_server, optuna_db, pg):
    from mlplatform.team.server import start

    overrides = {
        "tune.n_trials": 8,
        "tune.fidelity.rungs": [1.0],  # whole trials: these tests count COMPLETE ones
        "tune.families": {
            "xgboost": {
                "n_estimators": {"low": 200, "high": 400, "step": 100},
                "max_depth": {"low": 3, "high": 6},
                "learning_rate": {"low": 0.01, "high": 0.1, "log": True},
            }
        },
    }
    (project,) = _machines(tmp_path, "workers-restart", overrides, n=1)
    with team_server(tmp_path / "srv") as srv:
        env = _env(srv, optuna_db)
        proc = _tune(project, env, "--workers", "2")
        again = None
        try:
            _running_trial(optuna_db, time.time() + 300)
            srv.stop()
            down = time.time()
            time.sleep(3)  # trials finish while the server is down
            again = start(srv.settings, env={**os.environ}, log_path=tmp_path / "srv2.txt")
            up = time.time()
            print(_finish(proc)[-3000:])
            study = _study(optuna_db)
            ended = [t.datetime_complete.timestamp() for t in study.trials]
            assert any(down <= t <= up for t in ended), "no trial ended while the server was down"
            assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 8
            report = json.loads((project / "reports/tune.json").read_text())
            _check_one_run_per_trial(again, report, study)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            if again is not None:
                again.stop()


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["single", "workers"])
def test_postgresql_refusing_the_study_storage_is_one_masked_line(tmp_path, server, workers):
    (project,) = _machines(tmp_path, "workers-refused", n=1)
    uri = "postgresql://team:hunter2-secret@127.0.0.1:1/optuna"
    proc = run_cli(project, "tune", *workers, check=False, env=_env(server, uri), timeout=300)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "postgresql://team:***@127.0.0.1:1/optuna" in lines[0]
    assert "cannot connect" in lines[0]
    assert "hunter2" not in proc.stderr + proc.stdout
