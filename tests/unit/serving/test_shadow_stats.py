"""Shadow figures: agreement, correlation, shift, disagreements, latency, paired bootstrap."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, average_precision_score, recall_score, roc_auc_score

from mlplatform.errors import DataValidationError
from mlplatform.serving import shadow_stats as ss
from mlplatform.serving.release_settings import ShadowConfig


def _outputs(proba, threshold=0.5, latency=None, version=None):
    proba = np.asarray(proba, dtype=float)
    pred = np.where(np.isnan(proba), None, np.where(proba >= threshold, "yes", "no"))
    return ss.ModelOutputs(proba, pred, latency, version)


def test_agreement_shift_and_correlations_on_known_rows():
    a = [0.9, 0.8, 0.2, 0.1, 0.6, 0.4, 0.3, 0.7]
    b = [0.95, 0.4, 0.3, 0.2, 0.7, 0.6, 0.1, 0.8]  # rows 1 and 5 change class
    r = ss.shadow_report(_outputs(a), _outputs(b), positive_class="yes")
    assert r["agreement"] == pytest.approx(6 / 8)
    assert r["positive_rate"] == pytest.approx(
        {"champion": 4 / 8, "challenger": 4 / 8, "shift": 0.0}
    )
    assert r["correlation"]["pearson"] == pytest.approx(stats.pearsonr(a, b).statistic)
    assert r["correlation"]["spearman"] == pytest.approx(stats.spearmanr(a, b).statistic)
    assert r["probability_difference"]["max_abs"] == pytest.approx(0.4)
    json.dumps(r)  # JSON-ready


def test_identical_models_and_a_monotone_recalibration():
    rng = np.random.default_rng(0)
    p = rng.random(300)
    same = ss.shadow_report(_outputs(p), _outputs(p), positive_class="yes")
    assert same["agreement"] == 1.0
    assert same["correlation"] == pytest.approx({"pearson": 1.0, "spearman": 1.0})
    squashed = ss.shadow_report(_outputs(p), _outputs(p**3), positive_class="yes")
    assert squashed["correlation"]["spearman"] == pytest.approx(1.0)
    assert squashed["correlation"]["pearson"] < 0.95
    assert squashed["positive_rate"]["shift"] < -0.2  # p^3 >= 0.5 only for p >= 0.79


def test_positive_rate_shift_has_a_sign():
    a = [0.1] * 90 + [0.9] * 10
    b = [0.1] * 80 + [0.9] * 20
    r = ss.shadow_report(_outputs(a), _outputs(b), positive_class="yes")
    assert r["positive_rate"]["shift"] == pytest.approx(0.10)


def test_top_disagreements_are_ordered_and_keep_row_ids():
    a = [0.5, 0.5, 0.5, 0.5, 0.5]
    b = [0.55, 0.9, 0.1, 0.5, 0.2]
    r = ss.shadow_report(
        _outputs(a),
        _outputs(b),
        index=["r0", "r1", "r2", "r3", "r4"],
        top_k=3,
        positive_class="yes",
    )
    rows = r["disagreements"]
    # |diff| 0.4, 0.4 (tie: earlier row first), 0.3
    assert [d["index"] for d in rows] == ["r1", "r2", "r4"]
    assert rows[0]["abs_difference"] == pytest.approx(0.4)
    assert rows[0]["champion_class"] == "yes" and rows[0]["challenger_class"] == "yes"
    assert rows[1]["challenger_class"] == "no"


def test_challenger_failures_are_counted_and_left_out():
    a = [0.9, 0.1, 0.8, 0.2]
    b = [0.9, math.nan, 0.1, math.nan]
    r = ss.shadow_report(_outputs(a), _outputs(b), positive_class="yes")
    assert r["rows"] == {
        "total": 4,
        "compared": 2,
        "champion_missing": 0,
        "challenger_missing": 2,
        "challenger_failure_rate": 0.5,
    }
    assert r["agreement"] == pytest.approx(0.5)
    assert r["correlation"]["pearson"] is not None


def test_latency_percentiles():
    lat = np.arange(1, 101, dtype=float)
    r = ss.shadow_report(_outputs([0.5] * 100, latency=lat), _outputs([0.5] * 100, latency=lat * 2))
    assert r["latency"]["champion"]["p50_ms"] == pytest.approx(50.5)
    assert r["latency"]["champion"]["p99_ms"] == pytest.approx(99.01)
    assert r["latency"]["challenger"]["p99_ms"] == pytest.approx(198.02)
    assert r["correlation"] == {"pearson": None, "spearman": None}  # constant scores


def test_bad_inputs_are_refused():
    with pytest.raises(DataValidationError, match=r"challenger\.proba has 2 rows"):
        ss.shadow_report(_outputs([0.1, 0.2, 0.3]), _outputs([0.1, 0.2]))
    with pytest.raises(DataValidationError, match="outside"):
        ss.shadow_report(_outputs([0.1, 1.2]), _outputs([0.1, 0.2]))
    with pytest.raises(DataValidationError, match="positive class 1 is not among"):
        ss.shadow_report(_outputs([0.1, 0.9]), _outputs([0.1, 0.9]))


# --------------------------------------------------------------------------------------
# Metrics with labels and the paired bootstrap


@pytest.mark.parametrize("decimals", [2, None])  # ties in the scores, or none
def test_vectorised_metrics_equal_scikit_learn_on_resamples(decimals):
    rng = np.random.default_rng(4)
    n = 400
    y = rng.integers(0, 2, n)
    proba = 0.3 * y + 0.7 * rng.random(n)
    if decimals is not None:
        proba = np.round(proba, decimals)
    pos = (proba >= 0.5).astype(int)
    ranked = ss._Ranked(y, proba, pos)
    w = ss._resample_weights(rng, 5, n)
    got = ranked.metrics(w)
    for i in range(5):
        idx = np.repeat(np.arange(n), w[i].astype(int))
        assert got["roc_auc"][i] == pytest.approx(roc_auc_score(y[idx], proba[idx]))
        assert got["average_precision"][i] == pytest.approx(
            average_precision_score(y[idx], proba[idx])
        )
        assert got["accuracy"][i] == pytest.approx(accuracy_score(y[idx], pos[idx]))
        assert got["recall"][i] == pytest.approx(recall_score(y[idx], pos[idx]))


def _correlated_models(rng, n, d_a=1.0, d_b=1.5):
    """Two scorers sharing noise; true AUC = Phi(d / sqrt(2 * 1.25)), accuracy at the
    midpoint threshold = Phi(d / (2 * sqrt(1.25))) for balanced classes."""
    y = rng.integers(0, 2, n)
    shared = rng.normal(size=n)
    s_a = d_a * y + shared + 0.5 * rng.normal(size=n)
    s_b = d_b * y + shared + 0.5 * rng.normal(size=n)
    a = 1 / (1 + np.exp(-(s_a - d_a / 2)))  # probability 0.5 at the midpoint
    b = 1 / (1 + np.exp(-(s_b - d_b / 2)))
    return y, a, b


def test_paired_bootstrap_covers_the_known_difference():
    true_auc = stats.norm.cdf(1.5 / math.sqrt(2.5)) - stats.norm.cdf(1.0 / math.sqrt(2.5))
    true_acc = stats.norm.cdf(0.75 / math.sqrt(1.25)) - stats.norm.cdf(0.5 / math.sqrt(1.25))
    rng = np.random.default_rng(2024)
    sims, covered = 60, {"roc_auc": 0, "accuracy": 0}
    for s in range(sims):
        y, a, b = _correlated_models(rng, 600)
        m = ss.shadow_report(
            _outputs(a),
            _outputs(b),
            labels=np.where(y == 1, "yes", "no"),
            positive_class="yes",
            n_boot=300,
            seed=s,
        )["metrics"]
        for name, truth in (("roc_auc", true_auc), ("accuracy", true_acc)):
            lo, hi = m[name]["interval"]
            covered[name] += lo <= truth <= hi
    # 95% intervals: 57 of 60 expected; 3 binomial sigmas (5 intervals) below that.
    for name in covered:
        assert covered[name] >= 52, (name, covered[name])


def test_pairing_narrows_the_interval_of_correlated_models():
    rng = np.random.default_rng(8)
    y, a, b = _correlated_models(rng, 1000)
    champion, challenger = (a, (a >= 0.5).astype(int)), (b, (b >= 0.5).astype(int))
    paired = ss.paired_bootstrap(y, champion, challenger, n_boot=400, confidence=0.95, seed=1)
    # Unpaired: each model resampled on its own rows.
    ra, rb = ss._Ranked(y, *champion), ss._Ranked(y, *challenger)
    g = np.random.default_rng(1)
    d = (
        rb.metrics(ss._resample_weights(g, 400, 1000))["roc_auc"]
        - ra.metrics(ss._resample_weights(g, 400, 1000))["roc_auc"]
    )
    unpaired_width = np.subtract(*np.percentile(d, [97.5, 2.5]))
    lo, hi = paired["roc_auc"]["interval"]
    assert hi - lo < 0.7 * unpaired_width


def test_labelled_metrics_point_estimates_and_reproducibility():
    rng = np.random.default_rng(5)
    y, a, b = _correlated_models(rng, 500)
    labels = np.where(y == 1, "yes", "no").astype(object)
    labels[:50] = None  # not known yet
    kwargs = dict(labels=labels, positive_class="yes", n_boot=200, seed=3)
    r1 = ss.shadow_report(_outputs(a), _outputs(b), **kwargs)
    r2 = ss.shadow_report(_outputs(a), _outputs(b), **kwargs)
    assert r1 == r2
    assert r1["rows"]["labelled"] == 450
    m = r1["metrics"]["roc_auc"]
    assert m["champion"] == pytest.approx(roc_auc_score(y[50:], a[50:]))
    assert m["difference"] == pytest.approx(m["challenger"] - m["champion"])
    assert m["interval"][0] <= m["difference"] <= m["interval"][1]
    assert set(r1["metrics"]) == {"roc_auc", "average_precision", "accuracy", "recall"}


def test_single_class_labels_leave_ranking_metrics_undefined():
    r = ss.shadow_report(
        _outputs([0.2, 0.7, 0.9]),
        _outputs([0.3, 0.6, 0.8]),
        labels=["yes"] * 3,
        positive_class="yes",
        n_boot=100,
    )
    assert r["metrics"]["roc_auc"]["champion"] is None
    assert r["metrics"]["roc_auc"]["interval"] == [None, None]
    assert r["metrics"]["accuracy"]["champion"] == pytest.approx(2 / 3)
    json.dumps(r)


# --------------------------------------------------------------------------------------
# Gate rules


def _report(n=1000, agree=0.98, shift=0.01, fail_rate=0.0, p99=20.0, auc_interval=None):
    return {
        "rows": {
            "total": n,
            "compared": int(n * (1 - fail_rate)),
            "challenger_missing": int(n * fail_rate),
            "challenger_failure_rate": fail_rate,
        },
        "agreement": agree,
        "positive_rate": {"champion": 0.1, "challenger": 0.1 + shift, "shift": shift},
        "latency": {"challenger": {"p99_ms": p99}},
        "metrics": None
        if auc_interval is None
        else {"roc_auc": {"difference": sum(auc_interval) / 2, "interval": auc_interval}},
    }


def _outcomes(rules):
    return {r.name: r.outcome for r in rules}


def test_rules_pass_within_limits():
    rules = ss.shadow_rules(_report(auc_interval=[-0.01, 0.02]), ShadowConfig(), "roc_auc")
    assert _outcomes(rules) == {
        "shadow_rows": "pass",
        "shadow_failures": "pass",
        "shadow_agreement": "pass",
        "shadow_positive_rate_shift": "pass",
        "shadow_latency": "pass",
        "shadow_metric:roc_auc": "pass",
    }
    assert set(vars(rules[0])) == {"name", "outcome", "detail", "value", "limit"}


def test_rules_flag_each_limit():
    cfg = ShadowConfig()
    assert _outcomes(ss.shadow_rules(_report(n=100), cfg)) == {"shadow_rows": "review"}
    out = _outcomes(
        ss.shadow_rules(
            _report(agree=0.9, shift=-0.08, fail_rate=0.05, p99=80, auc_interval=[-0.05, -0.01]),
            cfg,
            "roc_auc",
        )
    )
    assert out == {
        "shadow_rows": "pass",
        "shadow_failures": "fail",
        "shadow_agreement": "review",
        "shadow_positive_rate_shift": "review",
        "shadow_latency": "review",
        "shadow_metric:roc_auc": "review",
    }


def test_rules_limits_are_inclusive():
    cfg = ShadowConfig(min_agreement=0.95, max_positive_rate_shift=0.05)
    out = _outcomes(ss.shadow_rules(_report(agree=0.95, shift=0.05), cfg))
    assert out["shadow_agreement"] == out["shadow_positive_rate_shift"] == "pass"


def test_rules_from_a_real_report():
    rng = np.random.default_rng(1)
    p = rng.random(800)
    report = ss.shadow_report(_outputs(p), _outputs(np.clip(p + 0.01, 0, 1)), positive_class="yes")
    rules = ss.shadow_rules(report, ShadowConfig(min_rows=500))
    assert all(r.outcome == "pass" for r in rules)


def test_shadow_config_bounds():
    cfg = ShadowConfig()
    assert (cfg.min_agreement, cfg.challenger_timeout_ms, cfg.min_rows) == (0.95, 50.0, 500)
    for bad in ({"min_agreement": 1.5}, {"challenger_timeout_ms": 0}, {"min_rows": 0}, {"x": 1}):
        with pytest.raises(ValueError):
            ShadowConfig(**bad)
