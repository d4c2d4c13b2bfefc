"""Performance with labels (bootstrap intervals) and before them (CBPE), on known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression

from mlplatform.errors import DataValidationError
from mlplatform.monitoring import MonitoringConfig, build_reference, compare
from mlplatform.monitoring.calibration import pairs, sigmoid_params
from mlplatform.monitoring.performance import (
    RankedScores,
    assess,
    estimated,
    measured,
    sklearn_metrics,
)
from mlplatform.monitoring.settings import METRICS

FAST = MonitoringConfig(bootstrap=100)


def _sklearn_weighted(scores, w_pos, w_neg, threshold):
    """sklearn's metrics on rows duplicated as a weighted positive and a weighted negative."""
    s = np.r_[scores, scores]
    y = np.r_[np.ones_like(scores), np.zeros_like(scores)]
    w = np.r_[w_pos, w_neg]
    keep = w > 0
    s, y, w = s[keep], y[keep], w[keep]
    pred = (s >= threshold).astype(int)
    return {
        "roc_auc": skm.roc_auc_score(y, s, sample_weight=w),
        "average_precision": skm.average_precision_score(y, s, sample_weight=w),
        "precision": skm.precision_score(y, pred, sample_weight=w, zero_division=0),
        "recall": skm.recall_score(y, pred, sample_weight=w),
        "f1": skm.f1_score(y, pred, sample_weight=w),
    }


@pytest.mark.parametrize("weights", ["labels", "counts", "fractions"])
def test_ranked_metrics_equal_sklearn_with_ties_and_weights(weights):
    rng = np.random.default_rng(0)
    scores = np.round(rng.uniform(size=3000), 2)  # many ties
    y = (rng.uniform(size=3000) < scores).astype(float)
    if weights == "labels":
        w_pos, w_neg = y, 1 - y
    elif weights == "counts":  # a bootstrap resample
        c = np.bincount(rng.integers(0, 3000, 3000), minlength=3000).astype(float)
        w_pos, w_neg = c * y, c * (1 - y)
    else:  # expected labels of the label-free estimate
        w_pos, w_neg = scores, 1 - scores
    got = RankedScores(scores, 0.6).metrics(w_pos, w_neg)
    want = _sklearn_weighted(scores, w_pos, w_neg, 0.6)
    assert got == pytest.approx(want, rel=1e-9)


def test_bootstrap_intervals_cover_the_population_value():
    # Binormal scores: positives ~ N(1, 1), negatives ~ N(0, 1), so the population ROC AUC
    # is Phi(1 / sqrt(2)) exactly, whatever the window.
    truth = sps.norm.cdf(1 / np.sqrt(2))
    rng = np.random.default_rng(1)
    hits, trials = 0, 60
    for seed in range(trials):
        y = (rng.uniform(size=1500) < 0.2).astype(float)
        scores = sps.norm.cdf(rng.normal(size=1500) + y)  # monotone: AUC unchanged
        fig = measured(scores, y, 0.5, FAST, seed)["roc_auc"]
        assert fig["low"] <= fig["value"] <= fig["high"]
        assert fig["value"] == pytest.approx(skm.roc_auc_score(y, scores))
        hits += fig["low"] <= truth <= fig["high"]
    # Nominal 95%: at least 88% of 60 windows (a binomial 1% tail).
    assert hits / trials >= 0.88


def test_label_free_estimate_covers_the_realised_metrics_when_calibrated():
    # Calibrated by construction: labels are drawn from the scores themselves.
    rng = np.random.default_rng(2)
    trials = 60
    inside = dict.fromkeys(METRICS, 0)
    errors = {m: [] for m in METRICS}
    for seed in range(trials):
        p = rng.beta(1.0, 6.0, size=2000)
        y = (rng.uniform(size=2000) < p).astype(float)
        est = estimated(p, 0.3, None, FAST, seed)
        true = sklearn_metrics(y, p, 0.3)
        for m in METRICS:
            inside[m] += est[m]["low"] <= true[m] <= est[m]["high"]
            errors[m].append(est[m]["value"] - true[m])
    for m in METRICS:
        assert inside[m] / trials >= 0.85, (m, inside[m])
        assert abs(np.mean(errors[m])) < 0.01, m  # unbiased on average


def test_label_free_estimate_needs_the_calibration_map_for_a_weighted_model():
    # A model that over-predicts (class weighting): the same ranking, inflated scores.
    rng = np.random.default_rng(3)
    p = rng.beta(1.0, 6.0, size=6000)
    y = (rng.uniform(size=6000) < p).astype(float)
    inflated = 1 / (1 + (1 - p) / (4 * p))  # log-odds + log(4)
    ref, win = slice(0, 1000), slice(1000, None)
    labelled = pairs(inflated[ref], y[ref], 5000, rng)
    true = sklearn_metrics(y[win], inflated[win], 0.5)
    raw = estimated(inflated[win], 0.5, None, FAST, 0)
    fixed = estimated(inflated[win], 0.5, labelled, FAST, 0)
    for m in ("average_precision", "precision"):
        assert abs(fixed[m]["value"] - true[m]) < abs(raw[m]["value"] - true[m]) / 3, m
        assert fixed[m]["low"] <= true[m] <= fixed[m]["high"], m


