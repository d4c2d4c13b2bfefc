"""Batch scoring: CSV or Parquet in, predictions out, in chunks so memory stays flat.

Each output row carries the input row number, the predicted class, the class
probabilities, the registered model name and version, and the scoring timestamp (plus any
``--keep`` columns, such as an identifier). Rows whose values cannot be read (text in a
numeric column, an unparseable date) are listed by row number in ``<output>.errors.csv``
and left out of the output, or stop the run at the first one with ``on_error: fail``.
The output is written to a temporary file and renamed when complete.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mlplatform import model_format
from mlplatform.config import Params
from mlplatform.errors import DataValidationError, ModelError
from mlplatform.io import atomic_path

log = logging.getLogger(__name__)

ROW = "row"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
SCORED_AT = "scored_at"


@dataclass
class ScoreSummary:
    input: str
    output: str
    model_uri: str
    model_name: str | None
    model_version: str | None
    rows_in: int = 0
    rows_scored: int = 0
    rows_failed: int = 0
    seconds: float = 0.0
    errors_file: str | None = None
    chunks: int = 0
    error_examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rows_per_second(self) -> float:
        return self.rows_in / self.seconds if self.seconds else 0.0


# --------------------------------------------------------------------------------------
# The model.


def resolve(params: Params, model_uri: str | None) -> tuple[str, str | None, str | None]:
    """(uri, registered name, version): the champion unless a URI is given."""
    from mlplatform import tracking
    from mlplatform.registry import versions

    client, _ = tracking.setup(params)
    name = params.registry.model_name
    if model_uri is None:
        version = versions.alias_version(client, name, versions.CHAMPION)
        if version is None:
            raise ModelError(
                f"registered model '{name}' has no champion yet; run `mlplatform promote` "
                "or pass --model-uri"
            )
        return f"models:/{name}/{version}", name, version
    m = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([\w-]+))", model_uri)
    if m:
        name, version, alias = m.groups()
        if alias:
            version = versions.alias_version(client, name, alias)
            if version is None:
                raise ModelError(f"registered model '{name}' has no alias '{alias}'")
        return f"models:/{name}/{version}", name, version
    return model_uri, None, None


def load_scorer(uri: str) -> model_format.TabularModel:
    """The model behind a URI, if it is one of ours (anything else could run code).

    Raises:
        ModelError: the model cannot be fetched, or is not an mlplatform model.
    """
    pyfunc = model_format.load_pyfunc(uri)
    return pyfunc._model_impl


# --------------------------------------------------------------------------------------
# Reading and writing in chunks.


def _csv_batches(path: Path, columns: list[str], chunk_rows: int) -> Iterator[pa.RecordBatch]:
    from pyarrow import csv

    # Model columns are read as text and typed by the model's own coercion, so one bad
    # value marks one row instead of failing a whole block.
    convert = csv.ConvertOptions(
        column_types=dict.fromkeys(columns, pa.string()),
        strings_can_be_null=True,
        include_columns=columns,  # other columns are never read (nor type-inferred)
    )
    reader = csv.open_csv(
        path, read_options=csv.ReadOptions(block_size=1 << 22), convert_options=convert
    )
    pending: list[pa.RecordBatch] = []
    size = 0
    for batch in reader:
        pending.append(batch)
        size += batch.num_rows
        while size >= chunk_rows:
            table = pa.Table.from_batches(pending)
            yield from table.slice(0, chunk_rows).to_batches(max_chunksize=chunk_rows)[:1]
            rest = table.slice(chunk_rows)
            pending, size = rest.to_batches(), rest.num_rows
    if size:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def read_chunks(path: Path, chunk_rows: int, columns: list[str]) -> tuple[Iterator, int | None]:
    """Record batches of at most chunk_rows rows, and the total row count when known.

    Raises:
        DataValidationError: unreadable or unsupported file, or a model column missing.
    """
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataValidationError(f"{path}: file not found")
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            missing = [c for c in columns if c not in names]
            if missing:
                raise DataValidationError(f"{path}: missing column(s) {', '.join(missing)}")
            return pf.iter_batches(batch_size=chunk_rows, columns=columns), pf.metadata.num_rows
        if suffix == ".csv":
            from pyarrow import csv

            header = csv.open_csv(path, read_options=csv.ReadOptions(block_size=1 << 16)).schema
            missing = [c for c in columns if c not in header.names]
            if missing:
                raise DataValidationError(f"{path}: missing column(s) {', '.join(missing)}")
            return _csv_batches(path, columns, chunk_rows), None
    except DataValidationError:
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataValidationError(
            f"{path}: cannot read file ({str(exc).splitlines()[0][:200]})"
        ) from None
    raise DataValidationError(f"{path}: unsupported file type '{suffix}' (use .csv or .parquet)")


class _Writer:
    """Streams tables to Parquet or CSV at a temporary path."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt, self._w = path, fmt, None

    def write(self, table: pa.Table) -> None:
        if self._w is None:
            if self.fmt == "parquet":
                import pyarrow.parquet as pq

                self._w = pq.ParquetWriter(self.path, table.schema, compression="snappy")
            else:
                from pyarrow import csv

                self._w = csv.CSVWriter(self.path, table.schema)
        self._w.write_table(table)

    def close(self) -> None:
        if self._w is not None:
            self._w.close()


