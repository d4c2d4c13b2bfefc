"""Row fingerprints: which rows a model was fit on, so a later comparison can leave them out.

A fingerprint is a 64-bit hash (``pandas.util.hash_pandas_object``, index excluded) of a
row as the model sees it: its input columns coerced to their canonical values (so 1 and
1.0, or "5" and 5 in a category, are the same row) plus the target as text. ``train``
stores the fingerprints of the training and validation rows with the run
(``lineage/fit_rows.parquet``); ``promote`` fingerprints today's test rows the same way for
each model and compares the models only on rows neither has seen.

Two different rows share a fingerprint with probability about n^2 / 2^65 (a few in a million
for a million rows): a clash can only exclude a row too many, never grade a model on a row
it was fit on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlplatform.data.columns import ColumnSpec, coerce

COLUMN = "fingerprint"
ARTIFACT_DIR = "lineage"
ARTIFACT_FILE = "fit_rows.parquet"
ARTIFACT = f"{ARTIFACT_DIR}/{ARTIFACT_FILE}"
_TARGET = "__target__"


def fingerprints(frame: pd.DataFrame, specs: list[ColumnSpec], target: str) -> np.ndarray:
    """One uint64 per row of ``frame``: its canonical model inputs and its target."""
    canonical, _ = coerce(frame, specs)
    canonical[_TARGET] = frame[target].astype(str).to_numpy()
    return pd.util.hash_pandas_object(canonical, index=False).to_numpy(dtype=np.uint64)


def write(path: Path, values: np.ndarray) -> None:
    """The distinct fingerprints, sorted, as a one-column Parquet file."""
    from mlplatform.io import write_parquet

    write_parquet(path, pd.DataFrame({COLUMN: np.unique(values.astype(np.uint64))}))


def read(path: Path) -> np.ndarray:
    return pd.read_parquet(path, columns=[COLUMN])[COLUMN].to_numpy(dtype=np.uint64)


def seen(values: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """Which of ``values`` are among the fingerprints a model was fit on."""
    return np.isin(values, fit)
