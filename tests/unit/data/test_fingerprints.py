"""Row fingerprints: the same row as the model sees it has the same fingerprint."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlplatform.data import fingerprints
from mlplatform.data.columns import ColumnSpec

SPECS = [
    ColumnSpec("n", "numeric", "double"),
    ColumnSpec("c", "categorical", "string"),
    ColumnSpec("b", "boolean", "string", ("yes",)),
]


def test_a_row_has_one_fingerprint_however_its_values_are_spelled():
    a = pd.DataFrame({"n": [1, 2], "c": ["5", "x"], "b": ["yes", "no"], "y": ["1", "0"]})
    b = pd.DataFrame(
        {"n": [1.0, 2.0], "c": [5, "x"], "b": [" YES", "n"], "y": [1, 0], "other": [7, 8]}
    )
    fa = fingerprints.fingerprints(a, SPECS, "y")
    assert fa.dtype == np.uint64 and len(set(fa)) == 2
    np.testing.assert_array_equal(fa, fingerprints.fingerprints(b, SPECS, "y"))


def test_another_target_or_value_is_another_row():
    base = pd.DataFrame({"n": [1.0], "c": ["x"], "b": ["yes"], "y": ["no"]})
    first = fingerprints.fingerprints(base, SPECS, "y")[0]
    for change in ({"y": ["yes"]}, {"n": [1.5]}, {"c": ["z"]}, {"b": [None]}):
        assert fingerprints.fingerprints(base.assign(**change), SPECS, "y")[0] != first


def test_fit_rows_round_trip_and_select(tmp_path):
    frame = pd.DataFrame(
        {"n": np.arange(10.0), "c": list("abcdeabcde"), "b": ["yes", "no"] * 5, "y": [0, 1] * 5}
    )
    values = fingerprints.fingerprints(frame, SPECS, "y")
    path = tmp_path / fingerprints.ARTIFACT_FILE
    fingerprints.write(path, np.concatenate([values[:6], values[:2]]))
    stored = fingerprints.read(path)
    assert len(stored) == 6 and np.all(np.diff(stored.astype(np.float64)) > 0)
    assert fingerprints.seen(values, stored).tolist() == [True] * 6 + [False] * 4


def test_select_keeps_rows_neither_model_was_fit_on():
    from mlplatform.registry.fit_rows import select

    class Loaded:
        class _model_impl:  # shaped like a pyfunc model
            specs = SPECS

    test = pd.DataFrame(
        {"n": np.arange(8.0), "c": list("abcdabcd"), "b": ["yes", "no"] * 4, "y": [0, 1] * 4}
    )
    values = fingerprints.fingerprints(test, SPECS, "y")
    models = {
        "candidate v2": (Loaded, values[[0]]),
        "champion v1": (Loaded, values[[0, 1, 2, 3]]),
        "old v0": (Loaded, None),
    }
    keep, cmp = select(test, "y", models, min_rows=3)
    assert keep.tolist() == [False] * 4 + [True] * 4
    assert (cmp.test_rows, cmp.compared_rows, cmp.excluded_rows) == (8, 4, 4)
    assert cmp.excluded_by == {"candidate v2": 1, "champion v1": 4}
    assert cmp.unrecorded == ["old v0"]
    record = cmp.to_dict()
    assert record["excluded_rows"] == 4 and "champion v1 was fit on 4" in record["why"]
