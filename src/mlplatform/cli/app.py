"""The Typer app every command module registers on, and what they share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="mlplatform: tabular ML pipeline on MLflow, DVC and Optuna.",
)

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="params file to read", show_default=True)
]
DEFAULT_PARAMS = Path("params.yaml")


def setup(params_path: Path):
    """(Params, Paths) for a command: the validated params file and the project's paths."""
    from mlplatform.config import Paths, load_params

    return load_params(params_path), Paths(".")
