"""MLflow plumbing: store setup, lineage tags, and a background writer for trial runs.

Tracking must stay cheap next to the search: a sqlite ``log_batch`` costs about 15 ms, so
trial runs are written by one background thread, each as a single create / batch / terminate
sequence, while the next trial trains. Optuna's storage stays the source of truth; on resume
the runs are reconciled from it (see ``tune.py``).
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from mlplatform.config import Params, Paths

log = logging.getLogger(__name__)

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
    """The user's MLFLOW_TRACKING_URI wins (team mode); otherwise the store from params."""
    import mlplatform

    return mlplatform.USER_TRACKING_URI or params.mlflow.tracking_uri


def registry_uri(params: Params) -> str:
    """MLFLOW_REGISTRY_URI if set, else the tracking store (MLflow's own rule)."""
    import mlplatform

    return mlplatform.USER_REGISTRY_URI or tracking_uri(params)


def setup(params: Params) -> tuple[Any, str]:
    """Point MLflow at the store and make sure the experiment exists.

    Returns:
        (MlflowClient, experiment id).
    """
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri(params))
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
    return params.mlflow.user or os.environ.get("MLPLATFORM_USER") or _login_name()


def _login_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# --------------------------------------------------------------------------------------
# Lineage.


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
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
    wanted_rel = {
        str(Path(p).relative_to(root)) if Path(p).is_absolute() else str(p) for p in wanted
    }
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
        tags["mlplatform.git_dirty"] = str(
            bool(_git("status", "--porcelain", "--untracked-files=no"))
        )
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


# --------------------------------------------------------------------------------------
# Background writer for finished runs.
