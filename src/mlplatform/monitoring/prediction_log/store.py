"""The log's tables, its URL (params or environment), and engines that suit it."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.schema import CreateIndex, CreateTable

from mlplatform.errors import ConfigError, MlplatformError
from mlplatform.monitoring.settings import PredictionLogSettings

ENV_URL = "MLPLATFORM_PREDICTION_LOG"
OFF_WORDS = ("", "0", "off", "false", "no", "none")
ON_WORDS = ("1", "on", "true", "yes")
_LOCK_KEY = 0x6D6C706C6F67  # "mlplog": the PostgreSQL advisory lock around table creation

# ---------------------------------------------------------------------------------------
# Schema.

metadata = sa.MetaData()
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # sqlite autoincrements INTEGER only

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(), nullable=False),
    sa.Column("row", sa.Integer(), nullable=False),  # position within the request
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),  # UTC
    sa.Column("model_name", sa.String()),
    sa.Column("model_version", sa.String()),
    sa.Column("model_id", sa.String()),  # MLflow logged-model id or run id
    sa.Column("arm", sa.String()),  # champion / shadow / a / b, or null
    sa.Column("source", sa.String(), nullable=False),  # serve / score
    sa.Column("key", sa.String()),  # the A/B key value, if any
    sa.Column("inputs", sa.Text(), nullable=False),  # the raw input row, JSON object
    sa.Column("prediction", sa.String()),  # the predicted class, as text
    sa.Column("probabilities", sa.Text()),  # JSON object class -> probability
    sa.Column("latency_ms", sa.Float()),  # the model call, for the whole request
    sa.Index("ix_predictions_ts", "ts"),
    sa.Index("ix_predictions_request", "request_id", "row"),
    sa.Index("ix_predictions_model", "model_name", "model_version"),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(), nullable=False),
    sa.Column("row", sa.Integer(), nullable=False),
    sa.Column("label", sa.String(), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("source_file", sa.String()),
    # One label per scored row: a second one is refused (see feedback.py), also when two
    # imports race.
    sa.UniqueConstraint("request_id", "row", name="uq_feedback_request_row"),
)


class PredictionLogError(MlplatformError):
    """The prediction log cannot be reached or read."""


def mask(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<unparseable URL>"


def default_url(tracking_uri: str) -> str | None:
    """Where the log goes by default: ``predictions.db`` beside a sqlite tracking store, the
    same database for a PostgreSQL one; None when it cannot be derived (an http server)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        return f"sqlite:///{db.with_name('predictions.db')}"
    if tracking_uri.startswith(("postgresql:", "postgresql+")):
        return tracking_uri
    return None


def resolve_url(
    settings: PredictionLogSettings | None = None,
    tracking_uri: str | None = None,
    *,
    reading: bool = False,
) -> str | None:
    """The log's URL, or None when it is off. The environment variable wins over params.

    Args:
        settings: the ``prediction_log`` params section (defaults: off).
        tracking_uri: the MLflow tracking URI, for the default location.
        reading: for commands that read the log (``feedback``, ``monitor``): where the log
            is, whether or not this process would write to it; never None.

    Raises:
        ConfigError: the variable is neither a URL nor on/off, or the log is on (or being
            read) without a URL that can be derived from the tracking store.
    """
    settings = settings or PredictionLogSettings()
    raw = os.environ.get(ENV_URL)
    word = None if raw is None else raw.strip().lower()
    if word is not None and word not in OFF_WORDS + ON_WORDS:
        return check_url(raw.strip(), ENV_URL)
    if not reading and (word in OFF_WORDS or (word is None and not settings.enabled)):
        return None
    if settings.url:
        return check_url(settings.url, "prediction_log.url")
    derived = default_url(tracking_uri) if tracking_uri else None
    if derived is None:
        raise ConfigError(
            f"the prediction log has no URL: set prediction_log.url or {ENV_URL} to a "
            "SQLAlchemy URL (e.g. sqlite:///predictions.db)"
        )
    return derived


def check_url(url: str, where: str) -> str:
    try:
        sa.make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigError(
            f"{where}: {url!r} is not a SQLAlchemy URL (e.g. sqlite:///predictions.db or "
            "postgresql://user@host/db), nor on/off"
        ) from None
    return url


def make_engine(url: str) -> sa.Engine:
    """An engine for the log: WAL journal on SQLite; on PostgreSQL a connect timeout, and
    psycopg2 for a bare ``postgresql://`` URL."""
    u = sa.make_url(url)
    if u.get_backend_name() == "sqlite":
        engine = sa.create_engine(u, connect_args={"timeout": 10})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL: readers never block the writer; NORMAL is durable enough for a log.
            use_wal(dbapi_conn)
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")

        return engine
    args = {}
    if u.get_backend_name() == "postgresql":
        args["connect_timeout"] = 5
        if u.drivername == "postgresql":
            # SQLAlchemy 2.1 defaults to psycopg 3; the project pins psycopg2(-binary).
            u = u.set(drivername="postgresql+psycopg2")
    return sa.create_engine(u, pool_pre_ping=True, connect_args=args)


def use_wal(dbapi_conn: Any, timeout_s: float = 10.0) -> None:
    """Switch a SQLite file to the WAL journal, waiting for other connections.

    The switch needs the file to itself and SQLite answers "database is locked" at once,
    without the busy timeout, when another connection is opening it at the same moment
    (several threads or processes starting the log together). WAL is a property of the
    file: once one connection has switched it, the others find it set and skip.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            mode = dbapi_conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() in ("wal", "memory"):
                return
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def ensure_schema(engine: sa.Engine) -> None:
    """Create the tables and indexes if missing; safe when two processes start at once."""
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        if all(inspector.has_table(t.name) for t in metadata.sorted_tables):
            return  # the usual case; also lets a user without CREATE rights write
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # IF NOT EXISTS alone can still collide in pg_type when two sessions race.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        for table in metadata.sorted_tables:
            conn.execute(CreateTable(table, if_not_exists=True))
            for index in sorted(table.indexes, key=lambda i: i.name):
                conn.execute(CreateIndex(index, if_not_exists=True))


def one_line(exc: BaseException) -> str:
    """An exception as one short line (the DBAPI's own message when there is one)."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"
