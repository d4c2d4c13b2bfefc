"""Batch scoring: CSV or Parquet in, predictions out, in chunks so memory stays flat.

Each output row carries the input row number (``row``: the record's 0-based position among
the data rows, the header not counted), the predicted class, the class probabilities, the
registered model name and version, and the scoring timestamp (plus any ``--keep`` columns,
such as an identifier). Rows whose values cannot be read (see ``mlplatform.data.columns``
for what each kind accepts) are listed by row number in ``<output>.errors.csv`` and left
out of the output, or stop the run at the first one with ``on_error: fail``.

Nothing is lost silently: every run checks that the rows the reader produced equal the rows
scored plus the rows reported bad (and, for Parquet, the row count in the file's footer);
otherwise it fails and writes nothing. The output is written to a temporary file and
renamed when complete.

With the prediction log on (``prediction_log.enabled`` in params, or
``MLPLATFORM_PREDICTION_LOG``), every scored row is also recorded there (source ``score``),
under one request id per run and its file row number, so late labels join on
(request id, row).
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
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
from mlplatform.data.ingest import sniff_delimiter
from mlplatform.errors import DataValidationError, MlplatformError, ModelError
from mlplatform.io import atomic_path
from mlplatform.monitoring import served

log = logging.getLogger(__name__)

ROW = "row"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
SCORED_AT = "scored_at"
# pyarrow's CSV read block (bytes); a chunk of rows may span several blocks.
CSV_BLOCK_SIZE = 1 << 22
OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


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
    request_id: str | None = None  # set when the rows were recorded in the prediction log
    rows_logged: int = 0
    rows_not_logged: int = 0

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


def _tracking_uri(params: Params) -> str:
    from mlplatform import tracking

    return tracking.tracking_uri(params)


def load_scorer(uri: str) -> model_format.TabularModel:
    """The model behind a URI, if it is one of ours (anything else could run code).

    Raises:
        ModelError: the model cannot be fetched, or is not an mlplatform model.
    """
    pyfunc = model_format.load_pyfunc(uri)
    return pyfunc._model_impl


# --------------------------------------------------------------------------------------
# Reading and writing in chunks.


@dataclass
class Source:
    """Record batches of at most ``chunk_rows`` rows, and how many rows the reader produced.

    ``rows_read`` counts the reader's own batches before they are cut into chunks, so a
    chunk that lost rows shows up as a difference (``run_score`` checks it on every run).
    """

    path: Path
    batches: Iterator[pa.RecordBatch]
    declared_rows: int | None = None  # Parquet: the row count in the footer
    rows_read: int = 0


def _rechunk(source: Source, batches: Iterator[pa.RecordBatch], chunk_rows: int):
    """The reader's batches cut into chunks of exactly ``chunk_rows`` rows (the last fewer)."""
    pending: list[pa.RecordBatch] = []
    size = 0
    for batch in batches:
        source.rows_read += batch.num_rows
        if not pending and batch.num_rows == chunk_rows:
            yield batch  # already a chunk (Parquet batches usually are): no copy
            continue
        pending.append(batch)
        size += batch.num_rows
        while size >= chunk_rows:
            table = pa.Table.from_batches(pending)
            # One batch per chunk. A chunk spanning two read blocks holds two pieces per
            # column; combine_chunks joins them (taking the first piece only lost rows).
            yield _one_batch(table.slice(0, chunk_rows))
            rest = table.slice(chunk_rows)
            pending, size = rest.to_batches(), rest.num_rows
    if size:
        yield _one_batch(pa.Table.from_batches(pending))


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    batches = table.combine_chunks().to_batches()
    return batches[0] if len(batches) == 1 else pa.RecordBatch.from_pylist([], table.schema)


def _csv_source(path: Path, columns: list[str], chunk_rows: int, delimiter: str) -> Source:
    from pyarrow import csv

    # Model columns are read as text and typed by the model's own coercion, so one bad
    # value marks one row instead of failing a whole block.
    convert = csv.ConvertOptions(
        column_types=dict.fromkeys(columns, pa.string()),
        strings_can_be_null=True,
        # The spellings of missing pandas reads at ingest (pyarrow's lacks the last two).
        null_values=[*csv.ConvertOptions().null_values, "None", "<NA>"],
        include_columns=columns,  # other columns are never read (nor type-inferred)
    )

    def blocks() -> Iterator[pa.RecordBatch]:
        reader = csv.open_csv(
            path,
            read_options=csv.ReadOptions(block_size=CSV_BLOCK_SIZE),
            parse_options=csv.ParseOptions(delimiter=delimiter),
            convert_options=convert,
        )
        yield from reader

    source = Source(path, iter(()))
    source.batches = _rechunk(source, blocks(), chunk_rows)
    return source


def _parquet_source(path: Path, columns: list[str], chunk_rows: int) -> Source:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataValidationError(f"{path}: missing column(s) {', '.join(missing)}")
    source = Source(path, iter(()), declared_rows=pf.metadata.num_rows)
    source.batches = _rechunk(
        source, pf.iter_batches(batch_size=chunk_rows, columns=columns), chunk_rows
    )
    return source


def read_chunks(path: Path, chunk_rows: int, columns: list[str]) -> Source:
    """The file's records in chunks of ``chunk_rows`` rows (only the given columns).

    Raises:
        DataValidationError: unreadable or unsupported file, or a model column missing.
    """
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataValidationError(f"{path}: file not found")
    try:
        if suffix in (".parquet", ".pq"):
            return _parquet_source(path, columns, chunk_rows)
        if suffix == ".csv":
            from pyarrow import csv

            delimiter = sniff_delimiter(path)
            header = csv.open_csv(
                path,
                read_options=csv.ReadOptions(block_size=1 << 16),
                parse_options=csv.ParseOptions(delimiter=delimiter),
            ).schema
            missing = [c for c in columns if c not in header.names]
            if missing:
                raise DataValidationError(f"{path}: missing column(s) {', '.join(missing)}")
            return _csv_source(path, columns, chunk_rows, delimiter)
    except MlplatformError:
        raise
    except (pa.ArrowException, OSError) as exc:
        raise DataValidationError(f"{path}: cannot read file ({_arrow_reason(exc)})") from None
    raise DataValidationError(f"{path}: unsupported file type '{suffix}' (use .csv or .parquet)")


