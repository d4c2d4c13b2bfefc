"""Column kinds: inference from data, per-column overrides, and coercion of raw records.

This is the one place that says how values are read. Raw records (as a client sends them)
become the canonical frame the preprocessing understands, by the same functions at training
(``prepare`` stores the splits in the declared types; ``train`` and ``tune`` coerce them),
in the served model (``mlflow models serve``: MLflow's schema check, then ``coerce``) and
in batch scoring (``mlplatform score``: CSV cells are read as text, Parquet keeps its types,
then ``coerce``). The per-request path (a few rows) and the batch path give the same
result value for value (tests compare them).

What each kind accepts, at every door. An invalid value is set missing and reported at
training (``prepare``: ``invalid_values`` in reports/data_summary.json), refused at serving
(HTTP 400 naming the column and value) and listed in ``<output>.errors.csv`` by ``score``:

- numeric: numbers, and text Python reads as a number (``" 4 "``, ``"1e3"``, ``"1_000"``;
  ``"nan"`` is missing). Invalid: other text (``"abc"``, ``"1.2.3"``) and infinities
  (``inf``, ``"Infinity"``, ``1e999``); a training column holding real infinities stops
  prepare outright. (Served, a column declared ``double`` gets MLflow's own type check
  first: text there is MLflow's 400.)
- boolean: real booleans; 0 and 1 (numbers or text); yes/no, true/false, y/n, t/f in any
  case, spaces around ignored. Invalid: any other number (``5``, ``0.5``) or text (``"5"``,
  ``"maybe"``).
- categorical: anything, as its text (``5``, ``5.0`` and ``"5"`` are the one category
  ``"5"``). Nothing is invalid: a category never seen in training is scored (the encoder's
  infrequent group when it has one, else no category column set).
- datetime: timestamps, and text in ISO 8601 or in the format stored with the column
  (``ColumnSpec.date_format``, see ``dates``). Invalid: text that does not parse so.

Missing values (null, NaN, None; in CSV files also the spellings pandas reads as missing:
"", NA, N/A, n/a, NULL, null, NaN, None, ..., the same at ingest and in ``score``) are
valid in every kind: numeric, boolean and date parts
become NaN (imputed with the training median, with a missing-indicator feature);
categorical becomes ``MISSING``, a category of its own. Canonical values: numeric and
boolean columns are float64 (booleans 0/1), categorical columns strings, datetime columns
four numeric parts (days since epoch, month, day of week, hour).

Inference at training (``infer``), for columns ``data.column_types`` does not name:
boolean from a bool dtype or at most two yes/no-style tokens; datetime from a datetime dtype
or text dates (``dates.detect``); numeric from a numeric dtype, or text of which at least
``NUMERIC_SHARE`` of the values are numbers (the others are strays: missing, and reported);
otherwise categorical. Text between ``CATEGORICAL_SHARE`` and ``NUMERIC_SHARE`` numbers is
neither and stops prepare (``validate.infer_specs``): declare it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.config import ColumnKind
from mlplatform.data import dates

MISSING = "__missing__"
TRUE_TOKENS = frozenset({"true", "yes", "y", "t", "1"})
FALSE_TOKENS = frozenset({"false", "no", "n", "f", "0"})
DATETIME_PARTS = ("epoch_days", "month", "dayofweek", "hour")
# Text columns: at least this share of numbers reads as numeric (the rest are strays) ...
NUMERIC_SHARE = 0.95
# ... below this share as categorical; in between is an error asking for data.column_types.
CATEGORICAL_SHARE = 0.5


@dataclass(frozen=True)
class ColumnSpec:
    """How one raw input column is typed and turned into model features.

    Attributes:
        name: column name in the raw data.
        kind: numeric, categorical, boolean or datetime.
        input_type: MLflow signature type of the raw column (double, string, boolean, datetime).
        true_values: for booleans given as text, the tokens read as true.
        date_format: for dates given as text, their strftime format (None: ISO 8601, which
            is also what models saved before this field existed use).
    """

    name: str
    kind: ColumnKind
    input_type: str
    true_values: tuple[str, ...] = field(default_factory=tuple)
    date_format: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["true_values"] = list(self.true_values)
        if self.date_format is None:
            del d["date_format"]  # model.json of other columns stays as it was
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ColumnSpec:
        return cls(
            d["name"],
            d["kind"],
            d["input_type"],
            tuple(d.get("true_values", ())),
            d.get("date_format"),
        )

    @property
    def feature_names(self) -> list[str]:
        """Names of the canonical columns this raw column becomes."""
        if self.kind == "datetime":
            return [f"{self.name}__{part}" for part in DATETIME_PARTS]
        return [self.name]


def _tokens(series: pd.Series) -> set[str]:
    return {str(v).strip().lower() for v in series.dropna().unique()}


def number_share(series: pd.Series) -> tuple[float, list[Any]]:
    """Share of a text column's non-missing values that read as numbers, and the others.

    Returns:
        (share, the distinct values that are not numbers, most frequent first).
    """
    counts = series.value_counts(dropna=True)
    if counts.empty:
        return 1.0, []
    values = pd.Series(counts.index.to_numpy(dtype=object))
    _, bad = _numeric(values)
    total = int(counts.sum())
    strays = int(counts.to_numpy()[bad].sum())
    return (total - strays) / total, values[bad].tolist()


def infer(series: pd.Series) -> tuple[ColumnKind, str | None]:
    """A column's kind and, for text dates, their format (see the module docstring).

    Raises:
        dates.AmbiguousDates: text dates whose day/month order the values do not tell.
    """
    if pd.api.types.is_bool_dtype(series):
        return "boolean", None
    if pd.api.types.is_datetime64_any_dtype(series):
        return "datetime", None
    if pd.api.types.is_numeric_dtype(series):
        return "numeric", None
    values = series.dropna()
    if values.empty:
        return "categorical", None
    tokens = _tokens(values)
    if len(tokens) <= 2 and tokens <= (TRUE_TOKENS | FALSE_TOKENS) and not tokens <= {"0", "1"}:
        return "boolean", None
    is_date, fmt = dates.detect(values)
    if is_date:
        return "datetime", fmt
    if is_text(series) and number_share(values)[0] >= NUMERIC_SHARE:
        return "numeric", None
    return "categorical", None


def is_text(series: pd.Series) -> bool:
    """Values of no declared type (object or string dtype): numbers in them are inferred.
    A pandas categorical dtype says the values are categories, whatever they look like."""
    return series.dtype == object or isinstance(series.dtype, pd.StringDtype)


def infer_kind(series: pd.Series) -> ColumnKind:
    """Infer a column's kind from its dtype and values (``infer`` without the format)."""
    return infer(series)[0]


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
    if kind == "numeric" or (
        pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    ):
        # Integers are declared as double so a missing value at serving time passes
        # schema enforcement (an int column cannot hold NaN); numbers given as text are
        # stored as numbers (their strays missing).
        return "double"
    return "string"


