"""The project's own files keep its promises: pinned deps in step, privacy, one CLI."""

from __future__ import annotations

import configparser
import re
import tomllib

import yaml

from mlplatform import privacy
from mlplatform.cli import STAGES
from support.project import ROOT


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_direct_dependency_is_pinned():
    project = _pyproject()["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["dev"]
    pinned = r"([A-Za-z0-9_.-]+)(\[[\w,]+\])?==([\w.]+)"
    assert deps and all(re.fullmatch(pinned, d) for d in deps), deps
    lock = {line.lower() for line in (ROOT / "requirements.lock").read_text().splitlines()}
    for dep in deps:  # the lock agrees with the pins (extras install more, not other versions)
        name, _, version = re.fullmatch(pinned, dep).groups()
        assert f"{name}=={version}".lower() in lock, f"{dep} missing from requirements.lock"


def test_conda_env_matches_pyproject():
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = next(d for d in conda["dependencies"] if isinstance(d, dict))["pip"]
    runtime = set(_pyproject()["project"]["dependencies"])
    assert {p for p in pip if "==" in p} == runtime
    assert "python=3.11" in conda["dependencies"]


def test_dvc_analytics_and_mlflow_telemetry_are_off():
    cfg = configparser.ConfigParser()
    cfg.read_string((ROOT / ".dvc/config").read_text().replace("    ", ""))
    assert cfg["core"]["analytics"] == "false"
    assert privacy.SETTINGS["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert privacy.SETTINGS["DVC_NO_ANALYTICS"] == "1"
    line = privacy.pth_line()
    assert line.startswith("import os;") and "MLFLOW_DISABLE_TELEMETRY" in line
    assert "privacy" in (ROOT / "Makefile").read_text()


def test_dvc_stages_and_mlproject_only_call_the_cli():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == STAGES
    for name, stage in stages.items():
        assert stage["cmd"] == f"mlplatform {name} --params params.yaml"
    entries = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    assert entries["main"]["command"] == "mlplatform pipeline --params {params}"
    for name in STAGES:
        assert entries[name]["command"] == f"mlplatform {name} --params {{params}}"


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "make run" in first_block and "make test" in first_block
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_every_dvc_param_key_exists_in_params_yaml():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        for key in stage.get("params", []):
            node = params
            for part in key.split("."):
                assert part in node, f"dvc.yaml names params key {key}, absent from params.yaml"
                node = node[part]
