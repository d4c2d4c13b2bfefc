"""Late labels joined to the prediction log (real SQLite files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from mlplatform.errors import DataValidationError
from mlplatform.monitoring import feedback as fb
from mlplatform.monitoring import prediction_log as pl


@pytest.fixture
def url(tmp_path) -> str:
    """A log holding requests a, b, c (one row each) and m (three rows)."""
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    log = pl.PredictionLog(url)
    proba = np.array([[0.4, 0.6]])
    classes = ["no", "yes"]
    for rid in ("a", "b", "c"):
        log.record(pd.DataFrame([{"x": 1.0}]), ["yes"], proba, classes=classes, request_id=rid)
    three = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    log.record(three, ["no"] * 3, np.tile(proba, (3, 1)), classes=classes, request_id="m")
    assert log.close()["written"] == 6
    return url


def labels(url: str) -> dict[tuple[str, int], str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        f = pl.feedback.c
        out = {
            (r.request_id, r.row): r.label
            for r in conn.execute(sa.select(f.request_id, f.row, f.label))
        }
    engine.dispose()
    return out


def test_labels_join_and_every_problem_is_listed(url):
    frame = pd.DataFrame(
        {
            "request_id": ["a", "b", "b", "zzz", "m", "c"],
            "outcome": ["yes", "no", "yes", "no", "no", "no"],
        }
    )
    summary = fb.record_feedback(url, frame, label_column="outcome", source="labels.csv")
    assert summary.written == 2 and summary.rows == 6
    assert summary.unknown == ["zzz"]
    assert summary.duplicates == ["b#0"]  # given twice: neither label written
    assert summary.ambiguous == ["m"]  # three rows: needs a row column
    assert summary.already_labelled == []
    assert labels(url) == {("a", 0): "yes", ("c", 0): "no"}
    message = summary.message()
    assert message.startswith("labels.csv: 2 of 6 label(s) recorded")
    assert "1 unknown id(s): zzz" in message and "ambiguous" in message
    assert summary.to_dict()["n_unknown"] == 1 and summary.to_dict()["problems"] == 3

    window = pl.read_window(url)
    assert window.set_index("request_id")["label"].dropna().to_dict() == {"a": "yes", "c": "no"}
    assert window["labelled_at"].notna().sum() == 2


def test_a_second_label_is_refused_and_the_first_kept(url):
    fb.record_feedback(url, pd.DataFrame({"request_id": ["a"], "label": ["yes"]}))
    again = fb.record_feedback(url, pd.DataFrame({"request_id": ["a", "b"], "label": ["no", "no"]}))
    assert again.already_labelled == ["a#0"] and again.written == 1
    assert labels(url) == {("a", 0): "yes", ("b", 0): "no"}


def test_rows_within_a_request(url):
    frame = pd.DataFrame({"id": ["m", "m", "m", "a"], "r": [0, 2, 5, 0], "label": list("ynyn")})
    summary = fb.record_feedback(url, frame, id_column="id", row_column="r")
    assert summary.written == 3 and summary.unknown == ["m#5"]
    assert labels(url) == {("m", 0): "y", ("m", 2): "n", ("a", 0): "n"}


def test_strict_writes_nothing_when_anything_is_listed(url):
    frame = pd.DataFrame({"request_id": ["a", "nope"], "label": ["yes", "no"]})
    summary = fb.record_feedback(url, frame, strict=True)
    assert summary.written == 0 and summary.unknown == ["nope"]
    assert "nothing written (strict)" in summary.message()
    assert labels(url) == {}
    clean = fb.record_feedback(url, frame.iloc[:1], strict=True)
    assert clean.written == 1 and clean.problems == 0


def test_numeric_labels_are_stored_like_the_predicted_class(url):
    frame = pd.DataFrame({"request_id": ["a", "b"], "label": [1.0, 0.0]})
    fb.record_feedback(url, frame)
    assert labels(url) == {("a", 0): "1", ("b", 0): "0"}


def test_invalid_frames_write_nothing_and_name_the_column(url):
    cases = [
        (pd.DataFrame({"request_id": ["a"]}), "no column 'label'"),
        (pd.DataFrame({"request_id": ["a", None], "label": ["y", "n"]}), "'request_id' is empty"),
        (
            pd.DataFrame({"request_id": ["a", "b"], "label": ["y", " "]}),
            r"'label' is empty on row\(s\) 1",
        ),
        (pd.DataFrame({"request_id": [], "label": []}), "no rows"),
    ]
    for frame, message in cases:
        with pytest.raises(DataValidationError, match=message):
            fb.record_feedback(url, frame, source="f.csv")
    bad_row = pd.DataFrame({"request_id": ["m", "m"], "row": [0, 1.5], "label": ["y", "n"]})
    with pytest.raises(DataValidationError, match=r"f\.csv: column 'row' must hold whole numbers"):
        fb.record_feedback(url, bad_row, row_column="row", source="f.csv")
    assert labels(url) == {}


def test_files_csv_and_parquet(url, tmp_path):
    csv = tmp_path / "labels.csv"
    # "NA" is a label here, not a missing value; the extra column is never read.
    csv.write_text("request_id,deny,other\na,NA,1\nb,yes,2\n")
    summary = fb.record_feedback_file(url, csv, label_column="deny")
    assert summary.written == 2 and summary.source == str(csv)
    pq = tmp_path / "labels.parquet"
    pd.DataFrame({"request_id": ["c", "q"], "deny": [1, 0]}).to_parquet(pq)
    summary = fb.record_feedback_file(url, pq, label_column="deny")
    assert summary.written == 1 and summary.unknown == ["q"]
    assert labels(url) == {("a", 0): "NA", ("b", 0): "yes", ("c", 0): "1"}
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        sources = set(conn.execute(sa.select(pl.feedback.c.source_file)).scalars())
    engine.dispose()
    assert sources == {str(csv), str(pq)}


def test_file_errors_are_one_line_naming_file_and_column(url, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("id,label\na,yes\n")
    message = r"labels\.csv: no column 'request_id' \(columns: id, label\)"
    with pytest.raises(DataValidationError, match=message):
        fb.record_feedback_file(url, csv)
    with pytest.raises(DataValidationError, match=r"nowhere\.csv: file not found"):
        fb.record_feedback_file(url, tmp_path / "nowhere.csv")
    (tmp_path / "labels.json").write_text("{}")
    with pytest.raises(DataValidationError, match=r"unsupported file type '\.json'"):
        fb.record_feedback_file(url, tmp_path / "labels.json")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataValidationError, match=r"broken\.parquet: cannot read file"):
        fb.record_feedback_file(url, tmp_path / "broken.parquet")
    assert labels(url) == {}


def test_a_concurrent_import_of_the_same_rows_rolls_back_the_whole_file(url, monkeypatch):
    # As if another import committed label "a" after this one looked: the unique constraint
    # stops the insert, and "b" from the same file is not written either.
    fb.record_feedback(url, pd.DataFrame({"request_id": ["a"], "label": ["first"]}))
    monkeypatch.setattr(fb, "_labelled_rows", lambda conn, ids: set())
    frame = pd.DataFrame({"request_id": ["b", "a"], "label": ["no", "second"]})
    with pytest.raises(pl.PredictionLogError, match="another feedback import"):
        fb.record_feedback(url, frame)
    assert labels(url) == {("a", 0): "first"}


def test_unreachable_log_is_one_line(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    frame = pd.DataFrame({"request_id": ["a"], "label": ["yes"]})
    with pytest.raises(pl.PredictionLogError, match="cannot record feedback"):
        fb.record_feedback(f"sqlite:///{blocker / 'p.db'}", frame)
