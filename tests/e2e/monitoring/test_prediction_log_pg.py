"""The prediction log and feedback on the real PostgreSQL (team mode), in a fresh database
created for this module and dropped afterwards, also when a test fails."""

from __future__ import annotations

import logging
import multiprocessing as mp
import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from mlplatform.monitoring import feedback as fb
from mlplatform.monitoring import prediction_log as pl

pytestmark = pytest.mark.e2e

SERVER = "postgresql://postgres@127.0.0.1:5432"
FORK = mp.get_context("fork")
CLASSES = ["no", "yes"]
# A session time zone far from UTC: stored and filtered times must not depend on it.
TOKYO = "?options=" + quote("-c timezone=Asia/Tokyo")


@pytest.fixture(scope="module")
def pg_url():
    pytest.importorskip("psycopg2")  # pinned (psycopg2-binary): a failure here is an install bug
    admin = pl.make_engine(f"{SERVER}/postgres").execution_options(isolation_level="AUTOCOMMIT")
    name = f"mlp_predlog_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"no PostgreSQL at {SERVER}: {str(exc.orig).strip().splitlines()[0]}")
    try:
        yield f"{SERVER}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _write(url: str, arm: str, n: int) -> None:
    log = pl.PredictionLog(url, flush_ms=20, batch_rows=200)
    for i in range(n):
        frame = pd.DataFrame([{"x": float(i), "arm_seen": arm, "missing": None}])
        log.record(
            frame, ["yes" if i % 3 else "no"], np.array([[0.3, 0.7]]), classes=CLASSES,
            model_name="credit-risk", model_version=1 if arm == "champion" else 2, arm=arm,
            request_id=f"{arm}-{i}", latency_ms=2.0,
        )  # fmt: skip
    stats = log.close(timeout=60)
    if stats["written"] != n:
        raise SystemExit(f"{arm}: {stats}")


def test_two_processes_start_on_an_empty_database_and_write_everything(pg_url):
    # Both create the tables at the same moment (advisory lock), then write concurrently.
    url = pg_url + TOKYO
    procs = [FORK.Process(target=_write, args=(url, arm, 1500)) for arm in ("champion", "shadow")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0, 0]

    out = pl.read_window(url)
    assert len(out) == 3000
    assert out.groupby("arm")["model_version"].agg(set).to_dict() == {
        "champion": {"1"},
        "shadow": {"2"},
    }
    assert (out["arm"] == out["arm_seen"]).all() and out["missing"].isna().all()
    assert out["timestamp"].is_monotonic_increasing
    now = datetime.now(UTC)
    assert (now - out["timestamp"].min().to_pydatetime()) < timedelta(minutes=10)
    assert out["timestamp"].max().to_pydatetime() <= now + timedelta(seconds=5)
    assert len(pl.read_window(url, arm="shadow", last_n=10)) == 10
    assert pl.read_window(pg_url, since=now + timedelta(minutes=1)).empty
    shadow = pl.read_window(pg_url, model_name="credit-risk", version=2)
    assert set(shadow["request_id"]) == {f"shadow-{i}" for i in range(1500)}


def test_feedback_on_postgres_with_two_imports_racing(pg_url):
    ids = [f"champion-{i}" for i in range(300)]
    frame = pd.DataFrame({"request_id": [*ids, "champion-0", "ghost"], "label": ["yes"] * 302})
    first = fb.record_feedback(pg_url, frame, source="batch-1.csv")
    assert first.written == 299 and first.duplicates == ["champion-0#0"]
    assert first.unknown == ["ghost"]

    more = pd.DataFrame({"request_id": [f"shadow-{i}" for i in range(500)], "label": ["no"] * 500})
    outcomes: list[object] = []

    def run() -> None:
        try:
            outcomes.append(fb.record_feedback(pg_url, more, source="race.csv"))
        except pl.PredictionLogError as exc:  # the loser of the race, rolled back
            outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # One import wins; the other either saw its labels (all refused) or lost the race at
    # the unique constraint and was rolled back. Never both written, never half.
    assert len(outcomes) == 2
    summaries = sorted((o for o in outcomes if isinstance(o, fb.FeedbackSummary)), key=_written)
    errors = [o for o in outcomes if isinstance(o, pl.PredictionLogError)]
    assert [s.written for s in summaries] in ([500], [0, 500])
    if errors:
        assert "another feedback import" in str(errors[0])
    else:
        assert len(summaries[0].already_labelled) == 500

    window = pl.read_window(pg_url)
    assert window["label"].notna().sum() == 799
    shadow = window[window["arm"] == "shadow"].set_index("request_id")["label"]
    assert shadow.dropna().to_dict() == {f"shadow-{i}": "no" for i in range(500)}


def _written(summary: fb.FeedbackSummary) -> int:
    return summary.written


def test_postgres_refusing_connections_never_reaches_the_caller(caplog):
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        url = f"postgresql://postgres:s3cret@127.0.0.1:{port}/nowhere"
        log = pl.PredictionLog(url, max_queue_rows=50, close_timeout_s=0.5)
        with caplog.at_level(logging.WARNING, logger="mlplatform.monitoring.prediction_log"):
            for i in range(500):
                log.record(
                    pd.DataFrame([{"x": i}]), ["no"], np.array([[0.9, 0.1]]), classes=CLASSES
                )
            assert log.stats()["dropped"] == 450
            stats = log.close()
    assert stats["dropped"] == 500 and stats["written"] == 0
    assert "OperationalError" in stats["last_error"]
    assert "s3cret" not in caplog.text and "***" in caplog.text
    with pytest.raises(pl.PredictionLogError, match="cannot read the prediction log") as err:
        pl.read_window(url)
    assert "s3cret" not in str(err.value)
