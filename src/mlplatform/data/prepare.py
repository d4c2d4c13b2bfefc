"""Prepare: validate, type, de-duplicate and split the raw data.

Writes train/validation/test Parquet files, ``schema.json`` (column kinds, classes, roles)
and a DVC metrics summary. Validation runs before anything is written; duplicates are removed
before the split, never after; the split is stratified and seeded, or by time.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from sklearn.model_selection import train_test_split

from mlplatform.config import SPLITS, Params, Paths
from mlplatform.data import dates, validate
from mlplatform.data.columns import ColumnSpec, read_numbers
from mlplatform.data.dataset import DatasetSchema
from mlplatform.data.ingest import describe_source
from mlplatform.errors import DataValidationError
from mlplatform.io import atomic_dir, write_json, write_parquet

log = logging.getLogger(__name__)


def conform_types(frame: pd.DataFrame, specs: list[ColumnSpec]) -> pd.DataFrame:
    """Store each column the way the model's signature declares it.

    Integer columns are declared double (so a missing value can be sent at serving time);
    MLflow's schema enforcement refuses int64 where double is declared, so they are stored
    as float64. Pandas-only dtypes a client cannot send (category, nullable boolean,
    timezone-aware datetimes) become plain values of the declared type.
    """
    out = frame.copy()
    for s in specs:
        col = out[s.name]
        if isinstance(col.dtype, pd.CategoricalDtype):
            col = col.astype(object).where(col.notna(), None)
        if s.input_type == "double":
            # Numbers given as text: the strays (reported by prepare) become missing.
            col = pd.Series(read_numbers(col)[0], index=col.index, name=s.name)
        elif s.input_type == "string":
            if not isinstance(col.dtype, pd.StringDtype) and not (
                col.dtype == object and col.map(lambda v: v is None or isinstance(v, str)).all()
            ):
                col = (
                    col.astype(object)
                    .where(col.notna(), None)
                    .map(lambda v: v if v is None else str(v))
                )
        elif s.input_type == "datetime" and getattr(col.dt, "tz", None) is not None:
            col = col.dt.tz_convert("UTC").dt.tz_localize(None)
        out[s.name] = col
    return out


def _native(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _after_ties(values, cut: int) -> int:
    while 0 < cut < len(values) and values[cut] == values[cut - 1]:
        cut += 1
    return cut


def _integral_target(frame: pd.DataFrame, target: str) -> pd.DataFrame:
    """A 0/1 target read as float (because of missing values) becomes integers again."""
    y = frame[target]
    if pd.api.types.is_float_dtype(y) and len(y) and (y == y.round()).all():
        frame = frame.assign(**{target: y.astype("int64")})
    return frame


def split_frame(
    frame: pd.DataFrame,
    params: Params,
    stratify: pd.Series | None,
    origin: str = "data",
    time_format: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Split into train/validation/test: by time when data.time_column is set, else stratified.

    Args:
        time_format: how a time column given as text is written (None: ISO 8601).
    """
    fractions = params.data.split
    n = len(frame)
    if params.data.time_column is not None:
        col = params.data.time_column
        when = frame[col]
        if not pd.api.types.is_numeric_dtype(when) and not pd.api.types.is_datetime64_any_dtype(
            when
        ):
            when = dates.parse(when, time_format)  # dates given as text
        order = when.sort_values(kind="mergesort").index
        ordered = frame.loc[order]
        times = when.loc[order].to_numpy()
        # Rows sharing a timestamp stay on one side of each cut (no peeking at the future).
        cut1 = _after_ties(times, round(n * fractions.train))
        cut2 = _after_ties(times, max(cut1, round(n * (fractions.train + fractions.validation))))
        parts = {
            "train": ordered.iloc[:cut1],
            "validation": ordered.iloc[cut1:cut2],
            "test": ordered.iloc[cut2:],
        }
    else:
        try:
            rest, test = train_test_split(
                frame, test_size=fractions.test, random_state=params.seed, stratify=stratify
            )
            valid_share = fractions.validation / (fractions.train + fractions.validation)
            train, valid = train_test_split(
                rest,
                test_size=valid_share,
                random_state=params.seed,
                stratify=None if stratify is None else stratify.loc[rest.index],
            )
        except ValueError as exc:
            raise DataValidationError(
                f"{origin}: too few rows to split target '{params.data.target}' stratified "
                f"into train/validation/test ({len(frame)} rows; {exc})"
            ) from None
        parts = {"train": train, "validation": valid, "test": test}
    return {name: part.reset_index(drop=True) for name, part in parts.items()}


