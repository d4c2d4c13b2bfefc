"""Data checks that must pass before anything is trained.

Pure functions of (frame, data config): each problem raises ``DataValidationError`` with one
line naming the file and the column at fault. Nothing here writes a file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlplatform.config import ColumnKind, DataConfig
from mlplatform.data.columns import FALSE_TOKENS, TRUE_TOKENS, ColumnSpec, infer_kind, make_spec
from mlplatform.errors import DataValidationError

MIN_ROWS_PER_CLASS = 3


def _fail(origin: str, message: str) -> DataValidationError:
    return DataValidationError(f"{origin}: {message}")


def _preview(values: list, n: int = 5) -> str:
    shown = ", ".join(repr(v) for v in values[:n])
    return shown + (", ..." if len(values) > n else "")


def check_declared_columns(frame: pd.DataFrame, data: DataConfig, origin: str) -> None:
    """Every column params.yaml names must exist, and roles must not clash."""
    columns = set(frame.columns)
    if data.target not in columns:
        raise _fail(origin, f"target column '{data.target}' (data.target) not found")
    declared = [
        *(("data.drop_columns", c) for c in data.drop_columns),
        *(("data.sensitive_features", c) for c in data.sensitive_features),
        *(("data.slice_columns", c) for c in data.slice_columns),
        *(("data.column_types", c) for c in data.column_types),
    ]
    if data.time_column is not None:
        declared.append(("data.time_column", data.time_column))
    for key, col in declared:
        if col not in columns:
            raise _fail(origin, f"column '{col}' named in {key} does not exist")
    for key, col in declared:
        if col == data.target and key != "data.column_types":
            raise _fail(origin, f"column '{col}' is the target and cannot be in {key}")
    dropped = set(data.drop_columns)
    for key, col in declared:
        if col in dropped and key != "data.drop_columns":
            raise _fail(origin, f"column '{col}' is in data.drop_columns and also in {key}")


def check_values(frame: pd.DataFrame, origin: str) -> None:
    """No column entirely empty, no infinite values."""
    for col in frame.columns:
        series = frame[col]
        if series.isna().all():
            raise _fail(origin, f"column '{col}' is entirely empty")
        if pd.api.types.is_float_dtype(series):
            n_inf = int(np.isinf(series.to_numpy(dtype="float64", na_value=np.nan)).sum())
            if n_inf:
                raise _fail(origin, f"column '{col}' has {n_inf} infinite value(s)")


def same_label(value: Any, wanted: Any) -> bool:
    """A class label as written in params: "1", 1 and 1.0 all name the class 1."""
    if str(value) == str(wanted):
        return True
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return False


def check_target(frame: pd.DataFrame, data: DataConfig, origin: str) -> list:
    """The target must have at least two classes, each large enough to split.

    Returns:
        The classes in model order: for a binary target ``[negative, positive]``.
    """
    target = frame[data.target].dropna()
    values = sorted(target.unique().tolist(), key=lambda v: (str(type(v)), v))
    if len(values) < 2:
        only = repr(values[0]) if values else "nothing"
        raise _fail(origin, f"target column '{data.target}' has a single class ({only})")
    if len(values) == 2:
        if data.positive_class is None:
            raise _fail(
                origin,
                f"target column '{data.target}' is binary ({_preview(values)}): "
                "set data.positive_class to one of them",
            )
        match = [v for v in values if same_label(v, data.positive_class)]
        if not match:
            raise _fail(
                origin,
                f"data.positive_class {data.positive_class!r} is not a value of target "
                f"column '{data.target}' ({_preview(values)})",
            )
        positive = match[0]
        values = [v for v in values if v != positive] + [positive]
    elif data.positive_class is not None and not any(
        same_label(v, data.positive_class) for v in values
    ):
        raise _fail(
            origin,
            f"data.positive_class {data.positive_class!r} is not a value of target "
            f"column '{data.target}' ({_preview(values)})",
        )
    counts = target.value_counts()
    for value in values:
        if counts[value] < MIN_ROWS_PER_CLASS:
            raise _fail(
                origin,
                f"class {value!r} of target column '{data.target}' has {counts[value]} row(s); "
                f"a train/validation/test split needs at least {MIN_ROWS_PER_CLASS}",
            )
    return values


def _check_override(series: pd.Series, kind: ColumnKind, origin: str) -> None:
    col = series.name
    present = series.dropna()
    if kind == "numeric" and not pd.api.types.is_numeric_dtype(series):
        parsed = pd.to_numeric(present, errors="coerce")
        bad = present[parsed.isna()]
        if len(bad):
            raise _fail(
                origin,
                f"column '{col}' is declared numeric in data.column_types but holds "
                f"non-numeric values ({_preview(bad.unique().tolist(), 3)})",
            )
    elif kind == "boolean" and not pd.api.types.is_bool_dtype(series):
        tokens = {str(v).strip().lower() for v in present.unique()}
        if len(tokens) > 2 or not tokens <= (TRUE_TOKENS | FALSE_TOKENS):
            raise _fail(
                origin,
                f"column '{col}' is declared boolean in data.column_types but holds "
                f"{_preview(sorted(tokens), 3)} (expected values like yes/no, true/false, 1/0)",
            )
    elif kind == "datetime" and not pd.api.types.is_datetime64_any_dtype(series):
        parsed = pd.to_datetime(present.astype(str), errors="coerce", format="ISO8601", utc=True)
        bad = present[parsed.isna().to_numpy()]
        if len(bad):
            raise _fail(
                origin,
                f"column '{col}' is declared datetime in data.column_types but holds "
                f"values that are not ISO dates ({_preview(bad.unique().tolist(), 3)})",
            )


def infer_specs(frame: pd.DataFrame, columns: list[str], data: DataConfig, origin: str):
    """Kinds of the given columns: inferred, with data.column_types overrides checked first."""
    specs = []
    for col in columns:
        series = frame[col]
        override = data.column_types.get(col)
        if override is not None:
            _check_override(series, override, origin)
        specs.append(make_spec(series, override or infer_kind(series)))
    return specs


def check_leakage(frame: pd.DataFrame, features: list[str], target: str, origin: str) -> None:
    """A feature that is the target under another name (a one-to-one mapping) is leakage."""
    y = frame[target]
    n_classes = y.nunique(dropna=True)
    for col in features:
        x = frame[col]
        if x.isna().any() or x.nunique() != n_classes:
            continue
        pairs = pd.DataFrame({"x": x.astype(str), "y": y.astype(str)}).drop_duplicates()
        if len(pairs) == n_classes and pairs["x"].is_unique and pairs["y"].is_unique:
            raise _fail(
                origin,
                f"column '{col}' is identical to the target '{target}' (one-to-one mapping); "
                "drop it (data.drop_columns) to avoid leakage",
            )


def check_time_column(frame: pd.DataFrame, spec: ColumnSpec, origin: str) -> None:
    if spec.kind not in ("numeric", "datetime"):
        raise _fail(
            origin,
            f"time column '{spec.name}' (data.time_column) must be numeric or a date, "
            f"found {spec.kind}",
        )
    if frame[spec.name].isna().any():
        raise _fail(origin, f"time column '{spec.name}' has missing values")
