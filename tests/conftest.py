"""Fixtures shared by the test suites (helpers live in tests/support/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.project import TRAIN_STAGES, run_stages, write_project


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory) -> Path:
    """HMDA through ingest -> evaluate once per session (shared by read-only tests)."""
    project = write_project(tmp_path_factory.mktemp("trained"))
    run_stages(project, *TRAIN_STAGES)
    return project


@pytest.fixture(autouse=True)
def _work_in_a_temporary_folder(request, tmp_path_factory, monkeypatch):
    """Unit tests run from a temporary folder: MLflow clients on a bare sqlite store put
    artifacts under ./mlruns, which must not land in the checkout."""
    if "tests/unit" in str(request.node.path).replace("\\", "/"):
        monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
