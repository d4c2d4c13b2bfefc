"""Train: refit the best configuration and log it as one MLflow model.

The model (preprocessing and estimator) predicts from raw records, gives the predicted class
at the decision threshold chosen on validation data and the class probabilities, and loads
without unpickling anything (see ``model_format``). A local copy of exactly what was logged
is kept under models/model as a DVC output. The run also records what the model was fit on:
the fingerprints of its training and validation rows (``lineage/fit_rows.parquet``, see
``data.fingerprints``), which the promotion gate leaves out when it compares versions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer

from mlplatform import model_format
from mlplatform.config import Params, Paths
from mlplatform.data import fingerprints
from mlplatform.data.dataset import DatasetSchema, load_schema, load_split
from mlplatform.errors import ModelError
from mlplatform.evaluation.metrics import choose_threshold, validation_metrics
from mlplatform.io import atomic_dir, read_json, write_json
from mlplatform.modeling import families
from mlplatform.modeling.features import design_matrices
from mlplatform.monitoring import served
from mlplatform.tracking import datasets

log = logging.getLogger(__name__)

FIT_SPLITS = ("train", "validation")
PARAMS_ARTIFACT = "lineage/params.json"

# Signature types for the raw input columns and the outputs.
_PRED_TYPE = {str: "string", int: "long", bool: "boolean", float: "double"}


@dataclass
class Fitted:
    family: str
    hyperparameters: dict[str, Any]
    preprocessor: ColumnTransformer
    estimator: Any
    threshold: float | None
    valid_proba: np.ndarray
    valid_metrics: dict[str, float]


def fit(
    params: Params,
    schema: DatasetSchema,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    family: str,
    hp: dict[str, Any],
) -> Fitted:
    """Fit preprocessing and estimator on train; choose the threshold on validation."""
    scale = families.get(family).needs_scaling
    ((pre, x_train, x_valid),) = design_matrices(
        schema.features, params.features, train, valid, [scale]
    ).values()
    y_train = schema.encode_target(train[schema.target]).to_numpy()
    y_valid = schema.encode_target(valid[schema.target]).to_numpy()
    n_classes = len(schema.classes)
    estimator = families.make_estimator(
        family,
        hp,
        y=y_train,
        n_classes=n_classes,
        class_weight=params.tune.class_weight,
        seed=params.seed,
        n_jobs=params.tune.n_jobs,
    )
    estimator.fit(
        x_train,
        y_train,
        **families.fit_kwargs(family, y_train, n_classes, params.tune.class_weight, hp),
    )
    proba = estimator.predict_proba(x_valid)
    threshold = None
    if n_classes == 2:
        threshold = choose_threshold(y_valid, proba[:, 1], params.train.threshold)
    return Fitted(family, hp, pre, estimator, threshold, proba, validation_metrics(y_valid, proba))


def signature(schema: DatasetSchema) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    # Not required: MLflow would answer a missing column (or an empty list) itself, with a
    # dump of the request; the model's own check answers in one line instead. Types are
    # still enforced by MLflow for the columns that are present.
    inputs = [ColSpec(s.input_type, s.name, required=False) for s in schema.features]
    if served.REQUEST_ID not in schema.feature_names:
        # The client's own id per row, for the prediction log (not a feature); MLflow drops
        # any column the signature does not name before the model sees it.
        inputs.append(ColSpec("string", served.REQUEST_ID, required=False))
    inputs = Schema(inputs)
    kinds = {type(c) for c in schema.classes}
    pred_type = _PRED_TYPE.get(kinds.pop(), "string") if len(kinds) == 1 else "string"
    outputs = Schema(
        [ColSpec(pred_type, model_format.PREDICTION)]
        + [ColSpec("double", model_format.probability_column(c)) for c in schema.classes]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def pip_requirements(family: str) -> list[str]:
    libs = ["mlflow", "scikit-learn", "skops", "pandas", "numpy", "scipy"]
    libs += families.get(family).requirements
    return [f"{lib}=={metadata.version(lib)}" for lib in libs]


def save_model_folder(
    folder: Path, fitted: Fitted, schema: DatasetSchema, check: pd.DataFrame
) -> dict[str, Any]:
    return model_format.write_folder(
        folder,
        preprocessor=fitted.preprocessor,
        estimator=fitted.estimator,
        family=fitted.family,
        specs=schema.features,
        classes=schema.classes,
        threshold=fitted.threshold,
        extra={
            "target": schema.target,
            "positive_class": schema.positive_class,
            "hyperparameters": fitted.hyperparameters,
        },
        check_frame=check,
    )


def log_model(fitted: Fitted, schema: DatasetSchema, example: pd.DataFrame, check: pd.DataFrame):
    """Log the model to the active MLflow run; returns ModelInfo."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / model_format.DATA_DIR
        meta = save_model_folder(folder, fitted, schema, check)
        info = mlflow.pyfunc.log_model(
            name="model",
            loader_module=model_format.LOADER_MODULE,
            data_path=str(folder),
            signature=signature(schema),
            input_example=example,
            pip_requirements=pip_requirements(fitted.family),
            metadata={
                "mlplatform_version": metadata.version("mlplatform"),
                "loader": "mlplatform.model_format (install the mlplatform package to load)",
                "family": fitted.family,
                "compiled_preprocessing": meta["compiled_preprocessing"],
            },
        )
    return info


