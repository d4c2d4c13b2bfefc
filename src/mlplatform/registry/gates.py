"""Promotion rules: pure functions of (candidate figures, champion figures, thresholds).

Nothing here touches MLflow; ``promote.py`` measures the figures and applies the decision.

Both models are measured only on test rows neither was trained or validated on (see
``registry.fit_rows``); the ``comparison_rows`` rule records how many that left.

Decision order:

1. reject if the candidate failed to load or score (a version that is not one of ours is
   refused unread), lacks a model card or explanations (when required), or has doubtful
   lineage (with ``require_clean_lineage``): none of these depends on the compared rows;
2. with a champion and fewer compared rows than ``min_compare_rows``: manual review (the
   figures are recorded but too few rows to judge them);
3. reject if the candidate misses an absolute floor, fails a fairness limit, or (with a
   champion) its primary metric drops by more than ``reject_drop`` (relative);
4. with no champion (first model): approve (only the absolute checks apply; no rows to
   measure on at all is manual review);
5. manual review if the gain is suspiciously large, latency rises by ``max_latency_increase``
   or more, predictions shift by ``max_prediction_shift`` or more, or the champion cannot be
   scored on the current data;
6. approve if the primary metric improves by ``approve_gain`` or more, or stays within
   ``tie_band`` while a secondary metric improves; otherwise manual review.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from mlplatform.config import PromotionConfig
from mlplatform.evaluation.measure import Figures
from mlplatform.registry.fit_rows import Comparison

LOWER_IS_BETTER = frozenset({"log_loss", "brier"})
# Thresholds compare with a little slack, so a drop of exactly 2.0% is not read as 2.0000001%.
_EPS = 1e-9
Outcome = Literal["pass", "fail", "review", "approve", "info"]
Decision = Literal["approve", "reject", "review"]


@dataclass
class Rule:
    name: str
    outcome: Outcome
    detail: str
    value: float | None = None
    limit: float | None = None


@dataclass
class Verdict:
    decision: Decision
    reason: str
    rules: list[Rule]

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "reason": self.reason,
            "rules": [asdict(r) for r in self.rules],
        }


def relative_change(metric: str, candidate: float, champion: float) -> float:
    """Signed relative improvement (positive = better), whatever the metric's direction."""
    if champion == 0:
        if candidate == 0:
            return 0.0
        better = candidate < 0 if metric in LOWER_IS_BETTER else candidate > 0
        return float("inf") if better else float("-inf")
    change = (candidate - champion) / abs(champion)
    return -change if metric in LOWER_IS_BETTER else change


def prediction_shift(candidate: dict[str, float], champion: dict[str, float]) -> float:
    """Total variation distance between predicted-class distributions.

    For binary models this equals the change of the predicted-positive rate.
    """
    classes = set(candidate) | set(champion)
    return 0.5 * sum(abs(candidate.get(c, 0.0) - champion.get(c, 0.0)) for c in classes)


def check_candidate(c: Figures, cfg: PromotionConfig) -> list[Rule]:
    """Absolute checks: they apply with or without a champion."""
    rules = [
        Rule(
            "loads_and_scores",
            "pass" if c.loaded else "fail",
            "candidate loads and scores the test split"
            if c.loaded
            else f"candidate failed to load or score: {c.error}",
        ),
    ]
    if cfg.require_card:
        rules.append(
            Rule(
                "model_card",
                "pass" if c.has_card else "fail",
                "model card attached" if c.has_card else "model card missing",
            )
        )
    if cfg.require_explanations:
        rules.append(
            Rule(
                "explanations",
                "pass" if c.has_explanations else "fail",
                "SHAP explanations attached" if c.has_explanations else "explanations missing",
            )
        )
    if not c.loaded:
        return rules
    for metric, floor in sorted(cfg.floors.items()):
        value = c.metrics.get(metric)
        if value is None:
            rules.append(Rule(f"floor:{metric}", "fail", f"{metric} not measured", None, floor))
            continue
        ok = value <= floor if metric in LOWER_IS_BETTER else value >= floor
        word = "at most" if metric in LOWER_IS_BETTER else "at least"
        rules.append(
            Rule(
                f"floor:{metric}",
                "pass" if ok else "fail",
                f"{metric} {value:.4f} must be {word} {floor}",
                value,
                floor,
            )
        )
    if c.lineage_problems:
        rules.append(
            Rule(
                "lineage",
                "fail" if cfg.require_clean_lineage else "info",
                "lineage: " + "; ".join(c.lineage_problems),
            )
        )
    for feature, status in sorted(c.fairness.items()):
        outcome: Outcome = "fail" if status == "fail" else ("pass" if status == "pass" else "info")
        rules.append(Rule(f"fairness:{feature}", outcome, f"fairness for {feature}: {status}"))
    return rules


