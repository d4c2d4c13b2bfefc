"""Pipeline commands: one per stage (what dvc.yaml and MLproject call), and the whole run."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

from mlplatform.cli.app import DEFAULT_PARAMS, ParamsOpt, app, setup
from mlplatform.config import Params, Paths
from mlplatform.errors import MlplatformError
from mlplatform.io import read_json
from mlplatform.tracking import ui_url

# The pipeline, in order: each stage is a module whose run(params, paths) does the work,
# ``store`` first (it tells DVC which stages' MLflow records are missing),
# and a command of the same name (``promote`` has its own, with options: cli/registry.py).
STAGE_MODULES = {
    "store": "mlplatform.tracking.store",
    "ingest": "mlplatform.data.ingest",
    "prepare": "mlplatform.data.prepare",
    "tune": "mlplatform.search.workers",  # tune.run, or parallel workers (--workers N)
    "train": "mlplatform.modeling.train",
    "evaluate": "mlplatform.evaluation.evaluate",
    "explain": "mlplatform.evaluation.explain",
    "reference": "mlplatform.monitoring.reference_stage",
    "card": "mlplatform.evaluation.card",
    "register": "mlplatform.registry.register",
    "promote": "mlplatform.registry.promote",
}
STAGES = list(STAGE_MODULES)
STAGE_HELP = {
    "store": "Check the MLflow store holds what reports/ point at; write each stage's store id.",
    "ingest": "Materialise the source data (file or built-in dataset) under data/raw.",
    "prepare": "Validate, de-duplicate and split the raw data into train/validation/test.",
    "tune": "Optuna search over the model families; every trial an MLflow run (resumable).",
    "train": "Refit the best configuration and log it as one MLflow model.",
    "evaluate": "Score the logged model on the test set; write reports/metrics.json and plots.",
    "explain": "SHAP explanations of a stratified test sample, summed back to source columns.",
    "reference": "Freeze the training reference (bins, samples, scores, SHAP ranking) for monitor.",
    "card": "Render the model card (Markdown + self-contained HTML) and attach it to the run.",
    "register": "Register the trained model as a new version (lineage, metrics, card).",
}


def _run_stage(name: str, params_path: Path) -> None:
    importlib.import_module(STAGE_MODULES[name]).run(*setup(params_path))


def _stage_command(name: str):
    def command(params: ParamsOpt = DEFAULT_PARAMS) -> None:
        _run_stage(name, params)

    command.__doc__ = STAGE_HELP[name]
    return command


for _name in STAGE_HELP:
    if _name != "tune":
        app.command(name=_name)(_stage_command(_name))


@app.command("tune")
def tune_command(
    params: ParamsOpt = DEFAULT_PARAMS,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="parallel search workers sharing the study (also MLPLATFORM_TUNE_WORKERS, "
            "search_workers.workers); run the same on other machines to join it",
        ),
    ] = None,
) -> None:
    from mlplatform.search import workers as search_workers

    search_workers.run(*setup(params), workers=workers)


tune_command.__doc__ = STAGE_HELP["tune"]


@app.command()
def pipeline(
    params: ParamsOpt = DEFAULT_PARAMS,
    stages: Annotated[
        str | None,
        typer.Option(help="comma-separated subset, run in pipeline order (default: all)"),
    ] = None,
) -> None:
    """Run the stages in one process without DVC (what `mlflow run .` does; prefer `dvc repro`)."""
    chosen = STAGES
    if stages:
        wanted = [s.strip() for s in stages.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in STAGES]
        if unknown:
            raise MlplatformError(
                f"--stages: unknown stage(s) {', '.join(unknown)} (known: {', '.join(STAGES)})"
            )
        chosen = [s for s in STAGES if s in wanted]
    loaded = setup(params)
    for name in chosen:
        typer.secho(f"== {name}", bold=True, err=True)
        importlib.import_module(STAGE_MODULES[name]).run(*loaded)


@app.command("next-steps")
def next_steps(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Print what to open after `make run`."""
    typer.echo(next_steps_text(*setup(params)))


def _experiment_id(paths: Paths) -> str:
    for report in (paths.train_report, paths.tune_report):
        if report.exists():
            return str(read_json(report).get("experiment_id", "0"))
    return "0"


def next_steps_text(params: Params, paths: Paths) -> str:
    """What to open after `make run`."""
    lines = ["", "Pipeline finished. Next:"]
    if paths.data_summary.exists():
        rows = read_json(paths.data_summary)["rows"]
        lines.append(
            f"  data        {paths.prepared}/ ({rows['train']} train, {rows['validation']} "
            f"validation, {rows['test']} test rows); summary in {paths.data_summary}"
        )
    if paths.metrics.exists():
        lines.append(f"  metrics     dvc metrics show    (test metrics in {paths.metrics})")
        lines.append(f"  plots       {paths.plots}/*.png")
    if paths.card_html.exists():
        lines.append(f"  model card  {paths.card_html}")
    if paths.promotion.exists():
        decision = read_json(paths.promotion)
        lines.append(
            f"  promotion   {decision.get('decision')} for version "
            f"{decision.get('candidate_version')}"
            f" ({paths.promotion}); history: mlplatform history"
        )
    lines += [
        "  experiments source .venv/bin/activate && mlflow ui",
        f"              then open {ui_url(_experiment_id(paths))}",
        "  reproduce   source .venv/bin/activate && dvc repro",
    ]
    if paths.promotion.exists():
        name = params.registry.model_name
        lines.append(
            f"  serve       mlplatform verify 'models:/{name}@champion' && mlflow models serve "
            f"-m 'models:/{name}@champion' --env-manager local --port 5001"
        )
    if paths.promotion.exists() and paths.reference.exists():
        lines.append(
            "  monitor     mlplatform demo-batches && mlplatform monitor --current "
            "data/demo/shifted.csv    (README: Monitoring)"
        )
    return "\n".join(lines)
