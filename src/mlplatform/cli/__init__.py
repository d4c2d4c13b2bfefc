"""Command line: the thin layer that dvc.yaml, MLproject and people all call.

Each pipeline stage is a subcommand over a plain function in its own module. Every
subcommand takes ``--params PATH`` (default params.yaml). Expected mistakes print one line
on stderr and exit non-zero, without a stack trace. Commands live in one module per room
(pipeline, registry, serving, monitoring); they all register on ``app``.
"""

from __future__ import annotations

import logging
import sys

import typer

from mlplatform.cli import (  # noqa: F401 (they register commands)
    monitoring,
    pipeline,
    registry,
    release,
    serving,
)
from mlplatform.cli.app import app
from mlplatform.cli.pipeline import STAGES
from mlplatform.errors import MlplatformError
from mlplatform.team.cli import app as server_app

__all__ = ["STAGES", "app", "main"]

app.add_typer(server_app, name="server")


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("alembic", "mlflow.store.db.utils", "urllib3", "matplotlib", "shap"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import os

    try:
        app()
    except MlplatformError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(exc.exit_code)
    except Exception as exc:
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, MlflowException) or os.environ.get("MLPLATFORM_DEBUG"):
            raise
        # A run, model or version the command needs is not in this store (for example
        # after switching MLFLOW_TRACKING_URI): one line, not a stack trace.
        from mlflow import get_tracking_uri

        first = str(exc.message).splitlines()[0][:300]
        typer.secho(
            f"error: MLflow ({exc.error_code}): {first} [tracking store {get_tracking_uri()}; "
            "MLPLATFORM_DEBUG=1 shows the traceback]",
            err=True,
            fg=typer.colors.RED,
        )
        sys.exit(2)
