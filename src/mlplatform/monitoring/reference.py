"""The training reference that windows are compared with: built once, frozen, versioned JSON.

Per numeric (boolean, datetime) feature: bin edges frozen at training time with the
reference count per bin, the missing count, a few summary figures, and a seeded random
sample of at most ``sample_size`` values for the Kolmogorov-Smirnov test.

Why a sample rather than a quantile sketch: KS compares two empirical CDFs, and a sketch of
q quantiles can be off by up to 1/q in the statistic. At a million rows the critical
statistic is about 0.002, so a sketch would need tens of thousands of points to stay
correct, and its p-value would still assume the full reference size. A random sample is an
honest sample from the reference distribution: the test is exact at any window size (its
power is that of a ``sample_size`` reference, far more than needed for shifts above the PSI
floor), and it costs about 100 kB of JSON per feature.

Per categorical feature: counts of the ``max_categories`` most frequent categories, the
pooled count of the rest, the missing count, and the names of up to
``max_known_categories`` categories seen (to recognise new ones).

Plus, when given: the predicted-score distribution on held-out data (bins + sample), the
labelled held-out scores (a bounded sample) that the label-free performance estimate fits
its calibration map on, the test metrics and decision threshold to compare windows with,
and the model's mean |SHAP| per feature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlplatform.errors import DataValidationError
from mlplatform.io import read_json, write_json
from mlplatform.monitoring import calibration
from mlplatform.monitoring.columns import (
    KINDS,
    NUMERIC_KINDS,
    bin_counts,
    category_counts,
    frozen_edges,
    numeric_values,
)
from mlplatform.monitoring.settings import MonitoringConfig

FORMAT = "mlplatform.monitoring.reference"
VERSION = 1


def _sample(values: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    if values.size > size:
        values = rng.choice(values, size=size, replace=False)
    return np.sort(values)


def numeric_profile(
    values: np.ndarray, kind: str, cfg: MonitoringConfig, rng: np.random.Generator
) -> dict[str, Any]:
    """Frozen bins, counts, missing count, summary and KS sample of one numeric column."""
    finite = values[~np.isnan(values)]
    edges = frozen_edges(values, cfg.n_bins)
    return {
        "kind": kind,
        "n": int(values.size),
        "missing": int(values.size - finite.size),
        "edges": edges.tolist(),
        "counts": bin_counts(values, edges).tolist(),
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std()) if finite.size else None,
        "sample": _sample(finite, cfg.sample_size, rng).tolist(),
    }


def categorical_profile(series: pd.Series, cfg: MonitoringConfig) -> dict[str, Any]:
    """Top-category counts, the pooled rest, missing count and known names of one column."""
    counts, missing = category_counts(series)
    # Most frequent first; ties by name so the same data always gives the same reference.
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    top = dict(ranked[: cfg.max_categories])
    return {
        "kind": "categorical",
        "n": len(series),
        "missing": missing,
        "categories": top,
        "other": int(sum(c for _, c in ranked[cfg.max_categories :])),
        "n_distinct": len(ranked),
        "known": sorted(k for k, _ in ranked[: cfg.max_known_categories]),
        "known_complete": len(ranked) <= cfg.max_known_categories,
    }


def _labels(labels: Any, n: int) -> np.ndarray:
    y = np.asarray(labels, dtype=np.float64)
    if y.shape != (n,) or not np.isin(y, (0.0, 1.0)).all():
        raise DataValidationError(
            f"reference labels: need {n} values of 0/1 (1 = positive class), one per score"
        )
    return y


def build_reference(
    frame: pd.DataFrame,
    kinds: dict[str, str],
    *,
    scores: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    importance: dict[str, float] | None = None,
    metrics: dict[str, Any] | None = None,
    threshold: float | None = None,
    cfg: MonitoringConfig | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Freeze the reference a window will be compared with.

    Recommended inputs: the training split as ``frame`` (features only) and the held-out test
    split for ``scores``/``labels``/``metrics`` (the model's positive-class probability on the
    test rows, their 0/1 labels, and the test metrics from evaluation), so the score
    distribution and calibration are not those of rows the model was fitted on.

    Args:
        frame: reference rows, raw or canonical; must contain every column in ``kinds``.
        kinds: the model's input columns and their kinds (numeric, categorical, boolean,
            datetime). Leave out columns that always move with time (the split's time column).
        scores: positive-class probabilities on held-out rows (binary models).
        labels: 0/1 labels of the rows in ``scores``; enables the label-free estimate's
            calibration map.
        importance: mean |SHAP| per feature (reports/explain/summary.json); normalised to
            shares summing to 1.
        metrics: the test metrics to compare windows with ({"roc_auc": ..., ...}).
        threshold: the model's decision threshold on the positive-class probability.
        cfg: bins, sample size and category limits (defaults if None).
        seed: seed of the KS samples (params.seed).

    Returns:
        A JSON-serialisable dict (see ``save_reference``).

    Raises:
        DataValidationError: a column is missing, a kind is unknown, the frame is empty, or
            scores and labels do not match.
    """
    cfg = cfg or MonitoringConfig()
    if len(frame) == 0:
        raise DataValidationError("reference frame: no rows")
    absent = [c for c in kinds if c not in frame.columns]
    if absent:
        raise DataValidationError(f"reference frame: missing column(s) {', '.join(absent)}")
    bad = {c: k for c, k in kinds.items() if k not in KINDS}
    if bad:
        c, k = next(iter(bad.items()))
        raise DataValidationError(f"column {c}: unknown kind {k!r} (one of {sorted(KINDS)})")
    rng = np.random.default_rng(seed)
    features: dict[str, Any] = {}
    for name, kind in kinds.items():
        if kind in NUMERIC_KINDS:
            values = numeric_values(frame[name], kind)
            features[name] = numeric_profile(values, kind, cfg, rng)
        else:
            features[name] = categorical_profile(frame[name], cfg)
    ref: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "n_rows": len(frame),
        "seed": seed,
        "settings": {
            "n_bins": cfg.n_bins,
            "sample_size": cfg.sample_size,
            "max_categories": cfg.max_categories,
        },
        "features": features,
        "importance": _shares(importance, kinds) if importance else None,
        "scores": None,
        "labelled_scores": None,
        "metrics": _plain_metrics(metrics),
        "threshold": None if threshold is None else float(threshold),
    }
    if scores is not None:
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 1 or not np.isfinite(s).all():
            raise DataValidationError("reference scores: need one finite probability per row")
        ref["scores"] = numeric_profile(s, "score", cfg, rng)
        if threshold is not None:
            ref["scores"]["positives"] = int(np.sum(s >= threshold))
            ref["scores"]["positive_rate"] = float(np.mean(s >= threshold))
        if labels is not None:
            y = _labels(labels, len(s))
            ref["scores"]["base_rate"] = float(y.mean())
            if 0 < y.sum() < len(y):
                ref["labelled_scores"] = calibration.pairs(s, y, cfg.sample_size, rng)
    return ref


