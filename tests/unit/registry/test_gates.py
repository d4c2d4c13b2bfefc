"""Promotion rules (gates.py): every rule's outcome and the decision it leads to."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from mlplatform.config import PromotionConfig
from mlplatform.registry.fit_rows import Comparison
from mlplatform.registry.gates import (
    Figures,
    Rule,
    Verdict,
    check_candidate,
    compare,
    decide,
    prediction_shift,
    relative_change,
)

CFG = PromotionConfig()


def cfg(**overrides) -> PromotionConfig:
    return PromotionConfig(**overrides)


def champion(**kw) -> Figures:
    base = {
        "version": "1",
        "metrics": {"average_precision": 0.50, "roc_auc": 0.80, "recall": 0.60},
        "latency_ms": 10.0,
        "prediction_distribution": {"0": 0.90, "1": 0.10},
    }
    return Figures(**{**base, **kw})


def candidate(ap: float = 0.52, **kw) -> Figures:
    """A candidate that passes everything against ``champion()`` unless told otherwise."""
    base = {
        "version": "2",
        "metrics": {"average_precision": ap, "roc_auc": 0.80, "recall": 0.60},
        "latency_ms": 10.5,
        "prediction_distribution": {"0": 0.89, "1": 0.11},
    }
    return Figures(**{**base, **kw})


def rule(verdict: Verdict, name: str) -> Rule:
    found = [r for r in verdict.rules if r.name == name]
    assert len(found) == 1, f"expected one rule {name!r}, got {[r.name for r in verdict.rules]}"
    return found[0]


def names(verdict: Verdict) -> list[str]:
    return [r.name for r in verdict.rules]


# --------------------------------------------------------------------------------------
# First model: only the absolute checks.


def test_first_model_approved_when_absolute_checks_pass():
    v = decide(candidate(), None, CFG)
    assert v.decision == "approve"
    assert v.reason == "first model: absolute checks pass"
    assert names(v) == ["loads_and_scores", "model_card", "explanations"]
    assert all(r.outcome == "pass" for r in v.rules)


def test_first_model_floor_missed_is_rejected():
    c = candidate(metrics={"average_precision": 0.5, "recall": 0.2})
    v = decide(c, None, cfg(floors={"recall": 0.3}))
    assert v.decision == "reject"
    r = rule(v, "floor:recall")
    assert (r.outcome, r.value, r.limit) == ("fail", 0.2, 0.3)
    assert "recall 0.2000 must be at least 0.3" in v.reason


def test_floor_met_exactly_passes():
    c = candidate(metrics={"average_precision": 0.5, "recall": 0.3})
    v = decide(c, None, cfg(floors={"recall": 0.3}))
    assert v.decision == "approve"
    assert rule(v, "floor:recall").outcome == "pass"


@pytest.mark.parametrize(
    ("value", "outcome", "decision"),
    [(0.4, "pass", "approve"), (0.5, "pass", "approve"), (0.6, "fail", "reject")],
)
def test_floor_on_lower_is_better_metric_is_a_ceiling(value, outcome, decision):
    c = candidate(metrics={"average_precision": 0.5, "log_loss": value})
    v = decide(c, None, cfg(floors={"log_loss": 0.5}))
    assert v.decision == decision
    r = rule(v, "floor:log_loss")
    assert r.outcome == outcome
    assert "must be at most 0.5" in r.detail


def test_floor_metric_not_measured_fails():
    v = decide(candidate(), None, cfg(floors={"f1": 0.1}))
    assert v.decision == "reject"
    r = rule(v, "floor:f1")
    assert (r.outcome, r.value, r.limit) == ("fail", None, 0.1)
    assert "f1 not measured" in v.reason


def test_fairness_fail_is_rejected():
    c = candidate(fairness={"sex": "fail", "race": "pass"})
    v = decide(c, None, CFG)
    assert v.decision == "reject"
    assert rule(v, "fairness:sex").outcome == "fail"
    assert rule(v, "fairness:race").outcome == "pass"
    assert v.reason == "fairness for sex: fail"


def test_fairness_not_assessed_is_info_not_a_failure():
    c = candidate(fairness={"age": "not assessed"})
    v = decide(c, None, CFG)
    assert v.decision == "approve"
    assert rule(v, "fairness:age").outcome == "info"


def test_missing_card_is_rejected_when_required():
    v = decide(candidate(has_card=False), None, CFG)
    assert v.decision == "reject"
    assert rule(v, "model_card").outcome == "fail"
    assert v.reason == "model card missing"


def test_missing_card_ignored_when_not_required():
    v = decide(candidate(has_card=False), None, cfg(require_card=False))
    assert v.decision == "approve"
    assert "model_card" not in names(v)


def test_missing_explanations_is_rejected_when_required():
    v = decide(candidate(has_explanations=False), None, CFG)
    assert v.decision == "reject"
    assert rule(v, "explanations").outcome == "fail"
    assert v.reason == "explanations missing"


def test_missing_explanations_ignored_when_not_required():
    v = decide(candidate(has_explanations=False), None, cfg(require_explanations=False))
    assert v.decision == "approve"
    assert "explanations" not in names(v)


def test_candidate_that_fails_to_load_is_rejected_with_the_error():
    c = Figures(version="2", loaded=False, error="ValueError: boom")
    v = decide(c, champion(), cfg(floors={"recall": 0.3}))
    assert v.decision == "reject"
    assert rule(v, "loads_and_scores").outcome == "fail"
    assert "candidate failed to load or score: ValueError: boom" in v.reason
    # Nothing measured: floors are not evaluated and the champion is not compared.
    assert names(v) == ["loads_and_scores", "model_card", "explanations"]


def test_check_candidate_lists_all_failures_in_the_reason():
    c = candidate(has_card=False, has_explanations=False, fairness={"sex": "fail"})
    v = decide(c, None, CFG)
    assert v.decision == "reject"
    assert v.reason == "model card missing; explanations missing; fairness for sex: fail"


# --------------------------------------------------------------------------------------
# With a champion.


def test_primary_drop_beyond_reject_drop_is_rejected():
    v = decide(candidate(ap=0.50), champion(metrics={"average_precision": 0.52}), CFG)
    assert v.decision == "reject"
    r = rule(v, "primary_drop")
    assert r.outcome == "fail"
    assert r.value == pytest.approx(-0.0384615, abs=1e-6)
    assert r.limit == -0.02
    assert "(-3.85%)" in v.reason and "drop beyond 2.0%" in v.reason
    # A rejected drop stops the comparison there.
    assert names(v)[-1] == "primary_drop"
    assert "improvement" not in names(v)


def test_drop_exactly_at_reject_drop_is_not_rejected():
    # 0.75 -> 0.5625 is exactly -25% in binary floating point.
    v = decide(
        candidate(ap=0.5625), champion(metrics={"average_precision": 0.75}), cfg(reject_drop=0.25)
    )
    assert relative_change("average_precision", 0.5625, 0.75) == -0.25
    assert rule(v, "primary_drop").outcome == "pass"
    assert v.decision == "review"
    assert rule(v, "improvement").outcome == "review"


def test_drop_of_two_percent_with_default_threshold_computed():
    # 0.343 vs 0.35 is -2% and rounds to just above -0.02: not a reject.
    rel = relative_change("average_precision", 0.343, 0.35)
    assert rel >= -0.02
    v = decide(candidate(ap=0.343), champion(metrics={"average_precision": 0.35}), CFG)
    assert rule(v, "primary_drop").outcome == "pass"
    assert v.decision == "review"
    assert "between the reject and approve thresholds" in v.reason


def test_drop_of_exactly_two_percent_on_round_numbers_is_not_rejected():
    v = decide(candidate(ap=0.49), champion(), CFG)
    assert rule(v, "primary_drop").outcome == "pass"


def test_gain_between_approve_and_suspicious_is_approved():
    # +4% primary, +5% latency, 0.01 prediction shift.
    v = decide(candidate(ap=0.52), champion(), CFG)
    assert v.decision == "approve"
    assert rule(v, "primary_drop").outcome == "pass"
    lat = rule(v, "latency")
    assert lat.outcome == "pass" and lat.value == pytest.approx(0.05)
    shift = rule(v, "prediction_shift")
    assert shift.outcome == "pass" and shift.value == pytest.approx(0.01)
    imp = rule(v, "improvement")
    assert imp.outcome == "approve" and imp.value == pytest.approx(0.04)
    assert v.reason == imp.detail
    assert "suspicious_gain" not in names(v)


def test_gain_of_one_percent_is_approved():
    rel = relative_change("average_precision", 0.505, 0.5)
    assert rel == pytest.approx(0.01) and rel >= 0.01
    v = decide(candidate(ap=0.505), champion(), CFG)
    assert v.decision == "approve"
    assert rule(v, "improvement").outcome == "approve"


@pytest.mark.parametrize("ap", [0.504, 0.495, 0.491])  # +0.8%, -1%, -1.8%
def test_change_between_reject_and_approve_is_review(ap):
    # Even with a secondary metric improving: outside the tie band.
    c = candidate(ap=ap, metrics={"average_precision": ap, "roc_auc": 0.9, "recall": 0.6})
    v = decide(c, champion(), CFG)
    assert v.decision == "review"
    imp = rule(v, "improvement")
    assert imp.outcome == "review"
    assert "between the reject and approve thresholds" in imp.detail
    assert v.reason == imp.detail


@pytest.mark.parametrize("ap", [0.5, 0.501, 0.498])  # 0%, +0.2%, -0.4%
def test_tie_with_improving_secondary_is_approved(ap):
    c = candidate(metrics={"average_precision": ap, "roc_auc": 0.81, "recall": 0.60})
    v = decide(c, champion(), CFG)
    assert v.decision == "approve"
    imp = rule(v, "improvement")
    assert imp.outcome == "approve"
    assert "roc_auc improve" in imp.detail and "recall" not in imp.detail
    assert imp.limit == CFG.tie_band


@pytest.mark.parametrize("ap", [0.5, 0.501, 0.498])
def test_tie_without_improving_secondary_is_review(ap):
    c = candidate(metrics={"average_precision": ap, "roc_auc": 0.80, "recall": 0.59})
    v = decide(c, champion(), CFG)
    assert v.decision == "review"
    assert rule(v, "improvement").outcome == "review"


def test_tie_secondary_missing_on_either_side_does_not_count():
    c = candidate(metrics={"average_precision": 0.5, "roc_auc": 0.9})
    champ = champion(metrics={"average_precision": 0.5, "recall": 0.1})
    v = decide(c, champ, CFG)
    assert v.decision == "review"


def test_tie_with_lower_is_better_secondary_decreasing_is_approved():
    conf = cfg(secondary_metrics=["log_loss"])
    c = candidate(metrics={"average_precision": 0.5, "log_loss": 0.30})
    champ = champion(metrics={"average_precision": 0.5, "log_loss": 0.35})
    v = decide(c, champ, conf)
    assert v.decision == "approve"
    assert "log_loss improve" in rule(v, "improvement").detail
    worse = decide(candidate(metrics={"average_precision": 0.5, "log_loss": 0.40}), champ, conf)
    assert worse.decision == "review"


def test_suspicious_gain_is_review_even_if_everything_else_passes():
    v = decide(candidate(ap=0.55), champion(), CFG)  # +10%
    assert v.decision == "review"
    r = rule(v, "suspicious_gain")
    assert r.outcome == "review" and r.value == pytest.approx(0.10) and r.limit == 0.05
    assert rule(v, "improvement").outcome == "approve"
    assert rule(v, "latency").outcome == "pass"
    assert rule(v, "prediction_shift").outcome == "pass"
    assert v.reason == r.detail


def test_gain_just_below_suspicious_is_approved():
    v = decide(candidate(ap=0.524), champion(), CFG)  # +4.8%
    assert v.decision == "approve"
    assert "suspicious_gain" not in names(v)


@pytest.mark.parametrize(
    ("lat", "outcome", "decision"),
    [(11.0, "review", "review"), (12.0, "review", "review"), (10.9, "pass", "approve")],
)
def test_latency_increase(lat, outcome, decision):
    v = decide(candidate(latency_ms=lat), champion(), CFG)
    r = rule(v, "latency")
    assert r.outcome == outcome
    assert r.value == pytest.approx(lat / 10 - 1)
    assert r.limit == 0.10
    assert v.decision == decision


@pytest.mark.parametrize(("cand", "champ"), [(None, 10.0), (10.0, None), (10.0, 0.0)])
def test_latency_rule_skipped_without_both_latencies(cand, champ):
    v = decide(candidate(latency_ms=cand), champion(latency_ms=champ), CFG)
    assert "latency" not in names(v)
    assert v.decision == "approve"


def test_binary_prediction_shift_of_six_points_is_review():
    c = candidate(prediction_distribution={"0": 0.84, "1": 0.16})
    v = decide(c, champion(), CFG)
    r = rule(v, "prediction_shift")
    assert r.outcome == "review"
    assert r.value == pytest.approx(0.06)
    assert r.limit == 0.05
    assert v.decision == "review"
    assert "0.060 (total variation)" in v.reason


def test_binary_prediction_shift_of_three_points_passes():
    c = candidate(prediction_distribution={"0": 0.87, "1": 0.13})
    v = decide(c, champion(), CFG)
    r = rule(v, "prediction_shift")
    assert r.outcome == "pass"
    assert r.value == pytest.approx(0.03)
    assert v.decision == "approve"


def test_multiclass_prediction_shift_is_total_variation():
    champ = {"a": 0.5, "b": 0.3, "c": 0.2}
    cand = {"a": 0.4, "b": 0.35, "c": 0.25}
    # 0.5 * (|0.4-0.5| + |0.35-0.3| + |0.25-0.2|) = 0.5 * 0.2 = 0.1
    assert prediction_shift(cand, champ) == pytest.approx(0.1)
    assert prediction_shift(champ, cand) == pytest.approx(0.1)
    # A class only one model predicts counts fully: 0.5 * (0 + 0.2 + 0.2) = 0.2
    assert prediction_shift({"a": 0.5, "b": 0.5}, champ) == pytest.approx(0.2)
    assert prediction_shift(champ, champ) == 0.0
    # 0.5 * (0.02 + 0.01 + 0.01) = 0.02
    small = {"a": 0.48, "b": 0.31, "c": 0.21}
    v = decide(
        candidate(prediction_distribution=small), champion(prediction_distribution=champ), CFG
    )
    assert rule(v, "prediction_shift").value == pytest.approx(0.02)
    assert rule(v, "prediction_shift").outcome == "pass"
    v = decide(
        candidate(prediction_distribution=cand), champion(prediction_distribution=champ), CFG
    )
    assert rule(v, "prediction_shift").outcome == "review"
    assert v.decision == "review"


def test_champion_not_loaded_is_review():
    champ = Figures(version="1", loaded=False, error="ModuleNotFoundError: xgboost")
    v = decide(candidate(), champ, CFG)
    assert v.decision == "review"
    r = rule(v, "champion_scored")
    assert r.outcome == "review"
    assert "champion v1 could not be scored" in r.detail
    assert "ModuleNotFoundError: xgboost" in r.detail
    assert v.reason == r.detail
    assert "primary_drop" not in names(v)


def test_champion_without_primary_metric_is_review():
    champ = champion(metrics={"roc_auc": 0.8})
    v = decide(candidate(), champ, CFG)
    assert v.decision == "review"
    assert rule(v, "champion_scored").outcome == "review"


def test_champion_not_loaded_does_not_hide_a_candidate_failure():
    champ = Figures(version="1", loaded=False, error="boom")
    v = decide(candidate(has_card=False), champ, CFG)
    assert v.decision == "reject"
    assert "champion_scored" not in names(v)


@pytest.mark.parametrize(
    ("cand", "champ", "decision", "rel"),
    [
        (0.40, 0.42, "approve", 0.02 / 0.42),
        (0.44, 0.42, "reject", -0.02 / 0.42),
        (0.42, 0.42, "review", 0.0),
    ],
)
def test_lower_is_better_primary(cand, champ, decision, rel):
    conf = cfg(primary_metric="log_loss", secondary_metrics=[])
    v = decide(candidate(metrics={"log_loss": cand}), champion(metrics={"log_loss": champ}), conf)
    assert v.decision == decision
    assert rule(v, "primary_drop").value == pytest.approx(rel)
    assert rule(v, "primary_drop").outcome == ("fail" if decision == "reject" else "pass")


def test_relative_change():
    assert relative_change("average_precision", 0.55, 0.5) == pytest.approx(0.1)
    assert relative_change("average_precision", 0.45, 0.5) == pytest.approx(-0.1)
    assert relative_change("log_loss", 0.45, 0.5) == pytest.approx(0.1)
    assert relative_change("brier", 0.55, 0.5) == pytest.approx(-0.1)
    # Champion at zero.
    assert relative_change("average_precision", 0.0, 0.0) == 0.0
    assert relative_change("log_loss", 0.0, 0.0) == 0.0
    assert relative_change("average_precision", 0.1, 0.0) == math.inf


def test_champion_at_zero_and_higher_candidate_is_suspicious():
    c = candidate(metrics={"average_precision": 0.1})
    v = decide(c, champion(metrics={"average_precision": 0.0}), CFG)
    assert v.decision == "review"
    assert rule(v, "suspicious_gain").outcome == "review"


def test_relative_change_champion_zero_lower_is_better_is_a_worsening():
    assert relative_change("log_loss", 0.3, 0.0) < 0


def test_lower_is_better_primary_worse_than_perfect_champion_is_rejected():
    conf = cfg(primary_metric="log_loss", secondary_metrics=[])
    v = decide(candidate(metrics={"log_loss": 0.3}), champion(metrics={"log_loss": 0.0}), conf)
    assert v.decision == "reject"


def test_candidate_without_primary_metric_gets_a_verdict():
    v = decide(candidate(metrics={"roc_auc": 0.9}), champion(), CFG)
    assert v.decision in ("reject", "review")


def test_compare_and_check_candidate_directly():
    assert [r.name for r in check_candidate(candidate(), cfg(floors={"recall": 0.1}))] == [
        "loads_and_scores",
        "model_card",
        "explanations",
        "floor:recall",
    ]
    assert [r.name for r in compare(candidate(), champion(), CFG)] == [
        "primary_drop",
        "latency",
        "prediction_shift",
        "improvement",
    ]


def test_verdict_to_dict_is_json_serialisable():
    c = replace(candidate(ap=0.55), fairness={"sex": "not assessed"})
    v = decide(c, champion(), cfg(floors={"recall": 0.3}))
    d = v.to_dict()
    back = json.loads(json.dumps(d, allow_nan=False))
    assert back["decision"] == "review"
    assert back["reason"] == v.reason
    assert [r["name"] for r in back["rules"]] == names(v)
    assert set(back["rules"][0]) == {"name", "outcome", "detail", "value", "limit"}
    assert back["rules"][names(v).index("suspicious_gain")]["value"] == pytest.approx(0.1)


# --------------------------------------------------------------------------------------
# Measured only on rows neither model was fit on (issue 11)


def comparison(compared: int, test_rows: int = 476, **kw) -> Comparison:
    excluded = kw.pop("excluded_by", {"champion v1": test_rows - compared, "candidate v2": 0})
    return Comparison(test_rows, compared, CFG.min_compare_rows, excluded, **kw)


def test_default_floor_of_compared_rows():
    assert CFG.min_compare_rows == 200


def test_too_few_rows_new_to_both_models_is_manual_review():
    """The issue's case: 284 of 476 test rows were the champion's training rows."""
    cmp = comparison(150, excluded_by={"champion v1": 326, "candidate v2": 0})
    v = decide(candidate(ap=0.40), champion(), CFG, cmp)  # a -20% drop, on too few rows
    assert v.decision == "review"
    r = rule(v, "comparison_rows")
    assert (r.outcome, r.value, r.limit) == ("review", 150.0, 200.0)
    assert "compared on 150 of 476 test rows" in v.reason
    assert "326 of 476 test rows left out" in v.reason and "champion v1 was fit on 326" in v.reason
    assert "promotion.min_compare_rows (200)" in v.reason
    assert rule(v, "primary_drop").outcome == "fail"  # recorded, not decided on


def test_enough_compared_rows_decide_as_before():
    cmp = comparison(300)
    v = decide(candidate(), champion(), CFG, cmp)
    assert v.decision == decide(candidate(), champion(), CFG).decision == "approve"
    assert rule(v, "comparison_rows").outcome == "pass"
    assert "176 of 476 test rows left out" in rule(v, "comparison_rows").detail


def test_too_few_rows_do_not_hide_a_missing_card_or_a_model_that_does_not_load():
    v = decide(candidate(has_card=False), champion(), CFG, comparison(10))
    assert v.decision == "reject" and "model card missing" in v.reason
    broken = candidate(loaded=False, error="ModelFormatError: refused", metrics={})
    assert decide(broken, champion(), CFG, comparison(0)).decision == "reject"


def test_a_floor_missed_on_too_few_rows_is_review_not_reject():
    c = candidate(metrics={"average_precision": 0.5, "recall": 0.1})
    v = decide(c, champion(), cfg(floors={"recall": 0.3}), comparison(40))
    assert v.decision == "review" and rule(v, "floor:recall").outcome == "fail"


def test_first_model_needs_rows_to_measure_on_but_no_floor():
    assert decide(candidate(), None, CFG, comparison(50, excluded_by={})).decision == "approve"
    nothing = decide(candidate(metrics={}), None, CFG, comparison(0, excluded_by={}))
    assert nothing.decision == "review" and "nothing left to measure on" in nothing.reason


def test_a_version_without_recorded_fit_rows_is_flagged_not_fatal():
    cmp = comparison(476, excluded_by={"candidate v2": 0}, unrecorded=["champion v1"])
    v = decide(candidate(), champion(), CFG, cmp)
    assert v.decision == "approve"
    flag = rule(v, "fit_rows_recorded")
    assert flag.outcome == "info" and "champion v1" in flag.detail
    assert "may include its training rows" in flag.detail
    assert "could not be left out" in cmp.why()


def test_doubtful_lineage_rejects_even_on_too_few_rows():
    dirty = candidate(lineage_problems=["registered from a dirty tree"])
    v = decide(dirty, champion(), cfg(require_clean_lineage=True), comparison(10))
    assert v.decision == "reject" and "dirty tree" in v.reason
    assert decide(dirty, champion(), CFG, comparison(10)).decision == "review"  # info only
