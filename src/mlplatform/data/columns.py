"""Column kinds: inference from data, per-column overrides, and coercion of raw records.

Raw records (as a client sends them) are turned into a canonical frame the preprocessing
pipeline understands:

- numeric and boolean columns become float64 (booleans 0/1), missing stays NaN;
- categorical columns become strings, missing becomes ``MISSING`` (a category of its own);
- datetime columns expand into numeric parts (days since epoch, month, day of week, hour).

The same function runs at training time, in the logged model and in batch scoring, so what
the model sees never depends on which door the data came in by.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.config import ColumnKind

MISSING = "__missing__"
TRUE_TOKENS = frozenset({"true", "yes", "y", "t", "1"})
FALSE_TOKENS = frozenset({"false", "no", "n", "f", "0"})
DATETIME_PARTS = ("epoch_days", "month", "dayofweek", "hour")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class ColumnSpec:
    """How one raw input column is typed and turned into model features.

    Attributes:
        name: column name in the raw data.
        kind: numeric, categorical, boolean or datetime.
        input_type: MLflow signature type of the raw column (double, string, boolean, datetime).
        true_values: for booleans given as text, the tokens read as true.
    """

    name: str
    kind: ColumnKind
    input_type: str
    true_values: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["true_values"] = list(self.true_values)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ColumnSpec:
        return cls(d["name"], d["kind"], d["input_type"], tuple(d.get("true_values", ())))

    @property
    def feature_names(self) -> list[str]:
        """Names of the canonical columns this raw column becomes."""
        if self.kind == "datetime":
            return [f"{self.name}__{part}" for part in DATETIME_PARTS]
        return [self.name]


def _tokens(series: pd.Series) -> set[str]:
    return {str(v).strip().lower() for v in series.dropna().unique()}


def _to_datetime(values: pd.Series) -> pd.Series:
    """ISO dates -> naive UTC timestamps; unparseable values become NaT.

    ``utc=True`` because text with mixed offsets otherwise raises even with errors="coerce".
    """
    parsed = pd.to_datetime(values, errors="coerce", format="ISO8601", utc=True)
    return parsed.dt.tz_localize(None)


def infer_kind(series: pd.Series) -> ColumnKind:
    """Infer a column's kind from its dtype and values."""
    if pd.api.types.is_bool_dtype(series):
        return "boolean"
    if pd.api.types.is_datetime64_any_dtype(series):
        return "datetime"
    if pd.api.types.is_numeric_dtype(series):
        return "numeric"
    values = series.dropna()
    if values.empty:
        return "categorical"
    tokens = _tokens(values)
    if len(tokens) <= 2 and tokens <= (TRUE_TOKENS | FALSE_TOKENS) and not tokens <= {"0", "1"}:
        return "boolean"
    sample = values.astype(str).head(1000)
    if sample.str.match(_ISO_DATE).mean() >= 0.95:
        parsed = _to_datetime(sample)
        if parsed.notna().mean() >= 0.95:
            return "datetime"
    return "categorical"


def input_type_for(series: pd.Series, kind: ColumnKind) -> str:
    """The MLflow signature type a client must send for this column.

    ``prepare.conform_types`` stores each column in this type, so training data, the
    input example and clients all agree.
    """
    if pd.api.types.is_bool_dtype(series):
        # A bool column stays bool only as a boolean; overridden, it becomes text.
        return "boolean" if kind == "boolean" and not series.isna().any() else "string"
    if kind == "datetime" and pd.api.types.is_datetime64_any_dtype(series):
        return "datetime"
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        # Integers are declared as double so a missing value at serving time passes
        # schema enforcement (an int column cannot hold NaN).
        return "double"
    return "string"


def make_spec(series: pd.Series, kind: ColumnKind) -> ColumnSpec:
    true_values: tuple[str, ...] = ()
    if kind == "boolean" and not pd.api.types.is_bool_dtype(series):
        true_values = tuple(sorted(_tokens(series) & TRUE_TOKENS))
    return ColumnSpec(str(series.name), kind, input_type_for(series, kind), true_values)


# --------------------------------------------------------------------------------------
# Coercion: raw values -> canonical model inputs. Each returns (values, invalid_mask).


# Per-request cost matters (a served model coerces every request), so these work on numpy
# arrays and map each distinct value once (pd.factorize) instead of using pandas string ops.

_BOOL_VALUE = {**dict.fromkeys(TRUE_TOKENS, 1.0), **dict.fromkeys(FALSE_TOKENS, 0.0)}


def _no_invalid(n: int) -> np.ndarray:
    return np.zeros(n, dtype=bool)


