"""Projects in temporary folders: small, fast params, and the real CLI run inside them.

End-to-end tests run the real CLI (real MLflow sqlite store and registry, real Optuna
storage, real DVC) in a temporary project folder, with params shrunk so a run takes seconds.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLI = BIN / "mlplatform"

# Search shrunk for tests: a handful of trials, small forests and boosters.
FAST = {
    "tune.n_trials": 8,
    "tune.timeout_s": 600,
    "tune.pruner.n_startup_trials": 2,
    "tune.families.random_forest.n_estimators": {"low": 20, "high": 60, "step": 20},
    "tune.families.xgboost.n_estimators": {"low": 25, "high": 100, "step": 25},
    "tune.families.extra_trees.n_estimators": {"low": 20, "high": 60, "step": 20},
    "tune.start_points.random_forest.n_estimators": 20,
    "tune.start_points.xgboost.n_estimators": 100,
    "tune.start_points.extra_trees.n_estimators": 20,
    "explain.sample_size": 120,
    "explain.background_size": 40,
    "promotion.latency_repeats": 30,
}


def default_params() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def set_dotted(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    *parents, key = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[key] = value


def make_params(overrides: dict[str, Any] | None = None, fast: bool = True) -> dict[str, Any]:
    """params.yaml with these dotted overrides. A test that gives its own ``tune.families``
    gets no start points unless it gives those too (the defaults may be outside its ranges).
    """
    raw = copy.deepcopy(default_params())
    if "tune.families" in (overrides or {}) and "tune.start_points" not in overrides:
        overrides = {**overrides, "tune.start_points": {}}
    for dotted, value in {**(FAST if fast else {}), **(overrides or {})}.items():
        set_dotted(raw, dotted, value)
    return raw


def write_project(folder: Path, overrides: dict[str, Any] | None = None, fast=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(make_params(overrides, fast)))
    return folder


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLPLATFORM_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        MLFLOW_DISABLE_TELEMETRY="true",
        DVC_NO_ANALYTICS="1",
        PYTHONWARNINGS="ignore",
    )
    env.update(extra or {})
    return env


def run_cli(project: Path, *args: str, check: bool = True, env=None, timeout=900):
    proc = subprocess.run(
        [str(CLI), *args],
        cwd=project,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"mlplatform {' '.join(args)} exited {proc.returncode}\n{proc.stderr[-4000:]}"
        )
    return proc


def run_stages(project: Path, *stages: str) -> None:
    """Run stages in one CLI process (`mlplatform pipeline --stages ...`)."""
    run_cli(project, "pipeline", "--stages", ",".join(stages))


def tracking_uri(project: Path) -> str:
    return f"sqlite:///{project / 'mlflow.db'}"


def client_for(project: Path):
    from mlflow import MlflowClient

    uri = tracking_uri(project)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# Every section a model card must have (unit and end-to-end card tests).
SECTIONS = (
    "Model details",
    "Intended use",
    "Out of scope",
    "Training data",
    "Evaluation",
    "Performance by subgroup",
    "Fairness",
    "Explanations (SHAP)",
    "Known limitations",
    "Lineage",
    "Approvals",
)

TRAIN_STAGES = ("ingest", "prepare", "tune", "train", "evaluate")


def assert_store_matches_reports(project: Path, fresh_process: bool = False) -> None:
    """The store holds the whole story the reports tell: the search's parent with one child
    per trial, the training run, the registered version with its alias, the audit record.

    Args:
        fresh_process: check from a new Python process. MLflow keeps one engine per store
            URI per process, so after the store file was deleted this process would still
            read the old, unlinked database.
    """
    if fresh_process:
        code = (
            "import sys; from pathlib import Path; from support.project import "
            "assert_store_matches_reports as check; check(Path(sys.argv[1]))"
        )
        env = cli_env({"PYTHONPATH": str(ROOT / "tests")})
        proc = subprocess.run(
            [sys.executable, "-c", code, str(project)], env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return
    import json
    import re

    from mlplatform.registry import audit

    client = client_for(project)
    tune = json.loads((project / "reports/tune.json").read_text())
    parent = client.get_run(tune["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [tune["experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{tune['parent_run_id']}'",
        max_results=10_000,
    )
    assert len(children) == sum(tune["trials"].values())
    train = json.loads((project / "reports/train.json").read_text())
    assert client.get_run(train["run_id"]).info.lifecycle_stage == "active"
    reg = json.loads((project / "reports/registration.json").read_text())
    assert client.get_model_version(reg["model_name"], reg["version"]).run_id == train["run_id"]
    promo = json.loads((project / "reports/promotion.json").read_text())
    if promo.get("seq") is not None:
        assert promo["seq"] in [r["seq"] for r in audit.history(client, reg["model_name"])]
    for report in (project / "reports").glob("*.json"):
        for run_id in re.findall(r'"(?:\w*run_id)": "([0-9a-f]{32})"', report.read_text()):
            client.get_run(run_id)  # raises if it is not in this store