def build(params: Params, raw: pd.DataFrame, origin: str) -> tuple[dict, DatasetSchema, dict]:
    """The pure core of the stage: validate, type, de-duplicate and split.

    Raises:
        DataValidationError: the first problem found, naming the file and column.
    """
    data = params.data
    validate.check_declared_columns(raw, data, origin)
    frame = raw.drop(columns=data.drop_columns)
    validate.check_values(frame, origin)
    n_raw = len(frame)
    missing_target = int(frame[data.target].isna().sum())
    frame = frame[frame[data.target].notna()]
    frame = _integral_target(frame, data.target)
    classes = validate.check_target(frame, data, origin)

    # Sensitive features are kept for the fairness audit but are not model inputs unless
    # data.sensitive_as_features says so; slice columns are ordinary features.
    excluded = {data.target, data.time_column}
    if not data.sensitive_as_features:
        excluded |= set(data.sensitive_features)
    feature_cols = [c for c in frame.columns if c not in excluded]
    if not feature_cols:
        raise DataValidationError(f"{origin}: no feature columns left to train on")
    typed_cols = list(dict.fromkeys([*feature_cols, *data.column_types]))
    specs_all = validate.infer_specs(frame, typed_cols, data, origin)
    specs = [s for s in specs_all if s.name in feature_cols]
    time_format = None
    if data.time_column:
        (time_spec,) = validate.infer_specs(frame, [data.time_column], data, origin)
        validate.check_time_column(frame, time_spec, origin)
        time_format = time_spec.date_format
    specs, dropped = _drop_unused(frame, specs, data)
    if not specs:
        raise DataValidationError(
            f"{origin}: no feature columns left to train on (dropped: {', '.join(dropped)})"
        )
    frame = frame.drop(columns=list(dropped))
    validate.check_leakage(frame, [s.name for s in specs], data.target, origin)
    invalid = _strays(frame, specs, origin)
    frame = conform_types(frame, specs)

    before = len(frame)
    frame = frame.drop_duplicates().reset_index(drop=True)
    duplicates = before - len(frame)
    classes = validate.check_target(frame, data, origin)

    stratify = None if data.time_column else frame[data.target].astype(str)
    parts = split_frame(frame, params, stratify, origin, time_format)
    for name, part in parts.items():
        if part.empty:
            raise DataValidationError(f"{origin}: the {name} split is empty")
        present = set(part[data.target].astype(str))
        absent = [c for c in classes if str(c) not in present]
        if absent:
            how = f"by time ({data.time_column})" if data.time_column else "stratified"
            raise DataValidationError(
                f"{origin}: the {name} split ({how}) has no rows of class "
                f"{absent[0]!r} of target '{data.target}'; change data.split or data.time_column"
            )

    schema = DatasetSchema(
        target=data.target,
        classes=[_native(c) for c in classes],
        positive_class=_native(classes[-1]) if len(classes) == 2 else None,
        features=specs,
        sensitive_features=list(data.sensitive_features),
        slice_columns=list(data.slice_columns),
        time_column=data.time_column,
        source=origin,
    )
    summary = {
        "rows": {"raw": n_raw, "used": len(frame), **{k: len(v) for k, v in parts.items()}},
        "missing_target_removed": missing_target,
        "duplicates_removed": duplicates,
        "n_features": len(specs),
        "column_types": {s.name: s.kind for s in specs},
        "dropped_columns": dropped,
        "invalid_values": invalid,
        "class_balance": {
            name: {
                str(c): round(float((part[data.target].astype(str) == str(c)).mean()), 6)
                for c in classes
            }
            for name, part in parts.items()
        },
    }
    if schema.task == "binary":
        summary["positive_rate"] = {
            k: v[str(classes[-1])] for k, v in summary["class_balance"].items()
        }
    if data.time_column:
        summary["time_range"] = {
            name: [str(part[data.time_column].min()), str(part[data.time_column].max())]
            for name, part in parts.items()
        }
    return parts, schema, summary


def _drop_unused(
    frame: pd.DataFrame, specs: list[ColumnSpec], data
) -> tuple[list[ColumnSpec], dict[str, str]]:
    """Feature columns minus constants and identifiers (unless data.column_types names them).

    Returns:
        The kept specs, and column -> why it was dropped.
    """
    kept, dropped = [], {}
    for spec in specs:
        why = None
        if data.declared_kind(spec.name) is None:
            why = validate.unused_column(frame[spec.name], spec)
        if why is None:
            kept.append(spec)
            continue
        dropped[spec.name] = why
        if "identifier" in why:
            log.warning(
                "column '%s' %s: dropped (name it in data.column_types to keep it)",
                spec.name,
                why,
            )
        else:
            log.info("column '%s' %s: dropped, it cannot inform the model", spec.name, why)
    return kept, dropped


def _strays(frame: pd.DataFrame, specs: list[ColumnSpec], origin: str) -> dict[str, Any]:
    """Values a column's kind cannot read: counted, shown, and missing in the splits."""
    found: dict[str, Any] = {}
    for spec in specs:
        bad = validate.invalid_values(frame[spec.name], spec)
        if bad.empty:
            continue
        examples = [str(v) for v in pd.unique(bad.astype(str))[:5]]
        found[spec.name] = {"count": len(bad), "examples": examples}
        log.warning(
            "%s: column '%s' (%s): %d of %d values cannot be read as %s (e.g. %s); they are "
            "treated as missing (reports/data_summary.json: invalid_values)",
            origin,
            spec.name,
            spec.kind,
            len(bad),
            int(frame[spec.name].notna().sum()),
            "numbers" if spec.kind == "numeric" else "dates",
            ", ".join(map(repr, examples[:3])),
        )
    return found


def read_raw(paths: Paths) -> pd.DataFrame:
    """Read data/raw/dataset.parquet, with a one-line error if ingest has not produced it."""
    if not paths.raw.is_file():
        raise DataValidationError(f"{paths.raw}: not found; run `mlplatform ingest` first")
    try:
        return pd.read_parquet(paths.raw)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DataValidationError(f"{paths.raw}: cannot read file ({reason})") from None


def run(params: Params, paths: Paths) -> dict:
    """Validate and split data/raw/dataset.parquet; write nothing if a check fails."""
    origin = describe_source(params)
    raw = read_raw(paths)
    parts, schema, summary = build(params, raw, origin)
    # data/prepared is swapped in whole: never splits from one run and a schema from another.
    with atomic_dir(paths.prepared) as tmp:
        for name in SPLITS:
            write_parquet(tmp / paths.split(name).name, parts[name])
        write_json(tmp / paths.schema.name, schema.to_dict())
    write_json(paths.data_summary, summary)
    log.info(
        "prepared %s: %d train / %d validation / %d test rows, %d duplicates removed",
        origin,
        *(len(parts[s]) for s in SPLITS),
        summary["duplicates_removed"],
    )
    return summary
