"""The prediction log on real SQLite files: batching, flushing, bounds, forks, reading back."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from mlplatform.errors import ConfigError
from mlplatform.monitoring import prediction_log as pl
from mlplatform.monitoring.prediction_log.store import use_wal

FORK = mp.get_context("fork")
CLASSES = ["no", "yes"]
ROW = {"pirat": 0.33, "lvrat": 0.8, "chist": 2, "phist": "no", "single": None}


def one_row(i: int = 0) -> pd.DataFrame:
    return pd.DataFrame([{**ROW, "pirat": i / 100}])


def proba(n: int = 1) -> np.ndarray:
    return np.tile([[0.25, 0.75]], (n, 1))


def url_in(folder: Path, name: str = "predictions.db") -> str:
    return f"sqlite:///{folder / name}"


def count_rows(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("predictions"):
                return 0
            return conn.execute(sa.select(sa.func.count()).select_from(pl.predictions)).scalar()
    finally:
        engine.dispose()


def wait_for(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def inserts():
    """Every executemany INSERT into predictions, as its row count (all engines)."""
    seen: list[int] = []

    def listener(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO PREDICTIONS"):
            seen.append(len(parameters) if executemany else 1)

    sa.event.listen(sa.Engine, "before_cursor_execute", listener)
    yield seen
    sa.event.remove(sa.Engine, "before_cursor_execute", listener)


# ---------------------------------------------------------------------------------------
# Writing and reading back.


def test_rows_round_trip_with_types_and_metadata(tmp_path):
    url = url_in(tmp_path)
    log = pl.PredictionLog(url, flush_ms=20)
    frame = pd.DataFrame(
        {
            "pirat": [0.5, np.nan],
            "phist": ["no", None],
            "chist": [1, 2],
            "when": pd.to_datetime(["2024-03-01 12:00", None]),
        }
    )
    rid = log.record(
        frame, ["yes", "no"], np.array([[0.1, 0.9], [0.8, 0.2]]), classes=CLASSES,
        model_name="credit-risk", model_version=3, model_id="m-abc", arm="champion",
        latency_ms=1.25, keys=["k1", None],
    )  # fmt: skip
    records = [{"pirat": 0.1, "phist": "yes", "chist": 4, "when": None}]
    log.record(records, ["no"], proba(), classes=CLASSES, request_id="given-id", source="score")
    assert log.close()["written"] == 3

    out = pl.read_window(url)
    assert list(out.columns[: len(pl.META_COLUMNS)]) == list(pl.META_COLUMNS)
    assert len(out) == 3 and isinstance(rid, str) and len(rid) == 32
    first = out.iloc[0]
    assert (first.request_id, first.row, first.model_name, first.model_version) == (
        rid, 0, "credit-risk", "3",
    )  # fmt: skip
    assert first[["model_id", "arm", "source"]].tolist() == ["m-abc", "champion", "serve"]
    assert first.key == "k1"
    assert first.prediction == "yes" and first.latency_ms == 1.25
    assert [first.probability_no, first.probability_yes] == pytest.approx([0.1, 0.9])
    assert first.pirat == 0.5 and first.phist == "no" and first.chist == 1
    assert first.when == "2024-03-01T12:00:00.000"
    second = out.iloc[1]
    assert second.row == 1 and np.isnan(second.pirat) and pd.isna(second.phist)
    assert second.key is None and pd.isna(second.when)
    third = out.iloc[2]
    assert [third.request_id, third.source, third.arm] == ["given-id", "score", None]
    assert third.phist == "yes"
    assert str(out["timestamp"].dt.tz) == "UTC"
    assert (datetime.now(UTC) - out["timestamp"].iloc[0].to_pydatetime()) < timedelta(minutes=5)
    assert out["label"].isna().all()


def test_per_row_request_ids_and_file_row_numbers(tmp_path):
    url = url_in(tmp_path)
    log = pl.PredictionLog(url)
    frame = pd.concat([one_row(i) for i in range(3)], ignore_index=True)
    log.record(frame, ["no"] * 3, proba(3), classes=CLASSES, request_id=["a", "b", "c"])
    log.record(frame, ["no"] * 3, proba(3), classes=CLASSES, request_id="run-1", rows=[10, 12, 17])
    log.close()
    out = pl.read_window(url)
    assert out["request_id"].tolist() == ["a", "b", "c", "run-1", "run-1", "run-1"]
    assert out["row"].tolist() == [0, 1, 2, 10, 12, 17]


def test_batches_are_one_executemany_each_and_close_writes_the_rest(tmp_path, inserts):
    url = url_in(tmp_path)
    # A flush interval far longer than the test: only full batches are written before close.
    log = pl.PredictionLog(url, flush_ms=60_000, batch_rows=50)
    for i in range(120):
        log.record(one_row(i), ["no"], proba(), classes=CLASSES)
    assert wait_for(lambda: log.stats()["written"] == 100)
    time.sleep(0.2)
    assert log.stats()["written"] == 100 and log.stats()["queued"] == 20
    assert inserts == [50, 50]
    assert log.close()["written"] == 120
    assert inserts == [50, 50, 20]
    assert count_rows(url) == 120


def test_nothing_is_written_before_the_interval_and_everything_at_close(tmp_path):
    url = url_in(tmp_path)
    log = pl.PredictionLog(url, flush_ms=60_000, batch_rows=10_000)
    for i in range(5):
        log.record(one_row(i), ["no"], proba(), classes=CLASSES)
    time.sleep(0.3)
    assert count_rows(url) == 0 and log.stats()["queued"] == 5
    assert log.close()["written"] == 5
    assert count_rows(url) == 5
    # Closed is closed: a late record is counted, not written, and does not raise.
    log.record(one_row(), ["no"], proba(), classes=CLASSES)
    assert log.stats()["dropped"] == 1 and count_rows(url) == 5


def test_flush_writes_now(tmp_path):
    url = url_in(tmp_path)
    log = pl.PredictionLog(url, flush_ms=60_000, batch_rows=10_000)
    log.record(one_row(), ["no"], proba(), classes=CLASSES)
    assert log.flush(timeout=15) is True
    assert count_rows(url) == 1
    log.close()


def test_queued_rows_are_written_at_interpreter_exit(tmp_path):
    url = url_in(tmp_path)
    script = f"""
