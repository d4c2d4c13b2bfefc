"""Measuring registered models now, on the current test split, for the promotion gate.

Failures to load or score become figures (``loaded=False``): the gate decides what they
mean, the measuring never raises for them.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import pandas as pd

from mlplatform import gates, model_format
from mlplatform.dataset import DatasetSchema
from mlplatform.metrics import evaluate as evaluate_metrics
from mlplatform.registry_events import CardStore


def _has_artifact(client: Any, run_id: str, path: str) -> bool:
    from pathlib import PurePosixPath

    try:
        parent = str(PurePosixPath(path).parent)
        return any(a.path == path for a in client.list_artifacts(run_id, parent))
    except Exception:
        return False


def measure(
    uri: str,
    version: str,
    schema: DatasetSchema,
    test: pd.DataFrame,
    client: Any,
    run_id: str | None,
    cards: CardStore,
) -> tuple[gates.Figures, Any]:
    """Load a model by URI and score it on the test split.

    Returns:
        The figures the gate reads, and the loaded model (None when it failed to load or
        score, which the figures then say).
    """
    fig = gates.Figures(version=version)
    if run_id:
        fig.has_card = _has_artifact(client, run_id, "model_card/model_card.html")
        fig.has_explanations = _has_artifact(client, run_id, "explain/summary.json")
        ctx = cards.context(run_id) or {}
        fig.fairness = {k: v["status"] for k, v in ctx.get("fairness", {}).items()}
    try:
        model = model_format.load_pyfunc(uri)  # refuses anything but our own format
        out = model.predict(test[schema.feature_names])
        proba = model_format.probabilities(out, schema.classes)
        lookup = {str(c): i for i, c in enumerate(schema.classes)}
        pred = out[model_format.PREDICTION].astype(str).map(lookup).to_numpy()
        if np.isnan(pred.astype(float)).any():
            raise ValueError("predicted classes outside the training classes")
    except Exception as exc:
        fig.loaded = False
        fig.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        return fig, None
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
    return fig, model


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
