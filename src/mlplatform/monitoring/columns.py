"""Column values as the drift tests see them, whichever door the data came in by.

The reference (built from the training split) and a window (raw records from the prediction
log, or a file) must read a column the same way. Raw and canonical frames both work:

- numeric: a float; text that is not a number, and +-inf, count as missing;
- boolean: 0/1 from booleans, numbers or yes/no-style tokens; other values are missing;
- datetime: days since 1970-01-01 (a number), from datetimes, ISO text or numbers;
- categorical: text; whole floats are written as integers (5.0 and 5 are one category, as
  in the model's own coercion); missing values and ``__missing__`` count as missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlplatform.data.columns import category_of

MISSING = "__missing__"  # the model's spelling of a missing category (mlplatform.schema)
NUMERIC_KINDS = frozenset({"numeric", "boolean", "datetime"})
KINDS = frozenset({*NUMERIC_KINDS, "categorical"})
_TRUE = frozenset({"true", "yes", "y", "t", "1"})
_FALSE = frozenset({"false", "no", "n", "f", "0"})


def _token(value: Any) -> float:
    text = str(value).strip().lower()
    return 1.0 if text in _TRUE else 0.0 if text in _FALSE else np.nan


def _by_distinct(series: pd.Series, fn) -> np.ndarray:
    """fn applied once per distinct value (fast on a million rows of a few distinct values)."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    table = np.array([fn(u) for u in uniques] + [np.nan], dtype=np.float64)
    return table[codes]


def numeric_values(series: pd.Series, kind: str) -> np.ndarray:
    """A numeric, boolean or datetime column as float64, missing (and non-finite) as NaN."""
    if kind == "datetime" and not pd.api.types.is_numeric_dtype(series):
        if pd.api.types.is_datetime64_any_dtype(series):
            parsed = series
        else:
            parsed = pd.to_datetime(series, errors="coerce", format="ISO8601", utc=True)
        if getattr(parsed.dt, "tz", None) is not None:
            parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
        days = (parsed - pd.Timestamp("1970-01-01")).dt.total_seconds() / 86_400.0
        out = days.to_numpy(dtype=np.float64, na_value=np.nan)
    elif pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        out = series.to_numpy(dtype=np.float64, na_value=np.nan)
    elif kind == "boolean":
        out = _by_distinct(series, _token)
    else:
        out = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    out = np.array(out, dtype=np.float64)  # a writable copy: never a view of the caller's data
    out[~np.isfinite(out)] = np.nan
    return out


def category_counts(series: pd.Series) -> tuple[dict[str, int], int]:
    """(count per category, missing count) of a categorical column."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    tally = np.bincount(codes + 1, minlength=len(uniques) + 1)
    counts: dict[str, int] = {}
    missing = int(tally[0])
    for value, count in zip(uniques, tally[1:], strict=True):
        name = category_of(value)  # the spelling the model's coercion uses
        if name == MISSING:
            missing += int(count)
        elif count:
            counts[name] = counts.get(name, 0) + int(count)
    return counts, missing


def bin_counts(values: np.ndarray, edges: list[float] | np.ndarray) -> np.ndarray:
    """Counts of non-missing values per bin; bins are (-inf, e0], (e0, e1], ..., (ek, inf)."""
    finite = values[~np.isnan(values)]
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), finite, side="left")
    return np.bincount(index, minlength=len(edges) + 1)


def frozen_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Interior bin edges from the reference's non-missing values.

    Few distinct values (booleans, counts, codes): one bin per value, edges halfway between
    them, so a value never seen in training lands in an outer bin instead of sharing one.
    Otherwise quantile edges, deduplicated (a value holding more than one quantile of the data
    keeps a single edge). The outer bins are open-ended.
    """
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return np.empty(0)
    distinct = np.unique(finite)
    if distinct.size <= n_bins:
        return (distinct[:-1] + distinct[1:]) / 2.0
    inner = np.quantile(finite, np.linspace(0, 1, n_bins + 1)[1:-1], method="inverted_cdf")
    edges = np.unique(inner)
    # Right-closed bins: an edge equal to the maximum would leave the top bin empty forever.
    return edges[edges < distinct[-1]]
