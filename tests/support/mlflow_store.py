"""A fresh MLflow sqlite store per test, without paying for the schema migration each time.

Creating an MLflow sqlite database runs every migration (about 2 s); copying an already
migrated one takes milliseconds. The template is built once per test process.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_TEMPLATE: Path | None = None


def _template() -> Path:
    global _TEMPLATE
    if _TEMPLATE is None:
        from mlflow import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        db = folder / "template.db"
        client = MlflowClient(tracking_uri=f"sqlite:///{db}")
        client.search_experiments()  # creates and migrates the tables
        _TEMPLATE = db
    return _TEMPLATE


def new_client(folder: Path, name: str = "mlflow.db"):
    """An MlflowClient on a new, empty sqlite store in folder."""
    from mlflow import MlflowClient

    db = Path(folder) / name
    shutil.copyfile(_template(), db)
    uri = f"sqlite:///{db}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