def make_spec(series: pd.Series, kind: ColumnKind, date_format: str | None = None) -> ColumnSpec:
    true_values: tuple[str, ...] = ()
    if kind == "boolean" and not pd.api.types.is_bool_dtype(series):
        true_values = tuple(sorted(_tokens(series) & TRUE_TOKENS))
    fmt = date_format if kind == "datetime" else None
    return ColumnSpec(str(series.name), kind, input_type_for(series, kind), true_values, fmt)


# --------------------------------------------------------------------------------------
# Coercion: raw values -> canonical model inputs. Each returns (values, invalid_mask).


# Per-request cost matters (a served model coerces every request), so these work on numpy
# arrays and map each distinct value once (pd.factorize) instead of using pandas string ops.

_BOOL_VALUE = {**dict.fromkeys(TRUE_TOKENS, 1.0), **dict.fromkeys(FALSE_TOKENS, 0.0)}


def _no_invalid(n: int) -> np.ndarray:
    return np.zeros(n, dtype=bool)


def _finite(out: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Infinities are invalid numbers (training refuses them too): missing, and flagged."""
    inf = np.isinf(out)
    if inf.any():
        out = np.where(inf, np.nan, out)
        bad = bad | inf
    return out, bad


def _numeric(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        out = values.to_numpy(dtype="float64", na_value=np.nan)
        return _finite(out, _no_invalid(len(out)))
    raw = values.to_numpy(dtype=object)
    try:
        out = raw.astype("float64")  # numbers, numeric text, None -> NaN
        return _finite(out, _no_invalid(len(out)))
    except (TypeError, ValueError, OverflowError):
        out = np.array(pd.to_numeric(values, errors="coerce"), dtype="float64")
        bad = np.isnan(out) & values.notna().to_numpy()
        # Same rules as one value at a time (the per-request path): pandas refuses some text
        # Python reads as a number ("1_000", "nan").
        for i in np.flatnonzero(bad):
            out[i], ok = number_of(raw[i])
            bad[i] = not ok
        return _finite(out, bad)


def read_numbers(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A column's values as float64 (NaN for missing and invalid), and the invalid mask."""
    return _numeric(values)


def _mapped(values: pd.Series, fn, missing: Any, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """fn (value -> (canonical, valid)) applied to each distinct non-missing value; missing
    values become ``missing``. Returns the canonical values and the invalid mask."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    table = np.empty(len(uniques) + 1, dtype=dtype)
    ok = np.ones(len(uniques) + 1, dtype=bool)
    for i, u in enumerate(uniques):
        table[i], ok[i] = fn(u)
    table[-1] = missing
    return table[codes], ~ok[codes]  # code -1 (missing) picks the last entry


def bool_of(value: Any) -> tuple[float, bool]:
    """(0/1 or NaN, valid) for one raw value of a boolean column."""
    if is_missing(value):
        return np.nan, True
    if isinstance(value, bool | np.bool_):
        return float(value), True
    if isinstance(value, int | float | np.number):
        number = float(value)
        return (number, True) if number in (0.0, 1.0) else (np.nan, False)
    number = _BOOL_VALUE.get(str(value).strip().lower())
    return (np.nan, False) if number is None else (number, True)


def _boolean(values: pd.Series, spec: ColumnSpec) -> tuple[np.ndarray, np.ndarray]:
    if pd.api.types.is_bool_dtype(values):
        return _numeric(values)
    if pd.api.types.is_numeric_dtype(values):
        out = values.to_numpy(dtype="float64", na_value=np.nan)
        bad = ~np.isnan(out) & (out != 0.0) & (out != 1.0)
        return np.where(bad, np.nan, out), bad
    return _mapped(values, bool_of, np.nan, np.float64)


def category_of(value: Any) -> str:
    """The category a raw value spells (training, serving and monitoring share it)."""
    if isinstance(value, float | np.floating):
        # 5.0 and 5 must be the same category whether a client sends an int or a float;
        # exact integers only (|x| < 2**53), larger floats keep their float spelling.
        if np.isfinite(value) and value == round(value) and abs(value) < 2.0**53:
            return str(int(value))
        return str(float(value))
    return str(value)


def _categorical(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    out, _ = _mapped(values, lambda v: (category_of(v), True), MISSING, object)
    return out, _no_invalid(len(values))


def _datetime(values: pd.Series, spec: ColumnSpec) -> tuple[dict[str, np.ndarray], np.ndarray]:
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    else:
        parsed = dates.parse(values, spec.date_format)
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


def is_missing(v: Any) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float | np.floating) and v != v)


def number_of(v: Any) -> tuple[float, bool]:
    """(value, valid) for one raw value of a numeric column (missing: NaN, valid)."""
    if is_missing(v):
        return np.nan, True
    if isinstance(v, bool | np.bool_):
        return float(v), True
    try:
        number = float(v)
    except (TypeError, ValueError, OverflowError):
        return np.nan, False
    return (number, True) if not math.isinf(number) else (np.nan, False)


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
                [MISSING if is_missing(v) else category_of(v) for v in col], dtype=object
            )
            continue
        read = bool_of if spec.kind == "boolean" else number_of
        values, bad = [], []
        for i, v in enumerate(col):
            value, ok = read(v)
            values.append(value)
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
            parts, bad = _datetime(values, spec)
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