import numpy as np, pandas as pd
from mlplatform.monitoring import prediction_log as pl
log = pl.PredictionLog({url!r}, flush_ms=60_000, batch_rows=10_000)
for i in range(7):
    log.record(pd.DataFrame([{{"x": i}}]), ["no"], np.array([[0.6, 0.4]]), classes=["no", "yes"])
"""  # no close(): atexit must write the rows
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert count_rows(url) == 7


def test_process_log_from_the_environment(tmp_path, monkeypatch):
    url = url_in(tmp_path)
    monkeypatch.setattr(pl, "_configured", False)
    monkeypatch.setattr(pl, "_process_log", None)
    monkeypatch.setenv(pl.ENV_URL, url)
    assert pl.get_log() is pl.get_log() is not None
    rid = pl.record(one_row(), ["no"], proba(), classes=CLASSES, model_name="m")
    pl.get_log().close()
    assert pl.read_window(url)["request_id"].tolist() == [rid]

    pl.configure(None)  # off: record does nothing and says so
    assert pl.record(one_row(), ["no"], proba(), classes=CLASSES) is None


def test_a_bad_environment_value_turns_the_log_off_without_breaking_record(monkeypatch, caplog):
    monkeypatch.setattr(pl, "_configured", False)
    monkeypatch.setattr(pl, "_process_log", None)
    monkeypatch.setenv(pl.ENV_URL, "not a url")
    with pytest.raises(ConfigError, match="MLPLATFORM_PREDICTION_LOG"):
        pl.get_log()
    with caplog.at_level(logging.ERROR):
        assert pl.record(one_row(), ["no"], proba(), classes=CLASSES) is None
    assert "prediction log off" in caplog.text and pl.get_log() is None


def test_resolve_url_rules(tmp_path, monkeypatch):
    on = pl.PredictionLogSettings(enabled=True)
    monkeypatch.delenv(pl.ENV_URL, raising=False)
    assert pl.resolve_url(pl.PredictionLogSettings(), "sqlite:///x/mlflow.db") is None
    assert pl.resolve_url(on, "sqlite:////srv/ml/mlflow.db") == "sqlite:////srv/ml/predictions.db"
    assert pl.resolve_url(on, "postgresql://u@h/mlflow") == "postgresql://u@h/mlflow"
    with pytest.raises(ConfigError, match=r"prediction_log\.url"):
        pl.resolve_url(on, "http://127.0.0.1:5000")
    custom = pl.PredictionLogSettings(enabled=True, url="sqlite:///elsewhere.db")
    assert pl.resolve_url(custom, "sqlite:///mlflow.db") == "sqlite:///elsewhere.db"
    for off in ("off", "0", "false", ""):
        monkeypatch.setenv(pl.ENV_URL, off)
        assert pl.resolve_url(custom, "sqlite:///mlflow.db") is None
    monkeypatch.setenv(pl.ENV_URL, "on")
    assert pl.resolve_url(None, "sqlite:///a/mlflow.db") == "sqlite:///a/predictions.db"
    monkeypatch.setenv(pl.ENV_URL, "sqlite:///from-env.db")
    assert pl.resolve_url(custom, "sqlite:///mlflow.db") == "sqlite:///from-env.db"
    monkeypatch.setenv(pl.ENV_URL, "nonsense")
    with pytest.raises(ConfigError, match="MLPLATFORM_PREDICTION_LOG: 'nonsense'"):
        pl.resolve_url(custom, "sqlite:///mlflow.db")
    assert "secret" not in pl.mask("postgresql://u:secret@h/db")
    # Reading (feedback, monitor) finds the log whether or not this process writes to it.
    monkeypatch.setenv(pl.ENV_URL, "off")
    off = pl.PredictionLogSettings()
    assert (
        pl.resolve_url(off, "sqlite:///a/mlflow.db", reading=True) == "sqlite:///a/predictions.db"
    )
    assert pl.resolve_url(custom, "sqlite:///a/mlflow.db", reading=True) == "sqlite:///elsewhere.db"
    monkeypatch.delenv(pl.ENV_URL)
    with pytest.raises(ConfigError, match="has no URL"):
        pl.resolve_url(off, "http://127.0.0.1:5000", reading=True)


# ---------------------------------------------------------------------------------------
# The database down or slow: the caller never waits, rows beyond the bound are counted.


def test_unreachable_database_drops_beyond_the_bound_without_blocking(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    log = pl.PredictionLog(url_in(blocker), max_queue_rows=100, close_timeout_s=0.5)
    frame = one_row()
    p = proba()
    times = []
    with caplog.at_level(logging.WARNING, logger="mlplatform.monitoring.prediction_log"):
        for _ in range(1000):
            t0 = time.perf_counter()
            log.record(frame, ["no"], p, classes=CLASSES)
            times.append(time.perf_counter() - t0)
        stats = log.stats()
        assert stats["dropped"] == 900 and stats["queued"] == 100 and stats["written"] == 0
        assert wait_for(lambda: log.stats()["errors"] >= 1)
        # Not a speed target (that is bench/): a caller that waited on the database would
        # take seconds per call here, since the writer is retrying all along.
        assert statistics.median(times) < 0.001
        t0 = time.monotonic()
        closed = log.close()
        assert time.monotonic() - t0 < 5
    assert closed["dropped"] == 1000 and closed["written"] == 0
    assert "FileExistsError" in closed["last_error"]  # the folder cannot be made
    assert "dropped" in caplog.text and "a-file" in caplog.text


def test_a_locked_database_delays_writes_not_callers_and_they_resume(tmp_path):
    url = url_in(tmp_path)
    engine = pl.make_engine(url)
    pl.ensure_schema(engine)
    engine.dispose()
    holder = sqlite3.connect(tmp_path / "predictions.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # a writer elsewhere holding the database
    try:
        log = pl.PredictionLog(url, flush_ms=20, max_queue_rows=100)
        for i in range(500):
            log.record(one_row(i), ["no"], proba(), classes=CLASSES)
        assert log.stats()["dropped"] == 400 and log.stats()["written"] == 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert log.flush(timeout=30)
    assert log.close()["written"] == 100
    assert count_rows(url) == 100


def test_block_waits_for_room_instead_of_dropping(tmp_path):
    url = url_in(tmp_path)
    log = pl.PredictionLog(url, flush_ms=10, batch_rows=5, max_queue_rows=10)
    for i in range(100):
        log.record(one_row(i), ["no"], proba(), classes=CLASSES, block=True, source="score")
    # A request larger than the whole bound still goes in, alone, once the queue is empty.
    big = pd.concat([one_row(i) for i in range(25)], ignore_index=True)
    log.record(big, ["no"] * 25, proba(25), classes=CLASSES, block=True, source="score")
    stats = log.close()
    assert (stats["written"], stats["dropped"]) == (125, 0)


def test_a_request_that_cannot_be_encoded_is_counted_and_the_rest_written(tmp_path):
    url = url_in(tmp_path)
    log = pl.PredictionLog(url, flush_ms=60_000)
    log.record(one_row(1), ["no"], proba(), classes=CLASSES)
    log.record(one_row(2), ["no", "yes"], proba(), classes=CLASSES)  # 2 labels for 1 row
    log.record(one_row(3), ["no"], proba(), classes=CLASSES)
    stats = log.close()
    assert (stats["written"], stats["failed"]) == (2, 1)
    assert "not 1 long" in stats["last_error"]


def _child_records(url: str) -> None:
    log = CHILD_LOG
    for i in range(3):
        log.record(one_row(100 + i), ["yes"], proba(), classes=CLASSES, arm="child")
    log.close()


CHILD_LOG: pl.PredictionLog | None = None


def test_a_forked_worker_writes_its_own_rows_and_never_its_parents(tmp_path):
    global CHILD_LOG
    url = url_in(tmp_path)
    log = CHILD_LOG = pl.PredictionLog(url, flush_ms=60_000, batch_rows=10_000)
    for i in range(4):
        log.record(one_row(i), ["no"], proba(), classes=CLASSES, arm="parent")
    child = FORK.Process(target=_child_records, args=(url,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert log.stats()["queued"] == 4  # the child's close did not touch the parent's queue
    log.close()
    out = pl.read_window(url)
    assert sorted(out["arm"].value_counts().items()) == [("child", 3), ("parent", 4)]


def test_schema_creation_is_idempotent_and_safe_from_several_threads(tmp_path):
    url = url_in(tmp_path)
    errors = []

    def create() -> None:
        engine = pl.make_engine(url)
        try:
            pl.ensure_schema(engine)
        except Exception as exc:  # collected: the assertion below shows them
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    create()
    assert errors == []
    engine = sa.create_engine(url)
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("predictions")}
    engine.dispose()
    assert {"ix_predictions_ts", "ix_predictions_request", "ix_predictions_model"} <= names


def test_the_switch_to_wal_waits_for_a_reader_instead_of_failing(tmp_path):
    # SQLite refuses the journal-mode switch at once ("database is locked", no busy
    # timeout) while another connection reads the file: the CI failure of the test above.
    path = tmp_path / "p.db"
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reader.execute("CREATE TABLE t (x)")
    reader.execute("BEGIN")
    reader.execute("SELECT * FROM t").fetchall()
    other = sqlite3.connect(path, timeout=0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("PRAGMA journal_mode=WAL")
    release = threading.Timer(0.3, lambda: reader.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    use_wal(other, timeout_s=10)
    assert time.monotonic() - started >= 0.2
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    release.join()
    other.close()
    reader.close()
    # once switched, the file stays WAL and a new connection skips the switch
    again = sqlite3.connect(path, timeout=0)
    use_wal(again, timeout_s=0)
    again.close()


# ---------------------------------------------------------------------------------------
# read_window filters, on rows written with known timestamps.

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _seed(url: str) -> None:
    engine = pl.make_engine(url)
    pl.ensure_schema(engine)
    rows = []
    for i in range(10):
        rows.append(
            {
                "request_id": f"r{i}", "row": 0, "ts": T0 + timedelta(hours=i),
                "model_name": "credit-risk" if i < 8 else "other", "model_version": str(1 + i % 2),
                "model_id": None, "arm": "shadow" if i % 2 else "champion",
                "source": "score" if i == 9 else "serve", "key": None,
                "inputs": json.dumps({"x": i, "row": -i}), "prediction": "no",
                "probabilities": json.dumps({"no": 0.5, "yes": 0.5}), "latency_ms": 1.0,
            }
        )  # fmt: skip
    with engine.begin() as conn:
        conn.execute(pl.predictions.insert(), rows)
        conn.execute(
            pl.feedback.insert(),
            [{"request_id": "r3", "row": 0, "label": "yes", "received_at": T0}],
        )
    engine.dispose()


def test_read_window_filters(tmp_path):
    url = url_in(tmp_path)
    _seed(url)

    def ids(**kw) -> list[str]:
        return pl.read_window(url, **kw)["request_id"].tolist()

    assert ids() == [f"r{i}" for i in range(10)]
    assert ids(model_name="other") == ["r8", "r9"]
    assert ids(model_name="credit-risk", version=2) == ["r1", "r3", "r5", "r7"]
    assert ids(arm="champion", source="serve") == ["r0", "r2", "r4", "r6", "r8"]
    assert ids(since=T0 + timedelta(hours=7)) == ["r7", "r8", "r9"]
    assert ids(until="2026-01-01T02:00:00Z") == ["r0", "r1"]
    assert ids(since="2026-01-01 03:00", until=T0 + timedelta(hours=5)) == ["r3", "r4"]
    # A naive bound is UTC; an aware one is converted.
    assert ids(since=datetime(2026, 1, 1, 9)) == ["r9"]
    assert ids(since="2026-01-01T10:00:00+01:00") == ["r9"]
    assert ids(last_n=3) == ["r7", "r8", "r9"]
    assert ids(last_n=2, model_name="credit-risk", arm="shadow") == ["r5", "r7"]
    out = pl.read_window(url)
    assert out.set_index("request_id")["label"].dropna().to_dict() == {"r3": "yes"}
    assert out["x"].tolist() == list(range(10))
    assert out["row_input"].tolist() == [-i for i in range(10)]  # clashes with meta "row"
    with pytest.raises(pl.PredictionLogError, match="since: 'yesterday'"):
        pl.read_window(url, since="yesterday")
    with pytest.raises(pl.PredictionLogError, match="last_n"):
        pl.read_window(url, last_n=0)


def test_read_window_on_a_missing_or_empty_log(tmp_path):
    missing = url_in(tmp_path, "missing.db")
    with pytest.raises(pl.PredictionLogError, match=r"missing\.db: no prediction log there"):
        pl.read_window(missing)
    assert not (tmp_path / "missing.db").exists()
    empty = url_in(tmp_path, "empty.db")
    sqlite3.connect(tmp_path / "empty.db").close()
    out = pl.read_window(empty)
    assert out.empty and list(out.columns) == list(pl.META_COLUMNS)
