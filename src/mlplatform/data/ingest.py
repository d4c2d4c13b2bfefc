"""Ingest: materialise the source data under data/raw as a DVC output.

The source is a CSV or Parquet file, or a built-in dataset (see ``mlplatform.data.datasets``).
Structural problems (unreadable or empty file, duplicate column names) stop here with a
one-line error; nothing is written unless the whole read succeeds.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path

import pandas as pd

from mlplatform.config import Params, Paths
from mlplatform.data import datasets
from mlplatform.errors import DataValidationError
from mlplatform.io import file_md5, write_json, write_parquet

log = logging.getLogger(__name__)


DELIMITERS = ",;\t|"
_SAMPLE_BYTES = 1 << 16


def _duplicates(names: list[str]) -> list[str]:
    return [name for name, n in Counter(names).items() if n > 1]


def _sample_lines(path: Path) -> list[str]:
    with open(path, "rb") as fh:
        sample = fh.read(_SAMPLE_BYTES)
    try:
        text = sample.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if len(sample) < _SAMPLE_BYTES or exc.start < len(sample) - 4:  # not a cut character
            byte = sample[exc.start : exc.start + 1]
            raise DataValidationError(
                f"{path}: not UTF-8 text (byte {exc.start}: {byte!r}); save it as UTF-8, "
                "e.g. iconv -f latin1 -t utf-8"
            ) from None
        text = sample[: exc.start].decode("utf-8-sig")
    lines = [line for line in text.splitlines() if line.strip()]
    if len(sample) == _SAMPLE_BYTES:
        lines = lines[:-1]  # the last line may be cut
    return lines[:50]


def _field_counts(lines: list[str], delimiter: str) -> list[int]:
    return [len(row) for row in csv.reader(lines, delimiter=delimiter)]


def sniff_delimiter(path: Path) -> str:
    """The field delimiter of a CSV file (one of , ; tab |), from its first lines.

    A delimiter counts when it splits the header into several fields and every sampled line
    into as many; a comma wins ties (it is what CSV means), then ``csv.Sniffer`` decides.

    Raises:
        DataValidationError: the start of the file is not UTF-8 text.
    """
    lines = _sample_lines(path)
    if not lines:
        return ","
    consistent = {}
    for delimiter in DELIMITERS:
        counts = _field_counts(lines, delimiter)
        if counts[0] > 1 and len(set(counts)) == 1:
            consistent[delimiter] = counts[0]
    if "," in consistent or not consistent:
        return ","
    if len(consistent) == 1:
        return next(iter(consistent))
    try:
        sniffed = csv.Sniffer().sniff("\n".join(lines), delimiters="".join(consistent))
        return sniffed.delimiter
    except csv.Error:
        return max(consistent, key=lambda d: consistent[d])


def _header_names(path: Path, delimiter: str = ",") -> list[str]:
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return next(csv.reader(fh, delimiter=delimiter), [])


def read_table(path: Path | str) -> pd.DataFrame:
    """Read a CSV or Parquet file, refusing anything pandas would silently repair.

    A CSV file's delimiter (, ; tab or |) is detected (``sniff_delimiter``).

    Raises:
        DataValidationError: missing, unreadable, empty, or with duplicate column names.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise DataValidationError(
            f"{path}: unsupported file type '{suffix}' (use .csv or .parquet)"
        )
    if not path.is_file():
        raise DataValidationError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataValidationError(f"{path}: file is empty")
    delimiter = sniff_delimiter(path) if suffix == ".csv" else ","
    try:
        names = _header_names(path, delimiter)
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise DataValidationError(f"{path}: cannot read file ({_reason(exc)})") from None
    if dup := _duplicates([str(n) for n in names]):
        raise DataValidationError(f"{path}: duplicate column name(s) {', '.join(map(repr, dup))}")
    try:
        if suffix == ".csv":
            frame = pd.read_csv(path, sep=delimiter, low_memory=False)
        else:
            frame = pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"{path}: file is empty") from None
    except Exception as exc:  # pandas/pyarrow raise many types for a corrupt file
        raise DataValidationError(f"{path}: cannot read file ({_reason(exc)})") from None
    if frame.shape[1] == 0:
        raise DataValidationError(f"{path}: file has no columns")
    if frame.shape[0] == 0:
        raise DataValidationError(f"{path}: file has a header but no data rows")
    return frame


def _reason(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def describe_source(params: Params) -> str:
    """How messages refer to the data: the user's file, or the built-in dataset's name."""
    src = params.data.source
    return f"built-in dataset '{src}'" if datasets.is_builtin(src) else src


def run(params: Params, paths: Paths) -> dict:
    """Read the source and write data/raw/dataset.parquet plus a small provenance file."""
    src = params.data.source
    if datasets.is_builtin(src):
        frame = datasets.load_builtin(src, rows=params.data.rows, seed=params.seed)
        provenance = {"kind": "builtin", "name": src, "rows_requested": params.data.rows}
    else:
        path = Path(src)
        frame = read_table(path)
        provenance = {"kind": "file", "path": str(path), "md5": file_md5(path)}
    if dup := _duplicates([str(c) for c in frame.columns]):
        raise DataValidationError(f"{describe_source(params)}: duplicate column name(s) {dup}")
    frame.columns = [str(c) for c in frame.columns]
    provenance.update(rows=int(frame.shape[0]), columns=list(frame.columns))
    write_parquet(paths.raw, frame)
    write_json(paths.raw_meta, provenance)
    log.info("ingested %s: %d rows x %d columns", describe_source(params), *frame.shape)
    return provenance