def compare(c: Figures, champ: Figures, cfg: PromotionConfig) -> list[Rule]:
    """Rules relative to the champion (both measured on the same data, now)."""
    primary = cfg.primary_metric
    if not champ.loaded or primary not in champ.metrics:
        return [
            Rule(
                "champion_scored",
                "review",
                f"champion v{champ.version} could not be scored on the current data "
                f"({champ.error}); a person must compare",
            )
        ]
    if primary not in c.metrics:
        return [Rule("primary_drop", "fail", f"candidate has no {primary} to compare")]
    rules: list[Rule] = []
    rel = relative_change(primary, c.metrics[primary], champ.metrics[primary])
    detail = (
        f"{primary} {c.metrics[primary]:.4f} vs champion {champ.metrics[primary]:.4f} ({rel:+.2%})"
    )
    if rel < -cfg.reject_drop - _EPS:
        rules.append(
            Rule(
                "primary_drop",
                "fail",
                detail + f": drop beyond {cfg.reject_drop:.1%}",
                rel,
                -cfg.reject_drop,
            )
        )
        return rules
    rules.append(Rule("primary_drop", "pass", detail, rel, -cfg.reject_drop))
    if rel > cfg.suspicious_gain + _EPS:
        rules.append(
            Rule(
                "suspicious_gain",
                "review",
                f"gain {rel:+.2%} above {cfg.suspicious_gain:.0%}: too good to be "
                "true until a person looks",
                rel,
                cfg.suspicious_gain,
            )
        )
    if c.latency_ms is not None and champ.latency_ms:
        lat = c.latency_ms / champ.latency_ms - 1
        outcome: Outcome = "review" if lat >= cfg.max_latency_increase - _EPS else "pass"
        rules.append(
            Rule(
                "latency",
                outcome,
                f"median single-row latency {c.latency_ms:.2f} ms vs "
                f"{champ.latency_ms:.2f} ms ({lat:+.1%})",
                lat,
                cfg.max_latency_increase,
            )
        )
    shift = prediction_shift(c.prediction_distribution, champ.prediction_distribution)
    rules.append(
        Rule(
            "prediction_shift",
            "review" if shift >= cfg.max_prediction_shift else "pass",
            f"predicted-class distribution moved by {shift:.3f} (total variation)",
            shift,
            cfg.max_prediction_shift,
        )
    )
    improved = [
        m
        for m in cfg.secondary_metrics
        if m in c.metrics
        and m in champ.metrics
        and relative_change(m, c.metrics[m], champ.metrics[m]) > 0
    ]
    if rel >= cfg.approve_gain - _EPS:
        rules.append(
            Rule(
                "improvement",
                "approve",
                f"{primary} improves by {rel:+.2%} (>= {cfg.approve_gain:.1%})",
                rel,
                cfg.approve_gain,
            )
        )
    elif abs(rel) <= cfg.tie_band + _EPS and improved:
        rules.append(
            Rule(
                "improvement",
                "approve",
                f"{primary} within {cfg.tie_band:.1%} ({rel:+.2%}) and "
                f"{', '.join(improved)} improve",
                rel,
                cfg.tie_band,
            )
        )
    else:
        rules.append(
            Rule(
                "improvement",
                "review",
                f"{primary} change {rel:+.2%} is between the reject and approve thresholds",
                rel,
                cfg.approve_gain,
            )
        )
    return rules


# Failures that stand however few rows were compared.
_UNCONDITIONAL = ("loads_and_scores", "model_card", "explanations", "lineage")


def comparison_rules(cmp: Comparison, cfg: PromotionConfig, has_champion: bool) -> list[Rule]:
    """How many test rows the figures come from, and whether that is enough to decide on."""
    enough = cmp.compared_rows >= cfg.min_compare_rows or not has_champion
    if not cmp.compared_rows:
        enough = False
    detail = f"compared on {cmp.compared_rows} of {cmp.test_rows} test rows: {cmp.why()}"
    if not enough:
        detail += (
            f"; below promotion.min_compare_rows ({cfg.min_compare_rows}): too few rows new to "
            "the models to judge them, a person must compare"
            if cmp.compared_rows
            else "; nothing left to measure on: a person must compare"
        )
    rules = [
        Rule(
            "comparison_rows",
            "pass" if enough else "review",
            detail,
            float(cmp.compared_rows),
            float(cfg.min_compare_rows),
        )
    ]
    if cmp.unrecorded:
        rules.append(
            Rule(
                "fit_rows_recorded",
                "info",
                f"{', '.join(cmp.unrecorded)}: no record of the rows it was fit on (registered "
                "before they were recorded); compared on rows that may include its training rows",
            )
        )
    return rules


def decide(
    candidate: Figures,
    champion: Figures | None,
    cfg: PromotionConfig,
    comparison: Comparison | None = None,
) -> Verdict:
    """The promotion decision and the outcome of every rule.

    Args:
        comparison: the rows both were measured on (None: not recorded, no floor applies).
    """
    rules = check_candidate(candidate, cfg)
    if comparison is not None:
        rules += comparison_rules(comparison, cfg, champion is not None)
    failed = [r for r in rules if r.outcome == "fail"]
    too_few = [r for r in rules if r.name == "comparison_rows" and r.outcome == "review"]
    # Too few rows to judge by: only failures that do not depend on them reject.
    if failed and (not too_few or any(r.name in _UNCONDITIONAL for r in failed)):
        return Verdict("reject", "; ".join(r.detail for r in failed), rules)
    if too_few:
        if champion is not None and comparison is not None and comparison.compared_rows:
            rules += compare(candidate, champion, cfg)  # recorded, not decided on
        return Verdict("review", too_few[0].detail, rules)
    if champion is None:
        return Verdict("approve", "first model: absolute checks pass", rules)
    rules += compare(candidate, champion, cfg)
    failed = [r for r in rules if r.outcome == "fail"]
    if failed:
        return Verdict("reject", "; ".join(r.detail for r in failed), rules)
    review = [r for r in rules if r.outcome == "review"]
    if review:
        return Verdict("review", "; ".join(r.detail for r in review), rules)
    return Verdict("approve", next(r.detail for r in rules if r.name == "improvement"), rules)
