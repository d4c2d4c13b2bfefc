"""Late labels: join outcomes to logged predictions by request id (and row).

Rules, applied in one transaction (all or nothing on a database error):

- a file without the id or label column, with an empty id or label, or with a row column
  that is not whole numbers is invalid: nothing is written and the error names the file,
  the column and the first rows at fault;
- an id (or id and row) that is not in the log is *unknown*: listed, not written;
- without a row column an id labels its request's only row; an id whose request had several
  rows is *ambiguous*: listed, not written (give a row column);
- a row labelled twice in the file is a *duplicate*: listed, and none of its labels written;
- a row that already has a label in the store keeps it: the new one is *refused* and listed
  (a label is an observed outcome: replacing it silently would hide a data problem; to
  correct one, delete it in the database on purpose).

Everything else is written. With ``strict=True`` any listed row means nothing is written.
Labels are stored as text (``1`` and ``1.0`` in a numeric column both become ``"1"``), like
the logged predicted class, so the two compare directly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from mlplatform.errors import DataValidationError
from mlplatform.monitoring.prediction_log import (
    PredictionLogError,
    ensure_schema,
    feedback,
    make_engine,
    mask,
    predictions,
)
from mlplatform.monitoring.prediction_log.store import one_line

ID, ROW, LABEL = "request_id", "row", "label"
_CHUNK = 500  # ids per IN (...) query: far below SQLite's and PostgreSQL's parameter limits
_SHOWN = 5  # rows named in an error message


@dataclass
class FeedbackSummary:
    """What one import did, every refused entry listed: ``unknown`` as given in the file
    (``id`` or ``id#row``), ``ambiguous`` by id, ``duplicates`` and ``already_labelled`` as the
    logged row they name (``id#row``)."""

    source: str
    rows: int = 0
    written: int = 0
    unknown: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    already_labelled: list[str] = field(default_factory=list)
    strict: bool = False

    @property
    def problems(self) -> int:
        return (
            len(self.unknown) + len(self.ambiguous) + len(self.duplicates)
            + len(self.already_labelled)
        )  # fmt: skip

    def to_dict(self, max_listed: int | None = None) -> dict[str, Any]:
        """The summary as JSON-ready data, with counts, lists cut to ``max_listed``."""
        out = asdict(self)
        for name in ("unknown", "ambiguous", "duplicates", "already_labelled"):
            out[f"n_{name}"] = len(out[name])
            out[name] = out[name][:max_listed] if max_listed is not None else out[name]
        out["problems"] = self.problems
        return out

    def message(self) -> str:
        """One line for people."""
        parts = [f"{self.source}: {self.written} of {self.rows} label(s) recorded"]
        for name, ids in (
            ("unknown id(s)", self.unknown),
            ("ambiguous id(s) (request had several rows: give a row column)", self.ambiguous),
            ("duplicate(s) in the file", self.duplicates),
            ("already labelled (kept the earlier label)", self.already_labelled),
        ):
            if ids:
                shown = ", ".join(ids[:_SHOWN]) + (", ..." if len(ids) > _SHOWN else "")
                parts.append(f"{len(ids)} {name}: {shown}")
        if self.strict and self.problems:
            parts.append("nothing written (strict)")
        return "; ".join(parts)


def read_feedback_file(
    path: Path | str,
    *,
    id_column: str = ID,
    label_column: str = LABEL,
    row_column: str | None = None,
) -> pd.DataFrame:
    """Read the columns a feedback import needs from a CSV or Parquet file, as text.

    Raises:
        DataValidationError: missing file or column, unsupported type, unreadable file.
    """
    path = Path(path)
    wanted = [c for c in (id_column, row_column, label_column) if c is not None]
    if not path.is_file():
        raise DataValidationError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            names = pq.ParquetFile(path).schema_arrow.names
            _require(path, names, wanted)
            return pd.read_parquet(path, columns=wanted)
        if suffix == ".csv":
            names = list(pd.read_csv(path, nrows=0).columns)
            _require(path, names, wanted)
            # Text, and only empty cells missing: a label "NA" or "None" is a label.
            return pd.read_csv(
                path, usecols=wanted, dtype=str, keep_default_na=False, na_values=[""]
            )
    except DataValidationError:
        raise
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataValidationError(f"{path}: cannot read file ({reason})") from None
    raise DataValidationError(f"{path}: unsupported file type '{suffix}' (use .csv or .parquet)")


def _require(path: Path, names: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in names]
    if missing:
        raise DataValidationError(
            f"{path}: no column '{missing[0]}' (columns: {', '.join(map(str, names[:20]))})"
        )


def record_feedback_file(
    url: str,
    path: Path | str,
    *,
    id_column: str = ID,
    label_column: str = LABEL,
    row_column: str | None = None,
    strict: bool = False,
) -> FeedbackSummary:
    """``record_feedback`` on a CSV or Parquet file (what ``mlplatform feedback FILE`` runs).

    Raises:
        DataValidationError: the file is unreadable or invalid (nothing written).
        PredictionLogError: the log cannot be reached (nothing written).
    """
    frame = read_feedback_file(
        path, id_column=id_column, label_column=label_column, row_column=row_column
    )
    return record_feedback(
        url, frame, id_column, label_column, row_column, source=str(path), strict=strict
    )


def record_feedback(
    url: str,
    frame: pd.DataFrame,
    id_column: str = ID,
    label_column: str = LABEL,
    row_column: str | None = None,
    *,
    source: str = "<frame>",
    strict: bool = False,
) -> FeedbackSummary:
    """Join labels to logged predictions and store them (rules in the module docstring).

    Args:
        url: SQLAlchemy URL of the prediction log.
        frame: one label per row, with an id column and optionally a row column.
        id_column: the request id column.
        label_column: the observed outcome column.
        row_column: the row within the request (needed when requests had several rows).
        source: the file name, stored with each label and used in messages.
        strict: write nothing if any row is unknown, ambiguous, duplicate or already labelled.

    Returns:
        What was written and every row that was not, by reason.

    Raises:
        DataValidationError: a column is missing, or an id, row or label is invalid.
        PredictionLogError: the log cannot be reached, or another import labelled the same
            rows at the same moment (nothing written; run again to see them listed).
    """
    ids, rows, labels = _normalise(frame, id_column, label_column, row_column, source)
    summary = FeedbackSummary(source=source, rows=len(ids), strict=strict)
    engine = make_engine(url)
    try:
        ensure_schema(engine)
        with engine.begin() as conn:
            logged = _logged_rows(conn, sorted(set(ids)))
            wanted = _resolve(ids, rows, logged, summary)
            counts = Counter(key for key, _ in wanted)
            summary.duplicates = sorted({_name(*k) for k, c in counts.items() if c > 1})
            fresh = {key: labels[pos] for key, pos in wanted if counts[key] == 1}
            existing = _labelled_rows(conn, sorted({k[0] for k in fresh}))
            summary.already_labelled = sorted(_name(*k) for k in fresh if k in existing)
            if strict and summary.problems:
                return summary
            now = datetime.now(UTC)
            values = [
                {ID: i, ROW: r, LABEL: label, "received_at": now, "source_file": source}
                for (i, r), label in fresh.items()
                if (i, r) not in existing
            ]
            if values:
                conn.execute(feedback.insert(), values)
            summary.written = len(values)
    except sa.exc.IntegrityError:
        raise PredictionLogError(
            f"{mask(url)}: another feedback import labelled some of these rows at the same "
            f"moment; nothing from {source} was written (run again to see them listed)"
        ) from None
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        raise PredictionLogError(
            f"{mask(url)}: cannot record feedback ({one_line(exc)}); nothing was written"
        ) from None
    finally:
        engine.dispose()
    return summary


def _normalise(
    frame: pd.DataFrame, id_column: str, label_column: str, row_column: str | None, source: str
) -> tuple[list[str], list[int | None], list[str]]:
    """Ids, rows (None when not given) and labels as plain values, or a one-line error."""
    for column in (id_column, label_column, row_column):
        if column is not None and column not in frame.columns:
            raise DataValidationError(f"{source}: no column '{column}'")
    if frame.empty:
        raise DataValidationError(f"{source}: no rows")
    ids = _text(frame[id_column], source, id_column)
    labels = _text(frame[label_column], source, label_column)
    rows: list[int | None] = [None] * len(frame)
    if row_column is not None:
        raw = frame[row_column]
        numbers = pd.to_numeric(raw, errors="coerce")
        bad = numbers.isna() | (numbers % 1 != 0) | (numbers < 0)
        if bad.any():
            raise DataValidationError(
                f"{source}: column '{row_column}' must hold whole numbers >= 0 "
                f"(row(s) {_positions(bad)}: {raw[bad].iloc[0]!r})"
            )
        rows = [int(v) for v in numbers]
    return ids, rows, labels


def _text(values: pd.Series, source: str, column: str) -> list[str]:
    empty = values.isna() | (values.astype(str).str.strip() == "")
    if empty.any():
        raise DataValidationError(
            f"{source}: column '{column}' is empty on row(s) {_positions(empty)}"
        )
    if pd.api.types.is_float_dtype(values) and bool((values % 1 == 0).all()):
        values = values.astype(np.int64)  # 1.0 -> "1", as the predicted class was logged
    return [str(v).strip() for v in values.tolist()]


def _positions(mask_: pd.Series) -> str:
    """The first offending data rows, counted from 0 (the header is not a row)."""
    where = np.flatnonzero(mask_.to_numpy())
    return ", ".join(map(str, where[:_SHOWN])) + (", ..." if len(where) > _SHOWN else "")


def _name(request_id: str, row: int | None) -> str:
    return request_id if row is None else f"{request_id}#{row}"


def _logged_rows(conn: sa.Connection, ids: list[str]) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    p = predictions
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        query = sa.select(p.c.request_id, p.c.row).where(p.c.request_id.in_(chunk)).distinct()
        for request_id, row in conn.execute(query):
            found.setdefault(request_id, set()).add(row)
    return found


def _labelled_rows(conn: sa.Connection, ids: list[str]) -> set[tuple[str, int]]:
    found: set[tuple[str, int]] = set()
    f = feedback
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        query = sa.select(f.c.request_id, f.c.row).where(f.c.request_id.in_(chunk))
        found.update((i, r) for i, r in conn.execute(query))
    return found


def _resolve(
    ids: list[str], rows: list[int | None], logged: dict[str, set[int]], summary: FeedbackSummary
) -> list[tuple[tuple[str, int], int]]:
    """((id, row), position in the file) for each label that names a logged row; unknown and
    ambiguous entries go to the summary instead."""
    wanted: list[tuple[tuple[str, int], int]] = []
    unknown, ambiguous = [], []
    for position, (request_id, row) in enumerate(zip(ids, rows, strict=True)):
        known = logged.get(request_id)
        if known is None or (row is not None and row not in known):
            unknown.append(_name(request_id, row))
        elif row is None and len(known) > 1:
            ambiguous.append(request_id)
        else:
            key = (request_id, row if row is not None else next(iter(known)))
            wanted.append((key, position))
    summary.unknown, summary.ambiguous = sorted(set(unknown)), sorted(set(ambiguous))
    return wanted
