"""The ``reference`` stage: freeze what training looked like, for ``mlplatform monitor``.

Reads the training split (feature distributions, bins frozen here), the trained model's
scores on the test split with their labels (the score distribution and the label-free
estimate's calibration), the test metrics and threshold (``reports/metrics.json``,
``reports/train.json``) and the SHAP ranking (``reports/explain/summary.json``: which
features are "important"). Writes ``models/reference.json`` and logs it on the training run
as ``monitoring/reference.json``, so a registered version carries the reference it is
monitored against (``monitor`` reads it from the version's run).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from mlplatform import model_format
from mlplatform.config import Params, Paths
from mlplatform.data.dataset import load_schema, load_split
from mlplatform.io import read_json
from mlplatform.monitoring.reference import build_reference, save_reference

log = logging.getLogger(__name__)

ARTIFACT_DIR = "monitoring"
ARTIFACT = f"{ARTIFACT_DIR}/reference.json"


def importance(paths: Paths) -> dict[str, float] | None:
    """Mean |SHAP| per source column from the explain stage, if it ran."""
    summary = paths.explain / "summary.json"
    if not summary.is_file():
        return None
    feats = read_json(summary).get("all_features") or []
    return {f["feature"]: float(f["mean_abs_shap"]) for f in feats if "mean_abs_shap" in f}


def build(params: Params, paths: Paths) -> dict[str, Any]:
    """The reference of the model in ``models/model`` (pure of MLflow)."""
    schema = load_schema(paths)
    model = model_format.load(paths.model)
    kinds = {s.name: s.kind for s in model.specs if s.name != schema.time_column}
    train, test = load_split(paths, "train"), load_split(paths, "test")
    trained = read_json(paths.train_report)
    metrics = read_json(paths.metrics).get("test") if paths.metrics.is_file() else None
    scores = labels = None
    binary = len(model.classes) == 2
    if binary:
        scores = model.predict_proba(test[model.input_names])[:, 1]
        labels = (schema.encode_target(test[schema.target]).to_numpy() == 1).astype(np.int64)
    ref = build_reference(
        train[list(kinds)],
        kinds,
        scores=scores,
        labels=labels,
        importance=importance(paths),
        metrics=metrics,
        threshold=trained.get("threshold") if binary else None,
        cfg=params.monitoring,
        seed=params.seed,
    )
    # What monitor needs to read labels and name the model's columns.
    ref["target"] = schema.target
    ref["classes"] = [str(c) for c in model.classes]
    ref["positive_class"] = str(model.classes[1]) if binary else None
    ref["train_run_id"] = trained.get("run_id")
    return ref


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Build the reference, write models/reference.json, log it on the training run."""
    from mlplatform import tracking

    ref = build(params, paths)
    save_reference(paths.reference, ref)
    client, _ = tracking.setup(params)
    client.log_artifact(ref["train_run_id"], str(paths.reference), artifact_path=ARTIFACT_DIR)
    log.info(
        "monitoring reference: %d features from %d training rows%s -> %s",
        len(ref["features"]),
        ref["n_rows"],
        ", SHAP ranking" if ref["importance"] else ", no SHAP ranking",
        paths.reference,
    )
    return {"features": len(ref["features"]), "rows": ref["n_rows"]}
