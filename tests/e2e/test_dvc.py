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
from support.project import (
    BIN,
    ROOT,
    assert_store_matches_reports,
    cli_env,
    client_for,
    write_project,
)

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
    # The code is a dependency of each stage (dvc.yaml lists the files each one runs).
    shutil.copytree(
        ROOT / "src" / "mlplatform",
        project / "src" / "mlplatform",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
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
    assert ran(first.stdout) == ALL_STAGES  # `store` first
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
    # Only the store check runs (always): the store holds every stage's records.
    assert ran(second.stdout) == ["store"]
    # A loose bound against a pathological slow path (a re-hash of the data, a search): about
    # 10 s on an idle 2-core machine, 35 s seen with a load average of 12.
    assert elapsed < 90, f"second dvc repro took {elapsed:.1f} s"

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
    assert set(status) == {"store", "explain"}  # store: always
    out = dvc(repo, "repro")
    stages = ran(out.stdout)
    assert stages[:2] == ["store", "explain"]
    assert not {"ingest", "prepare", "tune", "train", "evaluate"} & set(stages)
    assert json.loads((repo / "reports/explain/summary.json").read_text())["rows_explained"] == 90


def test_metrics_and_plots_commands_work_offline(repo):
    shown = dvc(repo, "metrics", "show", "--json")
    metrics = json.loads(shown.stdout)
    assert any("reports/metrics.json" in str(v) for v in metrics.values())
    plots = dvc(repo, "plots", "show", "-o", str(repo / "plots_html"))
    html = (repo / "plots_html" / "index.html").read_text()
    assert "<img" in html or "roc.png" in html, plots.stdout


def test_dataset_inputs_on_the_runs_say_which_data_they_read(repo):
    from mlplatform.io import file_md5

    client = client_for(repo)
    train = json.loads((repo / "reports/train.json").read_text())
    tune = json.loads((repo / "reports/tune.json").read_text())
    md5 = {
        s: file_md5(repo / f"data/prepared/{s}.parquet") for s in ("train", "validation", "test")
    }

    def inputs(run_id):
        return {
            (i.dataset.digest, {t.key: t.value for t in i.tags}["mlflow.data.context"])
            for i in client.get_run(run_id).inputs.dataset_inputs
        }

    assert inputs(train["run_id"]) == {
        (md5["train"], "training"),
        (md5["validation"], "validation"),
        (md5["test"], "test"),
    }
    assert inputs(tune["parent_run_id"]) == {
        (md5["train"], "training"),
        (md5["validation"], "validation"),
    }
    child = client.search_runs(
        [tune["experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{tune['parent_run_id']}'",
        max_results=1,
    )[0]
    assert inputs(child.info.run_id) == inputs(tune["parent_run_id"])


def test_a_code_change_reruns_that_stage_and_not_the_ones_before(repo):
    code = repo / "src/mlplatform/evaluation/evaluate.py"
    original = code.read_text()
    code.write_text(original + "\n# a change to the evaluate stage's code\n")
    try:
        status = json.loads(dvc(repo, "status", "--json").stdout)
        assert "evaluate" in status
        assert not {"ingest", "prepare", "tune", "train", "explain"} & set(status)
        # A module every stage imports re-runs everything after ingest's own files.
        assert "src/mlplatform/evaluation/evaluate.py" in str(status["evaluate"])
    finally:
        code.write_text(original)
    assert set(json.loads(dvc(repo, "status", "--json").stdout)) <= {"store"}


def test_lineage_of_the_first_and_a_later_version_and_its_refusal_rule(repo):
    first = json.loads(run_mlp(repo, "lineage", "@champion", "--json").stdout)
    commit = sh(repo, "git", "rev-parse", "HEAD").stdout.strip()
    assert first["git"] == {"commit": commit, "dirty": False}
    assert first["data"]["matches_dvc_lock"] == {"data/prepared": True}
    assert (
        first["search"]["parent_run_id"]
        == json.loads((repo / "reports/tune.json").read_text())["parent_run_id"]
    )
    assert first["gates"] and first["gates"][-1]["decision"] == "approve"
    assert first["problems"] == []

    # A later version trained from an uncommitted change of params (a dirty tree).
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["seed"] = raw["seed"] + 1
    raw["promotion"]["require_clean_lineage"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))
    dvc(repo, "repro")
    registered = json.loads((repo / "reports/registration.json").read_text())["version"]
    later = json.loads(run_mlp(repo, "lineage", registered, "--json").stdout)
    assert later["git"]["dirty"] is True
    assert any("dirty tree" in p for p in later["problems"])
    assert later["params"]["differs_from_current"] == []  # trained with today's params
    decision = json.loads((repo / "reports/promotion.json").read_text())
    assert decision["decision"] == "reject"
    assert any(r["name"] == "lineage" and r["outcome"] == "fail" for r in decision["rules"])
    shown = run_mlp(repo, "lineage", registered)
    assert "dirty tree" in shown.stdout
    # The first version's lineage now shows today's params differ from its own.
    again = json.loads(run_mlp(repo, "lineage", first["version"], "--json").stdout)
    assert {"key": "seed", "then": raw["seed"] - 1, "now": raw["seed"]} in again["params"][
        "differs_from_current"
    ]


def test_removing_the_store_and_running_dvc_repro_rebuilds_it(repo):
    for name in ("mlflow.db", "mlruns"):
        path = repo / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    out = dvc(repo, "repro")
    stages = ran(out.stdout)
    assert stages[0] == "store"
    assert {"tune", "train", "evaluate", "explain", "card", "register", "promote"} <= set(stages)
    assert not {"ingest", "prepare"} & set(stages)  # no MLflow records of their own
    assert_store_matches_reports(repo, fresh_process=True)
    assert ran(dvc(repo, "repro").stdout) == ["store"]


def run_mlp(project: Path, *args: str) -> subprocess.CompletedProcess:
    return sh(project, str(BIN / "mlplatform"), *args)
