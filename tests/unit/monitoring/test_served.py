"""The served model's side of the prediction log: identity, request ids, logging at predict."""

from __future__ import annotations

import json
import shutil

import mlflow
import pandas as pd
import pytest

from mlplatform import model_format
from mlplatform.monitoring import prediction_log as pl
from mlplatform.monitoring import served
from support.project import ROOT

LEGACY = ROOT / "tests" / "fixtures" / "model_v0_1_0"
EXPECTED = json.loads((ROOT / "tests" / "fixtures" / "model_v0_1_0_expected.json").read_text())


@pytest.fixture
def fresh_log(monkeypatch):
    """This process's log unconfigured (read from the environment again), closed afterwards."""
    monkeypatch.setattr(pl, "_configured", False)
    monkeypatch.setattr(pl, "_process_log", None)
    monkeypatch.delenv(pl.ENV_URL, raising=False)
    monkeypatch.delenv(served.ENV_NAME, raising=False)
    monkeypatch.delenv(served.ENV_VERSION, raising=False)
    yield
    if pl._process_log is not None:
        pl._process_log.close()


def test_identity_reads_registered_meta_and_mlmodel(tmp_path, monkeypatch):
    monkeypatch.delenv(served.ENV_NAME, raising=False)
    monkeypatch.delenv(served.ENV_VERSION, raising=False)
    folder = tmp_path / "m"
    shutil.copytree(LEGACY, folder)
    # As logged: registered_model_meta holds nulls; the MLmodel file names the model id.
    assert served.identity(folder) == {
        "model_name": None,
        "model_version": None,
        "model_id": "m-257e4db2affa4ae8b8c3b5765ae15edb",
    }
    # As `mlflow models serve -m models:/credit-risk/3` downloads it.
    (folder / "registered_model_meta").write_text("model_name: credit-risk\nmodel_version: '3'\n")
    assert served.identity(folder)["model_name"] == "credit-risk"
    assert served.identity(folder)["model_version"] == "3"
    monkeypatch.setenv(served.ENV_NAME, "other")
    monkeypatch.setenv(served.ENV_VERSION, "7")
    assert served.identity(folder)["model_name"] == "other"
    assert served.identity(folder)["model_version"] == "7"
    assert served.identity(None)["model_id"] is None
    data = folder / "data" / "mlplatform_model"
    assert served.model_dir_of(data) == folder
    assert served.model_dir_of(tmp_path) is None


def test_split_ids_takes_the_column_out_and_fills_empty_ones():
    frame = pd.DataFrame({"a": [1, 2, 3], "request_id": ["x", None, " "]})
    rest, ids = served.split_ids(frame)
    assert list(rest.columns) == ["a"] and ids[0] == "x"
    assert all(len(i) == 32 for i in ids[1:]) and ids[1] != ids[2]
    same, none = served.split_ids(frame[["a"]])
    assert none is None and same is not None and list(same.columns) == ["a"]


def test_log_at_load_is_off_without_the_variable_and_refuses_a_bad_one(fresh_log, monkeypatch):
    from mlplatform.errors import ConfigError

    assert served.log_at_load() is None
    monkeypatch.setenv(pl.ENV_URL, "off")
    assert served.log_at_load() is None
    monkeypatch.setattr(pl, "_configured", False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(pl.ENV_URL, "on")  # beside MLflow's default store: ./predictions.db
    assert served.log_at_load().url == "sqlite:///predictions.db"
    pl._process_log.close()
    monkeypatch.setattr(pl, "_configured", False)
    monkeypatch.setenv(pl.ENV_URL, "not a url")
    with pytest.raises(ConfigError, match="MLPLATFORM_PREDICTION_LOG"):
        served.log_at_load()


def test_a_model_of_the_earlier_release_logs_every_row_with_its_identity(
    fresh_log, monkeypatch, tmp_path
):
    """mlflow's loader (what `mlflow models serve` calls) turns the log on from the
    environment; rows, ids, classes, probabilities, version and latency are written."""
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    monkeypatch.setenv(pl.ENV_URL, url)
    monkeypatch.setenv(served.ENV_NAME, "credit-risk")
    monkeypatch.setenv(served.ENV_VERSION, "4")
    model = mlflow.pyfunc.load_model(str(LEGACY))
    impl = model._model_impl
    assert impl.prediction_log is not None
    rows = pd.DataFrame(EXPECTED["inputs"]).head(5)
    # Its signature names every column and MLflow drops any other: the client's ids never
    # reach it, so the request gets one new id (documented in monitoring/served.py).
    out = model.predict(rows.assign(request_id=[f"r{i}" for i in range(5)]))
    assert out["request_id"].nunique() == 1 and len(out["request_id"][0]) == 32
    assert out["prediction"].tolist() == [r["prediction"] for r in EXPECTED["expected"][:5]]
    monkeypatch.setenv(model_format._SERVING_ENV, "true")
    answer = model.predict(rows.head(2))  # no ids given: one new id for the request
    assert answer[0]["request_id"] == answer[1]["request_id"]
    assert impl.prediction_log.flush(timeout=30)
    logged = pl.read_window(url)
    assert len(logged) == 7
    assert logged["request_id"].tolist()[:5] == out["request_id"].tolist()
    assert logged["request_id"].tolist()[5:] == [answer[0]["request_id"]] * 2
    assert logged["row"].tolist() == [0, 1, 2, 3, 4, 0, 1]
    assert set(logged["model_name"]) == {"credit-risk"} and set(logged["model_version"]) == {"4"}
    assert set(logged["model_id"]) == {"m-257e4db2affa4ae8b8c3b5765ae15edb"}
    assert set(logged["source"]) == {"serve"} and (logged["latency_ms"] > 0).all()
    assert "request_id_input" not in logged.columns  # the id is not logged as an input
    assert logged["pirat"].tolist()[:5] == pytest.approx(rows["pirat"].tolist())
    assert logged["probability_yes"].tolist()[:5] == pytest.approx(
        [r["probability_yes"] for r in EXPECTED["expected"][:5]]
    )


def test_the_pipelines_own_loader_does_not_log(fresh_log, monkeypatch, tmp_path):
    monkeypatch.setenv(pl.ENV_URL, f"sqlite:///{tmp_path / 'p.db'}")
    model = model_format.load_pyfunc(LEGACY)
    assert model._model_impl.prediction_log is None
