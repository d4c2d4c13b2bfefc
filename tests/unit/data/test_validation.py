"""Data validation before anything is trained: one test per check, plus the happy paths.

Each failing check must raise a one-line DataValidationError that names the file (origin)
and the column at fault, and nothing may be written to disk.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlplatform.config import SPLITS, Paths, parse_params
from mlplatform.data import dataset, ingest, prepare
from mlplatform.errors import DataValidationError, MlplatformError
from support.project import ROOT

_DEFAULT_RAW = yaml.safe_load((ROOT / "params.yaml").read_text())
ORIGIN = "x.csv"
MLPLATFORM = Path(sys.executable).parent / "mlplatform"


def make_params(**data):
    """Default params with data.* pointing at the frames built by make_frame()."""
    raw = copy.deepcopy(_DEFAULT_RAW)
    raw["data"].update(
        source=ORIGIN,
        target="y",
        positive_class="yes",
        sensitive_features=[],
        slice_columns=[],
        drop_columns=[],
        time_column=None,
        column_types={},
    )
    raw["data"].update(data)
    return parse_params(raw)


def make_frame(n: int = 60, seed: int = 0, positive_share: float = 1 / 3) -> pd.DataFrame:
    """A valid frame: binary yes/no target, numeric, integer, categorical and yes/no columns."""
    rng = np.random.default_rng(seed)
    n_pos = round(n * positive_share)
    y = np.array(["yes"] * n_pos + ["no"] * (n - n_pos), dtype=object)
    rng.shuffle(y)
    return pd.DataFrame(
        {
            "y": y,
            "num": rng.normal(size=n),
            "count": rng.integers(0, 10, size=n),
            "cat": rng.choice(["a", "b", "c"], size=n).astype(object),
            "flag": rng.choice(["yes", "no"], size=n).astype(object),
        }
    )


def build_error(params, frame, origin: str = ORIGIN) -> str:
    """Run prepare.build on a frame that must fail; return the one-line message."""
    with pytest.raises(DataValidationError) as info:
        prepare.build(params, frame, origin=origin)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{origin}: "), message
    return message


def read_error(path: Path) -> str:
    with pytest.raises(DataValidationError) as info:
        ingest.read_table(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


# --------------------------------------------------------------------------------------
# File-level errors (ingest.read_table)


def test_garbage_parquet_is_unreadable(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(os.urandom(512))
    assert "cannot read file" in read_error(path)


def test_binary_garbage_csv_is_unreadable(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(bytes(range(256)) * 4)
    message = read_error(path)
    assert str(path) in message and "not UTF-8 text" in message


def test_malformed_csv_is_unreadable(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('a,b\n1,2\n3,"unterminated\n')
    assert "cannot read file" in read_error(path)


@pytest.mark.parametrize("name", ["data.txt", "data.xlsx", "data"])
def test_unsupported_suffix(tmp_path, name):
    path = tmp_path / name
    path.write_text("a,b\n1,2\n")
    assert "unsupported file type" in read_error(path)


def test_missing_file(tmp_path):
    assert "file not found" in read_error(tmp_path / "absent.csv")


def test_zero_byte_csv_is_empty(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"")
    assert "file is empty" in read_error(path)


def test_zero_byte_parquet_is_empty(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"")
    assert "file is empty" in read_error(path)


def test_header_only_csv_has_no_rows(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("y,num,cat\n")
    assert "no data rows" in read_error(path)


def test_duplicate_column_names_in_csv_header(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("y,num,num,cat\nyes,1,2,a\nno,3,4,b\n")
    message = read_error(path)
    assert "duplicate column name" in message
    assert "'num'" in message


def test_valid_csv_and_parquet_are_read(tmp_path):
    frame = make_frame()
    frame.to_csv(tmp_path / "data.csv", index=False)
    frame.to_parquet(tmp_path / "data.parquet", index=False)
    from_csv = ingest.read_table(tmp_path / "data.csv")
    from_parquet = ingest.read_table(tmp_path / "data.parquet")
    assert list(from_csv.columns) == list(frame.columns)
    assert len(from_csv) == len(frame)
    pd.testing.assert_frame_equal(from_parquet, frame)


def test_ingest_writes_nothing_when_the_source_is_bad(tmp_path):
    source = tmp_path / "bad.csv"
    source.write_text("y,a,a\nyes,1,2\n")
    params = make_params(source=str(source))
    paths = Paths(tmp_path)
    with pytest.raises(DataValidationError, match="duplicate column"):
        ingest.run(params, paths)
    assert not (tmp_path / "data").exists()


# --------------------------------------------------------------------------------------
# Target checks


def test_missing_target_column():
    message = build_error(make_params(target="label"), make_frame())
    assert "'label'" in message
    assert "data.target" in message


def test_target_with_a_single_class():
    frame = make_frame()
    frame["y"] = "no"
    message = build_error(make_params(), frame)
    assert "'y'" in message
    assert "single class" in message


def test_target_with_a_single_class_after_missing_targets_are_dropped():
    frame = make_frame()
    frame.loc[frame["y"] == "yes", "y"] = None
    assert "single class" in build_error(make_params(), frame)


def test_binary_target_needs_positive_class():
    message = build_error(make_params(positive_class=None), make_frame())
    assert "'y'" in message
    assert "data.positive_class" in message


def test_positive_class_not_among_the_values():
    message = build_error(make_params(positive_class="maybe"), make_frame())
    assert "'y'" in message
    assert "'maybe'" in message
    assert "not a value" in message


def test_multiclass_positive_class_not_among_the_values():
    frame = make_frame()
    frame["y"] = np.resize(["a", "b", "c"], len(frame))
    message = build_error(make_params(positive_class="z"), frame)
    assert "'y'" in message
    assert "'z'" in message


def test_class_too_small_to_split():
    frame = make_frame()
    yes = frame.index[frame["y"] == "yes"]
    frame = frame.drop(index=yes[2:])  # two positive rows left
    message = build_error(make_params(), frame)
    assert "'y'" in message
    assert "'yes'" in message
    assert "at least 3" in message


# --------------------------------------------------------------------------------------
# Declared columns


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("drop_columns", ["ghost"]),
        ("sensitive_features", ["ghost"]),
        ("slice_columns", ["ghost"]),
        ("time_column", "ghost"),
        ("column_types", {"ghost": "numeric"}),
    ],
)
def test_declared_column_that_does_not_exist(key, value):
    message = build_error(make_params(**{key: value}), make_frame())
    assert "'ghost'" in message
    assert f"data.{key}" in message
    assert "does not exist" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("drop_columns", ["y"]),
        ("sensitive_features", ["y"]),
        ("slice_columns", ["y"]),
        ("time_column", "y"),
    ],
)
def test_target_cannot_have_another_role(key, value):
    message = build_error(make_params(**{key: value}), make_frame())
    assert "'y'" in message
    assert f"data.{key}" in message


def test_dropped_column_cannot_have_another_role():
    message = build_error(
        make_params(drop_columns=["cat"], sensitive_features=["cat"]), make_frame()
    )
    assert "'cat'" in message
    assert "data.drop_columns" in message
    assert "data.sensitive_features" in message


def test_no_feature_columns_left():
    frame = make_frame()[["y", "num"]]
    message = build_error(make_params(drop_columns=["num"]), frame)
    assert "no feature columns" in message


# --------------------------------------------------------------------------------------
# Values


@pytest.mark.parametrize("empty", [np.nan, None], ids=["float-nan", "object-none"])
def test_entirely_empty_column(empty):
    frame = make_frame()
    frame["blank"] = empty
    message = build_error(make_params(), frame)
    assert "'blank'" in message
    assert "entirely empty" in message


def test_empty_column_that_is_dropped_is_fine():
    frame = make_frame()
    frame["blank"] = np.nan
    _, schema, _ = prepare.build(make_params(drop_columns=["blank"]), frame, origin=ORIGIN)
    assert "blank" not in schema.feature_names


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_infinite_values(bad):
    frame = make_frame()
    frame.loc[[3, 7], "num"] = bad
    message = build_error(make_params(), frame)
    assert "'num'" in message
    assert "2 infinite" in message


def test_numeric_override_on_a_non_numeric_column():
    message = build_error(make_params(column_types={"cat": "numeric"}), make_frame())
    assert "'cat'" in message
    assert "declared numeric" in message
    assert "data.column_types" in message


def test_numeric_override_on_mostly_numeric_text_reads_strays_as_missing_and_reports_them():
    """Declared numeric, a stray is what it is when inferred: missing, counted and shown
    (it used to stop prepare, which left data.column_types no way to accept strays)."""
    frame = make_frame()
    frame["num"] = frame["num"].round(3).astype(str).astype(object)
    frame.loc[4, "num"] = "n/a?"
    parts, schema, summary = prepare.build(
        make_params(column_types={"num": "numeric"}), frame, ORIGIN
    )
    assert summary["invalid_values"] == {"num": {"count": 1, "examples": ["n/a?"]}}
    assert {s.name: s.input_type for s in schema.features}["num"] == "double"
    values = pd.concat(parts.values())["num"]
    assert values.dtype == "float64" and values.isna().sum() == 1


def test_numeric_override_on_numeric_text_passes():
    frame = make_frame()
    frame["num"] = frame["num"].round(3).astype(str).astype(object)
    _, schema, _ = prepare.build(make_params(column_types={"num": "numeric"}), frame, ORIGIN)
    assert {s.name: s.kind for s in schema.features}["num"] == "numeric"


def test_boolean_override_on_a_three_valued_column():
    message = build_error(make_params(column_types={"cat": "boolean"}), make_frame())
    assert "'cat'" in message
    assert "declared boolean" in message


def test_datetime_override_on_a_non_date_column():
    message = build_error(make_params(column_types={"cat": "datetime"}), make_frame())
    assert "'cat'" in message
    assert "declared datetime" in message


def test_categorical_override_is_applied():
    params = make_params(column_types={"count": "categorical"})
    _, _, summary = prepare.build(params, make_frame(), ORIGIN)
    assert summary["column_types"]["count"] == "categorical"


# --------------------------------------------------------------------------------------
# Leakage


@pytest.mark.parametrize(
    "mapping",
    [
        {"yes": "yes", "no": "no"},
        {"yes": "Y", "no": "N"},
        {"yes": 1, "no": 0},
        {"yes": "no", "no": "yes"},  # inverted is still one-to-one
    ],
    ids=["copy", "Y/N", "1/0", "inverted"],
)
def test_feature_identical_to_target_is_leakage(mapping):
    frame = make_frame()
    frame["leak"] = frame["y"].map(mapping)
    message = build_error(make_params(), frame)
    assert "'leak'" in message
    assert "'y'" in message
    assert "leakage" in message


def test_multiclass_relabelled_target_is_leakage():
    frame = make_frame()
    frame["y"] = np.resize(["a", "b", "c"], len(frame))
    frame["leak"] = frame["y"].map({"a": 10, "b": 20, "c": 30})
    message = build_error(make_params(positive_class=None), frame)
    assert "'leak'" in message


def test_leaky_column_that_is_dropped_is_fine():
    frame = make_frame()
    frame["leak"] = frame["y"].map({"yes": "Y", "no": "N"})
    _, schema, _ = prepare.build(make_params(drop_columns=["leak"]), frame, ORIGIN)
    assert "leak" not in schema.feature_names


def test_correlated_but_not_identical_feature_is_not_leakage():
    frame = make_frame()
    frame["almost"] = frame["y"].map({"yes": "Y", "no": "N"})
    frame.loc[0, "almost"] = "N" if frame.loc[0, "y"] == "yes" else "Y"
    prepare.build(make_params(), frame, ORIGIN)


# --------------------------------------------------------------------------------------
# Time column


def test_time_column_must_be_numeric_or_a_date():
    message = build_error(make_params(time_column="cat"), make_frame())
    assert "'cat'" in message
    assert "data.time_column" in message


def test_time_column_with_missing_values():
    frame = make_frame()
    frame["t"] = np.arange(len(frame), dtype=float)
    frame.loc[5, "t"] = np.nan
    message = build_error(make_params(time_column="t"), frame)
    assert "'t'" in message
    assert "missing" in message


# --------------------------------------------------------------------------------------
# The happy paths


def test_valid_frame_passes():
    frame = make_frame()
    parts, schema, summary = prepare.build(make_params(), frame, origin=ORIGIN)
    assert set(parts) == set(SPLITS)
    assert summary["rows"] == {"raw": 60, "used": 60, "train": 36, "validation": 12, "test": 12}
    assert summary["duplicates_removed"] == 0
    assert summary["missing_target_removed"] == 0
    assert schema.task == "binary"
    assert schema.classes == ["no", "yes"]
    assert schema.positive_class == "yes"
    assert schema.source == ORIGIN
    assert summary["column_types"] == {
        "num": "numeric",
        "count": "numeric",
        "cat": "categorical",
        "flag": "boolean",
    }
    flag = next(s for s in schema.features if s.name == "flag")
    assert flag.true_values == ("yes",)
    for part in parts.values():
        assert list(part.columns) == list(frame.columns)
        assert part.index.equals(pd.RangeIndex(len(part)))


def test_schema_round_trips_through_a_dict():
    _, schema, _ = prepare.build(make_params(), make_frame(), origin=ORIGIN)
    again = dataset.DatasetSchema.from_dict(schema.to_dict())
    assert again == schema
    encoded = schema.encode_target(pd.Series(["no", "yes", "yes"]))
    assert encoded.tolist() == [0, 1, 1]


def test_sensitive_features_are_kept_but_not_model_inputs():
    params = make_params(sensitive_features=["flag"], slice_columns=["cat"])
    parts, schema, _ = prepare.build(params, make_frame(), ORIGIN)
    assert "flag" not in schema.feature_names
    assert "cat" in schema.feature_names
    assert "flag" in parts["train"].columns
    as_features = make_params(sensitive_features=["flag"], sensitive_as_features=True)
    _, schema, _ = prepare.build(as_features, make_frame(), ORIGIN)
    assert "flag" in schema.feature_names


def test_missing_targets_are_removed_and_counted():
    frame = make_frame()
    frame.loc[[1, 2], "y"] = None
    parts, _, summary = prepare.build(make_params(), frame, ORIGIN)
    assert summary["missing_target_removed"] == 2
    assert sum(len(p) for p in parts.values()) == 58
    assert all(p["y"].notna().all() for p in parts.values())


def test_duplicates_are_removed_before_the_split():
    frame = make_frame()
    copies = frame.iloc[[0, 1, 2, 3, 4, 0, 0]]
    with_dups = pd.concat([frame, copies], ignore_index=True)
    parts, _, summary = prepare.build(make_params(), with_dups, ORIGIN)
    assert summary["duplicates_removed"] == len(copies)
    assert summary["rows"]["raw"] == len(with_dups)
    assert summary["rows"]["used"] == len(frame)
    combined = pd.concat(parts.values(), ignore_index=True)
    assert len(combined) == len(frame)
    assert not combined.duplicated().any()
    # ... so no row of one split reappears in another.
    keys = {name: set(map(tuple, part.astype(str).to_numpy())) for name, part in parts.items()}
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]


def test_split_is_stratified():
    frame = make_frame(n=400, seed=3, positive_share=0.15)
    parts, _, summary = prepare.build(make_params(), frame, ORIGIN)
    overall = (frame["y"] == "yes").mean()
    for name, part in parts.items():
        rate = (part["y"] == "yes").mean()
        assert rate == pytest.approx(overall, abs=0.01), name
        assert summary["positive_rate"][name] == pytest.approx(rate, abs=1e-6)
    assert summary["rows"]["train"] == 240
    assert summary["rows"]["validation"] == 80
    assert summary["rows"]["test"] == 80


def test_split_is_seeded():
    frame = make_frame(n=200, seed=5)
    first, _, _ = prepare.build(make_params(), frame, ORIGIN)
    again, _, _ = prepare.build(make_params(), frame, ORIGIN)
    for name in SPLITS:
        pd.testing.assert_frame_equal(first[name], again[name])
    raw = copy.deepcopy(_DEFAULT_RAW)
    raw["seed"] = 7
    raw["data"].update(source=ORIGIN, target="y", sensitive_features=[], slice_columns=[])
    other, _, _ = prepare.build(parse_params(raw), frame, ORIGIN)
    assert not first["test"].equals(other["test"])


def test_time_column_split_orders_train_before_validation_before_test():
    frame = make_frame(n=100, seed=1)
    frame["t"] = np.random.default_rng(9).permutation(len(frame)).astype(float)
    parts, schema, summary = prepare.build(make_params(time_column="t"), frame, ORIGIN)
    assert parts["train"]["t"].max() < parts["validation"]["t"].min()
    assert parts["validation"]["t"].max() < parts["test"]["t"].min()
    assert [len(parts[s]) for s in SPLITS] == [60, 20, 20]
    assert "t" not in schema.feature_names
    assert schema.time_column == "t"
    assert summary["time_range"]["train"] == ["0.0", "59.0"]


def test_time_column_split_with_iso_dates():
    frame = make_frame(n=100, seed=2)
    days = pd.date_range("2021-01-01", periods=len(frame), freq="D").strftime("%Y-%m-%d")
    frame["when"] = np.random.default_rng(4).permutation(np.asarray(days, dtype=object))
    parts, _, _ = prepare.build(make_params(time_column="when"), frame, ORIGIN)
    assert parts["train"]["when"].max() < parts["validation"]["when"].min()
    assert parts["validation"]["when"].max() < parts["test"]["when"].min()


def test_multiclass_target():
    frame = make_frame(n=90, seed=4)
    frame["y"] = np.random.default_rng(0).permutation(np.repeat(["a", "b", "c"], 30))
    parts, schema, summary = prepare.build(make_params(positive_class=None), frame, ORIGIN)
    assert schema.task == "multiclass"
    assert schema.classes == ["a", "b", "c"]
    assert schema.positive_class is None
    assert "positive_rate" not in summary
    for name, part in parts.items():
        assert set(part["y"]) == {"a", "b", "c"}, name
        for cls in "abc":
            assert summary["class_balance"][name][cls] == pytest.approx(1 / 3, abs=0.05)


def test_integer_binary_target_with_integer_positive_class():
    frame = make_frame()
    frame["y"] = (frame["y"] == "yes").astype("int64")
    _, schema, _ = prepare.build(make_params(positive_class=1), frame, ORIGIN)
    assert schema.classes == [0, 1]
    assert schema.positive_class == 1
    assert type(schema.classes[0]) is int  # plain Python, JSON-serialisable


def test_positive_class_decides_the_class_order():
    _, schema, _ = prepare.build(make_params(positive_class="no"), make_frame(), ORIGIN)
    assert schema.classes == ["yes", "no"]
    assert schema.positive_class == "no"


def test_too_few_rows_for_a_stratified_split_is_a_validation_error():
    # 10 classes x 3 rows passes check_target (>= 3 per class) but the test split has 6 rows.
    frame = pd.DataFrame({"y": np.repeat(np.arange(10), 3), "x": np.arange(30.0)})
    build_error(make_params(positive_class=None), frame)


# --------------------------------------------------------------------------------------
# The stage writes nothing when a check fails


def write_raw(tmp_path: Path, frame: pd.DataFrame) -> Paths:
    paths = Paths(tmp_path)
    paths.raw.parent.mkdir(parents=True)
    frame.to_parquet(paths.raw, index=False)
    return paths


def assert_nothing_written(tmp_path: Path) -> None:
    for folder in (tmp_path / "data" / "prepared", tmp_path / "reports"):
        assert not folder.exists() or not any(folder.rglob("*")), folder


def _single_class(frame):
    frame["y"] = "no"
    return frame


def _leaky(frame):
    frame["leak"] = frame["y"].map({"yes": "Y", "no": "N"})
    return frame


def _infinite(frame):
    frame.loc[0, "num"] = np.inf
    return frame


@pytest.mark.parametrize("spoil", [_single_class, _leaky, _infinite])
def test_prepare_run_writes_nothing_when_validation_fails(tmp_path, spoil):
    paths = write_raw(tmp_path, spoil(make_frame()))
    with pytest.raises(DataValidationError, match=f"^{ORIGIN}: "):
        prepare.run(make_params(), paths)
    assert_nothing_written(tmp_path)


def test_prepare_run_writes_nothing_when_the_raw_file_is_corrupt(tmp_path):
    paths = Paths(tmp_path)
    paths.raw.parent.mkdir(parents=True)
    paths.raw.write_bytes(os.urandom(512))
    with pytest.raises(Exception):  # noqa: B017 - the type is checked in the xfail below
        prepare.run(make_params(), paths)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("content", [b"not a parquet file" * 20, None], ids=["corrupt", "missing"])
def test_prepare_run_reports_a_bad_raw_file_as_a_validation_error(tmp_path, content):
    paths = Paths(tmp_path)
    if content is not None:
        paths.raw.parent.mkdir(parents=True)
        paths.raw.write_bytes(content)
    with pytest.raises(MlplatformError):
        prepare.run(make_params(), paths)


def test_prepare_run_writes_the_outputs_when_valid(tmp_path):
    paths = write_raw(tmp_path, make_frame())
    summary = prepare.run(make_params(), paths)
    for name in SPLITS:
        assert paths.split(name).is_file()
    assert paths.schema.is_file()
    assert paths.data_summary.is_file()
    assert summary["rows"]["used"] == 60
    assert dataset.load_schema(paths).classes == ["no", "yes"]
    assert len(dataset.load_split(paths, "train")) == 36


# --------------------------------------------------------------------------------------
# The CLI: one line on stderr, no traceback


def run_cli_prepare(cwd: Path) -> subprocess.CompletedProcess:
    params_file = cwd / "my-params.yaml"
    params_file.write_text(yaml.safe_dump(_DEFAULT_RAW))  # hmda defaults: target deny
    env = {**os.environ, "PATH": f"{MLPLATFORM.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [str(MLPLATFORM), "prepare", "--params", str(params_file)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]


def test_cli_prepare_on_invalid_raw_data_prints_one_error_line(tmp_path):
    frame = pd.DataFrame(
        {
            "deny": ["no"] * 20,
            "pirat": np.linspace(0, 1, 20),
            "afam": ["no", "yes"] * 10,
            "single": ["no", "yes"] * 10,
            "selfemp": ["yes", "no"] * 10,
        }
    )
    write_raw(tmp_path, frame)
    line = assert_one_line_error(run_cli_prepare(tmp_path))
    assert "'deny'" in line
    assert "single class" in line
    assert_nothing_written(tmp_path)


def test_cli_prepare_on_a_corrupt_raw_parquet_prints_one_error_line(tmp_path):
    raw = Paths(tmp_path).raw
    raw.parent.mkdir(parents=True)
    raw.write_bytes(os.urandom(512))
    result = run_cli_prepare(tmp_path)
    assert_nothing_written(tmp_path)
    assert_one_line_error(result)


@pytest.mark.parametrize("written", ["1", 1, 1.0, "1.0"])
def test_float_01_target_and_any_spelling_of_the_positive_class(written):
    frame = make_frame()
    frame["y"] = (frame["y"] == "yes").astype(float)
    frame.loc[0, "y"] = np.nan  # why a 0/1 target is read as float
    parts, schema, _ = prepare.build(make_params(positive_class=written), frame, ORIGIN)
    assert schema.classes == [0, 1] and schema.positive_class == 1
    assert parts["train"]["y"].dtype == "int64"


def test_categorical_with_number_categories_is_stored_as_text():
    frame = make_frame()
    frame["cat"] = pd.Categorical(np.where(np.arange(len(frame)) % 3 == 0, 7, 8))
    frame.loc[1, "cat"] = np.nan
    parts, schema, _ = prepare.build(make_params(), frame, ORIGIN)
    spec = next(s for s in schema.features if s.name == "cat")
    assert spec.input_type == "string"
    values = pd.concat(parts.values())["cat"]
    assert {type(v) for v in values.dropna()} == {str}
    assert set(values.dropna()) == {"7", "8"}


# --------------------------------------------------------------------------------------
# Silent wrong answers in training (issue 11)


def _with_strays(n: int = 2380, strays: int = 40) -> pd.DataFrame:
    """The issue's case: a numeric column read as text because of a few stray words."""
    frame = make_frame(n=n)
    text = frame["num"].round(6).astype(str).astype(object)
    text.iloc[np.arange(strays) * (n // strays)] = np.resize(["n/a", "unknown", "-"], strays)
    return frame.assign(num=text)


def test_numeric_column_with_a_few_stray_words_stays_numeric(caplog):
    """It became categorical, and the card explained "'0.47' raises it most"."""
    frame = _with_strays()
    with caplog.at_level("WARNING", logger="mlplatform.data.prepare"):
        parts, schema, summary = prepare.build(make_params(), frame, ORIGIN)
    spec = next(s for s in schema.features if s.name == "num")
    assert (spec.kind, spec.input_type) == ("numeric", "double")
    assert summary["column_types"]["num"] == "numeric"
    assert summary["invalid_values"]["num"]["count"] == 40
    assert summary["invalid_values"]["num"]["examples"] == ["n/a", "unknown", "-"]
    stored = pd.concat(parts.values())["num"]
    # Stray rows that became identical to one another are de-duplicated.
    assert stored.dtype == "float64" and stored.isna().sum() == 40 - summary["duplicates_removed"]
    warnings = [r.getMessage() for r in caplog.records if "'num'" in r.getMessage()]
    assert len(warnings) == 1 and "40 of 2380" in warnings[0] and "\n" not in warnings[0]


def test_text_that_is_half_numbers_is_an_error_naming_the_column_and_share():
    frame = _with_strays(n=100, strays=30)
    message = build_error(make_params(), frame)
    assert "'num'" in message and "70%" in message and "data.column_types" in message
    # Declared, it is read as the user says.
    _, schema, summary = prepare.build(make_params(column_types={"num": "numeric"}), frame, ORIGIN)
    assert summary["invalid_values"]["num"]["count"] == 30
    _, schema, _ = prepare.build(make_params(column_types={"num": "categorical"}), frame, ORIGIN)
    assert {s.name: s.kind for s in schema.features}["num"] == "categorical"


def test_mostly_words_with_a_few_numbers_is_categorical():
    frame = make_frame()
    frame["cat"] = frame["cat"].where(np.arange(60) % 5 != 0, "7")  # 20% numbers
    _, _, summary = prepare.build(make_params(), frame, ORIGIN)
    assert summary["column_types"]["cat"] == "categorical"
    assert summary["invalid_values"] == {}


def test_identifier_columns_are_dropped_unless_declared(caplog):
    frame = make_frame(n=200)
    frame["application_id"] = np.arange(100_001, 100_201)[::-1]  # a dense sequence
    frame["code"] = [f"A-{i:05d}" for i in range(200)]  # text, one value per row
    with caplog.at_level("WARNING", logger="mlplatform.data.prepare"):
        parts, schema, summary = prepare.build(make_params(), frame, ORIGIN)
    assert not {"application_id", "code"} & set(schema.feature_names)
    dropped = summary["dropped_columns"]
    assert set(dropped) == {"application_id", "code"}
    assert all("identifier" in why for why in dropped.values())
    assert "application_id" not in parts["train"].columns
    assert sum("application_id" in r.getMessage() for r in caplog.records) == 1
    kept = make_params(column_types={"application_id": "numeric", "code": "categorical"})
    _, schema, summary = prepare.build(kept, frame, ORIGIN)
    assert {"application_id", "code"} <= set(schema.feature_names)
    assert summary["dropped_columns"] == {}


def test_continuous_and_sparse_integer_features_with_distinct_values_are_kept():
    rng = np.random.default_rng(3)
    frame = make_frame(n=200)
    frame["income"] = rng.choice(np.arange(20_000, 400_000), 200, replace=False)  # distinct ints
    frame["ratio"] = rng.normal(size=200)  # distinct floats
    _, schema, summary = prepare.build(make_params(), frame, ORIGIN)
    assert {"income", "ratio", "num"} <= set(schema.feature_names)
    assert summary["dropped_columns"] == {}


def test_constant_columns_are_dropped_with_a_note():
    frame = make_frame().assign(country="NL", version=3)
    _, schema, summary = prepare.build(make_params(), frame, ORIGIN)
    assert not {"country", "version"} & set(schema.feature_names)
    assert "one value ('NL')" in summary["dropped_columns"]["country"]
    assert set(summary["dropped_columns"]) == {"country", "version"}


@pytest.mark.parametrize(
    ("fmt", "text"),
    [("%m/%d/%Y", "MM/DD/YYYY"), ("%d.%m.%Y", "DD.MM.YYYY"), ("%d/%m/%Y", "DD/MM/YYYY")],
)
def test_non_iso_dates_are_detected_and_the_format_is_stored(fmt, text):
    frame = make_frame()
    when = pd.date_range("2021-01-01", periods=60, freq="5D")
    frame["opened"] = when.strftime(fmt)
    _, schema, _ = prepare.build(make_params(), frame, ORIGIN)
    spec = next(s for s in schema.features if s.name == "opened")
    assert (spec.kind, spec.date_format) == ("datetime", fmt)
    assert dataset.DatasetSchema.from_dict(schema.to_dict()) == schema


def test_ambiguous_day_month_order_is_an_error_and_column_types_decides():
    frame = make_frame()
    days = pd.date_range("2021-01-01", periods=12, freq="MS")  # day 1: reads both ways
    frame["opened"] = np.resize(days.strftime("%d/%m/%Y"), 60)
    message = build_error(make_params(), frame)
    assert "'opened'" in message and "DD/MM/YYYY" in message and "MM/DD/YYYY" in message
    assert "data.column_types" in message
    declared = {"opened": {"kind": "datetime", "format": "%d/%m/%Y"}}
    _, schema, _ = prepare.build(make_params(column_types=declared), frame, ORIGIN)
    spec = next(s for s in schema.features if s.name == "opened")
    assert spec.date_format == "%d/%m/%Y"


def test_declared_date_format_the_values_contradict_is_an_error():
    frame = make_frame().assign(opened="2021-03-15")
    declared = {"opened": {"kind": "datetime", "format": "%d.%m.%Y"}}
    message = build_error(make_params(column_types=declared), frame)
    assert "'opened'" in message and "'%d.%m.%Y'" in message


def test_time_column_in_a_non_iso_format_splits_in_time_order():
    frame = make_frame()
    when = pd.date_range("2021-01-01", periods=60, freq="3D")
    frame["when"] = when.strftime("%d.%m.%Y")
    parts, _, _ = prepare.build(make_params(time_column="when"), frame, ORIGIN)
    as_dates = {k: pd.to_datetime(v["when"], format="%d.%m.%Y") for k, v in parts.items()}
    assert as_dates["train"].max() < as_dates["validation"].min()
    assert as_dates["validation"].max() < as_dates["test"].min()


def test_three_classes_with_a_positive_class_is_a_contract_error():
    """It trained a multiclass model silently."""
    frame = make_frame()
    frame["y"] = np.resize(["a", "b", "c"], len(frame))
    message = build_error(make_params(positive_class="a"), frame)
    assert "'y'" in message and "3 classes" in message
    assert "data.positive_class" in message and "'a'" in message


def test_nested_list_column_is_a_one_line_error_through_the_cli(tmp_path):
    """A Parquet list column crashed prepare with a traceback."""
    frame = pd.DataFrame(
        {
            "deny": ["no", "yes"] * 10,
            "pirat": np.linspace(0, 1, 20),
            "afam": ["no", "yes"] * 10,
            "single": ["no", "yes"] * 10,
            "selfemp": ["yes", "no"] * 10,
            "tags": [[1, 2], [3]] * 10,
        }
    )
    write_raw(tmp_path, frame)
    line = assert_one_line_error(run_cli_prepare(tmp_path))
    assert "'tags'" in line and "nested" in line and "data.drop_columns" in line
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_ingest_detects_the_delimiter(tmp_path, sep):
    """A ;-delimited file was read as one column and prepare said "target not found"."""
    path = tmp_path / "semi.csv"
    make_frame().assign(note="a, b").to_csv(path, index=False, sep=sep)
    frame = ingest.read_table(path)
    assert list(frame.columns) == ["y", "num", "count", "cat", "flag", "note"]
    assert frame["note"].eq("a, b").all()


def test_comma_files_with_other_delimiters_inside_values_stay_comma_files(tmp_path):
    path = tmp_path / "comma.csv"
    make_frame().assign(note="x;y|z").to_csv(path, index=False)
    assert ingest.read_table(path)["note"].eq("x;y|z").all()


def test_ingest_of_a_non_utf8_csv_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "latin.csv"
    make_frame().assign(city="Zürich").to_csv(path, index=False, encoding="latin-1")
    message = read_error(path)
    assert "not UTF-8 text" in message


def test_params_that_can_be_checked_without_data_stop_before_ingest(tmp_path):
    raw = copy.deepcopy(_DEFAULT_RAW)
    raw["tune"]["metric"] = "auc"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PATH": f"{MLPLATFORM.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [str(MLPLATFORM), "ingest"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    line = assert_one_line_error(result)
    assert "tune.metric: unknown metric 'auc'" in line
    assert not (tmp_path / "data").exists()
