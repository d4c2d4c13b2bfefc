"""Metrics: decision thresholds, test-set evaluation, objective lookup."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from mlplatform.config import ThresholdConfig
from mlplatform.errors import ConfigError
from mlplatform.evaluation import metrics

# --------------------------------------------------------------------------------------
# choose_threshold

# Sorted by probability; candidates are the observed probabilities, predict p >= t.
Y = np.array([1, 0, 1, 1, 0, 0])
P = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.1])


def test_best_f1_hand_example():
    # t    tp fp fn  F1 = 2tp / (2tp + fp + fn)
    # 0.9   1  0  2  2/4 = 0.500
    # 0.8   1  1  2  2/5 = 0.400
    # 0.7   2  1  1  4/6 = 0.667
    # 0.4   3  1  0  6/7 = 0.857  <- best
    # 0.3   3  2  0  6/8 = 0.750
    # 0.1   3  3  0  6/9 = 0.667
    assert metrics.choose_threshold(Y, P, ThresholdConfig(rule="best_f1")) == 0.4


def test_best_f1_input_order_does_not_matter():
    perm = np.array([3, 0, 5, 1, 4, 2])
    assert metrics.choose_threshold(Y[perm], P[perm], ThresholdConfig()) == 0.4


def test_cost_rule_hand_example_expensive_misses():
    # cost = 5 * FN + 1 * FP
    # t    fn fp  cost
    # 0.9   2  0  10
    # 0.8   2  1  11
    # 0.7   1  1   6
    # 0.4   0  1   1  <- best
    # 0.3   0  2   2
    # 0.1   0  3   3
    cfg = ThresholdConfig(rule="cost", cost_fn=5.0, cost_fp=1.0)
    assert metrics.choose_threshold(Y, P, cfg) == 0.4


def test_cost_rule_hand_example_expensive_false_alarms():
    # cost = 1 * FN + 5 * FP
    # t    fn fp  cost
    # 0.9   2  0   2  <- best
    # 0.8   2  1   7
    # 0.7   1  1   6
    # 0.4   0  1   5
    # 0.3   0  2  10
    # 0.1   0  3  15
    cfg = ThresholdConfig(rule="cost", cost_fn=1.0, cost_fp=5.0)
    assert metrics.choose_threshold(Y, P, cfg) == 0.9


def test_best_f1_tie_goes_to_higher_threshold():
    # y = [1, 0, 0, 1], p = [0.9, 0.8, 0.7, 0.6]
    # 0.9: tp1 fp0 fn1 -> 2/3;  0.8: 2/4;  0.7: 2/5;  0.6: tp2 fp2 fn0 -> 4/6 = 2/3 (tie)
    y = np.array([1, 0, 0, 1])
    p = np.array([0.9, 0.8, 0.7, 0.6])
    assert metrics.choose_threshold(y, p, ThresholdConfig(rule="best_f1")) == 0.9


def test_cost_tie_goes_to_higher_threshold():
    # y = [1, 0, 1, 0], p = [0.9, 0.8, 0.7, 0.6], cost = FN + FP
    # 0.9: fn1 fp0 -> 1;  0.8: 2;  0.7: fn0 fp1 -> 1 (tie);  0.6: 2
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6])
    cfg = ThresholdConfig(rule="cost", cost_fn=1.0, cost_fp=1.0)
    assert metrics.choose_threshold(y, p, cfg) == 0.9


def test_tied_probabilities_are_one_candidate():
    # p = 0.8 twice (one positive, one negative): cutting between them is impossible.
    # 0.8: tp1 fp1 fn1 -> 2/4 = 0.5;  0.5: tp2 fp1 fn0 -> 4/5 = 0.8 <- best
    # cost (FN*5 + FP): 0.8 -> 6, 0.5 -> 1; with FP*10 + FN: 0.8 -> 11, 0.5 -> 10
    y = np.array([0, 1, 1])
    p = np.array([0.8, 0.8, 0.5])
    assert metrics.choose_threshold(y, p, ThresholdConfig()) == 0.5
    cfg = ThresholdConfig(rule="cost", cost_fn=1.0, cost_fp=10.0)
    assert metrics.choose_threshold(y, p, cfg) == 0.5


def _brute_force(y, p, score):
    """Best candidate by exhaustive search; ties to the higher threshold."""
    best_t, best_s = None, None
    for t in sorted(set(p.tolist()), reverse=True):
        s = score(y, (p >= t).astype(int))
        if best_s is None or s > best_s:
            best_t, best_s = t, s
    return best_t


@pytest.mark.parametrize("seed", range(5))
def test_threshold_matches_exhaustive_search(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    p = np.round(np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1), 2)  # many ties

    def f1(yy, pred):
        tp = int(np.sum((yy == 1) & (pred == 1)))
        wrong = int(np.sum(yy != pred))
        return 2 * tp / (2 * tp + wrong) if tp else 0.0

    assert metrics.choose_threshold(y, p, ThresholdConfig()) == _brute_force(y, p, f1)

    def neg_cost(yy, pred):
        fn = int(np.sum((yy == 1) & (pred == 0)))
        fp = int(np.sum((yy == 0) & (pred == 1)))
        return -(3.0 * fn + 2.0 * fp)

    cfg = ThresholdConfig(rule="cost", cost_fn=3.0, cost_fp=2.0)
    assert metrics.choose_threshold(y, p, cfg) == _brute_force(y, p, neg_cost)


# --------------------------------------------------------------------------------------
# evaluate


def _binary_case():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 120)
    p1 = np.clip(0.35 * y + rng.random(120) * 0.65, 0, 1)
    return y, np.column_stack([1 - p1, p1])


def test_evaluate_binary_counts_at_threshold():
    y, proba = _binary_case()
    threshold = 0.3
    report = metrics.evaluate(y, proba, ["no", "yes"], threshold)
    pred = (proba[:, 1] >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert (report["tn"], report["fp"], report["fn"], report["tp"]) == (tn, fp, fn, tp)
    assert report["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert report["precision"] == pytest.approx(tp / (tp + fp))
    assert report["recall"] == pytest.approx(tp / (tp + fn))
    assert report["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert report["threshold"] == threshold
    assert report["n_rows"] == 120
    assert report["positive_rate"] == pytest.approx(pred.mean())
    assert report["base_rate"] == pytest.approx(y.mean())
    assert report["accuracy"] == pytest.approx((tp + tn) / 120)
    assert report["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba[:, 1]))
    assert "per_class" not in report


def test_evaluate_binary_threshold_is_inclusive():
    y = np.array([0, 1, 1, 0])
    p1 = np.array([0.2, 0.5, 0.7, 0.5])
    proba = np.column_stack([1 - p1, p1])
    report = metrics.evaluate(y, proba, [0, 1], 0.5)
    # predictions: 0, 1, 1, 1
    assert (report["tn"], report["fp"], report["fn"], report["tp"]) == (1, 1, 0, 2)
    assert report["precision"] == pytest.approx(2 / 3)
    assert report["recall"] == 1.0
    # A higher threshold changes the counts (the threshold is really used).
    high = metrics.evaluate(y, proba, [0, 1], 0.6)
    assert (high["tn"], high["fp"], high["fn"], high["tp"]) == (2, 0, 1, 1)


def test_evaluate_multiclass():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    pred = np.array([0, 0, 1, 1, 1, 2, 2, 0, 2, 2])
    proba = np.full((10, 3), 0.1)
    proba[np.arange(10), pred] = 0.8
    classes = ["low", "mid", "high"]
    report = metrics.evaluate(y, proba, classes, None)
    # class low:  predicted at rows 0,1,7 -> tp 2 fp 1; support 3 -> recall 2/3
    # class mid:  predicted at rows 2,3,4 -> tp 2 fp 1; support 3 -> recall 2/3
    # class high: predicted at rows 5,6,8,9 -> tp 3 fp 1; support 4 -> recall 3/4
    pc = report["per_class"]
    assert set(pc) == {"low", "mid", "high"}
    assert pc["low"]["precision"] == pytest.approx(2 / 3)
    assert pc["low"]["recall"] == pytest.approx(2 / 3)
    assert pc["high"]["precision"] == pytest.approx(3 / 4)
    assert pc["high"]["recall"] == pytest.approx(3 / 4)
    assert pc["high"]["f1"] == pytest.approx(3 / 4)
    assert [pc[c]["support"] for c in classes] == [3, 3, 4]
    assert report["precision_macro"] == pytest.approx((2 / 3 + 2 / 3 + 3 / 4) / 3)
    assert report["recall_weighted"] == pytest.approx(0.7)  # = accuracy
    assert report["f1_micro"] == pytest.approx(0.7)
    assert report["precision_micro"] == pytest.approx(0.7)
    assert report["f1_weighted"] == pytest.approx(
        skm.f1_score(y, pred, average="weighted"), abs=1e-12
    )
    assert report["precision"] == report["precision_macro"]
    assert report["recall"] == report["recall_macro"]
    assert report["f1"] == report["f1_macro"]
    assert report["class_distribution"] == pytest.approx({"low": 0.3, "mid": 0.3, "high": 0.4})
    assert report["accuracy"] == pytest.approx(0.7)
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 2, 1], [1, 0, 3]]
    assert "tp" not in report


def test_scalar_metrics_flattens_per_class():
    y = np.array([0, 1, 2, 1])
    proba = np.eye(3)[[0, 1, 2, 0]] * 0.7 + 0.1
    flat = metrics.scalar_metrics(metrics.evaluate(y, proba, ["a", "b", "c"], None), "test_")
    assert flat["test_recall_class_b"] == 0.5
    assert flat["test_support_class_c"] == 1.0
    assert flat["test_n_rows"] == 4.0
    assert "test_confusion_matrix" not in flat


# --------------------------------------------------------------------------------------
# objective and threshold-free metrics


def test_objective_unknown_names_tune_metric():
    with pytest.raises(ConfigError) as info:
        metrics.objective("accuracy_score")
    message = str(info.value)
    assert message.startswith("tune.metric:")
    assert "accuracy_score" in message
    assert "average_precision" in message


@pytest.mark.parametrize(
    ("name", "direction"),
    [("average_precision", "maximize"), ("log_loss", "minimize"), ("brier", "minimize")],
)
def test_objective_directions(name, direction):
    obj = metrics.objective(name)
    assert obj.name == name and obj.direction == direction
    assert obj.better(1.0, 2.0) is (direction == "minimize")


def test_log_loss_accepts_float32_rows_not_summing_to_one():
    y = np.array([0, 1, 1, 0])
    proba = np.array(
        [[0.7, 0.30000007], [0.2, 0.8000001], [0.39999998, 0.6], [0.9, 0.1000001]],
        dtype=np.float32,
    )
    assert not np.all(proba.sum(axis=1) == 1)
    p = proba.astype(np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    expected = -np.mean(np.log(p[np.arange(4), y]))
    assert metrics.log_loss(y, proba) == pytest.approx(expected, rel=1e-6)


def test_log_loss_multiclass_float32():
    rng = np.random.default_rng(3)
    raw = rng.random((50, 3)).astype(np.float32)
    proba = (raw / raw.sum(axis=1, keepdims=True)).astype(np.float32) * np.float32(1.0000002)
    y = rng.integers(0, 3, 50)
    value = metrics.log_loss(y, proba)
    assert math.isfinite(value)
    p = proba.astype(np.float64) / proba.astype(np.float64).sum(axis=1, keepdims=True)
    assert value == pytest.approx(-np.mean(np.log(p[np.arange(50), y])), rel=1e-5)


def test_roc_auc_single_class_is_nan():
    y = np.zeros(4, dtype=int)
    proba = np.column_stack([np.full(4, 0.6), np.full(4, 0.4)])
    assert math.isnan(metrics.roc_auc(y, proba))


def test_validation_metrics_binary_values():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.9])
    proba = np.column_stack([1 - p1, p1])
    figures = metrics.validation_metrics(y, proba)
    assert set(figures) == set(metrics.OBJECTIVES)
    # Pairs (pos, neg): (0.4, 0.1) ok, (0.4, 0.6) wrong, (0.9, *) ok -> 3/4.
    assert figures["roc_auc"] == pytest.approx(0.75)
    # Default 0.5 cut: predictions 0, 1, 0, 1 -> tp1 fp1 fn1.
    assert figures["f1"] == pytest.approx(0.5)
    assert figures["balanced_accuracy"] == pytest.approx(0.5)
    assert figures["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)
