"""Tracking: the MLflow store, run lineage, dataset inputs, and the store check.

This module: which store (params or ``MLFLOW_TRACKING_URI``), the experiment, who is acting,
and the lineage tags that trace a run to its code, data, params and libraries.
``datasets`` logs the data a run read as MLflow dataset inputs; ``store`` is the pipeline
stage that keeps what DVC says and what the store holds telling one story.
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

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
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

    Raises:
        ConfigError: MLFLOW_TRACKING_URI names a store MLflow cannot use.
    """
    import mlflow
    from mlflow import MlflowClient

    import mlplatform
    from mlplatform.config import tracking_uri_problem
    from mlplatform.errors import ConfigError

    uri = tracking_uri(params)
    if mlplatform.USER_TRACKING_URI and (problem := tracking_uri_problem(uri)):
        raise ConfigError(f"MLFLOW_TRACKING_URI: {problem}")  # params.yaml's is checked at load
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri(params))
    client = MlflowClient()
    exp = client.get_experiment_by_name(params.mlflow.experiment)
    if exp is None:
        # MLflow 3's UI opens an experiment on its GenAI overview unless told it is a
        # model-training experiment.
        exp_id = client.create_experiment(
            params.mlflow.experiment, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
        )
    else:
        exp_id = exp.experiment_id
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp_id)
    return client, exp_id


def ui_url(experiment_id: str, base: str = "http://127.0.0.1:5000") -> str:
    """The address of an experiment's runs table in ``mlflow ui`` (the model-training view)."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


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


# Files the pipeline itself rewrites: a run of `dvc repro` must not make its own tree "dirty".
PIPELINE_OUTPUTS = ("dvc.lock", "reports")


def git_dirty() -> bool | None:
    """Does the checkout differ from its commit, outside the pipeline's own outputs?

    None when this is not a git checkout.
    """
    excluded = [f":(exclude){p}" for p in PIPELINE_OUTPUTS]
    out = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *excluded)
    return None if out is None else bool(out)


def _relative(root: Path, path: Path | str) -> str:
    path = Path(path)
    return str(path.relative_to(root)) if path.is_absolute() else str(path)


def _lock(root: Path) -> dict[str, Any]:
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    try:
        return yaml.safe_load(lock.read_text()) or {}
    except yaml.YAMLError:
        return {}


def dvc_stage_digests(root: Path) -> dict[str, str]:
    """A short digest of each stage's entry in dvc.lock (its command, deps, params, outs)."""
    from mlplatform.io import digest

    return {name: digest(entry) for name, entry in (_lock(root).get("stages") or {}).items()}


def matches_dvc_lock(root: Path, folder: Path | str) -> bool | None:
    """Do the files in a DVC-tracked folder equal what dvc.lock records for it?

    Reads the folder's manifest from the DVC cache (``<md5>.dir``) and compares each file's
    md5. None when dvc.lock records nothing for the folder or its manifest is not cached.
    """
    import json

    from mlplatform.io import file_md5

    root = Path(root)
    rel = _relative(root, folder)
    recorded = dvc_lock_hashes(root, [Path(rel)]).get(rel)
    if not recorded or not recorded.endswith(".dir"):
        return None
    manifest = root / ".dvc" / "cache" / "files" / "md5" / recorded[:2] / recorded[2:]
    try:
        entries = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    expected = {e["relpath"]: e["md5"] for e in entries}
    folder_path = root / rel
    present = {str(p.relative_to(folder_path)): p for p in folder_path.rglob("*") if p.is_file()}
    if set(present) != set(expected):
        return False
    return all(file_md5(p) == expected[name] for name, p in present.items())


def dvc_lock_hashes(root: Path, wanted: Iterable[Path]) -> dict[str, str]:
    """md5 hashes dvc.lock records for the given paths (dirs: their .dir hash)."""
    content = _lock(root)
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


def lineage(
    params: Params, paths: Paths, data_files: dict[str, Path], upstream: Iterable[str] = ()
) -> dict[str, str]:
    """Tags that trace a run back to the exact code, data, params and libraries.

    Args:
        data_files: name -> file the run read (their md5 is recorded directly, and the
            dvc.lock hashes of their folders when the pipeline ran under DVC).
        upstream: the DVC stages this run's inputs came from; the digest of each one's
            dvc.lock entry is recorded (later stages' entries describe an earlier run).
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
        tags["mlplatform.git_dirty"] = str(git_dirty())
    for name, file in data_files.items():
        if Path(file).is_file():
            tags[f"mlplatform.data.{name}.md5"] = file_md5(file)
    folders = {Path(f).parent for f in data_files.values()}
    for path, md5 in dvc_lock_hashes(paths.root, folders).items():
        tags[f"dvc.lock.{path}"] = md5
    for folder in sorted(folders):
        verdict = matches_dvc_lock(paths.root, folder)
        rel = _relative(paths.root, folder)
        tags[f"mlplatform.dvc_lock_matches.{rel}"] = str(verdict).lower()
    digests = dvc_stage_digests(paths.root)
    for stage in upstream:
        if stage in digests:
            tags[f"dvc.stage.{stage}"] = digests[stage]
    for lib in LIBRARIES:
        try:
            tags[f"lib.{lib}"] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return tags


# --------------------------------------------------------------------------------------
# Background writer for finished runs.
