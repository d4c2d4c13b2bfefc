"""MLflow plumbing: batched run writes, dvc.lock hashes, lineage tags."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
import yaml
from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH
from mlflow_store import new_client

from conftest import make_params
from mlplatform import io, tracking, trial_runs
from mlplatform.config import Paths, parse_params
from mlplatform.io import file_md5
from mlplatform.trial_runs import RunRecord, write_run

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


def write_lock(root: Path) -> None:
    lock = {
        "schema": "2.0",
        "stages": {
            "ingest": {
                "cmd": "mlplatform ingest",
                "deps": [{"path": "params.yaml", "md5": "p" * 32, "size": 10}],
                "outs": [{"path": "data/raw", "md5": "a" * 32 + ".dir", "nfiles": 2}],
            },
            "prepare": {
                "cmd": "mlplatform prepare",
                "deps": [{"path": "data/raw", "md5": "a" * 32 + ".dir"}],
                "outs": [
                    {"path": "data/prepared", "md5": "b" * 32 + ".dir", "nfiles": 4},
                    {"path": "reports/data_summary.json", "md5": "c" * 32},
                ],
            },
            "empty": {"cmd": "true"},
        },
    }
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))


def test_dvc_lock_hashes(tmp_path):
    write_lock(tmp_path)
    found = tracking.dvc_lock_hashes(
        tmp_path,
        [tmp_path / "data" / "prepared", Path("reports/data_summary.json"), "data/raw", "nope"],
    )
    assert found == {
        "data/prepared": "b" * 32 + ".dir",
        "reports/data_summary.json": "c" * 32,
        "data/raw": "a" * 32 + ".dir",
    }


def test_dvc_lock_hashes_without_lock_or_with_bad_yaml(tmp_path):
    assert tracking.dvc_lock_hashes(tmp_path, ["data/prepared"]) == {}
    (tmp_path / "dvc.lock").write_text("stages: [unclosed\n")
    assert tracking.dvc_lock_hashes(tmp_path, ["data/prepared"]) == {}


# --------------------------------------------------------------------------------------
# lineage


def test_lineage_tags(tmp_path):
    params = parse_params(make_params({"seed": 1234}))
    paths = Paths(tmp_path)
    paths.prepared.mkdir(parents=True)
    train, valid = paths.split("train"), paths.split("validation")
    train.write_bytes(b"train bytes")
    valid.write_bytes(b"validation bytes, different")
    write_lock(tmp_path)
    tags = tracking.lineage(
        params, paths, {"train": train, "validation": valid, "absent": tmp_path / "nope.parquet"}
    )
    assert tags["mlplatform.data.train.md5"] == file_md5(train)
    assert tags["mlplatform.data.validation.md5"] == file_md5(valid)
    assert tags["mlplatform.data.train.md5"] != tags["mlplatform.data.validation.md5"]
    assert "mlplatform.data.absent.md5" not in tags
    assert tags["mlplatform.params_hash"] == params.section_hash()
    assert len(tags["mlplatform.params_hash"]) == 16
    assert tags["mlplatform.seed"] == "1234"
    assert tags["mlplatform.data_source"] == params.data.source
    assert tags["lib.mlflow"] == metadata.version("mlflow")
    assert tags["lib.optuna"] == metadata.version("optuna")
    assert tags["dvc.lock.data/prepared"] == "b" * 32 + ".dir"
    assert all(isinstance(v, str) for v in tags.values())


def test_params_hash_changes_with_params():
    a = parse_params(make_params({"seed": 1}))
    b = parse_params(make_params({"seed": 2}))
    assert a.section_hash() != b.section_hash()
    assert a.section_hash("tune") == b.section_hash("tune")
    assert io.digest({"x": 1, "y": 2}) == io.digest({"y": 2, "x": 1})
