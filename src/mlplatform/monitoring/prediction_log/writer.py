"""The background writer: a bounded in-memory queue drained by one thread per process."""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import sqlalchemy as sa

from mlplatform.monitoring.prediction_log.store import (
    PredictionLogSettings,
    check_url,
    ensure_schema,
    make_engine,
    mask,
    one_line,
    predictions,
)

log = logging.getLogger("mlplatform.monitoring.prediction_log")

WARN_INTERVAL_S = 60.0
_CONVERT_CHUNK = 64  # requests per pandas call in the writer, so it holds the GIL briefly
_TRANSIENT = (OSError, sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)

# ---------------------------------------------------------------------------------------
# The writer.


@dataclass
class _State:
    """One process's queue and thread (replaced wholesale in a forked child)."""

    pid: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    items: collections.deque = field(default_factory=collections.deque)
    waiting_rows: int = 0  # rows in ``items``
    queued_rows: int = 0  # waiting + being written: what the bound counts
    written: int = 0
    dropped: int = 0
    failed: int = 0  # rows refused by the database or not convertible
    errors: int = 0
    last_error: str | None = None
    reported: tuple[int, int, int] = (0, 0, 0)  # dropped, failed, errors at the last warning
    last_warning: float = 0.0
    closing: bool = False
    abandoned: bool = False
    close_deadline: float = float("inf")
    flush_now: bool = False
    thread: threading.Thread | None = None
    engine: sa.Engine | None = None
    schema_ok: bool = False

    def __post_init__(self) -> None:
        self.wake = threading.Condition(self.lock)  # the writer waits on this
        self.space = threading.Condition(self.lock)  # blocking callers and flush() wait here


