"""The prediction log: every scored row, written off the request path, read back as a frame.

``record()`` costs a few microseconds: it appends references to the request's frame and
arrays to an in-memory queue and returns. One daemon thread per process turns queued
requests into rows (JSON built a batch at a time) and inserts them with one executemany per
batch, every ``flush_ms`` or as soon as ``batch_rows`` rows wait. The queue is bounded: when
the database is down or slow, rows beyond ``max_queue_rows`` are dropped and counted (a
warning at most once a minute), write errors are retried with backoff, and nothing is ever
raised into, or waited for on, the request path. What is queued is written at ``close()``
and at interpreter exit (bounded by ``close_timeout_s``).

Fork-safe: the thread and the engine belong to the process that records; a forked worker
(gunicorn, multiprocessing) starts its own on its first ``record`` and never writes what its
parent had queued.

Off unless configured: ``MLPLATFORM_PREDICTION_LOG=<SQLAlchemy URL>`` (so a served model can
turn it on without a new version; ``off`` turns it off), or the ``prediction_log`` params.
SQLite locally (WAL journal, so ``monitor`` can read while a server writes), PostgreSQL in
team mode. Tables are created if missing, under an advisory lock on PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from mlplatform.errors import ConfigError
from mlplatform.monitoring.prediction_log.reader import (
    META_COLUMNS,
    PROBA_PREFIX,
    connect,
    read_window,
)
from mlplatform.monitoring.prediction_log.store import (
    ENV_URL,
    PredictionLogError,
    PredictionLogSettings,
    default_url,
    ensure_schema,
    feedback,
    make_engine,
    mask,
    metadata,
    predictions,
    resolve_url,
)
from mlplatform.monitoring.prediction_log.writer import PredictionLog

__all__ = [
    "ENV_URL",
    "META_COLUMNS",
    "PROBA_PREFIX",
    "PredictionLog",
    "PredictionLogError",
    "PredictionLogSettings",
    "configure",
    "connect",
    "default_url",
    "ensure_schema",
    "feedback",
    "get_log",
    "make_engine",
    "mask",
    "metadata",
    "predictions",
    "read_window",
    "record",
    "resolve_url",
]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_process_log: PredictionLog | None = None
_configured = False


def configure(
    url: str | None, settings: PredictionLogSettings | None = None
) -> PredictionLog | None:
    """Set this process's log (``None``: off), closing the one set before.

    Args:
        url: SQLAlchemy URL, typically ``resolve_url(params.prediction_log, tracking_uri)``.
        settings: batching and bound options (defaults when None).

    Raises:
        ConfigError: ``url`` is not a SQLAlchemy URL.
    """
    global _process_log, _configured
    settings = settings or PredictionLogSettings()
    new = None if url is None else PredictionLog.from_settings(settings, url)
    with _lock:
        old, _process_log, _configured = _process_log, new, True
    if old is not None:
        old.close()
    return new


def get_log() -> PredictionLog | None:
    """This process's log; on first use configured from the environment alone (None when
    ``MLPLATFORM_PREDICTION_LOG`` is unset or off; ``on`` puts it beside a sqlite
    ``MLFLOW_TRACKING_URI``, or in ``predictions.db`` here when that is unset). Call it at
    model load time so a bad value stops the server.

    Raises:
        ConfigError: the variable is neither a SQLAlchemy URL nor on/off.
    """
    if not _configured:
        with _lock:
            if not _configured:
                # The environment only: a served model has no params.yaml to read. Without
                # MLFLOW_TRACKING_URI, MLflow's own default store (and so predictions.db in
                # the working folder, where `mlplatform monitor` looks by default).
                tracking = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
                url = resolve_url(tracking_uri=tracking)
                _set(None if url is None else PredictionLog(url))
    return _process_log


def _set(plog: PredictionLog | None) -> None:
    global _process_log, _configured
    _process_log, _configured = plog, True


def record(*args: Any, **kwargs: Any) -> Any:
    """``PredictionLog.record`` on this process's log; None (and nothing done) when it is off.
    Never raises for the log's configuration or database."""
    try:
        plog = get_log()
    except ConfigError as exc:
        log.error("prediction log off: %s", exc)
        with _lock:
            _set(None)
        return None
    return None if plog is None else plog.record(*args, **kwargs)
