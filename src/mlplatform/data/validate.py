"""Data checks that must pass before anything is trained.

Pure functions of (frame, data config): each problem raises ``DataValidationError`` with one
line naming the file and the column at fault. Nothing here writes a file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlplatform.config import ColumnKind, DataConfig
from mlplatform.data import dates
from mlplatform.data.columns import (
    CATEGORICAL_SHARE,
    FALSE_TOKENS,
    NUMERIC_SHARE,
    TRUE_TOKENS,
    ColumnSpec,
    coerce_arrays,
    infer,
    is_text,
    make_spec,
    number_share,
    read_numbers,
)
from mlplatform.errors import DataValidationError

MIN_ROWS_PER_CLASS = 3
# Fewer rows than this and a column is not judged an identifier (a tiny sample is unique
# by chance).
MIN_ROWS_FOR_IDENTIFIER = 20


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


def _nested(series: pd.Series) -> Any:
    """A list, array or mapping held by an object column (None if there is none)."""
    if series.dtype != object:
        return None
    for value in series.dropna().head(1000):
        if isinstance(value, list | tuple | dict | set | np.ndarray):
            return value
    return None


def check_values(frame: pd.DataFrame, origin: str) -> None:
    """No column entirely empty, none holding lists or mappings, no infinite values."""
    for col in frame.columns:
        series = frame[col]
        if series.isna().all():
            raise _fail(origin, f"column '{col}' is entirely empty")
        nested = _nested(series)
        if nested is not None:
            raise _fail(
                origin,
                f"column '{col}' holds {type(nested).__name__} values (a nested column); "
                "flatten it into plain columns, or drop it (data.drop_columns)",
            )
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
    elif data.positive_class is not None:
        # A positive class makes the model binary; a multiclass one would be trained silently.
        raise _fail(
            origin,
            f"target column '{data.target}' has {len(values)} classes ({_preview(values)}) but "
            f"data.positive_class is {data.positive_class!r}: a positive class needs a binary "
            "target; map the target to two classes, or set data.positive_class: null for a "
            "multiclass model",
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


def _share(share: float) -> str:
    return f"{share:.0%}" if 0.01 < share < 0.99 else f"{share:.1%}"


def _check_override(
    series: pd.Series, kind: ColumnKind, date_format: str | None, origin: str
) -> None:
    col = series.name
    present = series.dropna()
    if kind == "numeric" and not pd.api.types.is_numeric_dtype(series):
        share, strays = number_share(present)
        if share < CATEGORICAL_SHARE:
            raise _fail(
                origin,
                f"column '{col}' is declared numeric in data.column_types but only "
                f"{_share(share)} of its values are numbers ({_preview(strays, 3)})",
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
        parsed = dates.parse(present.astype(str), date_format)
        bad = present[parsed.isna().to_numpy()]
        if len(bad):
            how = f"in format {date_format!r}" if date_format else "ISO dates"
            raise _fail(
                origin,
                f"column '{col}' is declared datetime in data.column_types but holds "
                f"values that are not {how} ({_preview(bad.unique().tolist(), 3)})",
            )


def _inferred(series: pd.Series, origin: str) -> tuple[ColumnKind, str | None]:
    col = series.name
    try:
        kind, fmt = infer(series)
    except dates.AmbiguousDates as exc:
        raise _fail(
            origin,
            f"column '{col}' holds dates like {exc.example!r} that read both as "
            f"{' and as '.join(map(dates.readable, exc.formats))}; declare the format in "
            f"data.column_types ({col}: {{kind: datetime, format: '{exc.formats[0]}'}})",
        ) from None
    if kind == "categorical" and is_text(series):
        share, strays = number_share(series)
        if CATEGORICAL_SHARE <= share < NUMERIC_SHARE:
            raise _fail(
                origin,
                f"column '{col}': {_share(share)} of its values are numbers and the rest are "
                f"not ({_preview(strays, 3)}); declare it in data.column_types ({col}: "
                "numeric reads the others as missing; categorical keeps every value as a "
                "category)",
            )
    return kind, fmt


def infer_specs(frame: pd.DataFrame, columns: list[str], data: DataConfig, origin: str):
    """Kinds of the given columns: inferred, with data.column_types overrides checked first.

    Raises:
        DataValidationError: an override the values contradict, text that is neither mostly
            numbers nor mostly not, or dates whose day/month order is ambiguous.
    """
    specs = []
    for col in columns:
        series = frame[col]
        kind, fmt = data.declared_kind(col), data.declared_date_format(col)
        if kind is not None:
            _check_override(series, kind, fmt, origin)
        else:
            kind, fmt = _inferred(series, origin)
        specs.append(make_spec(series, kind, fmt))
    return specs


def invalid_values(series: pd.Series, spec: ColumnSpec) -> pd.Series:
    """The values of a column its kind cannot read (they become missing in training data)."""
    present = series.dropna()
    if present.empty or spec.kind not in ("numeric", "datetime"):
        return present.iloc[:0]
    _, bad = coerce_arrays(present.to_frame(), [spec])
    return present[bad[spec.name]] if spec.name in bad else present.iloc[:0]


def unused_column(series: pd.Series, spec: ColumnSpec) -> str | None:
    """Why a feature column would teach the model nothing, or None.

    - constant: one value in every row (no missing either);
    - identifier: a distinct value in every row (at least ``MIN_ROWS_FOR_IDENTIFIER`` rows,
      none missing) that is text (a categorical column, as ids like "A-1043" are), or whole
      numbers that fill at least half the range between their minimum and maximum (a
      counter or a sequence: 1..N, 100001..242800). Continuous measurements (floats, or
      sparse integers such as incomes in dollars) are kept; an id drawn at random from a
      wide range cannot be told from one, so name it in data.drop_columns.
    """
    n = len(series)
    if n == 0 or series.isna().any():
        return None
    distinct = series.nunique()
    if distinct == 1:
        return f"has one value ({series.iloc[0]!r}) in every row"
    if distinct != n or n < MIN_ROWS_FOR_IDENTIFIER:
        return None
    if spec.kind == "categorical" and not pd.api.types.is_numeric_dtype(series):
        return f"looks like a row identifier (text with a distinct value in each of {n:,} rows)"
    if spec.kind == "numeric":
        values, _ = read_numbers(series)
        if np.isnan(values).any() or not np.array_equal(values, np.round(values)):
            return None
        low, high = values.min(), values.max()
        if high - low + 1 <= 2 * n:
            return (
                f"looks like a row identifier (a distinct whole number in each of {n:,} rows, "
                f"densely covering {low:.0f}..{high:.0f})"
            )
    return None


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