def verify(model_dir: Path, fitted: Fitted, schema: DatasetSchema, valid: pd.DataFrame) -> float:
    """The logged model, loaded like a client loads it, must predict what the pipeline predicts.

    Returns:
        The largest absolute probability difference (0.0 when identical).

    Raises:
        ModelError: different predicted classes or probabilities.
    """

    loaded = model_format.load_pyfunc(model_dir)
    out = loaded.predict(valid[schema.feature_names])
    got = model_format.probabilities(out, schema.classes)
    diff = float(np.max(np.abs(got - fitted.valid_proba))) if len(got) else 0.0
    if fitted.threshold is not None:
        labels = (fitted.valid_proba[:, 1] >= fitted.threshold).astype(int)
    else:
        labels = fitted.valid_proba.argmax(axis=1)
    expected = np.asarray(schema.classes, dtype=object)[labels]
    same = (out[model_format.PREDICTION].astype(str).to_numpy() == expected.astype(str)).all()
    if diff > 1e-9 or not same:
        raise ModelError(
            f"{model_dir}: the logged model does not reproduce the pipeline's predictions "
            f"(max probability difference {diff:.3g}, same classes: {bool(same)})"
        )
    return diff


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Refit the best trial's configuration, log it, keep a local copy, write train.json."""
    import mlflow

    from mlplatform import tracking

    tuned = read_json(paths.tune_report)
    family, hp = tuned["best"]["family"], tuned["best"]["params"]
    schema = load_schema(paths)
    train, valid = load_split(paths, "train"), load_split(paths, "validation")
    fitted = fit(params, schema, train, valid, family, hp)
    # What the model was fit on, so a later gate does not grade it on these rows.
    fit_rows = np.unique(
        fingerprints.fingerprints(pd.concat([train, valid]), schema.features, schema.target)
    )
    client, exp_id = tracking.setup(params)
    tags = tracking.lineage(
        params,
        paths,
        {s: paths.split(s) for s in FIT_SPLITS},
        upstream=("ingest", "prepare", "tune"),
    )
    tags["mlplatform.fit_rows"] = str(len(fit_rows))
    tags.update(
        {
            "mlplatform.stage": "train",
            "mlplatform.tune_run_id": tuned["parent_run_id"],
            "mlplatform.best_trial": str(tuned["best"]["number"]),
            "optuna.study_name": tuned["study_name"],
            "family": family,
        }
    )
    example = valid[schema.feature_names].head(5)
    # Always a run of our own: under `mlflow run` MLFLOW_RUN_ID names the project's run,
    # which mlflow.start_run() would silently reuse (possibly in another experiment).
    # Read once and cleared, so no later fluent call (or forked helper) attaches to it.
    outer = os.environ.pop("MLFLOW_RUN_ID", None)
    if outer:
        tags["mlplatform.mlflow_project_run_id"] = outer
        with contextlib.suppress(Exception):
            if client.get_run(outer).info.experiment_id == exp_id:
                tags["mlflow.parentRunId"] = outer
    from mlflow.tracking.context import registry as context_registry

    # The user, source and git tags mlflow.start_run() would add.
    tags = context_registry.resolve_tags(tags)
    own = client.create_run(exp_id, run_name=f"train-{family}", tags=tags)
    with mlflow.start_run(run_id=own.info.run_id) as run:
        mlflow.log_params(
            {
                "family": family,
                "class_weight": params.tune.class_weight,
                **hp,
                "threshold_rule": params.train.threshold.rule,
                "seed": params.seed,
            }
        )
        mlflow.log_metrics(
            {f"valid_{k}": v for k, v in fitted.valid_metrics.items() if np.isfinite(v)}
        )
        if fitted.threshold is not None:
            mlflow.log_metric("threshold", fitted.threshold)
        info = log_model(fitted, schema, example, valid[schema.feature_names])
        with tempfile.TemporaryDirectory() as tmp:
            rows_file = Path(tmp) / fingerprints.ARTIFACT_FILE
            fingerprints.write(rows_file, fit_rows)
            mlflow.log_artifact(str(rows_file), artifact_path=fingerprints.ARTIFACT_DIR)
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=tmp)
            diff = verify(Path(local), fitted, schema, valid)
            with atomic_dir(paths.model) as staged:
                shutil.copytree(local, staged, dirs_exist_ok=True)
        mlflow.log_metric("verify_max_proba_diff", diff)
        run_id = run.info.run_id
        # What `mlplatform lineage` compares with today's params.yaml.
        mlflow.log_dict(params.model_dump(mode="json"), PARAMS_ARTIFACT)
        datasets.log_splits(client, run_id, params, paths, FIT_SPLITS)
    report = {
        "run_id": run_id,
        "experiment_id": exp_id,
        "model_uri": info.model_uri,
        "model_id": getattr(info, "model_id", None),
        "family": family,
        "hyperparameters": hp,
        "threshold": fitted.threshold,
        "threshold_rule": params.train.threshold.rule,
        "valid_metrics": fitted.valid_metrics,
        "fit_rows": len(fit_rows),
    }
    write_json(paths.train_report, report)
    log.info("trained %s; run %s; model %s", family, run_id, info.model_uri)
    return report
