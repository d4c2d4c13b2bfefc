"""Evaluate: score the logged model on the held-out test set.

Loads models/model as a client would (``mlflow.pyfunc.load_model``, after checking it is one
of ours and carries no code or pickles), scores the raw
test records, and reports figures made for imbalanced data at the decision threshold chosen
on validation data. Writes reports/metrics.json (a DVC metrics file, identical across runs
with the same inputs) and PNG plots, and logs both onto the training run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from mlplatform import model_format
from mlplatform.config import Params, Paths
from mlplatform.data.dataset import DatasetSchema, load_schema, load_split
from mlplatform.evaluation import plots
from mlplatform.evaluation.metrics import evaluate as evaluate_metrics
from mlplatform.evaluation.metrics import scalar_metrics
from mlplatform.io import read_json, write_json
from mlplatform.tracking import datasets

log = logging.getLogger(__name__)


def score(model: Any, frame: pd.DataFrame, schema: DatasetSchema) -> np.ndarray:
    """Class probabilities (rows x classes, model class order) of a pyfunc model."""
    return model_format.probabilities(model.predict(frame[schema.feature_names]), schema.classes)


def evaluate_model(
    model: Any, schema: DatasetSchema, test: pd.DataFrame, threshold: float | None
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Pure-ish core: (report, y, proba) for a loaded model on a test frame."""
    y = schema.encode_target(test[schema.target]).to_numpy()
    proba = score(model, test, schema)
    return evaluate_metrics(y, proba, schema.classes, threshold), y, proba


def make_plots(paths: Paths, schema: DatasetSchema, y, proba, report: dict) -> list:
    classes = schema.classes
    threshold = report.get("threshold")
    title = "Confusion matrix (test" + (f", threshold {threshold:.3f})" if threshold else ")")
    return [
        plots.roc(y, proba, classes, paths.plots / "roc.png"),
        plots.precision_recall(y, proba, classes, paths.plots / "precision_recall.png", threshold),
        plots.calibration(y, proba, classes, paths.plots / "calibration.png"),
        plots.confusion(
            report["confusion_matrix"], classes, paths.plots / "confusion_matrix.png", title
        ),
    ]


def run(params: Params, paths: Paths) -> dict[str, Any]:
    from mlflow.entities import Metric

    from mlplatform import tracking

    schema = load_schema(paths)
    trained = read_json(paths.train_report)
    model = model_format.load_pyfunc(paths.model)
    test = load_split(paths, "test")
    report, y, proba = evaluate_model(model, schema, test, trained["threshold"])
    payload = {
        "test": report,
        "task": schema.task,
        "classes": [str(c) for c in schema.classes],
        "family": trained["family"],
        "threshold_rule": trained["threshold_rule"],
    }
    write_json(paths.metrics, payload)
    images = make_plots(paths, schema, y, proba, report)
    client, _ = tracking.setup(params)
    run_id = trained["run_id"]
    now = int(time.time() * 1000)
    flat = scalar_metrics(report, prefix="test_")
    client.log_batch(
        run_id,
        metrics=[Metric(_metric_key(k), v, now, 0) for k, v in flat.items() if np.isfinite(v)],
    )
    for image in images:
        client.log_artifact(run_id, str(image), artifact_path="evaluation")
    client.log_artifact(run_id, str(paths.metrics), artifact_path="evaluation")
    datasets.log_splits(client, run_id, params, paths, ("test",))
    log.info(
        "test %s",
        {
            k: round(report[k], 4)
            for k in ("average_precision", "roc_auc", "f1", "recall")
            if k in report
        },
    )
    return payload


def _metric_key(key: str) -> str:
    """A class label made safe for a metric name: letters, digits, _ - . and spaces ("/"
    is allowed by MLflow but reads as a path in the UI and file stores)."""
    return "".join(ch if ch.isalnum() or ch in "_-. " else "_" for ch in key)
