"""The ingest and prepare stages end to end, through the CLI, in a fresh project folder."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlplatform.data import datasets
from support.project import ROOT

_DEFAULT_RAW = yaml.safe_load((ROOT / "params.yaml").read_text())
MLPLATFORM = Path(sys.executable).parent / "mlplatform"
SPLITS = ("train", "validation", "test")
OUTPUTS = (
    *(f"data/prepared/{s}.parquet" for s in SPLITS),
    "data/prepared/schema.json",
    "reports/data_summary.json",
    "data/raw/dataset.parquet",
    "data/raw/source.json",
)

FRAUD_DATA = {
    "source": "synthetic_fraud",
    "rows": 200_000,
    "target": "Class",
    "positive_class": 1,
    "sensitive_features": [],
    "slice_columns": [],
    "time_column": "Time",
}

pytestmark = pytest.mark.e2e


def run_stages(workdir: Path, **data) -> Path:
    """Write params.yaml (defaults + data overrides) into workdir; run ingest then prepare."""
    workdir.mkdir(parents=True, exist_ok=True)
    raw = copy.deepcopy(_DEFAULT_RAW)
    raw["data"].update(data)
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PATH": f"{MLPLATFORM.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for stage in ("ingest", "prepare"):
        result = subprocess.run(
            [str(MLPLATFORM), stage, "--params", "params.yaml"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"{stage} failed:\n{result.stderr}"
        assert "Traceback" not in result.stderr
    return workdir


def read_json(path: Path):
    return json.loads(path.read_text())


def read_splits(workdir: Path) -> dict[str, pd.DataFrame]:
    return {s: pd.read_parquet(workdir / "data" / "prepared" / f"{s}.parquet") for s in SPLITS}


@pytest.fixture(scope="module")
def hmda_project(tmp_path_factory) -> Path:
    """A project folder after `mlplatform ingest` and `mlplatform prepare` on the defaults."""
    return run_stages(tmp_path_factory.mktemp("hmda"))


@pytest.fixture(scope="module")
def fraud_project(tmp_path_factory) -> Path:
    return run_stages(tmp_path_factory.mktemp("fraud"), **FRAUD_DATA)


# --------------------------------------------------------------------------------------
# Default built-in data (hmda)


def test_hmda_outputs_exist(hmda_project):
    for rel in OUTPUTS:
        assert (hmda_project / rel).is_file(), rel


def test_hmda_raw_provenance(hmda_project):
    source = read_json(hmda_project / "data" / "raw" / "source.json")
    assert source["kind"] == "builtin"
    assert source["name"] == "hmda"
    assert source["rows"] == 2380
    assert "deny" in source["columns"]
    raw = pd.read_parquet(hmda_project / "data" / "raw" / "dataset.parquet")
    assert raw.shape == (2380, len(source["columns"]))


def test_hmda_rows_add_up(hmda_project):
    summary = read_json(hmda_project / "reports" / "data_summary.json")
    rows = summary["rows"]
    assert rows["raw"] == 2380
    assert rows["used"] == rows["raw"] - summary["duplicates_removed"]
    assert rows["train"] + rows["validation"] + rows["test"] == rows["used"]
    assert rows["train"] == pytest.approx(0.6 * rows["used"], abs=2)
    assert rows["validation"] == pytest.approx(0.2 * rows["used"], abs=2)
    splits = read_splits(hmda_project)
    assert {s: len(f) for s, f in splits.items()} == {s: rows[s] for s in SPLITS}
    combined = pd.concat(splits.values(), ignore_index=True)
    assert not combined.duplicated().any()


def test_hmda_schema(hmda_project):
    schema = read_json(hmda_project / "data" / "prepared" / "schema.json")
    assert schema["target"] == "deny"
    assert schema["task"] == "binary"
    assert schema["classes"] == ["no", "yes"]
    assert schema["positive_class"] == "yes"
    assert schema["sensitive_features"] == ["afam"]
    assert schema["slice_columns"] == ["single", "selfemp"]
    assert schema["source"] == "built-in dataset 'hmda'"
    names = [f["name"] for f in schema["features"]]
    assert "deny" not in names
    assert "afam" not in names  # kept for the fairness audit only
    assert {"single", "selfemp", "pirat"} <= set(names)
    kinds = {f["name"]: f["kind"] for f in schema["features"]}
    assert kinds["pirat"] == "numeric"
    assert kinds["single"] == "boolean"


def test_hmda_split_is_stratified(hmda_project):
    summary = read_json(hmda_project / "reports" / "data_summary.json")
    rates = summary["positive_rate"]
    assert set(rates) == set(SPLITS)
    for rate in rates.values():
        assert rate == pytest.approx(0.12, abs=0.01)
    for name, frame in read_splits(hmda_project).items():
        assert (frame["deny"] == "yes").mean() == pytest.approx(rates[name], abs=1e-6)
        assert "afam" in frame.columns


def test_two_fresh_runs_are_byte_identical(hmda_project, tmp_path):
    again = run_stages(tmp_path / "again")
    for rel in OUTPUTS:
        first = (hmda_project / rel).read_bytes()
        second = (again / rel).read_bytes()
        assert first == second, f"{rel} differs between two runs"


# --------------------------------------------------------------------------------------
# A user's CSV file


def test_csv_source_file(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame(
        {
            "income": rng.normal(50, 10, n).round(2),
            "region": rng.choice(["north", "south", "east"], n),
            "owner": rng.choice(["Y", "N"], n),
            "opened": pd.date_range("2020-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
            "default": rng.choice(["good", "bad"], n, p=[0.8, 0.2]),
        }
    )
    sources = tmp_path / "data" / "sources"
    sources.mkdir(parents=True)
    frame.to_csv(sources / "loans.csv", index=False)
    run_stages(
        tmp_path,
        source="data/sources/loans.csv",
        target="default",
        positive_class="bad",
        sensitive_features=[],
        slice_columns=["region"],
    )
    provenance = read_json(tmp_path / "data" / "raw" / "source.json")
    assert provenance["kind"] == "file"
    assert len(provenance["md5"]) == 32
    schema = read_json(tmp_path / "data" / "prepared" / "schema.json")
    assert schema["classes"] == ["good", "bad"]
    assert schema["source"] == "data/sources/loans.csv"
    kinds = {f["name"]: f["kind"] for f in schema["features"]}
    assert kinds == {
        "income": "numeric",
        "region": "categorical",
        "owner": "boolean",
        "opened": "datetime",
    }
    summary = read_json(tmp_path / "reports" / "data_summary.json")
    assert summary["rows"]["used"] == n


# --------------------------------------------------------------------------------------
# Synthetic fraud data split by time


def test_fraud_outputs_and_rows(fraud_project):
    for rel in OUTPUTS:
        assert (fraud_project / rel).is_file(), rel
    summary = read_json(fraud_project / "reports" / "data_summary.json")
    rows = summary["rows"]
    assert rows["raw"] == 200_000
    assert rows["train"] + rows["validation"] + rows["test"] == rows["used"]
    # The cut moves past rows that share the boundary timestamp, so allow a few rows.
    assert abs(rows["train"] - round(0.6 * rows["used"])) <= 10
    schema = read_json(fraud_project / "data" / "prepared" / "schema.json")
    assert schema["classes"] == [0, 1]
    assert schema["positive_class"] == 1
    assert schema["time_column"] == "Time"
    names = [f["name"] for f in schema["features"]]
    assert "Time" not in names
    assert "Class" not in names
    assert len(names) == 29  # V1..V28 and Amount


def test_fraud_positive_rate_is_about_two_per_mille(fraud_project):
    splits = read_splits(fraud_project)
    everything = pd.concat(splits.values(), ignore_index=True)
    assert everything["Class"].mean() == pytest.approx(0.002, abs=0.0005)
    summary = read_json(fraud_project / "reports" / "data_summary.json")
    for name, rate in summary["positive_rate"].items():
        assert 0.001 < rate < 0.0035, name


def test_fraud_train_times_precede_test_times(fraud_project):
    splits = read_splits(fraud_project)
    train, valid, test = (splits[s]["Time"] for s in SPLITS)
    # Rows sharing a timestamp never straddle a cut.
    assert train.max() < valid.min()
    assert valid.max() < test.min()
    summary = read_json(fraud_project / "reports" / "data_summary.json")
    assert set(summary["time_range"]) == set(SPLITS)


# --------------------------------------------------------------------------------------
# The generator at scale


def test_synthetic_fraud_million_rows():
    start = time.perf_counter()
    frame = datasets.synthetic_fraud(1_000_000, seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 60
    assert frame.shape == (1_000_000, 31)
    assert list(frame.columns) == [*(f"V{i}" for i in range(1, 29)), "Amount", "Time", "Class"]
    assert frame["Class"].mean() == pytest.approx(0.002, abs=0.0003)
    assert frame["Time"].is_monotonic_increasing
    assert frame["Time"].between(0, 172_800).all()
    assert (frame["Amount"] > 0).all()
    assert not frame.isna().any().any()


def test_synthetic_fraud_is_seeded():
    a = datasets.synthetic_fraud(5_000, seed=1)
    b = datasets.synthetic_fraud(5_000, seed=1)
    c = datasets.synthetic_fraud(5_000, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)
