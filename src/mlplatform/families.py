"""Model families: how each estimator is built, weighted for imbalance, and fitted step by step.

Each family fits on an already-preprocessed matrix and calls
``report(step, proba_valid, final)`` at its natural steps so the search can prune it (never
at the final step, when the work is done): XGBoost every ``report_every`` boosting
rounds, random forests after each chunk of trees (warm start gives the same forest as one
fit), logistic regression once (it is fast enough not to need pruning).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import xgboost as xgb
from sklearn.base import ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.utils.class_weight import compute_class_weight, compute_sample_weight

FAMILIES = ("logistic_regression", "random_forest", "xgboost")
# Linear models need standardised inputs; trees do not.
NEEDS_SCALING = {"logistic_regression": True, "random_forest": False, "xgboost": False}

Report = Callable[[int, np.ndarray, bool], None]


def make_estimator(
    family: str,
    hp: dict[str, Any],
    *,
    y: np.ndarray,
    n_classes: int,
    class_weight: str,
    seed: int,
    n_jobs: int,
) -> ClassifierMixin:
    """An unfitted estimator with the imbalance handling params.yaml asks for."""
    balanced = class_weight == "balanced"
    if family == "logistic_regression":
        params = {"max_iter": 2000, **hp}
        return LogisticRegression(
            class_weight="balanced" if balanced else None, random_state=seed, **params
        )
    if family == "random_forest":
        # An explicit dict equals "balanced" and is safe with warm start (pruning steps).
        weights = None
        if balanced:
            classes = np.unique(y)
            weights = dict(
                zip(
                    classes.tolist(),
                    compute_class_weight("balanced", classes=classes, y=y),
                    strict=True,
                )
            )
        return RandomForestClassifier(
            class_weight=weights,
            random_state=seed,
            n_jobs=n_jobs,
            **hp,
        )
    if family == "xgboost":
        params: dict[str, Any] = {
            "tree_method": "hist",
            "random_state": seed,
            "n_jobs": n_jobs,
            **hp,
        }
        if n_classes == 2:
            params["objective"] = "binary:logistic"
            if balanced:
                pos = max(int(np.sum(y == 1)), 1)
                params["scale_pos_weight"] = float((len(y) - pos) / pos)
        else:
            params["objective"] = "multi:softprob"
        return xgb.XGBClassifier(**params)
    raise ValueError(f"unknown family {family!r}")


def fit_kwargs(family: str, y: np.ndarray, n_classes: int, class_weight: str) -> dict[str, Any]:
    """Extra fit arguments: multiclass XGBoost takes balanced sample weights."""
    if family == "xgboost" and n_classes > 2 and class_weight == "balanced":
        return {"sample_weight": compute_sample_weight("balanced", y)}
    return {}


class _XGBReport(xgb.callback.TrainingCallback):
    def __init__(self, x_valid: np.ndarray, every: int, total: int, report: Report, n_classes: int):
        self.x_valid = x_valid
        self.every = every
        self.total = total
        self.report = report
        self.n_classes = n_classes

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        rounds = epoch + 1
        if rounds % self.every == 0 or rounds == self.total:
            raw = model.inplace_predict(self.x_valid, iteration_range=(0, rounds))
            self.report(rounds, _as_proba(raw, self.n_classes), rounds == self.total)
        return False


def _as_proba(raw: np.ndarray, n_classes: int) -> np.ndarray:
    if n_classes == 2 and raw.ndim == 1:
        return np.column_stack([1 - raw, raw])
    return raw


def fit_reporting(
    family: str,
    estimator: ClassifierMixin,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    report: Report,
    *,
    n_classes: int,
    report_every: int,
    rf_steps: int,
    fit_params: dict[str, Any],
) -> ClassifierMixin:
    """Fit, calling ``report(step, validation probabilities)`` along the way.

    ``report`` may raise (for example ``optuna.TrialPruned``) to stop the fit early.
    """
    if family == "xgboost":
        total = int(estimator.get_params()["n_estimators"] or 100)
        callback = _XGBReport(x_valid, report_every, total, report, n_classes)
        estimator.set_params(callbacks=[callback])
        try:
            estimator.fit(x_train, y_train, **fit_params)
        finally:
            estimator.set_params(callbacks=None)
        return estimator
    if family == "random_forest":
        total = estimator.get_params()["n_estimators"]
        estimator.set_params(warm_start=True)
        for k in range(1, rf_steps + 1):
            n = max(1, math.ceil(total * k / rf_steps))
            if k > 1 and n == estimator.get_params()["n_estimators"]:
                continue
            estimator.set_params(n_estimators=n)
            estimator.fit(x_train, y_train, **fit_params)
            report(n, estimator.predict_proba(x_valid), n >= total)
        estimator.set_params(warm_start=False)
        return estimator
    estimator.fit(x_train, y_train, **fit_params)
    report(1, estimator.predict_proba(x_valid), True)
    return estimator
