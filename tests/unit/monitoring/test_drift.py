"""Drift on data whose answer is known: no drift, clear shifts, new categories, missing rates,
the score shift, the effect-size floor, and the retraining signal."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mlplatform.errors import DataValidationError
from mlplatform.monitoring import MonitoringConfig, build_reference, compare

IMPORTANCE = {"ratio": 0.5, "income": 0.3, "region": 0.1, "owner": 0.05, "count": 0.05}


def _score(df: pd.DataFrame) -> np.ndarray:
    return 1 / (1 + np.exp(-(df["ratio"].to_numpy() - 0.3) * 12))


@pytest.fixture(scope="module")
def reference(make_frame, kinds):
    ref_frame = make_frame(5000, seed=100)
    return build_reference(
        ref_frame, kinds, scores=_score(ref_frame), importance=IMPORTANCE, threshold=0.5, seed=1
    )


def test_same_distribution_gives_no_drift(reference, make_frame):
    verdicts = [compare(reference, make_frame(2000, seed=s))["verdict"] for s in range(20)]
    # Two independent samples of one distribution: no "drift" at all, warnings at most rare.
    assert verdicts.count("drift") == 0
    assert verdicts.count("warning") <= 1


def test_a_clear_mean_shift_is_drift_on_that_feature(reference, make_frame):
    current = make_frame(2000, seed=5, shift=1.0)  # ratio moves by one SD
    result = compare(reference, current, _score(current))
    assert result["verdict"] == "drift"
    assert result["summary"]["drifted"] == ["ratio"]
    ratio = result["features"]["ratio"]
    assert ratio["test"] == "ks" and ratio["drifted"] and ratio["psi"] > 0.5
    assert ratio["p_value_adjusted"] < 1e-10 and ratio["rank"] == 1
    # ratio is the most important feature: retraining is recommended, and says why.
    assert result["retraining_recommended"]
    assert any("ratio" in r for r in result["reasons"])
    # The score follows ratio: its distribution shift is detected too.
    assert result["score_shift"]["status"] == "drift"
    rate = result["score_shift"]["positive_rate"]
    assert rate["current"] > 0.7 and rate["reference"] == pytest.approx(0.5, abs=0.03)
    assert rate["status"] == "drift" and rate["change"] == rate["current"] - rate["reference"]
    json.dumps(result, allow_nan=False)


def test_score_shift_alone_is_detected(reference, make_frame):
    current = make_frame(2000, seed=6)
    same = compare(reference, current, _score(current))
    assert same["score_shift"]["status"] == "no_drift"
    # Same features, but a model scoring higher (e.g. a wrong version served): only the
    # score distribution moves.
    shifted = compare(reference, current, np.clip(_score(current) + 0.15, 0, 1))
    assert shifted["score_shift"]["status"] == "drift"
    assert shifted["summary"]["drifted"] == [] and shifted["verdict"] == "drift"
    assert shifted["retraining_recommended"]


def test_a_shift_of_decisions_is_caught_when_the_score_psi_is_small(make_frame, kinds):
    rng = np.random.default_rng(20)
    scores = rng.uniform(size=20_000)
    ref = build_reference(make_frame(4000, 21), kinds, scores=scores, threshold=0.5)
    current = make_frame(20_000, 22)
    scores = rng.uniform(size=20_000)
    # Half the rows just below the threshold move just above it: 5 points more positives.
    moved = (scores > 0.45) & (scores < 0.5)
    scores[moved] += 0.05
    result = compare(ref, current, scores)
    shift = result["score_shift"]
    assert shift["psi"] < 0.1 and shift["distribution_status"] == "no_drift"
    assert shift["positive_rate"]["change"] == pytest.approx(0.05, abs=0.01)
    assert shift["positive_rate"]["status"] == "drift" and shift["status"] == "drift"
    assert result["verdict"] == "drift"


def test_new_categories_are_detected_with_their_counts(reference, make_frame):
    current = make_frame(2000, seed=7)
    current.loc[:299, "region"] = "atlantis"
    current.loc[300:309, "region"] = "mu"
    result = compare(reference, current)
    new = result["new_categories"]["region"]
    assert new["count"] == 2 and new["rows"] == 310 and new["certain"]
    assert new["top"][0] == {"category": "atlantis", "count": 300, "share": 0.15}
    region = result["features"]["region"]
    assert region["test"] == "chi2" and region["status"] == "drift"
    assert region["bins"]["labels"][-1] == "__other__"
    assert "income" not in result["new_categories"]


def test_a_missing_rate_change_is_detected(reference, make_frame):
    result = compare(reference, make_frame(2000, seed=8, missing=0.05))
    miss = result["missing"]["income"]
    assert miss["reference_rate"] == 0 and miss["current_rate"] == pytest.approx(0.05, abs=0.01)
    assert miss["status"] == "drift" and miss["p_value_adjusted"] < 1e-6
    assert result["features"]["income"]["status"] == "drift"
    # Missingness does not leak into the distribution test: income's values did not move.
    assert result["features"]["income"]["distribution_status"] == "no_drift"
    # No missing values on either side: nothing to test, nothing reported.
    assert "ratio" not in result["missing"]


def test_p_values_are_adjusted_across_every_test_of_the_window(reference, make_frame):
    current = make_frame(2000, seed=9, shift=0.3)
    result = compare(reference, current, _score(current))
    tests = [f for f in result["features"].values()]
    tests += [f["missing"] for f in result["features"].values()]
    tests += [result["score_shift"], result["score_shift"]["positive_rate"]]
    run = [t for t in tests if t["p_value"] is not None]
    assert len(run) == result["summary"]["tests"]
    expected = sps.false_discovery_control([t["p_value"] for t in run], method="bh")
    np.testing.assert_allclose([t["p_value_adjusted"] for t in run], expected)


def test_a_trivial_shift_on_a_huge_window_is_not_flagged(make_frame, kinds):
    cfg = MonitoringConfig()
    ref = build_reference(make_frame(200_000, seed=10), kinds, cfg=cfg)
    current = make_frame(1_000_000, seed=11, shift=0.1)  # 0.01 SD: real but irrelevant
    result = compare(ref, current, cfg=cfg)
    ratio = result["features"]["ratio"]
    assert ratio["p_value_adjusted"] < cfg.alpha  # the test sees it...
    assert ratio["psi"] < cfg.psi_warning  # ...the effect-size floor does not
    assert result["verdict"] == "no_drift" and not result["retraining_recommended"]
    # With no floor at all, the same window would have been an alarm.
    loose = MonitoringConfig(psi_warning=1e-9, psi_drift=1e-9)
    assert compare(ref, current, cfg=loose)["verdict"] == "drift"


def test_drift_on_an_unimportant_feature_does_not_recommend_retraining(
    reference, make_frame, kinds
):
    current = make_frame(2000, seed=12)
    current["count"] = current["count"] + 3
    result = compare(reference, current, cfg=MonitoringConfig(important_features=2))
    assert result["verdict"] == "drift" and result["summary"]["drifted"] == ["count"]
    assert not result["features"]["count"]["important"]
    assert not result["retraining_recommended"] and result["reasons"] == []
    # Without a SHAP ranking, no feature can be ruled unimportant.
    bare = build_reference(make_frame(5000, seed=100), kinds)
    assert compare(bare, current)["retraining_recommended"]


def test_bad_windows_are_refused_with_a_clear_message(reference, make_frame):
    with pytest.raises(DataValidationError, match=r"missing column.*region"):
        compare(reference, make_frame(500, seed=13).drop(columns=["region"]))
    with pytest.raises(DataValidationError, match=r"50 rows, fewer than monitoring\.min_rows"):
        compare(reference, make_frame(50, seed=13))
    with pytest.raises(DataValidationError, match="current scores"):
        compare(reference, make_frame(500, seed=13), np.zeros(10))
    with pytest.raises(DataValidationError, match="labels given without scores"):
        compare(reference, make_frame(500, seed=13), labels=np.zeros(500))
