"""Fairness gaps and performance by subgroup, checked against figures worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from mlplatform.config import FairnessLimits
from mlplatform.evaluation import fairness

GAP_NAMES = (
    "demographic_parity_difference",
    "equal_opportunity_difference",
    "equalized_odds_difference",
)


def _block(tp: int, fn: int, fp: int, tn: int) -> tuple[list[int], list[int]]:
    """(y, pred) for one group with the given confusion-matrix counts."""
    y = [1] * tp + [1] * fn + [0] * fp + [0] * tn
    pred = [1] * tp + [0] * fn + [1] * fp + [0] * tn
    return y, pred


def binary_case(extra_small_group: bool = False):
    """Two groups of 40 rows.

    Group A: 20 positives, 20 negatives; TP 16, FN 4, FP 4, TN 16.
        selection rate = (16 + 4) / 40 = 0.500
        TPR = 16 / 20 = 0.8, FPR = 4 / 20 = 0.2
    Group B: 10 positives, 30 negatives; TP 6, FN 4, FP 15, TN 15.
        selection rate = (6 + 15) / 40 = 0.525
        TPR = 6 / 10 = 0.6, FPR = 15 / 30 = 0.5

    demographic parity difference = |0.500 - 0.525| = 0.025
    equal opportunity difference  = |0.8 - 0.6|     = 0.2
    equalized odds difference     = max(|0.8 - 0.6|, |0.2 - 0.5|) = max(0.2, 0.3) = 0.3

    With ``extra_small_group``: group C, 5 rows, every one a false positive (FPR 1,
    selection rate 1): it would blow every gap up if it were judged.
    """
    ya, pa = _block(16, 4, 4, 16)
    yb, pb = _block(6, 4, 15, 15)
    y, pred = ya + yb, pa + pb
    groups = ["A"] * 40 + ["B"] * 40
    if extra_small_group:
        yc, pc = _block(0, 0, 5, 0)
        y, pred, groups = y + yc, pred + pc, groups + ["C"] * 5
    # Shuffle so nothing depends on the rows being sorted by group.
    order = np.random.default_rng(0).permutation(len(y))
    return (
        np.asarray(y)[order],
        np.asarray(pred)[order],
        np.asarray(groups, dtype=object)[order],
    )


EXPECTED_BINARY = {
    "demographic_parity_difference": 0.025,
    "equal_opportunity_difference": 0.2,
    "equalized_odds_difference": 0.3,
}


def test_binary_gaps_match_hand_computation():
    y, pred, groups = binary_case()
    limits = FairnessLimits(
        demographic_parity_max=None, equal_opportunity_max=0.25, equalized_odds_max=0.35
    )
    result = fairness.assess(y, pred, groups, 2, limits)
    assert result["groups_judged"] == ["A", "B"]
    assert result["groups_too_small"] == []
    for name, value in EXPECTED_BINARY.items():
        assert result["metrics"][name]["value"] == pytest.approx(value, abs=1e-12), name
    assert result["rates"]["A"] == pytest.approx({"selection_rate": 0.5, "tpr": 0.8, "fpr": 0.2})
    assert result["rates"]["B"] == pytest.approx({"selection_rate": 0.525, "tpr": 0.6, "fpr": 0.5})


def test_limits_give_pass_fail_and_none_is_reported_only():
    y, pred, groups = binary_case()
    # EO 0.2 <= 0.25 passes; EOdds 0.3 > 0.25 fails; DP has no limit: reported only.
    limits = FairnessLimits(
        demographic_parity_max=None, equal_opportunity_max=0.25, equalized_odds_max=0.25
    )
    result = fairness.assess(y, pred, groups, 2, limits)
    m = result["metrics"]
    assert m["demographic_parity_difference"]["limit"] is None
    assert m["demographic_parity_difference"]["passed"] is None
    assert m["equal_opportunity_difference"] == pytest.approx(
        {"value": 0.2, "limit": 0.25, "passed": True}
    )
    assert m["equalized_odds_difference"]["limit"] == 0.25
    assert m["equalized_odds_difference"]["passed"] is False
    assert result["status"] == "fail"

    # Loosen the failing limit: pass, and the unlimited DP (0.025) never decides anything.
    loose = limits.model_copy(update={"equalized_odds_max": 0.35})
    assert fairness.assess(y, pred, groups, 2, loose)["status"] == "pass"


def test_none_limit_does_not_count_even_when_the_gap_is_large():
    y, pred, groups = binary_case()
    # EOdds (0.3) would fail a 0.1 limit, but it has none; DP 0.025 <= 0.05 passes.
    limits = FairnessLimits(
        demographic_parity_max=0.05, equal_opportunity_max=None, equalized_odds_max=None
    )
    result = fairness.assess(y, pred, groups, 2, limits)
    assert result["status"] == "pass"
    assert [result["metrics"][n]["passed"] for n in GAP_NAMES] == [True, None, None]


def test_limit_equal_to_gap_passes():
    # "Largest allowed gap": a gap equal to the limit is allowed. TPR 16/20 vs 6/10 is a
    # gap of exactly 0.2 in exact arithmetic.
    y, pred, groups = binary_case()
    limits = FairnessLimits(
        demographic_parity_max=None, equal_opportunity_max=0.2, equalized_odds_max=None
    )
    result = fairness.assess(y, pred, groups, 2, limits)
    assert result["metrics"]["equal_opportunity_difference"]["passed"] is True
    assert result["status"] == "pass"


def test_no_limit_at_all_is_not_assessed():
    y, pred, groups = binary_case()
    limits = FairnessLimits(
        demographic_parity_max=None, equal_opportunity_max=None, equalized_odds_max=None
    )
    result = fairness.assess(y, pred, groups, 2, limits)
    assert result["status"] == "not assessed"
    assert "no fairness limit" in result["reason"]
    # The gaps are still reported.
    for name, value in EXPECTED_BINARY.items():
        assert result["metrics"][name]["value"] == pytest.approx(value, abs=1e-12)


def test_small_groups_are_listed_and_excluded_from_the_verdict():
    y, pred, groups = binary_case(extra_small_group=True)
    limits = FairnessLimits(
        demographic_parity_max=None,
        equal_opportunity_max=0.25,
        equalized_odds_max=0.35,
        min_group_size=30,
    )
    result = fairness.assess(y, pred, groups, 2, limits)
    assert result["groups_judged"] == ["A", "B"]
    assert result["groups_too_small"] == ["C"]
    # Group C (FPR 1, selection 1) would give DP 0.5 and EOdds 0.8: it is not judged.
    for name, value in EXPECTED_BINARY.items():
        assert result["metrics"][name]["value"] == pytest.approx(value, abs=1e-12)
    assert set(result["rates"]) == {"A", "B"}
    assert result["status"] == "pass"

    # With C big enough to count, the gaps are those of the three groups.
    judged_c = fairness.assess(y, pred, groups, 2, limits.model_copy(update={"min_group_size": 5}))
    assert judged_c["groups_judged"] == ["A", "B", "C"]
    assert judged_c["groups_too_small"] == []
    # selection: A 0.5, B 0.525, C 1.0 -> 0.5; TPR of C undefined (no positives); FPR 1.0 vs
    # 0.2 -> 0.8.
    assert judged_c["metrics"]["demographic_parity_difference"]["value"] == pytest.approx(0.5)
    assert judged_c["metrics"]["equalized_odds_difference"]["value"] >= 0.8 - 1e-12
    assert judged_c["status"] == "fail"


@pytest.mark.parametrize("min_size", [41, 1000])
def test_fewer_than_two_judgeable_groups_is_not_assessed(min_size):
    y, pred, groups = binary_case(extra_small_group=True)
    limits = FairnessLimits(min_group_size=min_size)
    result = fairness.assess(y, pred, groups, 2, limits)
    assert result["status"] == "not assessed"
    assert str(min_size) in result["reason"]
    assert "metrics" not in result
    assert result["groups_judged"] == []
    assert result["groups_too_small"] == ["A", "B", "C"]


def test_one_big_group_only_is_not_assessed():
    y, pred, groups = binary_case(extra_small_group=True)
    groups = np.where(groups == "B", "A", groups)  # A: 80 rows, C: 5 rows
    result = fairness.assess(y, pred, groups, 2, FairnessLimits(min_group_size=30))
    assert result["status"] == "not assessed"
    assert result["groups_judged"] == ["A"]
    assert result["groups_too_small"] == ["C"]


def test_assess_accepts_group_values_that_are_not_strings():
    # subgroup_table accepts them; group_labels is the pipeline's way in, but assess is a
    # public function taking any array of groups.
    y, pred, groups = binary_case()
    codes = np.where(groups == "A", 0, 1)
    limits = FairnessLimits(
        demographic_parity_max=None, equal_opportunity_max=0.25, equalized_odds_max=0.35
    )
    result = fairness.assess(y, pred, codes, 2, limits)
    assert result["groups_judged"] == ["0", "1"]
    for name, value in EXPECTED_BINARY.items():
        assert result["metrics"][name]["value"] == pytest.approx(value, abs=1e-12)


# --------------------------------------------------------------------------------------
# Multiclass: one class against the rest, the largest gap over classes.


def multiclass_case():
    """Three classes (0, 1, 2), two groups of 30 rows, 10 rows of each true class.

    Group A predictions: true 0 -> 8 x 0, 2 x 1; true 1 -> 10 x 1; true 2 -> 5 x 2, 5 x 0.
    Group B predictions: true 0 -> 10 x 0;       true 1 -> 6 x 1, 4 x 2; true 2 -> 10 x 2.

    One against the rest (positives: the 10 rows of class k, negatives: the other 20):
      k=0: A predicts 0 on 13 rows (sel 13/30), TPR 8/10 = 0.8, FPR 5/20 = 0.25
           B predicts 0 on 10 rows (sel 10/30), TPR 1.0,         FPR 0/20 = 0
           DP 3/30 = 0.1, EO 0.2, EOdds max(0.2, 0.25) = 0.25
      k=1: A: sel 12/30 = 0.4, TPR 1.0, FPR 2/20 = 0.1
           B: sel  6/30 = 0.2, TPR 0.6, FPR 0
           DP 0.2, EO 0.4, EOdds max(0.4, 0.1) = 0.4
      k=2: A: sel  5/30,       TPR 0.5, FPR 0
           B: sel 14/30,       TPR 1.0, FPR 4/20 = 0.2
           DP 9/30 = 0.3, EO 0.5, EOdds max(0.5, 0.2) = 0.5
    Largest over classes: DP 0.3, EO 0.5, EOdds 0.5.
    """
    y_a = [0] * 10 + [1] * 10 + [2] * 10
    p_a = [0] * 8 + [1] * 2 + [1] * 10 + [2] * 5 + [0] * 5
    y_b = [0] * 10 + [1] * 10 + [2] * 10
    p_b = [0] * 10 + [1] * 6 + [2] * 4 + [2] * 10
    groups = np.asarray(["A"] * 30 + ["B"] * 30, dtype=object)
    return np.asarray(y_a + y_b), np.asarray(p_a + p_b), groups


PER_CLASS = {
    "0": (0.1, 0.2, 0.25),
    "1": (0.2, 0.4, 0.4),
    "2": (0.3, 0.5, 0.5),
}


def test_multiclass_gaps_are_the_largest_one_vs_rest():
    y, pred, groups = multiclass_case()
    limits = FairnessLimits(
        demographic_parity_max=0.35,
        equal_opportunity_max=0.6,
        equalized_odds_max=0.45,
        min_group_size=30,
    )
    result = fairness.assess(y, pred, groups, 3, limits)
    assert set(result["per_class"]) == {"0", "1", "2"}
    for k, expected in PER_CLASS.items():
        got = [result["per_class"][k][n] for n in GAP_NAMES]
        assert got == pytest.approx(expected, abs=1e-12), k
    m = result["metrics"]
    assert m["demographic_parity_difference"]["value"] == pytest.approx(0.3, abs=1e-12)
    assert m["equal_opportunity_difference"]["value"] == pytest.approx(0.5, abs=1e-12)
    assert m["equalized_odds_difference"]["value"] == pytest.approx(0.5, abs=1e-12)
    assert [m[n]["passed"] for n in GAP_NAMES] == [True, True, False]
    assert result["status"] == "fail"
    assert "rates" not in result  # binary only


def test_multiclass_pass_when_every_class_is_within_limits():
    y, pred, groups = multiclass_case()
    limits = FairnessLimits(
        demographic_parity_max=None,
        equal_opportunity_max=0.5,
        equalized_odds_max=0.5,
        min_group_size=30,
    )
    assert fairness.assess(y, pred, groups, 3, limits)["status"] == "pass"


# --------------------------------------------------------------------------------------
# Group labels.


def test_missing_group_values_become_their_own_group():
    values = pd.Series(["A", None, "B", np.nan, "A"], dtype=object)
    labels = fairness.group_labels(values)
    assert labels.tolist() == ["A", "(missing)", "B", "(missing)", "A"]
    assert fairness.MISSING_GROUP == "(missing)"


def test_group_labels_of_numeric_and_boolean_columns():
    assert fairness.group_labels(pd.Series([1.0, np.nan, 0.0])).tolist() == [
        "1.0",
        "(missing)",
        "0.0",
    ]
    assert fairness.group_labels(pd.Series([True, False])).tolist() == ["True", "False"]
    as_category = pd.Series(pd.Categorical(["x", None, "y"]))
    assert fairness.group_labels(as_category).tolist() == ["x", "(missing)", "y"]


def test_missing_group_is_judged_like_any_other():
    y, pred, groups = binary_case()
    raw = pd.Series(np.where(groups == "B", None, groups), dtype=object)
    labels = fairness.group_labels(raw)
    limits = FairnessLimits(
        demographic_parity_max=None, equal_opportunity_max=0.25, equalized_odds_max=0.35
    )
    result = fairness.assess(y, pred, labels, 2, limits)
    assert result["groups_judged"] == ["(missing)", "A"]
    assert result["metrics"]["equalized_odds_difference"]["value"] == pytest.approx(0.3)
    assert result["rates"]["(missing)"]["tpr"] == pytest.approx(0.6)


# --------------------------------------------------------------------------------------
# subgroup_table


def _binary_scores(y: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, len(y)), 0, 1)
    return np.column_stack([1 - p, p])


def test_subgroup_table_binary_matches_sklearn_on_each_slice():
    y, pred, groups = binary_case(extra_small_group=True)
    proba = _binary_scores(y)
    rows = fairness.subgroup_table(y, pred, proba, groups, min_size=30)
    assert [r["group"] for r in rows] == ["A", "B", "C"]
    for row in rows:
        m = groups == row["group"]
        yt, yp, p1 = y[m], pred[m], proba[m, 1]
        assert row["rows"] == int(m.sum())
        assert row["too_small"] is bool(m.sum() < 30)
        assert row["base_rate"] == pytest.approx(yt.mean())
        assert row["positive_rate"] == pytest.approx(yp.mean())
        assert row["precision"] == pytest.approx(skm.precision_score(yt, yp, zero_division=0))
        assert row["recall"] == pytest.approx(skm.recall_score(yt, yp, zero_division=0))
        assert row["f1"] == pytest.approx(skm.f1_score(yt, yp, zero_division=0))
        if len(np.unique(yt)) == 2:
            assert row["auc"] == pytest.approx(skm.roc_auc_score(yt, p1))
        else:
            assert math.isnan(row["auc"])
    by = {r["group"]: r for r in rows}
    # Hand figures: A precision 16/20, recall 0.8; B precision 6/21, recall 0.6.
    assert by["A"]["precision"] == pytest.approx(0.8)
    assert by["B"]["precision"] == pytest.approx(6 / 21)
    assert by["B"]["recall"] == pytest.approx(0.6)
    assert (by["A"]["too_small"], by["B"]["too_small"], by["C"]["too_small"]) == (
        False,
        False,
        True,
    )
    # C: no positives at all -> recall 0 (zero_division), AUC undefined.
    assert by["C"]["base_rate"] == 0.0
    assert by["C"]["positive_rate"] == 1.0
    assert by["C"]["recall"] == 0.0
    assert math.isnan(by["C"]["auc"])


def test_subgroup_table_multiclass_matches_sklearn_on_each_slice():
    y, pred, groups = multiclass_case()
    # Add a 4-row group D holding classes 0 and 1 only: macro AUC undefined there.
    y = np.concatenate([y, [0, 1, 0, 1]])
    pred = np.concatenate([pred, [0, 0, 1, 1]])
    groups = np.concatenate([groups, np.asarray(["D"] * 4, dtype=object)])
    rng = np.random.default_rng(1)
    raw = rng.uniform(0.05, 1, (len(y), 3))
    raw[np.arange(len(y)), y] += 0.6
    proba = raw / raw.sum(axis=1, keepdims=True)
    rows = fairness.subgroup_table(y, pred, proba, groups, min_size=10)
    assert [r["group"] for r in rows] == ["A", "B", "D"]
    labels = [0, 1, 2]
    for row in rows:
        m = groups == row["group"]
        yt, yp = y[m], pred[m]
        assert row["rows"] == int(m.sum())
        assert row["too_small"] is bool(m.sum() < 10)
        assert row["accuracy"] == pytest.approx(skm.accuracy_score(yt, yp))
        for key, fn in (
            ("precision", skm.precision_score),
            ("recall", skm.recall_score),
            ("f1", skm.f1_score),
        ):
            expected = fn(yt, yp, labels=labels, average="macro", zero_division=0)
            assert row[key] == pytest.approx(expected), (row["group"], key)
        if row["group"] == "D":
            assert math.isnan(row["auc"])
        else:
            expected_auc = skm.roc_auc_score(yt, proba[m], multi_class="ovr", labels=labels)
            assert row["auc"] == pytest.approx(expected_auc)
        assert "base_rate" not in row
    by = {r["group"]: r for r in rows}
    # Hand figures: A right on 8 + 10 + 5 = 23 of 30 rows, B on 10 + 6 + 10 = 26 of 30.
    assert by["A"]["accuracy"] == pytest.approx(23 / 30)
    assert by["B"]["accuracy"] == pytest.approx(26 / 30)
    assert [by[g]["too_small"] for g in "ABD"] == [False, False, True]
