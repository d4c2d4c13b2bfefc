"""Monitoring end to end: a real `mlflow models serve` with the prediction log on, late
labels, `mlplatform monitor` on the log and on the demo batches, the report in chromium."""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from mlplatform.cli import STAGES
from mlplatform.monitoring import prediction_log as pl
from mlplatform.monitoring.browser import check_page, find_chromium
from support.project import ROOT, client_for, run_cli, run_stages, tracking_uri, write_project
from support.serving import post, served

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    folder = write_project(tmp_path_factory.mktemp("monitoring"))
    run_stages(folder, *STAGES)
    run_cli(folder, "demo-batches")
    return folder


def _log_url(project: Path) -> str:
    return f"sqlite:///{project / 'predictions.db'}"


def _wait_rows(url: str, n: int, timeout: float = 30, **filters) -> pd.DataFrame:
    deadline = time.time() + timeout
    while True:
        try:
            frame = pl.read_window(url, **filters)
        except pl.PredictionLogError:
            frame = pd.DataFrame()
        if len(frame) >= n or time.time() > deadline:
            return frame
        time.sleep(0.3)


def _monitor(project: Path, *args: str, check: bool = True):
    proc = run_cli(project, "monitor", *args, check=check)
    return proc, json.loads((project / "reports/monitoring/monitor.json").read_text())


def test_the_reference_stage_keeps_the_shap_ranking(project):
    ref = json.loads((project / "models/reference.json").read_text())
    explain = json.loads((project / "reports/explain/summary.json").read_text())
    top = explain["all_features"][0]["feature"]
    assert max(ref["importance"], key=ref["importance"].get) == top
    assert ref["positive_class"] == "yes" and ref["labelled_scores"]["n"] > 100