def _arrow_reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if "invalid UTF8" in text:
        return f"{text}; the file is not UTF-8 text: save it as UTF-8"
    return text


def check_paths(input_path: Path, output_path: Path, chunk_rows: int) -> str:
    """Refuse an output that cannot be written safely before any work is done.

    Returns:
        The output format (parquet or csv).

    Raises:
        DataValidationError: an unknown output type, a folder, the input itself, or a
            chunk size that is not a positive number of rows.
    """
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise DataValidationError(
            f"--chunk-rows must be a positive number of rows (got {chunk_rows!r})"
        )
    if output_path.is_dir():
        raise DataValidationError(f"{output_path}: is a folder; give a file name for the output")
    fmt = OUTPUT_FORMATS.get(output_path.suffix.lower())
    if fmt is None:
        raise DataValidationError(
            f"{output_path}: unsupported output type '{output_path.suffix}' "
            f"(use {', '.join(OUTPUT_FORMATS)})"
        )
    errors_path = errors_file(output_path)
    for path in (output_path, errors_path):
        if path.exists() and input_path.exists() and os.path.samefile(path, input_path):
            raise DataValidationError(
                f"{path}: is the input file; scoring would replace it (choose another output)"
            )
    return fmt


def errors_file(output_path: Path) -> Path:
    return output_path.with_name(output_path.name + ".errors.csv")


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
        DataValidationError: bad input file or output path, or a bad row with on_error=fail.
        ModelError: the model cannot be found or loaded.
        MlplatformError: rows read and rows accounted for differ (nothing is written).
    """
    from tqdm import tqdm

    chunk_rows = params.score.chunk_rows if chunk_rows is None else chunk_rows
    on_error = on_error or params.score.on_error
    keep = keep or []
    fmt = check_paths(input_path, output_path, chunk_rows)
    uri, name, version = resolve(params, model_uri)
    scorer = load_scorer(uri)
    scorer.set_threads(os.cpu_count() or 1)
    columns = scorer.input_names
    kinds = {
        s.name: {"numeric": "number", "datetime": "date"}.get(s.kind, s.kind) for s in scorer.specs
    }
    source = read_chunks(input_path, chunk_rows, list(dict.fromkeys([*columns, *keep])))
    summary = ScoreSummary(str(input_path), str(output_path), uri, name, version)
    plog = served.open_log(params.prediction_log, _tracking_uri(params))
    logged_before = plog.stats()["written"] if plog is not None else 0
    if plog is not None:
        summary.request_id = uuid.uuid4().hex
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    errors: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    bar = tqdm(
        total=source.declared_rows,
        unit="rows",
        unit_scale=True,
        disable=progress is False or None,
        desc=f"scoring {input_path.name}",
    )
    written = 0
    with atomic_path(output_path, f".{fmt}") as tmp:
        writer = _Writer(tmp, fmt)
        try:
            for batch in source.batches:
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
                if plog is not None and len(rows):
                    proba = model_format.probabilities(out, scorer.classes)
                    labels = out[model_format.PREDICTION].to_numpy()
                    served.record_chunk(
                        plog, scorer, frame, good, labels, proba, rows, (name, version),
                        summary.request_id,
                    )  # fmt: skip
                written += result.num_rows
                errors.extend(bad_rows)
                summary.rows_in += len(frame)
                summary.rows_scored += len(rows)
                summary.chunks += 1
                bar.update(len(frame))
        except pa.ArrowException as exc:  # a malformed line further into the file
            raise DataValidationError(
                f"{input_path}: cannot read the file after row {summary.rows_in} "
                f"({_arrow_reason(exc)}); nothing was written"
            ) from None
        finally:
            writer.close()
            bar.close()
        if summary.rows_in == 0:
            raise DataValidationError(f"{input_path}: no rows to score")
        summary.rows_failed = len({e[ROW] for e in errors})
        check_accounting(source, summary.rows_in, written, summary.rows_failed)
    summary.seconds = time.perf_counter() - t0
    if plog is not None:
        plog.flush(timeout=max(60.0, params.prediction_log.close_timeout_s))
        summary.rows_logged = plog.stats()["written"] - logged_before
        summary.rows_not_logged = summary.rows_scored - summary.rows_logged
    errors_path = errors_file(output_path)
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


def check_accounting(source: Source, chunked: int, written: int, bad: int) -> None:
    """Every row read is either written or reported bad, exactly once.

    Raises:
        MlplatformError: the counts differ (a bug: the run fails before anything is renamed
            into place, so nothing is written).
    """
    problems = []
    if source.rows_read != chunked:
        problems.append(f"the reader produced {source.rows_read:,} rows, {chunked:,} scored")
    if chunked != written + bad:
        problems.append(f"{chunked:,} rows read, {written:,} written and {bad:,} reported bad")
    if source.declared_rows is not None and source.declared_rows != source.rows_read:
        problems.append(
            f"the file declares {source.declared_rows:,} rows, {source.rows_read:,} read"
        )
    if problems:
        raise MlplatformError(
            f"{source.path}: rows do not add up ({'; '.join(problems)}); nothing was written "
            "(this is a bug in mlplatform score: please report it)"
        )
