"""The pipeline under real DVC, in a fresh git repository, as `make run` runs it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from mlplatform.cli import STAGES as ALL_STAGES
from support.project import BIN, ROOT, cli_env, client_for, write_project

pytestmark = pytest.mark.e2e


def sh(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        list(args), cwd=project, env=cli_env(), capture_output=True, text=True, timeout=900
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}"
            f"\n{proc.stderr[-3000:]}"
        )
    return proc


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", output)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    project = write_project(tmp_path_factory.mktemp("dvc"))
    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
    shutil.copytree(
        ROOT / ".dvc",
        project / ".dvc",
        ignore=shutil.ignore_patterns("tmp", "cache", "config.local"),
    )
    shutil.copy(ROOT / ".dvcignore", project / ".dvcignore")
    shutil.copy(ROOT / ".gitignore", project / ".gitignore")
    (project / "data/sources").mkdir(parents=True)
    (project / "data/sources/.gitkeep").touch()
    sh(project, "git", "init", "-q")
    sh(project, "git", "add", "-A")
    sh(
        project,
        "git",
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.org",
        "commit",
        "-qm",
        "init",
    )
    return project


def dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(project, str(BIN / "dvc"), *args, check=check)


def test_full_repro_then_second_repro_is_a_noop(repo):
    first = dvc(repo, "repro")
    assert ran(first.stdout) == ALL_STAGES
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(ALL_STAGES)
    prepared = next(o for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared")
    assert prepared["md5"].endswith(".dir")
    # Stages declare only the params they read.
    assert set(lock["stages"]["evaluate"].get("params", {}).get("params.yaml", {})) == {
        "mlflow.experiment"
    }

    t0 = time.perf_counter()
    second = dvc(repo, "repro")
    elapsed = time.perf_counter() - t0
    assert ran(second.stdout) == []
    assert "up to date" in second.stdout
    assert elapsed < 30, f"second dvc repro took {elapsed:.1f} s"

    # The run records the git commit and the dvc.lock hash of the data it used.
    train = json.loads((repo / "reports/train.json").read_text())
    tags = client_for(repo).get_run(train["run_id"]).data.tags
    commit = sh(repo, "git", "rev-parse", "HEAD").stdout.strip()
    assert tags["mlflow.source.git.commit"] == commit
    assert json.loads((repo / "reports/promotion.json").read_text())["decision"] == "approve"
    assert json.loads((repo / "reports/metrics.json").read_text())["test"]["roc_auc"] > 0.6


def test_one_knob_reruns_only_its_stages(repo):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["explain"]["sample_size"] = 90
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))
    status = json.loads(dvc(repo, "status", "--json").stdout)
    assert set(status) == {"explain"}
    out = dvc(repo, "repro")
    stages = ran(out.stdout)
    assert stages[0] == "explain"
    assert not {"ingest", "prepare", "tune", "train", "evaluate"} & set(stages)
    assert json.loads((repo / "reports/explain/summary.json").read_text())["rows_explained"] == 90


def test_metrics_and_plots_commands_work_offline(repo):
    shown = dvc(repo, "metrics", "show", "--json")
    metrics = json.loads(shown.stdout)
    assert any("reports/metrics.json" in str(v) for v in metrics.values())
    plots = dvc(repo, "plots", "show", "-o", str(repo / "plots_html"))
    html = (repo / "plots_html" / "index.html").read_text()
    assert "<img" in html or "roc.png" in html, plots.stdout