def test_demo_batches_end_in_both_verdicts(project):
    proc, later = _monitor(project, "--current", "data/demo/later.csv", "--strict")
    assert later["verdict"] == "no_drift" and not later["retraining_recommended"]
    assert "verdict no_drift" in proc.stdout
    perf = later["performance"]
    assert perf["labelled_rows"] == later["window"]["n_rows"]  # the file's target column
    proc, shifted = _monitor(project, "--current", "data/demo/shifted.csv", "--strict", check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert shifted["verdict"] == "drift" and shifted["retraining_recommended"]
    how = json.loads((project / "data/demo/demo_shift.json").read_text())["shift"]
    for name in how["moved_up_one_sd"]:
        feat = shifted["features"][name]
        assert feat["drifted"] and feat["test"] and feat["p_value"] < 0.05 and feat["psi"] > 0.2
    # The run is linked to the version it monitored, and the version to the run.
    client = client_for(project)
    run = client.get_run(shifted["outputs"]["mlflow_run_id"])
    assert run.data.tags["mlplatform.monitored_model"] == "credit-risk"
    assert run.data.tags["mlplatform.monitored_version"] == "1"
    assert run.data.tags["mlplatform.verdict"] == "drift"
    names = {a.path for a in client.list_artifacts(run.info.run_id, "monitoring")}
    assert names == {"monitoring/monitor.json", "monitoring/monitor.html"}
    version = client.get_model_version("credit-risk", "1")
    assert version.tags["mlplatform.monitor.last_run"] == run.info.run_id


def test_served_model_logs_feedback_joins_and_monitor_reads_the_log(project, tmp_path):
    url = _log_url(project)
    env = {"MLFLOW_TRACKING_URI": tracking_uri(project), "MLPLATFORM_PREDICTION_LOG": "on"}
    body = (project / "data/demo/later_requests.json").read_text()
    n = len(json.loads(body)["dataframe_split"]["data"])
    with served("models:/credit-risk@champion", project, env) as port:
        status, text = post(port, body)
        assert status == 200, text
        answers = json.loads(text)["predictions"]
        assert [a["request_id"] for a in answers] == [f"later-{i}" for i in range(n)]
        one = json.loads(body)["dataframe_split"]
        columns = [c for c in one["columns"] if c != "request_id"]
        record = {c: v for c, v in zip(one["columns"], one["data"][0], strict=True)}
        plain = {"inputs": [{c: record[c] for c in columns}] * 2}
        status, text = post(port, json.dumps(plain))
        assert status == 200, text
        ids = {a["request_id"] for a in json.loads(text)["predictions"]}
        assert len(ids) == 1 and len(ids.pop()) == 32  # one new id for the request
        logged = _wait_rows(url, n + 2)
    assert len(logged) == n + 2
    assert set(logged["model_name"]) == {"credit-risk"} and set(logged["model_version"]) == {"1"}
    assert set(logged["source"]) == {"serve"} and (logged["latency_ms"] > 0).all()
    assert logged["request_id"].tolist()[:3] == ["later-0", "later-1", "later-2"]
    assert logged["probability_yes"].tolist()[:n] == pytest.approx(
        [a["probability_yes"] for a in answers]
    )

    # Late labels: the demo's labels join; unknown ids and duplicates are listed, not dropped.
    labels = pd.read_csv(project / "data/demo/later_labels.csv")
    proc = run_cli(project, "feedback", "data/demo/later_labels.csv")
    assert f"{n} of {n} label(s) recorded" in proc.stdout
    odd = tmp_path / "odd.csv"
    pd.DataFrame(
        {"request_id": ["nope", "nope2", "later-0", "later-0"], "label": ["yes", "no", "no", "yes"]}
    ).to_csv(odd, index=False)
    proc = run_cli(project, "feedback", str(odd), "--strict", check=False)
    assert proc.returncode == 1
    assert "2 unknown id(s): nope, nope2" in proc.stdout
    assert "duplicate(s) in the file: later-0#0" in proc.stdout
    window = pl.read_window(url)
    joined = window.set_index("request_id").loc[labels["request_id"], "label"]
    assert joined.tolist() == labels["label"].tolist()

    # Monitor the log: the later batch is no drift, with measured and estimated metrics.
    proc, result = _monitor(project, "--window", "1h", "--source", "serve")
    assert result["verdict"] == "no_drift", proc.stdout
    assert result["performance"]["labelled_rows"] == n
    assert result["performance"]["measured"]["roc_auc"]["value"] > 0.6
    assert result["window"]["source"] == "prediction log (serve)"

    # Then the shifted batch arrives by `mlplatform score` with the log on: drift.
    since = datetime.now(UTC).isoformat()
    out = tmp_path / "scored.parquet"
    proc = run_cli(
        project, "score", "data/demo/shifted.csv", str(out),
        env={"MLPLATFORM_PREDICTION_LOG": "on"},
    )  # fmt: skip
    assert f"prediction log: {n} rows recorded as request" in proc.stdout
    scored = pl.read_window(url, source="score")
    assert scored["row"].tolist() == list(range(n)) and scored["request_id"].nunique() == 1
    proc, drift = _monitor(project, "--since", since, "--strict", check=False)
    assert proc.returncode == 3 and drift["verdict"] == "drift"
    assert drift["window"]["n_rows"] == n


def test_a_model_of_the_earlier_release_serves_and_logs(tmp_path):
    """Registered by 0.1.0 (every input column required, no request_id in its signature):
    it still serves, answers with a request id, and its rows carry its model id."""
    fixtures = ROOT / "tests" / "fixtures"
    expected = json.loads((fixtures / "model_v0_1_0_expected.json").read_text())
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    with served(
        str(fixtures / "model_v0_1_0"), tmp_path, {"MLPLATFORM_PREDICTION_LOG": url}
    ) as port:
        status, text = post(port, json.dumps({"dataframe_records": expected["inputs"][:3]}))
        assert status == 200, text
        answers = json.loads(text)["predictions"]
        logged = _wait_rows(url, 3)
    assert [a["prediction"] for a in answers] == [r["prediction"] for r in expected["expected"][:3]]
    assert len({a["request_id"] for a in answers}) == 1
    assert len(logged) == 3 and logged["model_name"].isna().all()
    assert set(logged["model_id"]) == {"m-257e4db2affa4ae8b8c3b5765ae15edb"}


def test_report_opens_in_chromium_without_errors_or_requests(project, tmp_path):
    if find_chromium() is None:
        pytest.fail("chromium is not installed (apt-get install -y chromium; make test does)")
    _monitor(project, "--current", "data/demo/later.csv", "--current", "data/demo/shifted.csv",
             check=False)  # fmt: skip
    page = project / "reports/monitoring/monitor.html"
    html = page.read_text()
    assert "Metrics over time" in html or "over time" in html.lower()
    check = check_page(page, tmp_path / "monitor.png", width=1400, height=4000)
    assert check.console == [] and check.requests == []
    assert check.screenshot.stat().st_size > 50_000
    shutil.copy(check.screenshot, project / "monitor.png")


def test_bad_input_is_one_line(project, tmp_path):
    missing = tmp_path / "cut.csv"
    pd.read_csv(project / "data/demo/later.csv").drop(columns=["lvrat"]).to_csv(
        missing, index=False
    )
    for args in (
        ("feedback", str(tmp_path / "absent.csv")),
        ("monitor", "--current", str(missing)),
        ("monitor", "--window", "soon"),
        ("monitor", "--source", "elsewhere"),
    ):
        proc = run_cli(project, *args, check=False)
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert proc.returncode != 0 and len(lines) == 1, (args, proc.stderr[-1500:])
    assert "lvrat" in run_cli(project, "monitor", "--current", str(missing), check=False).stderr
