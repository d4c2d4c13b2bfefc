"""The glue of `mlplatform monitor` and `demo-batches`: labels, durations, the demo shift."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from mlplatform.errors import DataValidationError
from mlplatform.monitoring.demo import shift
from mlplatform.monitoring.drift import compare
from mlplatform.monitoring.monitor import labels_of, parse_duration, scores_of
from mlplatform.monitoring.reference import build_reference


def test_labels_from_text_numbers_and_missing():
    y = labels_of(pd.Series(["yes", "no", None, " yes"]), "yes")
    assert y[:2].tolist() == [1.0, 0.0] and np.isnan(y[2]) and y[3] == 1.0
    # Feedback stores text: 1, 1.0 and "1" are one label, as the logged class is.
    assert labels_of(pd.Series([1.0, 0.0, 1]), "1").tolist() == [1.0, 0.0, 1.0]
    assert labels_of(pd.Series(["0.5", "1.0", "yes"]), "1").tolist() == [0.0, 1.0, 0.0]
    assert labels_of(pd.Series([None, None], dtype=object), "yes") is None
    assert labels_of(pd.Series(["yes"]), None) is None


def test_durations():
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration(" 1.5h ") == timedelta(hours=1.5)
    assert parse_duration("7d") == timedelta(days=7)
    for bad in ("soon", "5", "-1h", "3y"):
        with pytest.raises(DataValidationError, match="--window"):
            parse_duration(bad)


def test_scores_come_from_the_positive_class_column():
    frame = pd.DataFrame({"probability_yes": [0.2, 0.9], "probability_no": [0.8, 0.1]})
    assert scores_of(frame, {"positive_class": "yes"}).tolist() == [0.2, 0.9]
    assert scores_of(frame, {"positive_class": None}) is None
    assert scores_of(frame.drop(columns="probability_yes"), {"positive_class": "yes"}) is None


def test_the_demo_shift_is_drift_on_the_features_it_moves_and_only_there(make_frame, kinds):
    """A known answer: the unshifted batch is no drift; the shifted one drifts exactly on the
    two top numeric features moved, the one given missing values and the category moved."""
    reference_rows, later = make_frame(4000, 1), make_frame(1000, 2)
    importance = {"income": 5.0, "ratio": 4.0, "count": 3.0, "region": 2.0, "owner": 1.0}
    ref = build_reference(reference_rows, kinds, importance=importance, seed=0)
    assert compare(ref, later)["verdict"] == "no_drift"
    shifted, how = shift(later, ref, seed=0)
    assert how == {
        "moved_up_one_sd": ["income", "ratio"],
        "missing_20pct": "count",
        "all_rows_to_category": {"region": "south"},
    }
    result = compare(ref, shifted)
    assert result["verdict"] == "drift" and result["retraining_recommended"]
    assert sorted(result["summary"]["drifted"]) == ["count", "income", "ratio", "region"]
    assert result["features"]["count"]["missing"]["status"] == "drift"
    assert later["income"].notna().all()  # the input rows are not changed
