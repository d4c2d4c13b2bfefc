"""Live and batch scoring end to end: a real `mlflow models serve` on the champion."""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
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


def exact_records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON records with every float exact (pandas' to_json keeps 10 digits, so
    3.200000047683716 would reach the server as 3.2000000477: not the same input)."""
    return json.loads(
        json.dumps(frame.astype(object).where(frame.notna(), None).to_dict("records"))
    )


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
        # One new request id per request (monitoring.served), the same on each of its rows.
        ids = {p.pop("request_id") for p in preds}
        assert len(ids) == 1
        for p in preds:
            assert p["prediction"] in ("no", "yes")
            assert p["probability_no"] + p["probability_yes"] == pytest.approx(1.0, abs=1e-6)
        answers.append(preds)
    assert answers[0] == answers[1] == answers[2]


def test_values_the_model_handles_are_accepted(project, server):
    record = _records(project, 1)[0]
    # Missing values are scored (imputed); so are the yes/no spellings training accepts.
    odd = dict(record, pirat=None, phist=None, selfemp="Y", insurance=0, single=True)
    status, body = post(server, json.dumps({"dataframe_records": [odd]}))
    assert status == 200, body


@pytest.mark.parametrize(
    ("case", "expected_status", "must_mention"),
    [
        ("missing_column", 400, "hirat"),
        ("wrong_type", 400, "pirat"),
        ("empty", 400, "empty input: send at least one record with the columns pirat"),
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
    assert "Failed to predict data" not in text  # no dump of the request


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
    records = exact_records(good.astype({"pirat": float}))
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


# --------------------------------------------------------------------------------------
# Issue 11: one-line answers, serving and batch scoring agree, nothing lost in batches


def _message(text: str) -> str:
    body = json.loads(text)
    assert set(body) <= {"error_code", "message", "sqlstate", "error_class"}, body
    assert "\n" not in body["message"]
    return body["message"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_column", "missing column(s): hirat"),
        ("inputs_missing_column", "missing column(s): hirat"),
        ("split_missing_column", "missing column(s): pirat"),
        ("empty_inputs", "empty input: send at least one record"),
    ],
)
def test_the_models_own_checks_answer_in_one_line(project, server, case, expected):
    """The missing-column 400 was a 900-byte dump of the request frame."""
    record = _records(project, 1)[0]
    less = {k: v for k, v in record.items() if k != "hirat"}
    cols = list(record)
    payload = {
        "missing_column": {"dataframe_records": [less]},
        "inputs_missing_column": {"inputs": [less]},
        "split_missing_column": {
            "dataframe_split": {"columns": cols[1:], "data": [[record[c] for c in cols[1:]]]}
        },
        "empty_inputs": {"inputs": []},
    }[case]
    status, text = post(server, json.dumps(payload))
    assert status == 400
    assert _message(text).startswith(expected)
    assert len(text) < 400, text


def test_extra_columns_are_ignored(project, server):
    record = dict(_records(project, 1)[0], application_id=17, note="x")
    status, body = post(server, json.dumps({"dataframe_records": [record]}))
    assert status == 200, body


REFUSED = [
    ("pirat", float("inf"), "value inf is not a valid number"),
    ("pirat", "Infinity", None),  # text in a double column: MLflow's own type check
    ("phist", 5, "value 5 is not a valid boolean"),
    ("phist", "5", "value '5' is not a valid boolean"),
    ("phist", "maybe", "value 'maybe' is not a valid boolean"),
]


@pytest.mark.parametrize(("column", "value", "message"), REFUSED)
def test_serving_refuses_what_training_refuses(project, server, column, value, message):
    """`pirat: Infinity` scored 0.865 and a 5 in a yes/no column read as "yes"."""
    record = dict(_records(project, 1)[0], **{column: value})
    status, text = post(server, json.dumps({"dataframe_records": [record]}))
    assert status == 400, text
    if message:
        assert _message(text) == f"column '{column}': {message}"
    else:
        assert column in text and "stack_trace" not in text


def test_batch_scoring_refuses_the_same_values_as_serving(project, server, tmp_path):
    """The same values, in a CSV: each bad row is listed, the others scored as live."""
    test = pd.read_parquet(project / "data/prepared/test.parquet").drop(columns=["deny", "afam"])
    frame = test.head(12).astype({"pirat": object, "phist": object}).reset_index(drop=True)
    bad = {1: ("pirat", "inf"), 3: ("pirat", "-Infinity"), 5: ("phist", "5"), 7: ("phist", "maybe")}
    for row, (col, value) in bad.items():
        frame.loc[row, col] = value
    frame.loc[9, "phist"] = None  # missing stays missing: scored
    src = tmp_path / "mixed.csv"
    frame.to_csv(src, index=False)
    out = tmp_path / "mixed.parquet"
    run_cli(project, "score", str(src), str(out))
    errors = pd.read_csv(tmp_path / "mixed.parquet.errors.csv")
    assert errors["row"].tolist() == sorted(bad)
    assert list(zip(errors["row"], errors["column"], strict=True)) == [
        (r, c) for r, (c, _) in sorted(bad.items())
    ]
    scored = pd.read_parquet(out)
    good = frame.drop(index=list(bad))
    assert scored["row"].tolist() == good.index.tolist()
    records = exact_records(good.astype({"pirat": float}))
    status, body = post(server, json.dumps({"dataframe_records": records}))
    assert status == 200, body
    live = pd.DataFrame(json.loads(body)["predictions"])
    assert np.array_equal(live["probability_yes"].to_numpy(), scored["probability_yes"].to_numpy())


def test_known_upstream_answers_are_what_the_readme_says(server):
    """MLflow's server controls these; the README's serving section lists them."""
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    conn.request("POST", "/invocations", '{"inputs": []}', {})  # no Content-Type
    response = conn.getresponse()
    assert response.status == 500
    response.read()
    status, _ = post(server, '{"inputs": ' + "[" * 5000 + "]" * 5000 + "}")
    assert status == 500
    status, text = post(server, '"unterminated,\n1', "text/csv")
    assert status == 400 and "stack_trace" in text
    readme = (ROOT / "README.md").read_text()
    for words in ("without a `Content-Type`", "nested", "`stack_trace`"):
        assert words in readme, words


def test_readme_serve_recipe_verifies_the_champion_first(project):
    readme = (ROOT / "README.md").read_text()
    recipe = next(line for line in readme.splitlines() if "&& mlflow models serve" in line)
    verify = shlex.split(recipe.split("&&")[0])
    assert verify[:2] == ["mlplatform", "verify"]
    result = run_cli(project, *verify[1:])
    assert result.stdout.startswith("verified: models:/credit-risk@champion (version 1):")


def _ids_frame(project: Path, n: int) -> pd.DataFrame:
    test = pd.read_parquet(project / "data/prepared/test.parquet").drop(columns=["deny"])
    frame = test.sample(n, replace=True, random_state=0).reset_index(drop=True)
    return frame.assign(application_id=np.arange(n) + 1_000_000)


@pytest.fixture(scope="module")
def big_csv(project, tmp_path_factory) -> tuple[Path, list[int]]:
    """150,000 rows with ids (about 3 read blocks of 4 MiB) and bad values here and there."""
    frame = _ids_frame(project, 150_000).astype({"lvrat": object})
    bad = [0, 40_001, 99_999, 149_999]
    frame.loc[bad, "lvrat"] = "unknown"  # ("n/a" is a missing value to CSV readers)
    path = tmp_path_factory.mktemp("big") / "applications.csv"
    frame.to_csv(path, index=False)
    return path, bad


@pytest.mark.parametrize("chunk_rows", ["1000", None], ids=["1000", "default"])
def test_every_id_comes_back_once_with_its_row_number(project, big_csv, tmp_path, chunk_rows):
    """The issue's loss: 55,895 of 142,800 ids missing at the default chunk size."""
    from mlplatform.serving import score

    src, bad = big_csv
    assert os.path.getsize(src) > 2 * score.CSV_BLOCK_SIZE
    out = tmp_path / "scored.parquet"
    args = ["--chunk-rows", chunk_rows] if chunk_rows else []
    result = run_cli(project, "score", str(src), str(out), "--keep", "application_id", *args)
    assert "scored 149,996 of 150,000 rows" in result.stdout
    assert "4 rows could not be scored" in result.stdout
    scored = pd.read_parquet(out)
    expected = np.setdiff1d(np.arange(150_000), bad)
    np.testing.assert_array_equal(scored["row"].to_numpy(), expected)
    ids = scored["application_id"].astype(np.int64).to_numpy()  # --keep copies CSV text
    np.testing.assert_array_equal(ids, expected + 1_000_000)
    errors = pd.read_csv(tmp_path / "scored.parquet.errors.csv")
    assert errors["row"].tolist() == bad


