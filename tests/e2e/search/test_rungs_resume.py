"""A search with rungs killed (SIGKILL) in the middle of a rung resumes without refitting the
rungs it had finished; the MLflow runs show each trial's rungs; train refits on all rows."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml

from support.project import CLI, cli_env, client_for, run_cli, run_stages, write_project

pytestmark = pytest.mark.e2e

RUNNING = optuna.trial.TrialState.RUNNING


def _trials(project: Path) -> list:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = project / ".mlplatform/optuna.journal"
    if not journal.exists():
        return []
    try:
        storage = JournalStorage(JournalFileBackend(str(journal)))
        studies = optuna.get_all_study_summaries(storage)
        if not studies:
            return []
        return optuna.load_study(study_name=studies[0].study_name, storage=storage).trials
    except Exception:  # the file is being written; try again
        return []


def test_kill_mid_rung_resumes_without_repeating_rungs(tmp_path):
    project = write_project(
        tmp_path / "rungs",
        {
            "tune.n_trials": 6,
            "tune.fidelity.min_rows": 100,
            # Forests only, big enough that a rung takes a moment to kill it in.
            "tune.families": {
                "random_forest": {
                    "n_estimators": {"low": 250, "high": 400, "step": 50},
                    "max_depth": {"low": 4, "high": 12},
                }
            },
        },
    )
    run_stages(project, "ingest", "prepare")
    proc = subprocess.Popen(
        [str(CLI), "tune"],
        cwd=project,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed, kept = None, None
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            for t in _trials(project):
                records = t.user_attrs.get("rungs", [])
                # Rung 0 finished, rung 1 being fitted: kill it there.
                if t.state == RUNNING and len(records) == 1 and t.number >= 1:
                    proc.send_signal(signal.SIGKILL)
                    killed, kept = t.number, records
                    break
            if killed is not None:
                break
            time.sleep(0.01)
    finally:
        proc.wait(timeout=30)
    assert killed is not None, "the search ended before a rung could be killed"
    killed_at = time.time()

    run_cli(project, "tune")  # resumes the same study

    trials = _trials(project)
    dead = trials[killed]
    assert dead.state == optuna.trial.TrialState.FAIL and dead.user_attrs["interrupted"]
    # What the dead trial had recorded is all there is: maybe one more rung got recorded
    # between our read and the kill.
    recorded = dead.user_attrs["rungs"]
    assert recorded[: len(kept)] == kept
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == killed]
    assert retry.params == dead.params
    n_reused = len(recorded)
    assert retry.user_attrs["reused_rungs"] == list(range(n_reused))
    records = retry.user_attrs["rungs"]
    # The finished rungs were taken as they were (same timings), not fitted again...
    assert records[:n_reused] == recorded
    assert all(r["finished_at"] < killed_at for r in records[:n_reused])
    # ...and the rest were fitted by the resumed run.
    assert all(r["finished_at"] > killed_at for r in records[n_reused:])
    for r in recorded:
        assert retry.intermediate_values[r["rows"]] == r["value"]

    # The MLflow view: rungs as steps (rows), rows as a param, pruned trials tagged.
    client = client_for(project)
    tuned = json.loads((project / "reports/tune.json").read_text())
    exp = client.get_experiment_by_name(
        yaml.safe_load((project / "params.yaml").read_text())["mlflow"]["experiment"]
    )
    children = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{tuned['parent_run_id']}'"
    )
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    assert sorted(by_number) == [t.number for t in trials]
    assert by_number[killed].info.status == "KILLED"
    assert by_number[retry.number].data.tags["reused_rungs"] == ",".join(
        str(i) for i in range(n_reused)
    )
    for t in trials:
        if not t.intermediate_values:
            continue
        run = by_number[t.number]
        history = client.get_metric_history(run.info.run_id, "intermediate_average_precision")
        assert sorted((m.step, m.value) for m in history) == sorted(t.intermediate_values.items())
        assert run.data.params["rows"] == str(max(t.intermediate_values))
        if t.state == optuna.trial.TrialState.PRUNED:
            assert run.data.tags["pruned_at_rung"] == str(len(t.intermediate_values) - 1)

    # The best trial reached all rows, and the train stage's refit on all rows reproduces it.
    best = trials[tuned["best"]["number"]]
    train_rows = max(max(t.intermediate_values) for t in trials if t.intermediate_values)
    assert max(best.intermediate_values) == train_rows
    run_stages(project, "train")
    trained = json.loads((project / "reports/train.json").read_text())
    assert trained["valid_metrics"]["average_precision"] == pytest.approx(best.value, abs=1e-12)
