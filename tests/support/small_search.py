"""A small search for unit tests: a seeded binary problem and fast search params."""

from __future__ import annotations

import types

import numpy as np

from mlplatform.config import parse_params
from mlplatform.search import tune
from support.project import make_params


def small_data(n: int = 2400, seed: int = 0) -> tune.SearchData:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6))
    logit = 1.5 * x[:, 0] - x[:, 1] + 0.7 * x[:, 2] * x[:, 3] - 1.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    cut = int(n * 0.7)
    return tune.SearchData(
        schema=types.SimpleNamespace(classes=[0, 1]),
        y_train=y[:cut],
        y_valid=y[cut:],
        x_train={True: x[:cut], False: x[:cut]},
        x_valid={True: x[cut:], False: x[cut:]},
    )


def small_params(overrides=None):
    base = {
        "tune.n_trials": 12,
        "tune.n_jobs": 1,
        "tune.timeout_s": None,
        "tune.fidelity.min_rows": 50,
        "tune.families": {
            "logistic_regression": {"C": {"low": 0.001, "high": 10.0, "log": True}},
            "xgboost": {
                "n_estimators": 200,
                "max_depth": {"low": 2, "high": 5},
                "learning_rate": {"low": 0.03, "high": 0.3, "log": True},
            },
        },
    }
    return parse_params(make_params({**base, **(overrides or {})}))