def test_sigmoid_calibration_is_sklearns_logistic_regression():
    rng = np.random.default_rng(4)
    s = rng.uniform(0.01, 0.99, 800)
    y = (rng.uniform(size=800) < s**2).astype(float)
    x = np.log(s / (1 - s))[:, None]
    lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(x, y)
    assert sigmoid_params(s, y) == pytest.approx((lr.coef_[0, 0], lr.intercept_[0]), rel=1e-5)


def test_estimate_on_hmda_is_close_to_the_truth(hmda_kinds, hmda):
    """A quick model on the real data: estimate vs labels of a held-out window."""
    df = hmda
    x = df[list(hmda_kinds)].copy()
    for col, kind in hmda_kinds.items():
        if kind == "boolean":
            x[col] = (x[col] == "yes").astype(float)
    y = (df["deny"] == "yes").to_numpy(float)
    errors, covered, runs = [], 0, 6
    for seed in range(runs):
        idx = np.random.default_rng(seed).permutation(len(y))
        train, test, window = idx[:1428], idx[1428:1904], idx[1904:]
        model = LogisticRegression(max_iter=2000, class_weight="balanced")
        scores = model.fit(x.iloc[train], y[train]).predict_proba(x)[:, 1]
        ref = build_reference(
            df.iloc[train], hmda_kinds, scores=scores[test], labels=y[test], threshold=0.5
        )
        perf = assess(ref, scores[window], None, FAST, seed)["estimated"]["roc_auc"]
        truth = skm.roc_auc_score(y[window], scores[window])
        errors.append(abs(perf["value"] - truth))
        covered += perf["low"] <= truth <= perf["high"]
    # Measured over 20 splits (bench/drift.py): mean error 0.033, interval covered 20/20.
    assert np.mean(errors) < 0.06
    assert covered >= runs - 1


def test_window_metrics_against_the_test_set_flag_a_real_drop():
    rng = np.random.default_rng(5)
    scores = rng.uniform(size=3000)
    good = (rng.uniform(size=3000) < scores).astype(float)
    noisy = np.where(rng.uniform(size=3000) < 0.5, rng.integers(0, 2, 3000), good).astype(float)
    ref_metrics = sklearn_metrics(good, scores, 0.5)
    ref = {"threshold": 0.5, "metrics": ref_metrics, "labelled_scores": None}
    same = assess(ref, scores, good, FAST, 0)["measured"]["average_precision"]
    assert same["reference"] == pytest.approx(ref_metrics["average_precision"])
    assert not same["degraded"] and same["relative_change"] == pytest.approx(0.0)
    worse = assess(ref, scores, noisy, FAST, 0)["measured"]["average_precision"]
    assert worse["degraded"] and worse["high"] < worse["reference"]


def test_labels_may_be_partial_and_must_be_binary():
    rng = np.random.default_rng(6)
    scores = rng.uniform(size=500)
    labels = (rng.uniform(size=500) < scores).astype(float)
    labels[:200] = np.nan  # not arrived yet
    perf = assess({"threshold": 0.5}, scores, labels, FAST, 0)
    assert perf["labelled_rows"] == 300
    assert perf["measured"]["recall"]["value"] == pytest.approx(
        skm.recall_score(labels[200:], scores[200:] >= 0.5)
    )
    with pytest.raises(DataValidationError, match="window labels"):
        assess({"threshold": 0.5}, scores, np.full(500, 2.0), FAST, 0)


def test_a_metric_drop_recommends_retraining(tmp_path, hmda_kinds, hmda):
    df = hmda
    rng = np.random.default_rng(7)
    scores = rng.uniform(size=len(df))
    y = (rng.uniform(size=len(df)) < scores).astype(float)
    test, window = slice(0, 1000), slice(1000, None)
    metrics = sklearn_metrics(y[test], scores[test], 0.5)
    ref = build_reference(
        df.iloc[test], hmda_kinds, scores=scores[test], labels=y[test], metrics=metrics,
        threshold=0.5, importance={"lvrat": 1.0},
    )  # fmt: skip
    # Same rows and scores, labels that no longer follow the scores (concept drift).
    shuffled = rng.permutation(y[window])
    result = compare(ref, df.iloc[window], scores[window], shuffled, cfg=FAST)
    assert result["verdict"] == "no_drift"  # the inputs did not move...
    assert result["retraining_recommended"]  # ...the labels say the model got worse
    assert any("average_precision measured" in r for r in result["reasons"])
