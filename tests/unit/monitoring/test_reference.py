"""The frozen reference: bins, samples, categories, calibration, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.isotonic import IsotonicRegression

from mlplatform.errors import DataValidationError
from mlplatform.io import write_json
from mlplatform.monitoring import (
    MonitoringConfig,
    build_reference,
    calibration,
    load_reference,
    save_reference,
)
from mlplatform.monitoring.calibration import isotonic_points
from mlplatform.monitoring.columns import (
    bin_counts,
    category_counts,
    frozen_edges,
    numeric_values,
)


def test_quantile_bins_hold_equal_shares_and_outer_bins_are_open():
    rng = np.random.default_rng(0)
    values = rng.normal(size=10_000)
    edges = frozen_edges(values, 10)
    assert len(edges) == 9
    counts = bin_counts(values, edges)
    assert counts.sum() == values.size
    np.testing.assert_allclose(counts / values.size, 0.1, atol=0.002)
    # Values far outside the reference range land in the outer bins, NaN in none.
    assert bin_counts(np.array([-1e9, 1e9, np.nan]), edges).tolist() == [1] + [0] * 8 + [1]


def test_discrete_values_get_one_bin_each_and_heavy_values_one_edge():
    counts = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3], dtype=float)
    edges = frozen_edges(counts, 10)
    np.testing.assert_allclose(edges, [0.5, 1.5, 2.5])
    assert bin_counts(counts, edges).tolist() == [3, 2, 1, 4]
    # A value above every training value (7) lands in the open top bin.
    assert bin_counts(np.array([7.0]), edges).tolist() == [0, 0, 0, 1]
    # Many distinct values but one holding half the data: duplicate quantiles collapse.
    heavy = np.r_[np.zeros(5000), np.arange(1, 5001, dtype=float)]
    edges = frozen_edges(heavy, 10)
    assert len(edges) == len(np.unique(edges)) and edges[0] == 0.0
    assert bin_counts(heavy, edges)[0] == 5000


def test_column_values_read_raw_and_canonical_frames_alike():
    flags = numeric_values(pd.Series(["yes", "No", "maybe", None]), "boolean")
    assert flags[:2].tolist() == [1.0, 0.0] and np.isnan(flags[2:]).all()
    assert numeric_values(pd.Series([True, False]), "boolean").tolist() == [1.0, 0.0]
    got = numeric_values(pd.Series(["1.5", "x", "inf"]), "numeric")
    assert got[0] == 1.5 and np.isnan(got[1:]).all()
    days = numeric_values(pd.Series(["1970-01-02", "2000-01-01T12:00:00+02:00", "bad"]), "datetime")
    assert days[0] == 1.0 and days[1] == pytest.approx(10957.4166, abs=1e-3)
    assert np.isnan(days[2])
    counts, missing = category_counts(pd.Series([5.0, 5, "5", None, "__missing__", "a"]))
    assert counts == {"5": 3, "a": 1} and missing == 2


def test_build_reference_profiles_every_kind(make_frame, kinds):
    df = make_frame(3000, seed=1)
    df.loc[:99, "income"] = np.nan
    cfg = MonitoringConfig(sample_size=500, max_categories=3)
    ref = build_reference(df, kinds, cfg=cfg, seed=7)
    inc = ref["features"]["income"]
    assert inc["missing"] == 100 and inc["n"] == 3000
    assert sum(inc["counts"]) == 2900 and len(inc["counts"]) == len(inc["edges"]) + 1
    assert len(inc["sample"]) == 500 and inc["sample"] == sorted(inc["sample"])
    assert set(inc["sample"]) <= set(df["income"].dropna())
    assert ref["features"]["owner"]["edges"] == [0.5]
    assert ref["features"]["opened"]["kind"] == "datetime"
    reg = ref["features"]["region"]
    assert list(reg["categories"]) == ["north", "south", "east"]
    assert sum(reg["categories"].values()) + reg["other"] == 3000
    assert reg["known"] == sorted(["north", "south", "east", "west", "centre"])
    assert reg["known_complete"] is True
    # Same seed, same reference; another seed, another sample.
    assert build_reference(df, kinds, cfg=cfg, seed=7) == ref
    other = build_reference(df, kinds, cfg=cfg, seed=8)
    assert other["features"]["income"]["sample"] != inc["sample"]


def test_reference_round_trips_through_json(tmp_path, make_frame, kinds):
    rng = np.random.default_rng(2)
    scores = rng.uniform(size=400)
    labels = (rng.uniform(size=400) < scores).astype(int)
    ref = build_reference(
        make_frame(1000, seed=2),
        kinds,
        scores=scores,
        labels=labels,
        importance={"income": 3.0, "ratio": 1.0},
        metrics={"roc_auc": 0.8, "confusion_matrix": [[1, 2], [3, 4]]},
        threshold=0.4,
    )
    json.dumps(ref, allow_nan=False)
    path = tmp_path / "reference.json"
    save_reference(path, ref)
    assert load_reference(path) == ref
    assert ref["importance"]["income"] == pytest.approx(0.75)
    assert ref["importance"]["region"] == 0.0
    assert ref["metrics"] == {"roc_auc": 0.8}
    assert ref["scores"]["positive_rate"] == pytest.approx(np.mean(scores >= 0.4))


def test_labelled_scores_are_kept_for_the_calibration_map(make_frame, kinds):
    rng = np.random.default_rng(3)
    scores = rng.uniform(size=2000)
    labels = (rng.uniform(size=2000) < scores**2).astype(int)
    cfg = MonitoringConfig(sample_size=500)
    ref = build_reference(make_frame(200, 3), kinds, scores=scores, labels=labels, cfg=cfg)
    kept = ref["labelled_scores"]
    assert kept["n"] == 2000 and len(kept["scores"]) == len(kept["labels"]) == 500
    pairs_given = dict(zip(scores.tolist(), labels.tolist(), strict=True))
    assert all(pairs_given[s] == y for s, y in zip(kept["scores"], kept["labels"], strict=True))
    # The isotonic map, kept as interpolation points, is sklearn's own.
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(scores, labels)
    x, y = isotonic_points(scores, labels)
    probe = np.linspace(-0.1, 1.1, 500)
    np.testing.assert_allclose(np.interp(probe, x, y), iso.predict(probe))
    np.testing.assert_allclose(
        calibration.fit("isotonic", scores, labels)(probe), iso.predict(probe)
    )


def test_bad_inputs_name_what_is_wrong(tmp_path, make_frame, kinds):
    df = make_frame(100, seed=4)
    with pytest.raises(DataValidationError, match=r"missing column.*nope"):
        build_reference(df, {**kinds, "nope": "numeric"})
    with pytest.raises(DataValidationError, match="ratio: unknown kind 'text'"):
        build_reference(df, {"ratio": "text"})
    with pytest.raises(DataValidationError, match="no rows"):
        build_reference(df.iloc[:0], kinds)
    with pytest.raises(DataValidationError, match="labels"):
        build_reference(df, kinds, scores=np.full(10, 0.5), labels=np.full(9, 1))
    other = tmp_path / "other.json"
    write_json(other, {"hello": 1})
    with pytest.raises(DataValidationError, match=r"other\.json: not a monitoring reference"):
        load_reference(other)
    newer = tmp_path / "newer.json"
    write_json(newer, {"format": "mlplatform.monitoring.reference", "version": 99})
    with pytest.raises(DataValidationError, match="version 99"):
        load_reference(newer)
