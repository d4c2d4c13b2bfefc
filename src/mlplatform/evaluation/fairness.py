"""Performance by subgroup and fairness gaps: pure functions, fairlearn does the maths.

Groups smaller than ``min_group_size`` are reported and flagged, never dropped silently, but
they do not decide a fairness verdict: a gap measured on a handful of rows is noise. For
multiclass models each gap is taken one class against the rest and the largest is reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equal_opportunity_difference,
    equalized_odds_difference,
)
from sklearn import metrics as skm

from mlplatform.config import FairnessLimits

MISSING_GROUP = "(missing)"


def group_labels(values: pd.Series) -> np.ndarray:
    return values.astype(object).where(values.notna(), MISSING_GROUP).astype(str).to_numpy()


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    return float(skm.roc_auc_score(y, score)) if len(np.unique(y)) == 2 else float("nan")


def subgroup_table(
    y: np.ndarray, pred: np.ndarray, proba: np.ndarray, groups: np.ndarray, min_size: int
) -> list[dict[str, Any]]:
    """Rows, positive rates, precision, recall, F1 and AUC for each group."""
    binary = proba.shape[1] == 2
    rows = []
    for g in sorted(np.unique(groups)):
        m = groups == g
        yt, yp, pr = y[m], pred[m], proba[m]
        row: dict[str, Any] = {
            "group": str(g),
            "rows": int(m.sum()),
            "too_small": bool(m.sum() < min_size),
        }
        if binary:
            row.update(
                base_rate=float(yt.mean()),
                positive_rate=float(yp.mean()),
                precision=float(skm.precision_score(yt, yp, zero_division=0)),
                recall=float(skm.recall_score(yt, yp, zero_division=0)),
                f1=float(skm.f1_score(yt, yp, zero_division=0)),
                auc=_auc(yt, pr[:, 1]),
            )
        else:
            labels = np.arange(proba.shape[1])
            present = np.unique(yt)
            auc = float("nan")
            if len(present) == proba.shape[1]:
                auc = float(skm.roc_auc_score(yt, pr, multi_class="ovr", labels=labels))
            row.update(
                accuracy=float(skm.accuracy_score(yt, yp)),
                precision=float(
                    skm.precision_score(yt, yp, labels=labels, average="macro", zero_division=0)
                ),
                recall=float(
                    skm.recall_score(yt, yp, labels=labels, average="macro", zero_division=0)
                ),
                f1=float(skm.f1_score(yt, yp, labels=labels, average="macro", zero_division=0)),
                auc=auc,
            )
        rows.append(row)
    return rows


def _gaps(y: np.ndarray, pred: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    return {
        "demographic_parity_difference": float(
            demographic_parity_difference(y, pred, sensitive_features=groups)
        ),
        "equal_opportunity_difference": float(
            equal_opportunity_difference(y, pred, sensitive_features=groups)
        ),
        "equalized_odds_difference": float(
            equalized_odds_difference(y, pred, sensitive_features=groups)
        ),
    }


def rates_by_group(y: np.ndarray, pred: np.ndarray, groups: np.ndarray) -> dict[str, dict]:
    """Selection rate, TPR and FPR per group (the figures behind the gaps)."""
    frame = MetricFrame(
        metrics={
            "selection_rate": lambda t, p: float(np.mean(p)),
            "tpr": lambda t, p: float(skm.recall_score(t, p, zero_division=0)),
            "fpr": lambda t, p: float(np.mean(p[t == 0])) if np.any(t == 0) else float("nan"),
        },
        y_true=y,
        y_pred=pred,
        sensitive_features=groups,
    )
    return {str(g): {k: float(v) for k, v in r.items()} for g, r in frame.by_group.iterrows()}


def assess(
    y: np.ndarray,
    pred: np.ndarray,
    groups: np.ndarray,
    n_classes: int,
    limits: FairnessLimits,
) -> dict[str, Any]:
    """Fairness gaps for one sensitive feature, each marked pass or fail against its limit.

    Only groups with at least ``limits.min_group_size`` rows count; with fewer than two such
    groups the verdict is "not assessed".
    """
    groups = np.asarray([str(g) for g in groups], dtype=object)
    sizes = pd.Series(groups).value_counts()
    judged = sorted(str(g) for g, n in sizes.items() if n >= limits.min_group_size)
    small = sorted(str(g) for g, n in sizes.items() if n < limits.min_group_size)
    result: dict[str, Any] = {"groups_judged": judged, "groups_too_small": small}
    if len(judged) < 2:
        result.update(
            status="not assessed",
            reason=f"fewer than two groups with at least {limits.min_group_size} rows",
        )
        return result
    m = np.isin(groups, judged)
    yj, pj, gj = y[m], pred[m], groups[m]
    if n_classes == 2:
        gaps = _gaps(yj, pj, gj)
        result["rates"] = rates_by_group(yj, pj, gj)
    else:
        per_class = {
            k: _gaps((yj == k).astype(int), (pj == k).astype(int), gj) for k in range(n_classes)
        }
        gaps = {name: max(v[name] for v in per_class.values()) for name in per_class[0]}
        result["per_class"] = {str(k): v for k, v in per_class.items()}
    limit_of = {
        "demographic_parity_difference": limits.demographic_parity_max,
        "equal_opportunity_difference": limits.equal_opportunity_max,
        "equalized_odds_difference": limits.equalized_odds_max,
    }
    result["metrics"] = {
        name: {
            "value": value,
            "limit": limit_of[name],
            # None: reported only, no verdict.
            "passed": None
            if limit_of[name] is None
            else bool(np.isfinite(value) and value <= limit_of[name] + 1e-9),
        }
        for name, value in gaps.items()
    }
    verdicts = [v["passed"] for v in result["metrics"].values() if v["passed"] is not None]
    result["status"] = "pass" if all(verdicts) else "fail"
    if not verdicts:
        result.update(status="not assessed", reason="no fairness limit is set")
    return result
