"""A newcomer's first run: clone the repository (dvc.lock and reports come with it, the MLflow
store does not), run the pipeline as `make run` does, and find the whole story in the store."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from support.project import BIN, ROOT, assert_store_matches_reports, cli_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def sh(cwd, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        list(args), cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([\w-]+)'", output)


def test_a_fresh_clone_runs_the_search_into_its_own_store(tmp_path):
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(ROOT), str(clone))
    assert (clone / "dvc.lock").is_file() and (clone / "reports/tune.json").is_file()
    assert not (clone / "mlflow.db").exists()

    first = sh(clone, str(BIN / "dvc"), "repro")  # what `make run` runs after setup
    stages = ran(first.stdout)
    assert stages[0] == "store"
    assert {"tune", "train", "register", "promote"} <= set(stages), first.stdout[-2000:]
    assert_store_matches_reports(clone)

    t0 = time.perf_counter()
    second = sh(clone, str(BIN / "dvc"), "repro")
    assert ran(second.stdout) == ["store"]
    assert time.perf_counter() - t0 < 60

    shown = sh(clone, str(BIN / "mlplatform"), "next-steps").stdout
    assert "workflowType=machine_learning" in shown
