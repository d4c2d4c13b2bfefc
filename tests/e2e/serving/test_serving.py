"""Live and batch scoring end to end: a real `mlflow models serve` on the champion."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlplatform.cli import STAGES
from support.project import ROOT, run_cli, run_stages, write_project
from support.serving import post, served

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    folder = write_project(tmp_path_factory.mktemp("serving"))
    run_stages(folder, *STAGES)
    return folder


@pytest.fixture(scope="module")
def server(project):
    """`mlflow models serve` exactly as the README shows it, on a free port."""
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    with served("models:/credit-risk@champion", project, env) as port:
        yield port


def _records(project: Path, n: int = 3) -> list[dict]:
    test = pd.read_parquet(project / "data/prepared/test.parquet")
    features = [c for c in test.columns if c not in ("deny", "afam")]
    return json.loads(test[features].head(n).to_json(orient="records"))


def test_all_input_formats_give_class_and_probabilities(project, server):
    records = _records(project)
    cols = list(records[0])
    payloads = [
        {"dataframe_records": records},
        {"dataframe_split": {"columns": cols, "data": [[r[c] for c in cols] for r in records]}},
        {"inputs": records},
    ]
    answers = []
    for payload in payloads:
        status, body = post(server, json.dumps(payload))
        assert status == 200, body
        preds = json.loads(body)["predictions"]
        assert len(preds) == 3
        for p in preds:
            assert p["prediction"] in ("no", "yes")
            assert p["probability_no"] + p["probability_yes"] == pytest.approx(1.0, abs=1e-6)
        answers.append(preds)
    assert answers[0] == answers[1] == answers[2]


def test_values_the_model_handles_are_accepted(project, server):
    record = _records(project, 1)[0]
    odd = dict(record, pirat=None, phist="never-seen-before")
    status, body = post(server, json.dumps({"dataframe_records": [odd]}))
    assert status == 200, body


@pytest.mark.parametrize(
    ("case", "expected_status", "must_mention"),
    [
        ("missing_column", 400, "hirat"),
        ("wrong_type", 400, "pirat"),
        ("empty", 400, "missing inputs"),
        ("malformed", 400, "JSON"),
        ("content_type", 415, "content type"),
    ],
)
def test_bad_requests_get_4xx_naming_the_problem(
    project, server, case, expected_status, must_mention
):
    record = _records(project, 1)[0]
    body: str = {
        "missing_column": json.dumps(
            {"dataframe_records": [{k: v for k, v in record.items() if k != "hirat"}]}
        ),
        "wrong_type": json.dumps({"dataframe_records": [dict(record, pirat="abc")]}),
        "empty": json.dumps({"dataframe_records": []}),
        "malformed": '{"dataframe_records": [{"pirat": 0.3,',
        "content_type": "pirat=0.3",
    }[case]
    content_type = "text/plain" if case == "content_type" else "application/json"
    status, text = post(server, body, content_type)
    assert status == expected_status, text
    assert must_mention.lower() in text.lower()
    assert "stack_trace" not in text and "Traceback" not in text


def test_readme_curl_example_works(server):
    """The copy-paste example in the README scores against the default model."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"curl[^\n]*invocations[^`]*?-d '(\{.*?\})'", readme, re.S)
    assert match, "README has a curl example posting to /invocations"
    status, body = post(server, match.group(1))
    assert status == 200, body
    assert "prediction" in json.loads(body)["predictions"][0]


def test_batch_scoring_reports_bad_rows_and_matches_live(project, server, tmp_path):
    test = pd.read_parquet(project / "data/prepared/test.parquet").drop(columns=["deny"])
    frame = test.head(40).astype({"pirat": object}).reset_index(drop=True)
    frame.loc[[5, 17], "pirat"] = ["not a number", "1.2.3"]
    src = tmp_path / "to_score.csv"
    frame.to_csv(src, index=False)
    out = tmp_path / "scored.parquet"
    result = run_cli(project, "score", str(src), str(out), "--keep", "afam")
    assert "2 rows could not be scored" in result.stdout
    scored = pd.read_parquet(out)
    assert len(scored) == 38 and 5 not in set(scored["row"]) and 17 not in set(scored["row"])
    assert set(scored["model_name"]) == {"credit-risk"} and set(scored["model_version"]) == {"1"}
    assert scored["scored_at"].notna().all() and "afam" in scored.columns
    errors = pd.read_csv(tmp_path / "scored.parquet.errors.csv")
    assert errors["row"].tolist() == [5, 17] and set(errors["column"]) == {"pirat"}

    # Live and batch give the same predictions for the same rows.
    good = frame.drop(index=[5, 17]).drop(columns=["afam"])
    records = json.loads(good.astype({"pirat": float}).to_json(orient="records"))
    status, body = post(server, json.dumps({"dataframe_records": records}))
    assert status == 200, body
    live = pd.DataFrame(json.loads(body)["predictions"])
    assert live["prediction"].tolist() == scored["prediction"].tolist()
    assert np.array_equal(live["probability_yes"].to_numpy(), scored["probability_yes"].to_numpy())


def test_batch_fail_fast_stops_with_one_line_and_writes_nothing(project, tmp_path):
    test = pd.read_parquet(project / "data/prepared/test.parquet").drop(columns=["deny"])
    frame = test.head(10).astype({"lvrat": object})
    frame.iloc[3, frame.columns.get_loc("lvrat")] = "oops"
    src = tmp_path / "bad.csv"
    frame.to_csv(src, index=False)
    out = tmp_path / "never.parquet"
    result = run_cli(project, "score", str(src), str(out), "--fail-fast", check=False)
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "row 3" in lines[0] and "lvrat" in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_batch_missing_column_is_a_one_line_error(project, tmp_path):
    test = pd.read_parquet(project / "data/prepared/test.parquet").drop(columns=["deny", "pirat"])
    src = tmp_path / "nopirat.parquet"
    test.to_parquet(src)
    result = run_cli(project, "score", str(src), str(tmp_path / "x.parquet"), check=False)
    assert result.returncode != 0
    assert "missing column(s) pirat" in result.stderr and "Traceback" not in result.stderr


def test_malformed_csv_line_late_in_the_file_is_one_line_and_writes_nothing(project, tmp_path):
    test = pd.read_parquet(project / "data/prepared/test.parquet").drop(columns=["deny"])
    src = tmp_path / "broken.csv"
    test.assign(extra="x").to_csv(src, index=False)  # unused columns are not read
    with open(src, "a") as fh:
        fh.write("1,2,3\n")  # too few fields, after the first chunk
    out = tmp_path / "never.parquet"
    result = run_cli(project, "score", str(src), str(out), "--chunk-rows", "50", check=False)
    assert result.returncode != 0, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and str(src) in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_chunks_do_not_change_results(project, tmp_path):
    test = pd.read_parquet(project / "data/prepared/test.parquet").drop(columns=["deny"])
    src = tmp_path / "all.parquet"
    test.to_parquet(src)
    run_cli(project, "score", str(src), str(tmp_path / "one.parquet"))
    run_cli(project, "score", str(src), str(tmp_path / "many.csv"), "--chunk-rows", "37")
    one = pd.read_parquet(tmp_path / "one.parquet")
    many = pd.read_csv(tmp_path / "many.csv")
    assert len(one) == len(many) == len(test)
    assert one["row"].tolist() == many["row"].tolist() == list(range(len(test)))
    assert np.allclose(one["probability_yes"], many["probability_yes"], rtol=0, atol=1e-15)
    assert os.path.getsize(tmp_path / "one.parquet") > 0


def test_a_model_logged_by_release_0_1_0_still_serves(tmp_path):
    """Registered models name `mlplatform.model_format` as their loader: it must keep working."""
    fixtures = ROOT / "tests" / "fixtures"
    expected = json.loads((fixtures / "model_v0_1_0_expected.json").read_text())
    with served(str(fixtures / "model_v0_1_0"), tmp_path) as port:
        status, body = post(port, json.dumps({"dataframe_records": expected["inputs"]}))
    assert status == 200, body
    got = json.loads(body)["predictions"]
    assert [r["prediction"] for r in got] == [r["prediction"] for r in expected["expected"]]
    assert [r["probability_yes"] for r in got] == pytest.approx(
        [r["probability_yes"] for r in expected["expected"]]
    )
