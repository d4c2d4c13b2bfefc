"""MLflow plumbing: store setup, lineage tags, and a background writer for trial runs.

Tracking must stay cheap next to the search: a sqlite ``log_batch`` costs about 15 ms, so
trial runs are written by one background thread, each as a single create / batch / terminate
sequence, while the next trial trains. Optuna's storage stays the source of truth; on resume
the runs are reconciled from it (see ``tune.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import queue
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from mlplatform.config import Params, Paths

log = logging.getLogger(__name__)

MAX_PARAM_LEN = 6000
LIBRARIES = (
    "mlplatform",
    "mlflow",
    "optuna",
    "xgboost-cpu",
    "scikit-learn",
    "shap",
    "dvc",
    "pandas",
    "numpy",
    "skops",
)


def tracking_uri(params: Params) -> str:
    """MLFLOW_TRACKING_URI wins (team mode); otherwise the local store from params."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow.tracking_uri


def setup(params: Params) -> tuple[Any, str]:
    """Point MLflow at the store and make sure the experiment exists.

    Returns:
        (MlflowClient, experiment id).
    """
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(os.environ.get("MLFLOW_REGISTRY_URI") or uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(params.mlflow.experiment)
    if exp is None:
        exp_id = client.create_experiment(params.mlflow.experiment)
    else:
        exp_id = exp.experiment_id
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp_id)
    return client, exp_id


def user(params: Params) -> str:
    """Who is acting: params, then MLPLATFORM_USER, then the login name."""
    return (
        params.mlflow.user
        or os.environ.get("MLPLATFORM_USER")
        or os.environ.get("USER")
        or os.environ.get("LOGNAME")
        or "unknown"
    )


# --------------------------------------------------------------------------------------
# Lineage.


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def dvc_lock_hashes(root: Path, wanted: Iterable[Path]) -> dict[str, str]:
    """md5 hashes dvc.lock records for the given paths (dirs: their .dir hash)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    try:
        content = yaml.safe_load(lock.read_text()) or {}
    except yaml.YAMLError:
        return {}
    wanted_rel = {str(Path(p).relative_to(root)) if Path(p).is_absolute() else str(p)
                  for p in wanted}
    found: dict[str, str] = {}
    for stage in (content.get("stages") or {}).values():
        for entry in (stage.get("outs") or []) + (stage.get("deps") or []):
            path = entry.get("path")
            if path in wanted_rel and "md5" in entry:
                found[path] = entry["md5"]
    return found


def lineage(params: Params, paths: Paths, data_files: dict[str, Path]) -> dict[str, str]:
    """Tags that trace a run back to the exact code, data, params and libraries.

    Args:
        data_files: name -> file the run read (their md5 is recorded directly, and the
            dvc.lock hashes of their folders when the pipeline ran under DVC).
    """
    from mlplatform.io import file_md5

    tags: dict[str, str] = {
        "mlplatform.seed": str(params.seed),
        "mlplatform.params_hash": params.section_hash(),
        "mlplatform.data_source": params.data.source,
        "mlplatform.python": platform.python_version(),
    }
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["mlplatform.git_dirty"] = str(bool(_git("status", "--porcelain", "--untracked-files=no")))
    for name, file in data_files.items():
        if Path(file).is_file():
            tags[f"mlplatform.data.{name}.md5"] = file_md5(file)
    folders = {Path(f).parent for f in data_files.values()}
    for path, md5 in dvc_lock_hashes(paths.root, folders).items():
        tags[f"dvc.lock.{path}"] = md5
    for lib in LIBRARIES:
        try:
            tags[f"lib.{lib}"] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return tags


def params_digest(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------
# Background writer for finished runs.


@dataclass
class RunRecord:
    """Everything about one finished run, written in one go."""

    experiment_id: str
    run_name: str
    start_ms: int
    end_ms: int
    status: str  # FINISHED | FAILED | KILLED
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    step_metrics: list[tuple[str, float, int]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


def write_run(client: Any, rec: RunRecord) -> str:
    """Create a run and fill it with at most a few batched calls; return its id."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils.validation import MAX_ENTITIES_PER_BATCH

    run = client.create_run(
        rec.experiment_id, start_time=rec.start_ms, tags=rec.tags, run_name=rec.run_name
    )
    ts = rec.end_ms
    metrics = [Metric(k, float(v), ts, 0) for k, v in rec.metrics.items() if _finite(v)]
    metrics += [Metric(k, float(v), ts, s) for k, v, s in rec.step_metrics if _finite(v)]
    params = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in rec.params.items()]
    entities: list[Any] = [*params, *metrics]
    for i in range(0, len(entities), MAX_ENTITIES_PER_BATCH):
        chunk = entities[i : i + MAX_ENTITIES_PER_BATCH]
        client.log_batch(
            run.info.run_id,
            metrics=[e for e in chunk if isinstance(e, Metric)],
            params=[e for e in chunk if isinstance(e, Param)],
            tags=[] if i else [RunTag("mlplatform.written", "batched")],
        )
    client.set_terminated(run.info.run_id, rec.status, end_time=rec.end_ms)
    return run.info.run_id


def _finite(v: Any) -> bool:
    try:
        return v == v and abs(float(v)) != float("inf")
    except (TypeError, ValueError):
        return False


class BackgroundWriter:
    """Writes RunRecords on one thread so the caller never waits on the store."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._queue: queue.Queue[RunRecord | None] = queue.Queue()
        self._error: BaseException | None = None
        self.written = 0
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._loop, name="mlflow-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (rec := self._queue.get()) is not None:
            if self._error is None:
                t0 = time.perf_counter()
                try:
                    write_run(self.client, rec)
                    self.written += 1
                except BaseException as exc:  # surfaced on close()
                    self._error = exc
                self.seconds += time.perf_counter() - t0
            self._queue.task_done()
        self._queue.task_done()

    def submit(self, rec: RunRecord) -> None:
        self._queue.put(rec)

    def close(self) -> None:
        """Wait for every submitted run; re-raise the first write error, if any."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