def _numeric(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        out = values.to_numpy(dtype="float64", na_value=np.nan)
        return out, _no_invalid(len(out))
    raw = values.to_numpy(dtype=object)
    try:
        out = raw.astype("float64")  # numbers, numeric text, None -> NaN
        return out, _no_invalid(len(out))
    except (TypeError, ValueError):
        out = np.array(pd.to_numeric(values, errors="coerce"), dtype="float64")
        bad = np.isnan(out) & values.notna().to_numpy()
        # Same rules as one value at a time (the per-request path): pandas refuses some text
        # Python reads as a number ("1_000", "nan").
        for i in np.flatnonzero(bad):
            out[i], ok = _number_of(raw[i])
            bad[i] = not ok
        return out, bad


def _mapped(values: pd.Series, fn, missing: Any, dtype: Any) -> np.ndarray:
    """fn applied to each distinct non-missing value; missing values become ``missing``."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    table = np.empty(len(uniques) + 1, dtype=dtype)
    table[:-1] = [fn(u) for u in uniques]
    table[-1] = missing
    return table[codes]  # code -1 (missing) picks the last entry


def _bool_of(value: Any) -> float:
    if isinstance(value, bool | np.bool_ | int | float | np.number):
        return float(value)  # as a numeric column would give it
    return _BOOL_VALUE.get(str(value).strip().lower(), np.nan)


def _boolean(values: pd.Series, spec: ColumnSpec) -> tuple[np.ndarray, np.ndarray]:
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return _numeric(values)
    # Unknown tokens are read as missing (and imputed), like an unseen category.
    return _mapped(values, _bool_of, np.nan, np.float64), _no_invalid(len(values))


def _category_of(value: Any) -> str:
    if isinstance(value, float | np.floating):
        # 5.0 and 5 must be the same category whether a client sends an int or a float;
        # exact integers only (|x| < 2**53), larger floats keep their float spelling.
        if np.isfinite(value) and value == round(value) and abs(value) < 2.0**53:
            return str(int(value))
        return str(float(value))
    return str(value)


def _categorical(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    return _mapped(values, _category_of, MISSING, object), _no_invalid(len(values))


def _datetime(values: pd.Series) -> tuple[dict[str, np.ndarray], np.ndarray]:
    parsed = values if pd.api.types.is_datetime64_any_dtype(values) else _to_datetime(values)
    if getattr(parsed.dt, "tz", None) is not None:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    invalid = parsed.isna().to_numpy() & values.notna().to_numpy()
    epoch = (parsed - pd.Timestamp("1970-01-01")).dt.total_seconds() / 86_400.0
    parts = {
        "epoch_days": epoch.to_numpy(dtype="float64", na_value=np.nan),
        "month": parsed.dt.month.to_numpy(dtype="float64", na_value=np.nan),
        "dayofweek": parsed.dt.dayofweek.to_numpy(dtype="float64", na_value=np.nan),
        "hour": parsed.dt.hour.to_numpy(dtype="float64", na_value=np.nan),
    }
    return parts, invalid


SMALL_BATCH = 64


def _is_missing(v: Any) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v)


def _number_of(v: Any) -> tuple[float, bool]:
    """(value, valid) for one raw value of a numeric column."""
    if isinstance(v, bool | np.bool_):
        return float(v), True
    try:
        return float(v), True
    except (TypeError, ValueError):
        return np.nan, False


def _coerce_small(
    frame: pd.DataFrame, specs: list[ColumnSpec]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The per-request path: one conversion of the frame, then plain Python per value.

    Same results as the vectorised path (tests compare them); several times cheaper for a
    few rows, where pandas' per-column overhead dominates. A request's frame is new each
    time, so nothing here may build pandas' per-object caches (an Index's hash table).
    """
    names = frame.columns.tolist()
    by_column = frame.to_numpy(dtype=object).T.tolist()
    where = {c: i for i, c in enumerate(names)}
    out: dict[str, np.ndarray] = {}
    invalid: dict[str, np.ndarray] = {}
    for spec in specs:
        col = by_column[where[spec.name]]
        if spec.kind == "categorical":
            out[spec.name] = np.array(
                [MISSING if _is_missing(v) else _category_of(v) for v in col], dtype=object
            )
        elif spec.kind == "boolean":
            out[spec.name] = np.array(
                [np.nan if _is_missing(v) else _bool_of(v) for v in col], dtype=np.float64
            )
        else:
            values, bad = [], []
            for i, v in enumerate(col):
                if _is_missing(v):
                    values.append(np.nan)
                    continue
                number, ok = _number_of(v)
                values.append(number)
                if not ok:
                    bad.append(i)
            out[spec.name] = np.array(values, dtype=np.float64)
            if bad:
                mask = np.zeros(len(col), dtype=bool)
                mask[bad] = True
                invalid[spec.name] = mask
    return out, invalid


def coerce_arrays(
    frame: pd.DataFrame, specs: list[ColumnSpec]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Raw records -> canonical columns as numpy arrays (see ``coerce``)."""
    if (
        len(frame) <= SMALL_BATCH
        and len(set(frame.columns.tolist())) == frame.shape[1]
        and not any(s.kind == "datetime" for s in specs)
    ):
        return _coerce_small(frame, specs)
    out: dict[str, np.ndarray] = {}
    invalid: dict[str, np.ndarray] = {}
    for spec in specs:
        values = frame[spec.name]
        if spec.kind == "numeric":
            out[spec.name], bad = _numeric(values)
        elif spec.kind == "boolean":
            out[spec.name], bad = _boolean(values, spec)
        elif spec.kind == "categorical":
            out[spec.name], bad = _categorical(values)
        else:
            parts, bad = _datetime(values)
            for part, arr in parts.items():
                out[f"{spec.name}__{part}"] = arr
        if bad.any():
            invalid[spec.name] = bad
    return out, invalid


def coerce(
    frame: pd.DataFrame, specs: list[ColumnSpec]
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Turn raw records into the canonical frame the preprocessing pipeline was fitted on.

    Args:
        frame: raw records; must contain every column in specs.
        specs: the model's input columns.

    Returns:
        The canonical frame (one column per feature name) and, per raw column, a boolean mask
        of rows whose value could not be read as the column's kind (for example text in a
        numeric column). Invalid values are set to missing in the canonical frame.
    """
    arrays, invalid = coerce_arrays(frame, specs)
    return pd.DataFrame(arrays, index=frame.index), invalid


def numeric_feature_names(specs: list[ColumnSpec]) -> list[str]:
    """Canonical columns the preprocessing treats as numbers (booleans and date parts too)."""
    return [n for s in specs if s.kind != "categorical" for n in s.feature_names]


def categorical_feature_names(specs: list[ColumnSpec]) -> list[str]:
    """Canonical columns the preprocessing one-hot encodes."""
    return [s.name for s in specs if s.kind == "categorical"]
