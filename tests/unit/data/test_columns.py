"""Column kinds: inference and coercion of raw records into canonical model inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlplatform.data.columns import (
    DATETIME_PARTS,
    MISSING,
    ColumnSpec,
    categorical_feature_names,
    coerce,
    infer_kind,
    make_spec,
    numeric_feature_names,
)

# --------------------------------------------------------------------------------------
# infer_kind


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ([1.5, 2.0, np.nan], "numeric"),
        ([1, 2, 3], "numeric"),
        ([0, 1, 1], "numeric"),
        ([True, False, True], "boolean"),
        (["yes", "no", None], "boolean"),
        (["Yes", "NO", "yes"], "boolean"),
        (["Y", "N"], "boolean"),
        (["true", "false"], "boolean"),
        (["2024-01-05", "2023-12-31", None], "datetime"),
        (["2024-01-05T10:30:00", "2024-02-01T00:00:00"], "datetime"),
        (["red", "green", "blue"], "categorical"),
        (["0", "1"], "numeric"),  # text 0/1 codes are numbers, not booleans
        (["1.5", "2", "abc"] + ["3.25"] * 97, "numeric"),  # 99% numbers: "abc" is a stray
        (["1.5", "abc", "def", "ghi"], "categorical"),  # 25% numbers
        (["03/15/2020", "12/01/2021", None], "datetime"),  # MM/DD/YYYY
        (["15.03.2020", "01.12.2021"], "datetime"),  # DD.MM.YYYY
        (["yes", "no", "maybe"], "categorical"),
        ([None, None], "categorical"),
    ],
)
def test_infer_kind(values, kind):
    assert infer_kind(pd.Series(values, name="c")) == kind


def test_infer_kind_of_datetime_dtype():
    series = pd.Series(pd.date_range("2020-01-01", periods=3, freq="D"), name="when")
    assert infer_kind(series) == "datetime"


def test_infer_kind_mostly_dates_with_junk_is_categorical():
    values = [f"2024-01-{d:02d}" for d in range(1, 11)] + ["soon"] * 5
    assert infer_kind(pd.Series(values)) == "categorical"


# --------------------------------------------------------------------------------------
# make_spec


def test_make_spec_input_types():
    assert make_spec(pd.Series([1, 2], name="n"), "numeric").input_type == "double"
    assert make_spec(pd.Series([True, False], name="b"), "boolean").input_type == "boolean"
    assert make_spec(pd.Series(["a"], name="s"), "categorical").input_type == "string"
    dates = pd.Series(pd.date_range("2020-01-01", periods=2), name="d")
    assert make_spec(dates, "datetime").input_type == "datetime"


def test_make_spec_records_true_tokens_of_text_booleans():
    spec = make_spec(pd.Series(["Y", "N", "y"], name="flag"), "boolean")
    assert spec.true_values == ("y",)
    assert ColumnSpec.from_dict(spec.to_dict()) == spec


def test_feature_names_of_a_datetime_spec():
    spec = ColumnSpec("when", "datetime", "string")
    assert spec.feature_names == [f"when__{p}" for p in DATETIME_PARTS]
    specs = [spec, ColumnSpec("c", "categorical", "string"), ColumnSpec("n", "numeric", "double")]
    assert numeric_feature_names(specs) == [*spec.feature_names, "n"]
    assert categorical_feature_names(specs) == ["c"]


# --------------------------------------------------------------------------------------
# coerce


def test_numeric_text_that_fails_parsing_is_flagged_invalid():
    spec = ColumnSpec("n", "numeric", "double")
    frame = pd.DataFrame({"n": ["1.5", "abc", None, "7"]}, dtype=object)
    out, invalid = coerce(frame, [spec])
    assert out["n"].iloc[0] == 1.5
    assert np.isnan(out["n"].iloc[1])
    assert np.isnan(out["n"].iloc[2])
    assert out["n"].iloc[3] == 7.0
    assert invalid["n"].tolist() == [False, True, False, False]


def test_valid_numeric_values_report_no_invalid_mask():
    spec = ColumnSpec("n", "numeric", "double")
    out, invalid = coerce(pd.DataFrame({"n": [1, 2, None]}), [spec])
    assert out["n"].dtype == np.float64
    assert invalid == {}


def test_categorical_missing_becomes_its_own_category():
    spec = ColumnSpec("c", "categorical", "string")
    out, invalid = coerce(pd.DataFrame({"c": ["a", None, np.nan, "b"]}), [spec])
    assert out["c"].tolist() == ["a", MISSING, MISSING, "b"]
    assert MISSING == "__missing__"
    assert invalid == {}


@pytest.mark.parametrize(
    "values",
    [[5.0, 7.0], [5, 7], ["5", "7"], pd.array([5, 7], dtype="Int64")],
    ids=["float", "int", "text", "nullable-int"],
)
def test_integral_floats_and_ints_give_the_same_category(values):
    spec = ColumnSpec("c", "categorical", "string")
    out, _ = coerce(pd.DataFrame({"c": values}), [spec])
    assert out["c"].tolist() == ["5", "7"]


def test_non_integral_float_category_and_missing_float():
    spec = ColumnSpec("c", "categorical", "string")
    out, _ = coerce(pd.DataFrame({"c": [5.5, np.nan, 5.0]}), [spec])
    assert out["c"].tolist() == ["5.5", MISSING, "5"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_huge_integral_float_categories_stay_distinct():
    spec = ColumnSpec("c", "categorical", "string")
    out, _ = coerce(pd.DataFrame({"c": [1e20, 2e20]}), [spec])
    assert out["c"].iloc[0] != out["c"].iloc[1]


def test_yes_no_booleans_become_one_and_zero_and_unknown_tokens_are_invalid():
    spec = make_spec(pd.Series(["yes", "no"], name="b"), "boolean")
    frame = pd.DataFrame({"b": ["yes", "no", " YES ", "No", "maybe", None]})
    out, invalid = coerce(frame, [spec])
    values = out["b"].to_numpy()
    assert values[:4].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert np.isnan(values[4])
    assert np.isnan(values[5])  # missing stays missing (valid)
    assert invalid["b"].tolist() == [False, False, False, False, True, False]


BOOLEAN_CASES = [
    (True, 1.0, True),
    (False, 0.0, True),
    (1, 1.0, True),
    (0.0, 0.0, True),
    ("1", 1.0, True),
    ("true", 1.0, True),
    ("N", 0.0, True),
    (None, None, True),
    (np.nan, None, True),
    (5, None, False),
    (0.5, None, False),
    ("5", None, False),
    ("maybe", None, False),
    ("", None, False),
]


@pytest.mark.parametrize("batch", [1, 100], ids=["per-request", "batch"])
def test_boolean_columns_accept_only_what_training_accepts(batch):
    """A number in a yes/no column was read as a 5.0 feature and "5" as missing: both invalid."""
    from mlplatform.data.columns import coerce_arrays

    spec = ColumnSpec("b", "boolean", "string", ("yes",))
    raw = pd.Series([v for v, _, _ in BOOLEAN_CASES] * batch, dtype=object)
    out, invalid = coerce_arrays(pd.DataFrame({"b": raw}), [spec])
    n = len(BOOLEAN_CASES)
    bad = invalid.get("b", np.zeros(len(raw), dtype=bool))[:n]
    assert bad.tolist() == [not ok for _, _, ok in BOOLEAN_CASES]
    for (value, expected, _), got in zip(BOOLEAN_CASES, out["b"][:n], strict=True):
        assert np.isnan(got) if expected is None else got == expected, value


@pytest.mark.parametrize("batch", [1, 100], ids=["per-request", "batch"])
def test_numbers_in_a_boolean_column_of_numeric_dtype_must_be_0_or_1(batch):
    spec = ColumnSpec("b", "boolean", "double")
    frame = pd.DataFrame({"b": [1.0, 0.0, 5.0, np.nan] * batch})
    out, invalid = coerce(frame, [spec])
    assert invalid["b"][:4].tolist() == [False, False, True, False]
    assert out["b"][:2].tolist() == [1.0, 0.0] and out["b"][2:4].isna().all()


@pytest.mark.parametrize("batch", [1, 100], ids=["per-request", "batch"])
@pytest.mark.parametrize(
    "frame",
    [
        pd.DataFrame({"n": [1.0, np.inf, -np.inf, np.nan]}),
        pd.DataFrame({"n": ["1", "Infinity", "-inf", None]}, dtype=object),
        pd.DataFrame({"n": [1, "1e999", float("inf"), None]}, dtype=object),
    ],
    ids=["floats", "text", "mixed"],
)
def test_infinite_numbers_are_invalid_at_serving_as_at_training(frame, batch):
    """`pirat: Infinity` was scored (0.865); training refuses infinities, so serving does."""
    from mlplatform.data.columns import coerce_arrays

    spec = ColumnSpec("n", "numeric", "double")
    out, invalid = coerce_arrays(pd.concat([frame] * batch, ignore_index=True), [spec])
    assert invalid["n"][:4].tolist() == [False, True, True, False]
    assert out["n"][0] == 1.0 and np.isnan(out["n"][1:4]).all()


def test_real_booleans_become_floats():
    spec = ColumnSpec("b", "boolean", "boolean")
    out, _ = coerce(pd.DataFrame({"b": [True, False]}), [spec])
    assert out["b"].tolist() == [1.0, 0.0]
    assert out["b"].dtype == np.float64


def test_datetime_expands_to_four_parts():
    spec = ColumnSpec("when", "datetime", "string")
    frame = pd.DataFrame({"when": ["1970-01-02T06:00:00", "2024-03-15", None, "not a date"]})
    out, invalid = coerce(frame, [spec])
    assert list(out.columns) == [f"when__{p}" for p in DATETIME_PARTS]
    assert len(DATETIME_PARTS) == 4
    first = out.iloc[0]
    assert first["when__epoch_days"] == pytest.approx(1.25)
    assert first["when__month"] == 1
    assert first["when__dayofweek"] == 4  # 1970-01-02 was a Friday
    assert first["when__hour"] == 6
    second = out.iloc[1]
    assert second["when__month"] == 3
    assert second["when__dayofweek"] == 4  # 2024-03-15 was a Friday
    assert out.iloc[2].isna().all()
    assert out.iloc[3].isna().all()
    assert invalid["when"].tolist() == [False, False, False, True]


def test_datetime_dtype_with_timezone_is_converted_to_utc():
    spec = ColumnSpec("when", "datetime", "datetime")
    when = pd.Series(pd.to_datetime(["2024-01-01T01:00:00+01:00"]))
    out, invalid = coerce(pd.DataFrame({"when": when}), [spec])
    assert out["when__hour"].iloc[0] == 0
    assert invalid == {}


def test_coerce_keeps_the_index_and_ignores_extra_columns():
    specs = [ColumnSpec("n", "numeric", "double"), ColumnSpec("c", "categorical", "string")]
    frame = pd.DataFrame({"n": [1, 2], "c": ["a", "b"], "extra": [0, 0]}, index=[10, 20])
    out, _ = coerce(frame, specs)
    assert list(out.columns) == ["n", "c"]
    assert out.index.tolist() == [10, 20]


def test_small_batch_path_equals_vectorised_path():
    """Requests of a few rows take a per-value path; it must give the batch path's result."""
    from mlplatform.data import columns as sch

    frame = pd.DataFrame(
        {
            "num": [1.5, None, "2.5", "abc", 3, np.nan, " 4 ", True],
            "cat": ["a", None, 5.0, 5, "b", np.nan, 1e20, "a"],
            "flag": ["yes", "no", None, "maybe", "TRUE", 1, 0.0, 5],
        },
        dtype=object,
    )
    specs = [
        sch.ColumnSpec("num", "numeric", "double"),
        sch.ColumnSpec("cat", "categorical", "string"),
        sch.ColumnSpec("flag", "boolean", "string", ("yes",)),
    ]
    small, bad_small = sch._coerce_small(frame, specs)
    big = pd.concat([frame] * 20, ignore_index=True)  # above SMALL_BATCH: vectorised
    assert len(big) > sch.SMALL_BATCH
    vec, bad_vec = sch.coerce_arrays(big, specs)
    n = len(frame)
    np.testing.assert_array_equal(small["num"], vec["num"][:n])
    assert list(small["cat"]) == list(vec["cat"][:n])
    np.testing.assert_array_equal(small["flag"], vec["flag"][:n])
    assert set(bad_small) == set(bad_vec) == {"num", "flag"}
    np.testing.assert_array_equal(bad_small["num"], bad_vec["num"][:n])
    np.testing.assert_array_equal(bad_small["flag"], vec_flag := bad_vec["flag"][:n])
    assert vec_flag.tolist() == [False, False, False, True, False, False, False, True]


