"""Store: the pipeline stage that keeps DVC and the MLflow store telling one story.

Why it exists: ``dvc.lock`` and ``reports/`` come with a clone (they are in git); the MLflow
store does not (``mlflow.db`` is git-ignored, a team's store is elsewhere). DVC alone sees
unchanged data, params and code, skips the search, and the store the user opens in
``mlflow ui`` lacks the runs that ``reports/`` point at.

The mechanism is a store identity that stages depend on. This stage runs on every
``dvc repro`` (``always_changed``) and writes one small file per stage that writes MLflow
records, ``.mlplatform/store/<stage>.id``: the store's identity (the experiment's id and a
random id kept as a tag on the experiment) and the stage's generation (another random id kept
on the experiment). Each of those stages lists its file as a dependency.

- Same store, records present: every file is byte for byte what it was, so DVC skips as usual
  (a second ``dvc repro`` costs this check, about a second).
- A stage's records are missing (its report names a run, version or audit record the store
  does not have): its generation is renewed in the store, its file changes, and DVC re-runs
  it and what depends on it. Once re-run, its records are there and the file stays put.
- Another store (deleted, moved away, a different ``MLFLOW_TRACKING_URI``): it has no identity
  yet and gets a fresh one, so every stage that writes records runs against it.

A check at the start of each stage could not do this (DVC never starts a stage whose
dependencies are unchanged), and a file next to the store could not say what it holds.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from mlplatform.config import Params, Paths
from mlplatform.io import read_json, write_json

log = logging.getLogger(__name__)

STORE_ID_TAG = "mlplatform.store_id"
GENERATION_TAG = "mlplatform.store.generation.{stage}"


def _run(client: Any, run_id: str | None) -> Any | None:
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return run if run.info.lifecycle_stage == "active" else None


def _has_artifact(client: Any, run_id: str, path: str) -> bool:
    try:
        listed = client.list_artifacts(run_id, str(PurePosixPath(path).parent))
    except Exception:
        return False
    return any(a.path == path for a in listed)


def _tune_present(client: Any, paths: Paths) -> bool:
    from mlflow.entities import ViewType

    report = read_json(paths.tune_report)
    parent = _run(client, report.get("parent_run_id"))
    if parent is None or parent.info.status != "FINISHED":
        return False
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=50_000,
    )
    return len(children) >= sum(report.get("trials", {}).values())


def _train_run_id(paths: Paths) -> str | None:
    return read_json(paths.train_report).get("run_id") if paths.train_report.exists() else None


def _artifact_check(path: str) -> Callable[[Any, Paths], bool]:
    def check(client: Any, paths: Paths) -> bool:
        run_id = _train_run_id(paths)
        return _run(client, run_id) is not None and _has_artifact(client, run_id, path)

    return check


def _register_present(client: Any, paths: Paths) -> bool:
    from mlflow.exceptions import MlflowException

    report = read_json(paths.registration)
    try:
        mv = client.get_model_version(report["model_name"], str(report["version"]))
    except MlflowException:
        return False
    return mv.run_id == report.get("run_id")


def _promote_present(client: Any, paths: Paths) -> bool:
    from mlplatform.registry import audit

    report = read_json(paths.promotion)
    if report.get("seq") is None:  # nothing was recorded (skipped, no-op, dry run)
        return True
    records = audit.history(client, report["model_name"])
    return any(
        r.get("seq") == report["seq"] and str(r.get("version")) == str(report.get("version"))
        for r in records
    )


# Stage -> (its report, does the store hold what the report points at?).
CHECKS: dict[str, tuple[Callable[[Paths], Path], Callable[[Any, Paths], bool]]] = {
    "tune": (lambda p: p.tune_report, _tune_present),
    "train": (lambda p: p.train_report, lambda c, p: _run(c, _train_run_id(p)) is not None),
    "evaluate": (lambda p: p.metrics, _artifact_check("evaluation/metrics.json")),
    "explain": (lambda p: p.explain / "summary.json", _artifact_check("explain/summary.json")),
    "reference": (lambda p: p.reference, _artifact_check("monitoring/reference.json")),
    "card": (lambda p: p.card_json, _artifact_check("model_card/card.json")),
    "register": (lambda p: p.registration, _register_present),
    "promote": (lambda p: p.promotion, _promote_present),
}


def identity_file(paths: Paths, stage: str) -> Path:
    """The file a stage depends on (see the module docstring)."""
    return paths.state / "store" / f"{stage}.id"


def missing_records(client: Any, paths: Paths) -> list[str]:
    """Stages whose report names records the store does not hold (unrun stages: none)."""
    missing = []
    for stage, (report, present) in CHECKS.items():
        if not report(paths).exists():
            continue  # never ran here: DVC runs it anyway (its outputs are missing)
        try:
            ok = present(client, paths)
        except Exception as exc:  # an unreadable report, a store error: rebuild it
            log.warning("store check of %s failed (%s); it will run again", stage, exc)
            ok = False
        if not ok:
            missing.append(stage)
    return missing


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Check the store against reports/; write each stage's identity file."""
    from mlplatform import tracking

    client, exp_id = tracking.setup(params)
    tags = dict(client.get_experiment(exp_id).tags)
    renewed: list[str] = []
    if STORE_ID_TAG not in tags:
        tags[STORE_ID_TAG] = uuid.uuid4().hex
        client.set_experiment_tag(exp_id, STORE_ID_TAG, tags[STORE_ID_TAG])
        log.info("store %s: new store, every stage that writes records will run", exp_id)
    missing = missing_records(client, paths)
    for stage in CHECKS:
        key = GENERATION_TAG.format(stage=stage)
        if key not in tags or stage in missing:
            tags[key] = uuid.uuid4().hex
            client.set_experiment_tag(exp_id, key, tags[key])
            renewed.append(stage)
        write_json(
            identity_file(paths, stage),
            {"experiment_id": exp_id, "store_id": tags[STORE_ID_TAG], "generation": tags[key]},
        )
    if missing:
        log.warning(
            "the MLflow store (%s) lacks the records of %s; they will run again",
            tracking.tracking_uri(params),
            ", ".join(missing),
        )
    return {"experiment_id": exp_id, "missing": missing, "renewed": renewed}
