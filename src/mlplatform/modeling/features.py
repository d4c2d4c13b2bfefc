"""Preprocessing: the sklearn ColumnTransformer every candidate pipeline starts with.

Input is the canonical frame from ``columns.coerce``: numeric columns (float64, NaN for
missing) and categorical columns (strings, ``__missing__`` for missing). Numeric columns are
median-imputed with missing-value indicators, and scaled where it matters (linear models);
categorical columns are one-hot encoded, tolerating categories never seen in training and
grouping rare ones.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlplatform.config import FeaturesConfig
from mlplatform.data.columns import (
    ColumnSpec,
    categorical_feature_names,
    coerce,
    numeric_feature_names,
)


def build_preprocessor(
    specs: list[ColumnSpec], cfg: FeaturesConfig, scale: bool
) -> ColumnTransformer:
    """A fresh, unfitted preprocessor for these input columns.

    Args:
        specs: the model's raw input columns.
        cfg: features section of params.
        scale: standardise numeric columns (for linear models; trees do not need it).
    """
    numeric = numeric_feature_names(specs)
    categorical = categorical_feature_names(specs)
    steps = [("impute", SimpleImputer(strategy="median", add_indicator=True))]
    if scale:
        steps.append(("scale", StandardScaler()))
    transformers = []
    if numeric:
        transformers.append(("num", Pipeline(steps), numeric))
    if categorical:
        transformers.append(
            (
                "cat",
                OneHotEncoder(
                    handle_unknown="infrequent_if_exist",
                    max_categories=cfg.max_categories,
                    min_frequency=cfg.min_frequency or None,
                    sparse_output=False,
                    dtype=np.float64,
                ),
                categorical,
            )
        )
    return ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=True)


def design_matrices(
    specs: list[ColumnSpec],
    cfg: FeaturesConfig,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    scales: Iterable[bool],
) -> dict[bool, tuple[ColumnTransformer, np.ndarray, np.ndarray]]:
    """Model matrices of the train and validation splits, for each scaling variant asked.

    Raw records are coerced once; each variant's preprocessor is fitted on train only.

    Args:
        specs: the model's raw input columns.
        cfg: features section of params.
        train: raw training records.
        valid: raw validation records.
        scales: which variants to build (True: standardised numeric columns).

    Returns:
        scale -> (fitted preprocessor, train matrix, validation matrix).
    """
    canonical_train, _ = coerce(train, specs)
    canonical_valid, _ = coerce(valid, specs)
    out = {}
    for scale in sorted(set(scales)):
        pre = build_preprocessor(specs, cfg, scale=scale)
        x_train = np.asarray(pre.fit_transform(canonical_train), dtype=np.float64)
        x_valid = np.asarray(pre.transform(canonical_valid), dtype=np.float64)
        out[scale] = (pre, x_train, x_valid)
    return out


def source_columns(preprocessor: ColumnTransformer, specs: list[ColumnSpec]) -> list[str]:
    """For each output column of a fitted preprocessor, the raw input column it came from.

    Used to sum SHAP values of encoded sub-features back to the columns a person knows.
    """
    canonical_to_raw = {n: s.name for s in specs for n in s.feature_names}
    out: list[str] = []
    for name, transformer, cols in preprocessor.transformers_:
        if name == "remainder" or transformer == "drop":
            continue
        if name == "num":
            imputer = transformer.named_steps["impute"]
            kept = [c for c, keep in zip(cols, _kept_mask(imputer, len(cols)), strict=True) if keep]
            out.extend(canonical_to_raw[c] for c in kept)
            if imputer.indicator_ is not None:
                out.extend(canonical_to_raw[cols[i]] for i in imputer.indicator_.features_)
        else:
            for col, cats in zip(cols, _encoder_widths(transformer), strict=True):
                out.extend([canonical_to_raw[col]] * cats)
    return out


def _kept_mask(imputer: SimpleImputer, n: int) -> list[bool]:
    stats = imputer.statistics_
    return [not (isinstance(v, float) and np.isnan(v)) for v in stats] if n else []


def _encoder_widths(encoder: OneHotEncoder) -> list[int]:
    """Number of output columns per input column of a fitted OneHotEncoder."""
    widths = []
    infrequent = encoder.infrequent_categories_
    for cats, infreq in zip(encoder.categories_, infrequent, strict=True):
        n_infreq = 0 if infreq is None else len(infreq)
        widths.append(len(cats) - n_infreq + (1 if n_infreq else 0))
    return widths