def test_numeric_text_reads_the_same_per_request_and_in_batches():
    """A value's fate must not depend on the batch size or on other values in the column."""
    from mlplatform.data import columns as sch

    frame = pd.DataFrame({"num": ["1_000", "nan", "x", " 4 ", "inf", None]}, dtype=object)
    specs = [sch.ColumnSpec("num", "numeric", "double")]
    small, bad_small = sch._coerce_small(frame, specs)
    big = pd.concat([frame] * 20, ignore_index=True)
    vec, bad_vec = sch.coerce_arrays(big, specs)
    n = len(frame)
    np.testing.assert_array_equal(small["num"], vec["num"][:n])
    np.testing.assert_array_equal(bad_small["num"], bad_vec["num"][:n])
    # "inf" is a number Python reads, but infinities are invalid (as at training).
    assert bad_small["num"].tolist() == [False, False, True, False, True, False]


# --------------------------------------------------------------------------------------
# Dates in a format of their own, and specs from older models


def test_infer_returns_the_detected_date_format():
    from mlplatform.data.columns import infer

    assert infer(pd.Series(["03/15/2020", "12/01/2021"])) == ("datetime", "%m/%d/%Y")
    assert infer(pd.Series(["15/03/2020", "01/12/2021"])) == ("datetime", "%d/%m/%Y")
    assert infer(pd.Series(["15.03.2020 10:30", "01.12.2021 08:00"])) == (
        "datetime",
        "%d.%m.%Y %H:%M",
    )
    assert infer(pd.Series(["2024-01-05", "2023-12-31"])) == ("datetime", None)


