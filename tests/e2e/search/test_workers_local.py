"""Parallel workers on one machine with the local journal storage and sqlite MLflow store:
stopped with SIGTERM mid-search, then resumed to exactly n_trials with one run per trial."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from support.project import CLI, cli_env, client_for, run_cli, run_stages, write_project

pytestmark = pytest.mark.e2e

N_TRIALS = 6


def _trials(project) -> list:
    journal = project / ".mlplatform/optuna.journal"
    if not journal.exists():
        return []
    try:
        storage = JournalStorage(JournalFileBackend(str(journal)))
        studies = optuna.get_all_study_summaries(storage)
        if not studies:
            return []
        return optuna.load_study(study_name=studies[0].study_name, storage=storage).trials
    except Exception:  # being written; try again
        return []


def test_stopped_workers_resume_to_exactly_n_trials(tmp_path):
    project = write_project(
        tmp_path / "local-workers",
        {
            "tune.n_trials": N_TRIALS,
            "tune.fidelity.rungs": [1.0],  # whole trials: these tests count COMPLETE ones
            "tune.pruner.enabled": False,
            "tune.families": {
                "xgboost": {
                    "n_estimators": {"low": 300, "high": 600, "step": 100},
                    "max_depth": {"low": 4, "high": 8},
                    "learning_rate": {"low": 0.01, "high": 0.1, "log": True},
                }
            },
        },
    )
    run_stages(project, "ingest", "prepare")
    proc = subprocess.Popen(
        [str(CLI), "tune", "--workers", "2"],
        cwd=project,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stopped = False
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            trials = _trials(project)
            if sum(t.state.is_finished() for t in trials) >= 1 and any(
                t.state == TrialState.RUNNING for t in trials
            ):
                proc.send_signal(signal.SIGTERM)
                stopped = True
                break
            time.sleep(0.1)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert stopped, "the search ended before it could be stopped"
    assert proc.returncode != 0
    assert "search interrupted; run the same command again" in err
    trials = _trials(project)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    assert interrupted and all(t.state == TrialState.FAIL for t in interrupted)

    resumed = run_cli(project, "tune", "--workers", "2")

    trials = _trials(project)
    seen = [(t.number, t.state.name, t.user_attrs) for t in trials]
    why = f"{seen}\nstopped:\n{err[-3000:]}\nresumed:\n{resumed.stderr[-3000:]}"
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], why
    counted = [t for t in trials if not t.user_attrs.get("interrupted")]
    assert len(counted) == N_TRIALS, why
    assert all(t.state == TrialState.COMPLETE for t in counted), why
    for t in interrupted:  # each stopped trial's parameters were run again, once
        retries = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
        # A trial stopped before its last suggest queued what it had; the rest is drawn.
        assert len(retries) == 1 and retries[0].params.items() >= t.params.items()
    client = client_for(project)
    report = json.loads((project / "reports/tune.json").read_text())
    assert client.get_run(report["parent_run_id"]).info.status == "FINISHED"
    children = client.search_runs(
        [report["experiment_id"]], f"tags.mlflow.parentRunId = '{report['parent_run_id']}'"
    )
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in children)
    assert numbers == [t.number for t in trials]
    killed = {r.data.tags["optuna.trial_number"] for r in children if r.info.status == "KILLED"}
    assert killed == {str(t.number) for t in interrupted}
    assert not client.search_runs([report["experiment_id"]], "attributes.status = 'RUNNING'")