class PredictionLog:
    """A bounded, batched, background writer of predictions to one database.

    Args:
        url: SQLAlchemy URL of the log database.
        flush_ms: longest time a row waits before its batch is written.
        batch_rows: rows per executemany (a full batch is written at once).
        max_queue_rows: rows held in memory at most; beyond, new rows are dropped and counted.
        close_timeout_s: how long ``close()`` (and interpreter exit) waits for the queue.

    Raises:
        ConfigError: ``url`` is not a SQLAlchemy URL.
    """

    _live: ClassVar[weakref.WeakSet[PredictionLog]] = weakref.WeakSet()

    def __init__(
        self,
        url: str,
        *,
        flush_ms: int = 200,
        batch_rows: int = 1000,
        max_queue_rows: int = 100_000,
        close_timeout_s: float = 5.0,
    ) -> None:
        self.url = check_url(url, "prediction log URL")
        self.flush_s = flush_ms / 1000
        self.batch_rows = batch_rows
        self.max_queue_rows = max_queue_rows
        self.close_timeout_s = close_timeout_s
        self._st = _State(os.getpid())
        self._init_lock = threading.Lock()
        self._closed = False
        PredictionLog._live.add(self)
        atexit.register(_close_at_exit, weakref.ref(self))

    @classmethod
    def from_settings(cls, settings: PredictionLogSettings, url: str) -> PredictionLog:
        return cls(
            url,
            flush_ms=settings.flush_ms,
            batch_rows=settings.batch_rows,
            max_queue_rows=settings.max_queue_rows,
            close_timeout_s=settings.close_timeout_s,
        )

    # -- request path -----------------------------------------------------------------

    def record(
        self,
        inputs: pd.DataFrame | Sequence[dict[str, Any]],
        predictions: Sequence[Any] | np.ndarray | None,
        probabilities: np.ndarray | None = None,
        *,
        classes: Sequence[Any] | None = None,
        model_name: str | None = None,
        model_version: str | int | None = None,
        model_id: str | None = None,
        arm: str | None = None,
        source: Literal["serve", "score"] = "serve",
        request_id: str | Sequence[str] | None = None,
        rows: Sequence[int] | np.ndarray | None = None,
        keys: Sequence[Any] | np.ndarray | None = None,
        latency_ms: float | None = None,
        block: bool = False,
    ) -> str | Sequence[str]:
        """Queue one request's rows; never raises for a database problem, never waits
        unless ``block``. The objects are referenced, not copied: do not modify them after.

        Args:
            inputs: the raw input rows (a frame, or records).
            predictions: the predicted class per row.
            probabilities: rows x classes, in the order of ``classes``.
            classes: the class labels, naming the probability columns.
            model_name: registered model name.
            model_version: registered model version.
            model_id: MLflow logged-model id (or run id) of the model.
            arm: which deployment arm answered (champion, shadow, a, b), if any.
            source: ``serve`` or ``score``.
            request_id: one id for the request, or one per row; a new uuid4 hex if None.
            rows: each row's number (default 0..n-1); batch scoring passes file row numbers.
            keys: a key value per row (e.g. the A/B split key).
            latency_ms: time the model took for the whole request.
            block: wait for room in the queue (batch scoring) instead of dropping rows;
                still drops after ``close_timeout_s`` with the database unreachable.

        Returns:
            The request id (as given, or the generated one).
        """
        rid = uuid.uuid4().hex if request_id is None else request_id
        n = len(inputs)
        item = (
            time.time(), rid, rows, inputs, predictions, probabilities, classes, model_name,
            None if model_version is None else str(model_version), model_id, arm, source,
            keys, latency_ms, n,
        )  # fmt: skip
        st = self._st if self._st.pid == os.getpid() and self._st.thread else self._start()
        with st.lock:
            if self._closed or (
                st.queued_rows
                and st.queued_rows + n > self.max_queue_rows
                and not (block and self._wait_for_room(st, n))
            ):
                st.dropped += n
                return rid
            st.items.append(item)
            st.waiting_rows += n
            st.queued_rows += n
            if st.waiting_rows >= self.batch_rows:
                st.wake.notify()
        return rid

    def _wait_for_room(self, st: _State, n: int) -> bool:
        deadline = time.monotonic() + self.close_timeout_s
        while st.queued_rows and st.queued_rows + n > self.max_queue_rows:
            left = deadline - time.monotonic()
            if left <= 0 or not st.space.wait(left):
                return False
        return True

    def _start(self) -> _State:
        with self._init_lock:
            st = self._st
            if st.pid != os.getpid():
                st = self._st = _State(os.getpid())  # a forked child: the parent's rows stay
            if st.thread is None and not self._closed:
                st.thread = threading.Thread(
                    target=self._run, args=(st,), name="prediction-log-writer", daemon=True
                )
                st.thread.start()
            return st

    # -- control ------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Write what is queued now; True if the queue emptied within ``timeout`` seconds."""
        st = self._st
        if st.pid != os.getpid() or st.thread is None:
            return True
        deadline = time.monotonic() + timeout
        with st.lock:
            st.flush_now = True
            st.wake.notify()
            while st.queued_rows:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                st.space.wait(min(left, 0.05))
            st.flush_now = False
            return st.queued_rows == 0

    def close(self, timeout: float | None = None) -> dict[str, Any]:
        """Write what is queued (up to ``timeout``, default ``close_timeout_s``), stop the
        writer; what could not be written is counted as dropped. Records after this drop.

        Returns:
            ``stats()`` after closing.
        """
        self._closed = True
        st = self._st
        timeout = self.close_timeout_s if timeout is None else timeout
        if st.pid == os.getpid() and st.thread is not None:
            with st.lock:
                st.closing = True
                st.close_deadline = time.monotonic() + timeout
                st.wake.notify()
            st.thread.join(timeout + 1.0)
            with st.lock:
                # A writer still stuck (a connect timeout) no longer counts: its rows are lost.
                st.abandoned = st.thread.is_alive()
                st.dropped += st.queued_rows
                st.items.clear()
                st.waiting_rows = st.queued_rows = 0
            self._warn(st, force=True)
        return self.stats()

    def stats(self) -> dict[str, Any]:
        """Counters of this process: queued, written, dropped, failed, errors, last_error."""
        st = self._st
        with st.lock:
            return {
                "url": mask(self.url),
                "queued": st.queued_rows,
                "written": st.written,
                "dropped": st.dropped,
                "failed": st.failed,
                "errors": st.errors,
                "last_error": st.last_error,
            }

    # -- writer thread ------------------------------------------------------------------

    def _run(self, st: _State) -> None:
        while True:
            with st.lock:
                if not (st.closing or st.flush_now) and st.waiting_rows < self.batch_rows:
                    st.wake.wait(self.flush_s)
                batch, n = [], 0
                while st.items and (n < self.batch_rows or not batch):
                    item = st.items.popleft()
                    batch.append(item)
                    n += item[-1]
                st.waiting_rows -= n
                if not batch and st.closing:
                    break
            try:
                if batch:
                    self._write(st, batch, n)
                self._warn(st)
            except Exception:  # a bug here must not kill the writer and silently fill the queue
                log.exception("prediction log %s: writer error", mask(self.url))
                self._settle(st, n, failed=n, error="writer error (see the log)")
        if st.engine is not None:
            st.engine.dispose()  # here: sqlite connections belong to the thread that made them

    def _write(self, st: _State, batch: list[tuple], n: int) -> None:
        rows, error = _to_rows(batch)
        if not rows:
            self._settle(st, n, failed=n, error=error)
            return
        attempt = 0
        while True:
            try:
                if st.engine is None:
                    st.engine = make_engine(self.url)
                if not st.schema_ok:
                    ensure_schema(st.engine)
                    st.schema_ok = True
                with st.engine.begin() as conn:
                    conn.execute(predictions.insert(), rows)
                self._settle(st, n, written=len(rows), failed=n - len(rows), error=error)
                return
            except Exception as exc:  # e.g. a missing driver: fails like a refused write
                attempt += 1
                st.schema_ok = False  # the tables may have gone with the database
                with st.lock:
                    st.errors += 1
                    st.last_error = one_line(exc)
                transient = isinstance(exc, _TRANSIENT) or getattr(
                    exc, "connection_invalidated", False
                )
                if (not transient and attempt >= 3) or time.monotonic() > st.close_deadline:
                    self._settle(st, n, dropped=n if transient else 0, failed=0 if transient else n)
                    return
                self._warn(st)
                with st.lock:  # back off; close() wakes it so the deadline is honoured
                    left = st.close_deadline - time.monotonic()
                    st.wake.wait(max(0.0, min(0.05 * 2**attempt, 5.0, left)))

    def _settle(
        self, st: _State, n: int, written: int = 0, dropped: int = 0, failed: int = 0,
        error: str | None = None,
    ) -> None:  # fmt: skip
        with st.lock:
            if st.abandoned:  # close() has already counted these rows as dropped
                return
            st.queued_rows -= n
            st.written += written
            st.dropped += dropped
            st.failed += failed
            if error:
                st.errors += 1
                st.last_error = error
            st.space.notify_all()

    def _warn(self, st: _State, force: bool = False) -> None:
        now = time.monotonic()
        with st.lock:
            counts = (st.dropped, st.failed, st.errors)
            if counts == st.reported or (not force and now - st.last_warning < WARN_INTERVAL_S):
                return
            new = [c - r for c, r in zip(counts, st.reported, strict=True)]
            st.reported, st.last_warning, last_error = counts, now, st.last_error
        log.warning(
            "prediction log %s: %d row(s) dropped (queue full or closing), %d refused, "
            "%d write error(s) since the last report; last error: %s",
            mask(self.url), *new, last_error,
        )  # fmt: skip


