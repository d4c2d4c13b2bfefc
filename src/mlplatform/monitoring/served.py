"""The served model's side of the prediction log: who the model is, and the request ids.

``TabularModel`` (``mlplatform.model_format``) calls these; kept here so the model's module
stays about scoring and nothing here is imported by a model that does not log.

Which model answered: read at load time from the folder MLflow hands the loader.
``mlflow models serve -m models:/NAME/N`` (or ``models:/NAME@ALIAS``) downloads the version
and writes ``registered_model_meta`` (its name and version) beside the ``MLmodel`` file,
which carries the logged model id and the training run id. A model served from a plain
folder or a ``runs:/`` URI has no registered name: then ``MLPLATFORM_MODEL_NAME`` and
``MLPLATFORM_MODEL_VERSION`` name it, and otherwise the log holds the model id alone
(``mlplatform monitor`` resolves a model id to its registered version).

Request ids (the contract shared with the deployment wrapper): a request whose input has a
``request_id`` column uses it per row (it is not a feature); otherwise the request gets one
new id. The answer carries a ``request_id`` column either way, and feedback joins on it
(plus ``row``, the row's position in the request). Models registered before this release
declare every input column in their signature and MLflow drops any other column before the
model sees it: they answer with a new id per request.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REQUEST_ID = "request_id"
ENV_NAME = "MLPLATFORM_MODEL_NAME"
ENV_VERSION = "MLPLATFORM_MODEL_VERSION"
_OFF = ("", "0", "off", "false", "no", "none")


def identity(model_dir: Path | None) -> dict[str, str | None]:
    """{"model_name", "model_version", "model_id"} of a model folder (values may be None).

    The environment variables win over the folder's ``registered_model_meta``; the model id
    is the MLmodel's ``model_id`` (MLflow 3), else its ``run_id``.
    """
    found: dict[str, str | None] = {"model_name": None, "model_version": None, "model_id": None}
    if model_dir is not None:
        found.update(_read_folder(Path(model_dir)))
    name, version = os.environ.get(ENV_NAME), os.environ.get(ENV_VERSION)
    if name:
        found["model_name"] = name.strip()
    if version:
        found["model_version"] = version.strip()
    return found


def _read_folder(model_dir: Path) -> dict[str, str | None]:
    import yaml

    out: dict[str, str | None] = {}
    for filename, keys in (
        ("registered_model_meta", ("model_name", "model_version")),
        ("MLmodel", ("model_id", "run_id")),
    ):
        path = model_dir / filename
        try:
            meta = yaml.safe_load(path.read_text()) if path.is_file() else None
        except (OSError, yaml.YAMLError):
            meta = None
        if not isinstance(meta, dict):
            continue
        for key in keys:
            value = meta.get(key)
            if value is not None and str(value).strip():
                out.setdefault("model_id" if key == "run_id" else key, str(value).strip())
    return out


def model_dir_of(data_path: Path) -> Path | None:
    """The folder holding the MLmodel file, from the model's data folder (None if none)."""
    for folder in (data_path, *data_path.parents[:3]):
        if (folder / "MLmodel").is_file():
            return folder
    return None


def log_at_load() -> Any:
    """This process's prediction log, or None when off (``prediction_log.get_log``).

    Imports the log's package only when the environment could turn it on or a command
    configured it already, so a model that does not log does not pay for SQLAlchemy.

    Raises:
        ConfigError: ``MLPLATFORM_PREDICTION_LOG`` is set to something that is not a URL.
    """
    import sys

    configured = "mlplatform.monitoring.prediction_log" in sys.modules
    raw = os.environ.get("MLPLATFORM_PREDICTION_LOG")
    if not configured and (raw is None or raw.strip().lower() in _OFF):
        return None
    from mlplatform.monitoring import prediction_log

    return prediction_log.get_log()


def split_ids(frame: Any) -> tuple[Any, list[str] | None]:
    """(the frame without its request_id column, the ids per row as text or None).

    An empty id on a row gets a new one (a row must be joinable)."""
    columns = frame.columns.tolist()
    if REQUEST_ID not in columns:
        return frame, None
    raw = frame[REQUEST_ID].tolist()
    ids = [uuid.uuid4().hex if v is None or v != v or str(v).strip() == "" else str(v) for v in raw]
    return frame.drop(columns=[REQUEST_ID]), ids


def new_id() -> str:
    return uuid.uuid4().hex


def record(model: Any, frame: Any, proba: Any, labels: Any, ids: Any, ms: float) -> None:
    """Queue one answered request on the model's log; never raises into the request."""
    plog = model.prediction_log
    if plog is None:
        return
    try:
        who = model.identity
        plog.record(
            frame,
            labels,
            proba,
            classes=model.classes,
            model_name=who["model_name"],
            model_version=who["model_version"],
            model_id=who["model_id"],
            source="serve",
            request_id=ids,
            latency_ms=ms,
        )
    except Exception:  # the log must never fail a prediction
        log.exception("prediction log: could not queue a request")


# ---------------------------------------------------------------------------------------
# Batch scoring's side (serving.score).


def open_log(settings: Any, tracking_uri: str) -> Any:
    """The log batch scoring writes to (params section or environment), or None (off).

    Raises:
        ConfigError: the log's URL is invalid, or cannot be derived from the tracking store.
    """
    from mlplatform.monitoring import prediction_log

    url = prediction_log.resolve_url(settings, tracking_uri)
    return None if url is None else prediction_log.configure(url, settings)


def record_chunk(
    plog: Any, scorer: Any, frame: Any, good: Any, labels: Any, proba: Any, rows: Any,
    who: tuple[str | None, str | None], request_id: str,
) -> None:  # fmt: skip
    """Queue a scored chunk's rows (the model's input columns, as read) with their file row
    numbers; waits for room in the queue rather than dropping rows."""
    inputs = frame.loc[good, scorer.input_names].reset_index(drop=True)
    plog.record(
        inputs,
        labels,
        proba,
        classes=scorer.classes,
        model_name=who[0],
        model_version=who[1],
        model_id=scorer.identity.get("model_id"),
        source="score",
        request_id=request_id,
        rows=rows,
        block=True,
    )
