"""The store check: DVC re-runs exactly the stages whose MLflow records the store lacks."""

from __future__ import annotations

import json

import pytest

from mlplatform.config import Paths, load_params
from mlplatform.io import write_json
from mlplatform.tracking import store
from support.mlflow_store import new_client
from support.project import write_project


@pytest.fixture
def project(tmp_path, monkeypatch):
    import mlplatform

    monkeypatch.setattr(mlplatform, "USER_TRACKING_URI", None)
    monkeypatch.setattr(mlplatform, "USER_REGISTRY_URI", None)
    monkeypatch.chdir(tmp_path)
    client = new_client(tmp_path)
    write_project(tmp_path, {"mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    params = load_params(tmp_path / "params.yaml")
    return params, Paths(tmp_path), client


def ids(paths: Paths) -> dict[str, str]:
    return {s: store.identity_file(paths, s).read_text() for s in store.CHECKS}


def test_a_new_store_gets_an_identity_and_keeps_it(project):
    params, paths, _ = project
    first = store.run(params, paths)
    before = ids(paths)
    assert set(first["renewed"]) == set(store.CHECKS)  # every stage must run on a new store
    again = store.run(params, paths)
    assert again["renewed"] == [] and again["missing"] == []
    assert ids(paths) == before  # byte for byte: DVC skips
    assert json.loads(before["tune"])["store_id"] == json.loads(before["train"])["store_id"]


def test_another_store_changes_every_identity(project, tmp_path):
    params, paths, _ = project
    store.run(params, paths)
    before = ids(paths)
    # Another store: a new database at the same place, or MLFLOW_TRACKING_URI elsewhere.
    new_client(tmp_path, "other.db")
    other = params.model_copy(
        update={
            "mlflow": params.mlflow.model_copy(
                update={"tracking_uri": f"sqlite:///{tmp_path / 'other.db'}"}
            )
        }
    )
    store.run(other, paths)
    after = ids(paths)
    assert all(after[s] != before[s] for s in store.CHECKS)


def test_only_the_stage_whose_records_are_missing_is_renewed(project):
    params, paths, client = project
    exp_id = store.run(params, paths)["experiment_id"]
    parent = client.create_run(exp_id)
    client.set_terminated(parent.info.run_id)
    child = client.create_run(exp_id, tags={"mlflow.parentRunId": parent.info.run_id})
    client.set_terminated(child.info.run_id)
    write_json(
        paths.tune_report,
        {"parent_run_id": parent.info.run_id, "trials": {"complete": 1, "pruned": 0}},
    )
    write_json(paths.train_report, {"run_id": "0" * 32})  # a run from another store
    store.run(params, paths)  # the first check after the reports appeared
    before = ids(paths)
    out = store.run(params, paths)
    assert out["missing"] == ["train"]
    after = ids(paths)
    assert after["train"] != before["train"]
    assert after["tune"] == before["tune"]  # its parent and child runs are here

    # A search whose trial runs are not all in the store counts as missing too.
    write_json(
        paths.tune_report,
        {"parent_run_id": parent.info.run_id, "trials": {"complete": 2, "pruned": 0}},
    )
    assert "tune" in store.run(params, paths)["missing"]


def test_an_unreadable_report_means_run_again(project):
    params, paths, _ = project
    store.run(params, paths)
    paths.registration.parent.mkdir(parents=True, exist_ok=True)
    paths.registration.write_text("{not json")
    assert store.run(params, paths)["missing"] == ["register"]
