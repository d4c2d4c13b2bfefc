"""Measuring registered models now, on the current test split, for the promotion gate.

Failures to load or score become figures (``loaded=False``): the gate decides what they
mean, the measuring never raises for them.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mlplatform import model_format
from mlplatform.data.dataset import DatasetSchema
from mlplatform.evaluation.metrics import evaluate as evaluate_metrics


@dataclass
class Figures:
    """What was measured for one model, now, on the current test split (the gate's input).

    ``has_card``, ``has_explanations`` and ``fairness`` describe what is attached to the
    version's training run; the registry fills them in.
    """

    version: str | None
    loaded: bool = True
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    latency_ms: float | None = None
    prediction_distribution: dict[str, float] = field(default_factory=dict)
    has_card: bool = True
    has_explanations: bool = True
    fairness: dict[str, str] = field(default_factory=dict)  # feature -> pass/fail/not assessed
    lineage_problems: list[str] = field(default_factory=list)  # see registry/lineage.py


def load(uri: str, version: str) -> tuple[Figures, Any]:
    """Load a model by URI, refusing anything but our own format.

    Returns:
        Its figures so far, and the model (None when it failed to load, which the figures
        then say).
    """
    fig = Figures(version=version)
    try:
        return fig, model_format.load_pyfunc(uri)
    except Exception as exc:
        _failed(fig, exc)
        return fig, None


def _failed(fig: Figures, exc: Exception) -> None:
    fig.loaded = False
    fig.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def score(fig: Figures, model: Any, schema: DatasetSchema, test: pd.DataFrame) -> Figures:
    """Fill in a loaded model's figures on these test rows (a failure to score is recorded)."""
    if model is None:
        return fig
    try:
        out = model.predict(test[schema.feature_names])
        proba = model_format.probabilities(out, schema.classes)
        lookup = {str(c): i for i, c in enumerate(schema.classes)}
        pred = out[model_format.PREDICTION].astype(str).map(lookup).to_numpy()
        if np.isnan(pred.astype(float)).any():
            raise ValueError("predicted classes outside the training classes")
    except Exception as exc:
        _failed(fig, exc)
        return fig
    y = schema.encode_target(test[schema.target]).to_numpy()
    report = evaluate_metrics(y, proba, schema.classes, None, pred=pred.astype(np.int64))
    fig.metrics = {
        k: float(v)
        for k, v in report.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    fig.prediction_distribution = {
        str(c): float(np.mean(pred == i)) for i, c in enumerate(schema.classes)
    }
    return fig


def measure(
    uri: str, version: str, schema: DatasetSchema, test: pd.DataFrame
) -> tuple[Figures, Any]:
    """Load a model by URI and score it on the test split.

    Returns:
        The figures, and the loaded model (None when it failed to load or score, which the
        figures then say).
    """
    fig, model = load(uri, version)
    score(fig, model, schema, test)
    return fig, model if fig.loaded else None


def latencies(models: list[Any], rows: pd.DataFrame, repeats: int) -> list[float]:
    """Median single-row predict latency (ms) of each model, measured interleaved."""
    times: list[list[float]] = [[] for _ in models]
    records = [rows.iloc[[i % len(rows)]] for i in range(repeats)]
    for model in models:  # warm-up
        model.predict(records[0])
    for rec in records:
        for k, model in enumerate(models):
            t0 = time.perf_counter()
            model.predict(rec)
            times[k].append((time.perf_counter() - t0) * 1000)
    return [statistics.median(t) for t in times]