def test_day_month_order_that_the_values_do_not_tell_is_ambiguous():
    from mlplatform.data import dates
    from mlplatform.data.columns import infer

    with pytest.raises(dates.AmbiguousDates) as info:
        infer(pd.Series(["03/04/2020", "05/06/2021", "01/02/2022"]))
    assert "MM/DD/YYYY" in str(info.value) and "DD/MM/YYYY" in str(info.value)


def test_a_stored_date_format_is_how_the_values_are_read():
    spec = ColumnSpec("when", "datetime", "string", date_format="%d.%m.%Y")
    frame = pd.DataFrame({"when": ["15.03.2020", "2020-03-15", None, "31.02.2020"]})
    out, invalid = coerce(frame, [spec])
    assert out["when__month"].iloc[0] == 3
    assert out.iloc[1:].isna().all().all()
    assert invalid["when"].tolist() == [False, True, False, True]
    # A spec without a format (every model saved before formats existed) reads ISO only.
    iso = ColumnSpec("when", "datetime", "string")
    out, invalid = coerce(frame, [iso])
    assert invalid["when"].tolist() == [True, False, False, True]
    assert out["when__month"].iloc[1] == 3


def test_date_format_round_trips_and_is_left_out_when_unset():
    spec = ColumnSpec("when", "datetime", "string", date_format="%m/%d/%Y")
    assert ColumnSpec.from_dict(spec.to_dict()) == spec
    plain = ColumnSpec("n", "numeric", "double")
    assert "date_format" not in plain.to_dict()
    legacy = {"name": "n", "kind": "numeric", "input_type": "double", "true_values": []}
    assert ColumnSpec.from_dict(legacy) == plain


def test_number_share_counts_rows_not_distinct_values():
    from mlplatform.data.columns import number_share

    values = pd.Series(["1.5"] * 90 + ["n/a"] * 8 + ["?", "2"], dtype=object)
    share, strays = number_share(values)
    assert share == pytest.approx(0.91)
    assert strays == ["n/a", "?"]
