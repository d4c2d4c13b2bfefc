"""The thin command line that dvc.yaml, MLproject and people all call.

Each pipeline stage is a subcommand over a plain function in its own module. Every
subcommand takes ``--params PATH`` (default params.yaml). Expected mistakes print one line
on stderr and exit non-zero, without a stack trace.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from mlplatform.errors import MlplatformError

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


# The pipeline, in order: each stage is mlplatform.<name>.run(params, paths).
STAGES = ["ingest", "prepare", "tune", "train", "evaluate", "explain", "card"]


def _setup(params_path: Path):
    from mlplatform.config import Paths, load_params

    return load_params(params_path), Paths(".")


@app.command()
def ingest(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Materialise the source data (file or built-in dataset) under data/raw."""
    from mlplatform import ingest as stage

    stage.run(*_setup(params))


@app.command()
def prepare(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Validate, de-duplicate and split the raw data into train/validation/test."""
    from mlplatform import prepare as stage

    stage.run(*_setup(params))


@app.command()
def tune(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Optuna search over the model families; every trial an MLflow run (resumable)."""
    from mlplatform import tune as stage

    stage.run(*_setup(params))


@app.command()
def train(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Refit the best configuration and log it as one MLflow model."""
    from mlplatform import train as stage

    stage.run(*_setup(params))


@app.command()
def evaluate(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Score the logged model on the test set; write reports/metrics.json and plots."""
    from mlplatform import evaluate as stage

    stage.run(*_setup(params))


@app.command()
def explain(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """SHAP explanations of a stratified test sample, summed back to source columns."""
    from mlplatform import explain as stage

    stage.run(*_setup(params))


@app.command()
def card(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Render the model card (Markdown + self-contained HTML) and attach it to the run."""
    from mlplatform import card as stage

    stage.run(*_setup(params))


@app.command()
def pipeline(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Run every stage in order without DVC (what `mlflow run .` does; prefer `dvc repro`)."""
    import importlib

    loaded = _setup(params)
    for name in STAGES:
        typer.secho(f"== {name}", bold=True, err=True)
        importlib.import_module(f"mlplatform.{name}").run(*loaded)


@app.command("next-steps")
def next_steps(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Print what to open after `make run`."""
    from mlplatform.report import next_steps as show

    typer.echo(show(*_setup(params)))


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("alembic", "mlflow.store.db.utils", "urllib3", "matplotlib", "shap"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        app()
    except MlplatformError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(exc.exit_code)
