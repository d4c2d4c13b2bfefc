"""Maps from a model's scores to calibrated probabilities, fitted on labelled held-out rows.

The label-free performance estimate needs probabilities that mean what they say. A model
trained with class weights (the default here) over-predicts the positive class, so its
scores go through a map fitted on the test split first:

- "sigmoid" (Platt scaling): logistic regression of the label on logit(score). Two
  parameters, so it is stable with a few dozen positives, and it is exactly the right shape
  for class weighting, which shifts a logistic model's log-odds by a constant.
- "isotonic": any monotone map (NannyML's default). More flexible, but on a small test
  split its steps overfit, which on HMDA biased the estimated ROC AUC upwards.
- "none": the scores are taken as calibrated.

The reference keeps the (score, label) pairs rather than a fitted map, so the method can be
changed without rebuilding the reference and the estimate can refit the map on bootstrap
resamples (its interval then includes the map's own error).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

EPS = 1e-6


def pairs(
    scores: np.ndarray, labels: np.ndarray, keep: int, rng: np.random.Generator
) -> dict[str, Any]:
    """The labelled scores to keep in the reference: a seeded sample of at most ``keep``."""
    pick = np.arange(len(scores))
    if len(pick) > keep:
        pick = np.sort(rng.choice(pick, size=keep, replace=False))
    return {
        "n": len(scores),
        "scores": scores[pick].tolist(),
        "labels": labels[pick].astype(int).tolist(),
    }


def _logit(s: np.ndarray) -> np.ndarray:
    s = np.clip(s, EPS, 1 - EPS)
    return np.log(s / (1 - s))


def isotonic_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interpolation points of sklearn's isotonic fit: np.interp(s, x, y) is its predict."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, labels)
    return iso.X_thresholds_, iso.y_thresholds_


def fit(method: str, scores: np.ndarray, labels: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A map scores -> probabilities ("sigmoid", "isotonic" or "none")."""
    if method == "none":
        return lambda s: np.clip(s, 0.0, 1.0)
    if method == "isotonic":
        x, y = isotonic_points(scores, labels)
        return lambda s: np.interp(s, x, y)
    if method == "sigmoid":
        a, b = sigmoid_params(scores, labels)
        return lambda s: 1.0 / (1.0 + np.exp(-(a * _logit(s) + b)))
    raise ValueError(f"unknown calibration method {method!r}")


def sigmoid_params(
    scores: np.ndarray, labels: np.ndarray, ridge: float = 1e-6, steps: int = 50
) -> tuple[float, float]:
    """(a, b) of P(y=1) = 1 / (1 + exp(-(a logit(s) + b))), by Newton's method.

    The maximum-likelihood logistic regression on one feature, as sklearn's
    LogisticRegression computes it (the tests compare them), but about a hundred times
    faster, which matters because the estimate refits it once per simulation. The tiny ridge
    keeps the step finite when the scores separate the labels perfectly.
    """
    x = np.column_stack([_logit(np.asarray(scores, dtype=np.float64)), np.ones(len(scores))])
    y = np.asarray(labels, dtype=np.float64)
    w = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (y - p) - ridge * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w = w + step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])
