"""Evaluation plots as PNG files (they open offline, unlike `dvc plots show`'s vega HTML)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    auc,
    average_precision_score,
    precision_recall_curve,
    roc_curve,
)

from mlplatform.io import atomic_path

# Fixed metadata keeps PNG bytes identical across runs.
_PNG_META = {"Software": None}


def save_figure(fig: Any, path: Path, *, dpi: int = 90, tight: bool = True, **savefig: Any) -> Path:
    """Write a figure as PNG atomically (fixed metadata: same figure, same bytes) and close it.

    Args:
        tight: apply ``tight_layout`` first (callers that set their own margins pass False).
        savefig: more arguments for ``Figure.savefig`` (e.g. ``bbox_inches``).
    """
    if tight:
        fig.tight_layout()
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=dpi, metadata=_PNG_META, format="png", **savefig)
    finally:
        plt.close(fig)
    return path


def _one_vs_rest(y: np.ndarray, proba: np.ndarray, classes: list[Any]):
    """(label, y_binary, score) per curve: the positive class, or every class for multiclass."""
    if proba.shape[1] == 2:
        return [(str(classes[1]), (y == 1).astype(int), proba[:, 1])]
    return [(str(c), (y == i).astype(int), proba[:, i]) for i, c in enumerate(classes)]


def roc(y: np.ndarray, proba: np.ndarray, classes: list[Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 5))
    for label, yb, score in _one_vs_rest(y, proba, classes):
        if yb.min() == yb.max():
            continue
        fpr, tpr, _ = roc_curve(yb, score)
        ax.plot(fpr, tpr, label=f"{label} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC (test set)")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def precision_recall(
    y: np.ndarray, proba: np.ndarray, classes: list[Any], path: Path, threshold: float | None
) -> Path:
    fig, ax = plt.subplots(figsize=(6, 5))
    for label, yb, score in _one_vs_rest(y, proba, classes):
        if yb.max() == 0:
            continue
        prec, rec, thr = precision_recall_curve(yb, score)
        ap = average_precision_score(yb, score)
        ax.step(rec, prec, where="post", label=f"{label} (AP {ap:.3f}, base {yb.mean():.3f})")
        if threshold is not None and proba.shape[1] == 2 and len(thr):
            i = min(int(np.searchsorted(thr, threshold)), len(thr) - 1)
            ax.scatter([rec[i]], [prec[i]], c="red", zorder=3, label=f"threshold {threshold:.3f}")
    ax.set(
        xlabel="Recall",
        ylabel="Precision",
        title="Precision-recall (test set)",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(loc="upper right")
    return save_figure(fig, path)


def calibration(y: np.ndarray, proba: np.ndarray, classes: list[Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 5))
    for label, yb, score in _one_vs_rest(y, proba, classes):
        if yb.min() == yb.max():
            continue
        frac, mean = calibration_curve(yb, score, n_bins=10, strategy="quantile")
        ax.plot(mean, frac, marker="o", label=label)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfectly calibrated")
    ax.set(
        xlabel="Mean predicted probability",
        ylabel="Observed frequency",
        title="Calibration (test set, quantile bins)",
    )
    ax.legend(loc="upper left")
    return save_figure(fig, path)


def confusion(matrix: list[list[int]], classes: list[Any], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4.5))
    disp = ConfusionMatrixDisplay(np.asarray(matrix), display_labels=[str(c) for c in classes])
    disp.plot(ax=ax, colorbar=False, values_format="d")
    ax.set_title(title)
    return save_figure(fig, path)