def _close_at_exit(ref: weakref.ref) -> None:
    plog = ref()
    if plog is not None and not plog._closed:
        plog.close()


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork time would stay held forever in the child.
    for plog in list(PredictionLog._live):
        plog._init_lock = threading.Lock()
        plog._st = _State(os.getpid())


os.register_at_fork(after_in_child=_after_fork_in_child)


def _to_rows(batch: list[tuple]) -> tuple[list[dict[str, Any]], str | None]:
    """Queued requests -> table rows, and the first reason a request could not be encoded
    (that request is left out, not the batch)."""
    encoded = _inputs_json([b[3] for b in batch])
    out: list[dict[str, Any]] = []
    error = None
    for item, lines in zip(batch, encoded, strict=True):
        try:
            if isinstance(lines, Exception):
                raise lines
            out.extend(_item_rows(item, lines))
        except Exception as exc:  # a mismatched length, an unencodable value, ...
            error = error or f"cannot encode a request: {one_line(exc)}"
    return out, error


def _inputs_json(inputs: list[Any]) -> list[list[str] | Exception]:
    """Each request's input rows as JSON text, one pandas call per group of requests with
    the same columns (a call per single-row request costs about ten times more)."""
    out: list[list[str] | Exception] = [[] for _ in inputs]
    frames: dict[int, pd.DataFrame] = {}
    groups: dict[tuple, list[int]] = collections.defaultdict(list)
    for i, raw in enumerate(inputs):
        try:
            frames[i] = raw if isinstance(raw, pd.DataFrame) else pd.DataFrame(list(raw))
            groups[tuple(frames[i].columns)].append(i)
        except Exception as exc:
            out[i] = exc
    for members in groups.values():
        for start in range(0, len(members), _CONVERT_CHUNK):
            part = members[start : start + _CONVERT_CHUNK]
            try:
                joined = pd.concat([frames[i] for i in part], ignore_index=True)
                lines = joined.to_json(orient="records", lines=True, date_format="iso")
            except Exception as exc:  # duplicate column names, an unencodable object
                for i in part:
                    out[i] = exc
                continue
            lines_list, offset = lines.split("\n"), 0
            for i in part:
                out[i] = lines_list[offset : offset + len(frames[i])]
                offset += len(frames[i])
            time.sleep(0)  # let a request thread take the GIL between chunks
    return out


def _item_rows(item: tuple, lines: list[str]) -> list[dict[str, Any]]:
    ts, rid, rows, _, preds, proba, classes, name, version, mid, arm, source, keys, ms, n = item
    stamp = datetime.fromtimestamp(ts, UTC)
    rids = [rid] * n if isinstance(rid, str) else [str(r) for r in rid]
    idx = list(range(n)) if rows is None else [int(r) for r in rows]
    labels = [None] * n if preds is None else [None if p is None else str(p) for p in preds]
    probs: list[str | None] = [None] * n
    if proba is not None:
        proba = np.asarray(proba, dtype=np.float64)
        names = [str(c) for c in (range(proba.shape[1]) if classes is None else classes)]
        probs = [json.dumps(dict(zip(names, r, strict=True))) for r in proba.tolist()]
    key_text = [None] * n if keys is None else [None if k is None else str(k) for k in keys]
    columns = (rids, idx, lines, labels, probs, key_text)
    if any(len(c) != n for c in columns):
        raise ValueError(f"request {rids[0] if rids else '?'}: per-row values are not {n} long")
    return [
        {
            "request_id": r, "row": i, "ts": stamp, "model_name": name,
            "model_version": version, "model_id": mid, "arm": arm, "source": source,
            "key": k, "inputs": js, "prediction": lab, "probabilities": pr, "latency_ms": ms,
        }
        for r, i, js, lab, pr, k in zip(*columns, strict=True)
    ]  # fmt: skip
