"""Metrics for imbalanced classification, decision thresholds, and test-set evaluation.

Pure functions over labels (class indices) and probability matrices; sklearn does the maths.
For binary problems column 1 of a probability matrix is the positive class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from mlplatform.config import ThresholdConfig
from mlplatform.errors import ConfigError
from mlplatform.search.settings import TUNE_METRICS


def _n_classes(proba: np.ndarray) -> int:
    return proba.shape[1]


def _labels(proba: np.ndarray, threshold: float | None) -> np.ndarray:
    if _n_classes(proba) == 2:
        return (proba[:, 1] >= (0.5 if threshold is None else threshold)).astype(np.int64)
    return proba.argmax(axis=1)


def average_precision(y: np.ndarray, proba: np.ndarray) -> float:
    if _n_classes(proba) == 2:
        return float(skm.average_precision_score(y, proba[:, 1]))
    onehot = label_binarize(y, classes=np.arange(_n_classes(proba)))
    return float(skm.average_precision_score(onehot, proba, average="macro"))


def roc_auc(y: np.ndarray, proba: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")
    if _n_classes(proba) == 2:
        return float(skm.roc_auc_score(y, proba[:, 1]))
    labels = np.arange(_n_classes(proba))
    return float(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=labels))


def log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    # float32 model outputs sum to 1 only within float32 precision; renormalise for sklearn.
    proba = proba / proba.sum(axis=1, keepdims=True)
    return float(skm.log_loss(y, proba, labels=np.arange(_n_classes(proba))))


def brier(y: np.ndarray, proba: np.ndarray) -> float:
    if _n_classes(proba) == 2:
        return float(skm.brier_score_loss(y, proba[:, 1]))
    onehot = label_binarize(y, classes=np.arange(_n_classes(proba)))
    return float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))


def f1(y: np.ndarray, proba: np.ndarray) -> float:
    average = "binary" if _n_classes(proba) == 2 else "macro"
    return float(skm.f1_score(y, _labels(proba, None), average=average, zero_division=0))


def balanced_accuracy(y: np.ndarray, proba: np.ndarray) -> float:
    return float(skm.balanced_accuracy_score(y, _labels(proba, None)))


@dataclass(frozen=True)
class Objective:
    """A metric the search can optimise, and which way is better."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    direction: str  # "maximize" | "minimize"

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "maximize" else a < b


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("average_precision", average_precision, "maximize"),
        Objective("roc_auc", roc_auc, "maximize"),
        Objective("log_loss", log_loss, "minimize"),
        Objective("brier", brier, "minimize"),
        Objective("f1", f1, "maximize"),
        Objective("balanced_accuracy", balanced_accuracy, "maximize"),
    )
}
# params.yaml is checked against config.TUNE_METRICS at load (config cannot import this).
assert tuple(OBJECTIVES) == TUNE_METRICS, "config.TUNE_METRICS must list OBJECTIVES"


def objective(name: str) -> Objective:
    """Look up an objective metric by name.

    Raises:
        ConfigError: naming tune.metric and the known metrics.
    """
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ConfigError(
            f"tune.metric: unknown metric '{name}' (known: {', '.join(OBJECTIVES)})"
        ) from None


def validation_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Threshold-free metrics logged for every trial, with the same names for every family."""
    return {name: o.fn(y, proba) for name, o in OBJECTIVES.items()}


# ---------------------------------------------------------------------------------------
# Decision threshold (binary only), chosen on validation data.


def choose_threshold(y: np.ndarray, p_pos: np.ndarray, cfg: ThresholdConfig) -> float:
    """The decision threshold on the positive-class probability.

    ``best_f1`` maximises F1; ``cost`` minimises ``cost_fn * FN + cost_fp * FP``. Ties go to
    the higher threshold (fewer positives). Candidates are the observed probabilities, so
    ``p >= threshold`` reproduces exactly the counts the rule optimised.
    """
    order = np.argsort(-p_pos, kind="mergesort")
    p_sorted = p_pos[order]
    y_sorted = y[order].astype(np.int64)
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(1 - y_sorted)
    # Only the last index of each run of equal probabilities is a valid cut.
    last = np.r_[p_sorted[1:] != p_sorted[:-1], True]
    tp, fp, cand = tp[last], fp[last], p_sorted[last]
    n_pos = int(y_sorted.sum())
    fn = n_pos - tp
    if cfg.rule == "best_f1":
        denom = 2 * tp + fp + fn
        score = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
        best = int(np.argmax(score))  # first max = highest threshold among ties
    else:
        cost = cfg.cost_fn * fn + cfg.cost_fp * fp
        best = int(np.argmin(cost))
    return float(cand[best])


# ---------------------------------------------------------------------------------------
# Test-set evaluation.


def evaluate(
    y: np.ndarray,
    proba: np.ndarray,
    classes: list[Any],
    threshold: float | None,
    pred: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every figure the evaluation reports, at the chosen threshold for binary problems.

    ``pred`` (class indices) overrides the labels derived from proba and threshold, for
    models that decide their classes themselves.

    Returns:
        A JSON-ready dict: headline metrics, the confusion matrix (rows: true, columns:
        predicted, in class order) and, for multiclass, per-class and averaged figures.
    """
    pred = _labels(proba, threshold) if pred is None else np.asarray(pred)
    k = _n_classes(proba)
    out: dict[str, Any] = {
        "n_rows": len(y),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
        "roc_auc": roc_auc(y, proba),
        "average_precision": average_precision(y, proba),
        "log_loss": log_loss(y, proba),
        "brier": brier(y, proba),
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=np.arange(k)).tolist(),
    }
    if k == 2:
        out.update(
            threshold=threshold,
            precision=float(skm.precision_score(y, pred, zero_division=0)),
            recall=float(skm.recall_score(y, pred, zero_division=0)),
            f1=float(skm.f1_score(y, pred, zero_division=0)),
            positive_rate=float(pred.mean()),
            base_rate=float(np.mean(y)),
        )
        tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(y, pred, labels=[0, 1]).ravel())
        out.update(tn=tn, fp=fp, fn=fn, tp=tp)
    else:
        p, r, f, s = skm.precision_recall_fscore_support(
            y, pred, labels=np.arange(k), zero_division=0
        )
        out["per_class"] = {
            str(c): {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, c in enumerate(classes)
        }
        for avg in ("macro", "micro", "weighted"):
            pa, ra, fa, _ = skm.precision_recall_fscore_support(
                y, pred, labels=np.arange(k), average=avg, zero_division=0
            )
            out[f"precision_{avg}"] = float(pa)
            out[f"recall_{avg}"] = float(ra)
            out[f"f1_{avg}"] = float(fa)
        # Headline names shared with binary models (used by promotion floors).
        out["precision"], out["recall"], out["f1"] = (
            out["precision_macro"],
            out["recall_macro"],
            out["f1_macro"],
        )
        out["class_distribution"] = {
            str(c): float(np.mean(pred == i)) for i, c in enumerate(classes)
        }
    return out


def scalar_metrics(report: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of an evaluation report, flattened for MLflow."""
    flat: dict[str, float] = {}
    for key, value in report.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            flat[f"{prefix}{key}"] = float(value)
        elif isinstance(value, dict) and key == "per_class":
            for cls, figures in value.items():
                for name, v in figures.items():
                    flat[f"{prefix}{name}_class_{cls}"] = float(v)
    return flat
