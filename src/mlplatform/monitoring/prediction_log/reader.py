"""Reading a window of the log back as one frame: inputs, prediction, probabilities, label."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from mlplatform.monitoring.prediction_log.store import (
    PredictionLogError,
    feedback,
    make_engine,
    mask,
    one_line,
    predictions,
)

PROBA_PREFIX = "probability_"  # the served model's column names (model_format.PROBA_PREFIX)
# The frame's own columns, in order; the probability columns, then the inputs, follow them.
META_COLUMNS = (
    "request_id",
    "row",
    "timestamp",
    "model_name",
    "model_version",
    "model_id",
    "arm",
    "source",
    "key",
    "latency_ms",
    "prediction",
    "label",
    "labelled_at",
)
INPUT_SUFFIX = "_input"  # added to an input column whose name is one of the above


def connect(url: str) -> sa.Engine:
    """An engine on an existing log (a missing SQLite file is an error, not a new database).

    Raises:
        PredictionLogError: the SQLite file does not exist.
    """
    engine = make_engine(url)
    database = engine.url.database
    file_db = engine.dialect.name == "sqlite" and database and database != ":memory:"
    if file_db and not Path(database).is_file():
        engine.dispose()
        raise PredictionLogError(
            f"{mask(url)}: no prediction log there (file not found); was the log on "
            "(MLPLATFORM_PREDICTION_LOG) where the model was served or scored?"
        )
    return engine


def to_utc(value: datetime | str | pd.Timestamp | None, name: str) -> datetime | None:
    """A time bound as an aware UTC datetime; a naive one is taken to be UTC already.

    Raises:
        PredictionLogError: not a date/time.
    """
    if value is None:
        return None
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise PredictionLogError(f"{name}: {value!r} is not a date/time (ISO 8601)") from None
    if pd.isna(stamp):
        raise PredictionLogError(f"{name}: {value!r} is not a date/time (ISO 8601)")
    stamp = stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)
    return stamp.to_pydatetime()


def read_window(
    url: str,
    model_name: str | None = None,
    version: str | int | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    last_n: int | None = None,
    arm: str | None = None,
    source: str | None = None,
) -> pd.DataFrame:
    """Logged predictions, oldest first, with their labels where feedback has arrived.

    Args:
        url: SQLAlchemy URL of the log.
        model_name: only this registered model.
        version: only this version.
        since: from this time on (inclusive; naive times are UTC).
        until: before this time (exclusive).
        last_n: only the most recent n rows that pass the other filters.
        arm: only this arm (champion, shadow, a, b).
        source: only ``serve`` or only ``score`` rows.

    Returns:
        One row per logged row: ``META_COLUMNS`` (``timestamp`` and ``labelled_at`` as UTC
        times; ``label`` missing where no feedback arrived), ``probability_<class>`` per
        class, then the input columns as they were sent (JSON types: numbers, text, null;
        an input column named like a meta column gets the suffix ``_input``).

    Raises:
        PredictionLogError: the log cannot be reached, or a filter value is invalid.
    """
    if last_n is not None and last_n < 1:
        raise PredictionLogError(f"last_n: must be at least 1 (got {last_n})")
    start, end = to_utc(since, "since"), to_utc(until, "until")
    p, f = predictions, feedback
    query = sa.select(
        p.c.request_id, p.c.row, p.c.ts, p.c.model_name, p.c.model_version, p.c.model_id,
        p.c.arm, p.c.source, p.c.key, p.c.latency_ms, p.c.prediction, f.c.label,
        f.c.received_at, p.c.probabilities, p.c.inputs,
    ).select_from(
        p.outerjoin(f, sa.and_(f.c.request_id == p.c.request_id, f.c.row == p.c.row))
    )  # fmt: skip
    for column, wanted in (
        (p.c.model_name, model_name),
        (p.c.model_version, None if version is None else str(version)),
        (p.c.arm, arm),
        (p.c.source, source),
    ):
        if wanted is not None:
            query = query.where(column == wanted)
    if start is not None:
        query = query.where(p.c.ts >= start)
    if end is not None:
        query = query.where(p.c.ts < end)
    if last_n is not None:
        query = query.order_by(p.c.ts.desc(), p.c.id.desc()).limit(last_n)
    else:
        query = query.order_by(p.c.ts, p.c.id)
    engine = connect(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(p.name):
                rows: list[Any] = []
            else:
                rows = list(conn.execute(query).all())
    except sa.exc.SQLAlchemyError as exc:
        raise PredictionLogError(
            f"{mask(url)}: cannot read the prediction log ({one_line(exc)})"
        ) from None
    finally:
        engine.dispose()
    if last_n is not None:
        rows.reverse()
    return _frame(rows)


def _frame(rows: list[Any]) -> pd.DataFrame:
    n_meta = len(META_COLUMNS)
    columns = list(zip(*rows, strict=True)) if rows else [()] * (n_meta + 2)
    pairs = zip(META_COLUMNS, columns[:n_meta], strict=True)
    meta = pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in pairs})
    meta["row"] = meta["row"].astype("int64")
    meta["latency_ms"] = pd.to_numeric(meta["latency_ms"]).astype("float64")
    for name in ("timestamp", "labelled_at"):
        meta[name] = pd.to_datetime(meta[name], utc=True)
    probs = pd.DataFrame.from_records([json.loads(s) if s else {} for s in columns[n_meta]])
    probs = probs.rename(columns=lambda c: f"{PROBA_PREFIX}{c}").astype("float64")
    inputs = pd.DataFrame.from_records([json.loads(s) for s in columns[n_meta + 1]])
    taken = set(META_COLUMNS) | set(probs.columns)
    inputs = inputs.rename(columns=lambda c: f"{c}{INPUT_SUFFIX}" if c in taken else c)
    return pd.concat([meta, probs, inputs], axis=1)
