"""Trial runs: each written in a few batched calls."""

from __future__ import annotations

import pytest
from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH

from mlplatform.search import trial_runs
from mlplatform.search.trial_runs import RunRecord, write_run
from support.mlflow_store import new_client

START = 1_700_000_000_000
END = START + 4_321


@pytest.fixture
def store(tmp_path):
    client = new_client(tmp_path)
    return client, client.create_experiment("exp")


def test_write_run_writes_everything(store):
    client, exp_id = store
    rec = RunRecord(
        experiment_id=exp_id,
        run_name="trial-003-xgboost",
        start_ms=START,
        end_ms=END,
        status="KILLED",
        params={"family": "xgboost", "max_depth": 4, "note": "x" * 7000},
        metrics={"valid_roc_auc": 0.81, "duration_s": 4.321, "bad": float("nan")},
        step_metrics=[("intermediate_ap", 0.5, 25), ("intermediate_ap", 0.62, 50)],
        tags={"family": "xgboost", "trial_state": "KILLED"},
    )
    run_id = write_run(client, rec)
    run = client.get_run(run_id)
    assert run.info.experiment_id == exp_id
    assert run.info.run_name == "trial-003-xgboost"
    assert run.info.status == "KILLED"
    assert run.info.start_time == START
    assert run.info.end_time == END
    assert run.data.params["family"] == "xgboost"
    assert run.data.params["max_depth"] == "4"
    assert run.data.params["note"] == "x" * trial_runs.MAX_PARAM_LEN  # cut to fit MLflow
    assert run.data.metrics == {
        "valid_roc_auc": 0.81,
        "duration_s": 4.321,
        "intermediate_ap": 0.62,  # latest step
    }
    assert run.data.tags["family"] == "xgboost"
    assert run.data.tags["trial_state"] == "KILLED"
    assert run.data.tags["mlplatform.written"] == "batched"
    history = client.get_metric_history(run_id, "intermediate_ap")
    assert sorted((m.step, m.value, m.timestamp) for m in history) == [
        (25, 0.5, END),
        (50, 0.62, END),
    ]
    (auc,) = client.get_metric_history(run_id, "valid_roc_auc")
    assert (auc.step, auc.timestamp) == (0, END)
    assert client.get_metric_history(run_id, "bad") == []  # non-finite values are skipped


def test_write_run_more_entities_than_one_batch(store):
    client, exp_id = store
    n_params, n_metrics, n_steps = 150, 700, 400
    assert n_params + n_metrics + n_steps > MAX_ENTITIES_PER_BATCH
    rec = RunRecord(
        experiment_id=exp_id,
        run_name="big",
        start_ms=START,
        end_ms=END,
        status="FINISHED",
        params={f"p{i}": i for i in range(n_params)},
        metrics={f"m{i}": float(i) for i in range(n_metrics)},
        step_metrics=[("curve", i / 1000, i) for i in range(n_steps)],
    )
    run_id = write_run(client, rec)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {f"p{i}": str(i) for i in range(n_params)}
    assert {k: v for k, v in run.data.metrics.items() if k != "curve"} == {
        f"m{i}": float(i) for i in range(n_metrics)
    }
    history = client.get_metric_history(run_id, "curve")
    assert sorted(m.step for m in history) == list(range(n_steps))
    assert run.data.metrics["curve"] == (n_steps - 1) / 1000


# --------------------------------------------------------------------------------------
# dvc.lock