def _shares(importance: dict[str, float], kinds: dict[str, str]) -> dict[str, float]:
    values = {k: max(float(importance.get(k, 0.0)), 0.0) for k in kinds}
    total = sum(values.values())
    return {k: (v / total if total > 0 else 0.0) for k, v in values.items()}


def _plain_metrics(metrics: dict[str, Any] | None) -> dict[str, float] | None:
    if not metrics:
        return None
    out = {}
    for key, value in metrics.items():
        if isinstance(value, int | float | np.number) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def save_reference(path: Path | str, reference: dict[str, Any]) -> None:
    """Write the reference as JSON, atomically (nothing half-written on failure)."""
    write_json(path, reference)


def load_reference(path: Path | str) -> dict[str, Any]:
    """Read a reference written by ``save_reference``.

    Raises:
        DataValidationError: the file is not a monitoring reference, or of a newer version.
        MlplatformError: the file does not exist or is not JSON.
    """
    ref = read_json(path)
    if not isinstance(ref, dict) or ref.get("format") != FORMAT:
        raise DataValidationError(f"{path}: not a monitoring reference")
    if ref.get("version") != VERSION:
        raise DataValidationError(
            f"{path}: reference version {ref.get('version')} is not supported (this "
            f"mlplatform reads version {VERSION}); rebuild it with the pipeline"
        )
    return ref
