"""Limits of the monitoring rules: the ``monitoring:`` section of params.yaml.

Two things must both hold before a feature counts as drifted: the change is unlikely to be
chance (its p-value, corrected with Benjamini-Hochberg across every test of the window, is
below ``alpha``) and it is large enough to matter (its PSI on the bins frozen at training
time reaches ``psi_drift``). Significance alone flags trivial shifts once windows are large;
an effect size alone flags noise when they are small.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from mlplatform.strict import Strict

Metric = Literal["roc_auc", "average_precision", "precision", "recall", "f1"]
METRICS: tuple[str, ...] = ("roc_auc", "average_precision", "precision", "recall", "f1")

Fraction = Annotated[float, Field(gt=0, lt=1)]
Positive = Annotated[float, Field(gt=0)]


class MonitoringConfig(Strict):
    """Drift tests, effect-size floors, performance limits and the retraining signal.

    Attributes:
        alpha: false discovery rate for Benjamini-Hochberg across all tests of a window.
        psi_warning: PSI at which a significant change is a warning (0.1: the usual
            "moderate shift" rule of thumb in credit scoring).
        psi_drift: PSI at which a significant change is drift (0.2: "major shift"). A mean
            shift of d standard deviations of a normal feature gives a PSI of about d**2, so
            0.2 is roughly a 0.45 SD shift; a tiny shift on a huge window stays below it.
        missing_warning: Cohen's h of the change in a missing rate that is a warning
            (0.1: 0% -> 0.25%, or 10% -> 13%).
        missing_drift: Cohen's h that is drift (0.2: 0% -> 1%, or 10% -> 17%).
        score_psi_warning: PSI of the predicted-score distribution that is a warning.
        score_psi_drift: PSI of the predicted-score distribution that is drift.
        positive_rate_warning: absolute change of the predicted-positive rate (at the
            decision threshold) that is a warning.
        positive_rate_drift: the change that is drift (0.05, as promotion's
            max_prediction_shift: a served model is held to the shift its promotion was).
            For rare positives (fraud) set both lower.
        n_bins: quantile bins per numeric feature, frozen at training time (fewer when the
            feature has fewer distinct values: each value then gets its own bin).
        sample_size: reference values kept per numeric feature (a seeded random sample) for
            the Kolmogorov-Smirnov test; the test stays exact for any window size, its power
            is that of a reference of this size (ample for shifts above the PSI floor).
        max_categories: categories of a categorical feature tracked with their own counts;
            the rest are pooled into one "other" group.
        max_known_categories: category names remembered to recognise new categories.
        min_rows: fewest rows a window may have; fewer is an error, not "no drift".
        important_features: drift on one of the top-k features by mean |SHAP| recommends
            retraining.
        primary_metric: the metric whose drop recommends retraining.
        metric_drop: relative drop of the primary metric (window against the test set) that
            recommends retraining, when the window's interval also lies below the test value.
        bootstrap: resamples for the bootstrap intervals and label simulations for the
            label-free estimate.
        interval: coverage of the reported intervals.
        calibration: how the label-free estimate maps scores to probabilities, fitted on the
            reference's labelled scores (the test split): "sigmoid" (Platt scaling, stable
            with few positives, the right shape for class weighting), "isotonic" (any
            monotone map), or "none" (the model's probabilities as they are).
    """

    alpha: Fraction = 0.05
    psi_warning: Positive = 0.1
    psi_drift: Positive = 0.2
    missing_warning: Positive = 0.1
    missing_drift: Positive = 0.2
    score_psi_warning: Positive = 0.1
    score_psi_drift: Positive = 0.2
    positive_rate_warning: Positive = 0.025
    positive_rate_drift: Positive = 0.05
    n_bins: Annotated[int, Field(ge=2, le=100)] = 10
    sample_size: Annotated[int, Field(ge=100, le=1_000_000)] = 5000
    max_categories: Annotated[int, Field(ge=1, le=1000)] = 20
    max_known_categories: Annotated[int, Field(ge=1, le=100_000)] = 1000
    min_rows: Annotated[int, Field(ge=1)] = 100
    important_features: Annotated[int, Field(ge=0)] = 5
    primary_metric: Metric = "average_precision"
    metric_drop: Fraction = 0.05
    bootstrap: Annotated[int, Field(ge=20, le=10_000)] = 200
    interval: Fraction = 0.95
    calibration: Literal["sigmoid", "isotonic", "none"] = "sigmoid"

    @model_validator(mode="after")
    def _floors_ordered(self) -> MonitoringConfig:
        for warning, drift in (
            ("psi_warning", "psi_drift"),
            ("missing_warning", "missing_drift"),
            ("score_psi_warning", "score_psi_drift"),
            ("positive_rate_warning", "positive_rate_drift"),
        ):
            if getattr(self, warning) > getattr(self, drift):
                raise ValueError(f"{warning} must not exceed {drift}")
        if self.max_known_categories < self.max_categories:
            raise ValueError("max_known_categories must be at least max_categories")
        return self


class PredictionLogSettings(Strict):
    """The ``prediction_log`` params section (``MLPLATFORM_PREDICTION_LOG`` overrides it).

    Here, not in the log's package, so loading params does not import SQLAlchemy.
    """

    enabled: bool = False
    url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: predictions.db beside mlflow.db"
    )
    flush_ms: Annotated[int, Field(ge=10, le=60_000)] = 200
    batch_rows: Annotated[int, Field(ge=1, le=100_000)] = 1000
    max_queue_rows: Annotated[int, Field(ge=1)] = 100_000
    close_timeout_s: Annotated[float, Field(ge=0, le=600)] = 5.0