def test_fail_fast_names_the_true_row_deep_in_a_big_file(project, big_csv, tmp_path):
    src, bad = big_csv
    frame = pd.read_csv(src)
    frame.loc[bad[:2], "lvrat"] = "0.5"  # the first bad row is now 99,999: past the first block
    later = tmp_path / "later.csv"
    frame.to_csv(later, index=False)
    out = tmp_path / "never.parquet"
    result = run_cli(project, "score", str(later), str(out), "--fail-fast", check=False)
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "row 99999, column 'lvrat'" in lines[0], result.stderr
    assert not out.exists()


def _one_line_error(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_score_refuses_to_write_over_its_input(project, tmp_path):
    src = tmp_path / "in.csv"
    _ids_frame(project, 20).to_csv(src, index=False)
    before = src.read_bytes()
    line = _one_line_error(run_cli(project, "score", str(src), str(src), check=False))
    assert "is the input file" in line
    assert src.read_bytes() == before


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("latin1", "not UTF-8 text"),
        ("folder", "is a folder"),
        ("negative", "positive number of rows (got -5)"),
        ("zero", "positive number of rows (got 0)"),
        ("json", "unsupported output type '.json'"),
    ],
)
def test_score_mistakes_are_one_line_errors(project, tmp_path, case, words):
    src = tmp_path / "in.csv"
    frame = _ids_frame(project, 30)
    frame.to_csv(src, index=False)
    out, extra = tmp_path / "out.parquet", []
    if case == "latin1":
        frame.assign(note="café crème").to_csv(src, index=False, encoding="latin-1")
    elif case == "folder":
        out.mkdir()
    elif case in ("negative", "zero"):
        extra = ["--chunk-rows", "-5" if case == "negative" else "0"]
    else:
        out = tmp_path / "out.json"
    line = _one_line_error(run_cli(project, "score", str(src), str(out), *extra, check=False))
    assert words in line, line
    assert not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_csv_with_another_delimiter_scores_like_a_comma_file(project, tmp_path, sep):
    frame = _ids_frame(project, 50)
    frame.to_csv(tmp_path / "comma.csv", index=False)
    frame.to_csv(tmp_path / "other.csv", index=False, sep=sep)
    run_cli(project, "score", str(tmp_path / "comma.csv"), str(tmp_path / "a.parquet"))
    run_cli(project, "score", str(tmp_path / "other.csv"), str(tmp_path / "b.parquet"))
    a, b = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    assert np.array_equal(a["probability_yes"].to_numpy(), b["probability_yes"].to_numpy())