# --------------------------------------------------------------------------------------
# Scoring.


def _errors(
    frame: pd.DataFrame, invalid: dict[str, np.ndarray], offset: int, specs: dict[str, str]
) -> list[dict[str, Any]]:
    rows = []
    for col, mask in invalid.items():
        for i in np.flatnonzero(mask):
            rows.append(
                {
                    ROW: offset + int(i),
                    "column": col,
                    "value": str(frame[col].iat[i]),
                    "error": f"not a valid {specs.get(col, 'value')}",
                }
            )
    return rows


def score_frame(
    scorer: model_format.TabularModel, frame: pd.DataFrame
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Predictions for the readable rows of a chunk, and per column the unreadable ones."""
    x, invalid = scorer.transform(frame)
    bad = np.zeros(len(frame), dtype=bool)
    for mask in invalid.values():
        bad |= mask
    return scorer.to_frame(scorer.predict_matrix(x[~bad] if bad.any() else x)), invalid


def run_score(
    params: Params,
    input_path: Path,
    output_path: Path,
    *,
    model_uri: str | None = None,
    chunk_rows: int | None = None,
    on_error: str | None = None,
    keep: list[str] | None = None,
    progress: bool | None = None,
) -> ScoreSummary:
    """Score a file in chunks and write predictions atomically.

    Raises:
        DataValidationError: bad input file, or a bad row with on_error=fail.
        ModelError: the model cannot be found or loaded.
    """
    from tqdm import tqdm

    chunk_rows = chunk_rows or params.score.chunk_rows
    on_error = on_error or params.score.on_error
    keep = keep or []
    fmt = "csv" if output_path.suffix.lower() == ".csv" else "parquet"
    uri, name, version = resolve(params, model_uri)
    scorer = load_scorer(uri)
    scorer.set_threads(os.cpu_count() or 1)
    columns = scorer.input_names
    kinds = {
        s.name: {"numeric": "number", "datetime": "date"}.get(s.kind, s.kind) for s in scorer.specs
    }
    batches, total = read_chunks(input_path, chunk_rows, list(dict.fromkeys([*columns, *keep])))
    summary = ScoreSummary(str(input_path), str(output_path), uri, name, version)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    errors: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    bar = tqdm(
        total=total,
        unit="rows",
        unit_scale=True,
        disable=progress is False or None,
        desc=f"scoring {input_path.name}",
    )
    with atomic_path(output_path, f".{fmt}") as tmp:
        writer = _Writer(tmp, fmt)
        try:
            for batch in batches:
                frame = batch.to_pandas()
                offset = summary.rows_in
                out, invalid = score_frame(scorer, frame)
                bad_rows = _errors(frame, invalid, offset, kinds)
                if bad_rows and on_error == "fail":
                    first = min(bad_rows, key=lambda r: r[ROW])
                    raise DataValidationError(
                        f"{input_path}: row {first[ROW]}, column '{first['column']}': value "
                        f"{first['value']!r} is {first['error']} (use on_error: report to "
                        "skip bad rows)"
                    )
                good = np.ones(len(frame), dtype=bool)
                for mask in invalid.values():
                    good &= ~mask
                rows = np.flatnonzero(good) + offset
                table = {ROW: rows}
                for col in keep:
                    table[col] = frame[col].to_numpy()[good]
                for col in out.columns:
                    table[col] = out[col].to_numpy()
                result = pa.table(table)
                result = result.append_column(MODEL_NAME, pa.array([name] * len(rows), pa.string()))
                result = result.append_column(
                    MODEL_VERSION, pa.array([version] * len(rows), pa.string())
                )
                result = result.append_column(SCORED_AT, pa.array([stamp] * len(rows), pa.string()))
                writer.write(result)
                errors.extend(bad_rows)
                summary.rows_in += len(frame)
                summary.rows_scored += len(rows)
                summary.chunks += 1
                bar.update(len(frame))
        except pa.ArrowInvalid as exc:  # a malformed line further into the file
            raise DataValidationError(
                f"{input_path}: cannot read the file after row {summary.rows_in} "
                f"({str(exc).splitlines()[0][:200]}); nothing was written"
            ) from None
        finally:
            writer.close()
            bar.close()
        if summary.rows_in == 0:
            raise DataValidationError(f"{input_path}: no rows to score")
    summary.seconds = time.perf_counter() - t0
    failed_rows = sorted({e[ROW] for e in errors})
    summary.rows_failed = len(failed_rows)
    errors_path = output_path.with_name(output_path.name + ".errors.csv")
    if errors:
        with atomic_path(errors_path, ".csv") as tmp:
            pd.DataFrame(errors).sort_values([ROW, "column"]).to_csv(tmp, index=False)
        summary.errors_file = str(errors_path)
        summary.error_examples = sorted(errors, key=lambda e: e[ROW])[:5]
    elif errors_path.exists():
        errors_path.unlink()  # from an earlier run of the same output
    log.info(
        "scored %d of %d rows with %s v%s in %.1f s (%.0f rows/s); %d rows failed%s",
        summary.rows_scored,
        summary.rows_in,
        name or uri,
        version,
        summary.seconds,
        summary.rows_per_second,
        summary.rows_failed,
        f" (see {errors_path})" if errors else "",
    )
    return summary
