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


def _duplicates(names: list[str]) -> list[str]:
    return [name for name, n in Counter(names).items() if n > 1]


def _header_names(path: Path) -> list[str]:
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return next(csv.reader(fh), [])


def read_table(path: Path | str) -> pd.DataFrame:
    """Read a CSV or Parquet file, refusing anything pandas would silently repair.

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
    try:
        names = _header_names(path)
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise DataValidationError(f"{path}: cannot read file ({_reason(exc)})") from None
    if dup := _duplicates([str(n) for n in names]):
        raise DataValidationError(f"{path}: duplicate column name(s) {', '.join(map(repr, dup))}")
    try:
        frame = pd.read_csv(path, low_memory=False) if suffix == ".csv" else pd.read_parquet(path)
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
