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
STAGES = [
    "ingest",
    "prepare",
    "tune",
    "train",
    "evaluate",
    "explain",
    "card",
    "register",
    "promote",
]


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
def register(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Register the trained model as a new version (lineage, metrics, card as description)."""
    from mlplatform import register as stage

    stage.run(*_setup(params))


@app.command()
def promote(
    params: ParamsOpt = DEFAULT_PARAMS,
    version: Annotated[
        str | None, typer.Option(help="candidate version (default: the one just registered)")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="decide and print; change nothing in the registry")
    ] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="exit non-zero on reject or review (CI gates)")
    ] = False,
    actor: Annotated[str | None, typer.Option(help="who is promoting (default: $USER)")] = None,
) -> None:
    """Compare the candidate with the champion on the current test split and apply the rules."""
    import json

    from mlplatform import promote as stage

    result = stage.promote(*_setup(params), version=version, dry_run=dry_run, actor=actor)
    typer.echo(
        json.dumps(
            {
                k: result.get(k)
                for k in ("decision", "reason", "candidate_version", "champion_version", "dry_run")
            },
            indent=2,
        )
    )
    if strict and result["decision"] in ("reject", "review"):
        raise typer.Exit(code=3)


@app.command()
def review(
    version: Annotated[str, typer.Option(help="the version waiting for review")],
    reviewer: Annotated[str, typer.Option(help="who reviewed it")],
    reason: Annotated[str, typer.Option(help="why")],
    approve: Annotated[
        bool, typer.Option("--approve/--reject", help="make it champion, or reject it")
    ],
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Complete a manual review: approve (becomes champion) or reject a challenger."""
    from mlplatform import promote as stage

    result = stage.review(
        *_setup(params), version=version, approve=approve, reviewer=reviewer, reason=reason
    )
    typer.echo(
        f"version {version}: {result['decision']} by {reviewer}; "
        f"champion is now v{result['aliases_after'].get('champion')}"
    )


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="why")] = "rollback",
    actor: Annotated[str | None, typer.Option(help="who (default: $USER)")] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Make the previous champion the champion again."""
    from mlplatform import promote as stage

    result = stage.rollback(*_setup(params), actor=actor, reason=reason)
    typer.echo(f"champion: v{result['champion_before']} -> v{result['champion_after']}")


@app.command()
def history(
    params: ParamsOpt = DEFAULT_PARAMS,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines")] = False,
) -> None:
    """Every promotion decision, review and rollback, oldest first."""
    import json

    from mlplatform import promote as stage

    records = stage.history_table(_setup(params)[0])
    if as_json:
        for r in records:
            typer.echo(json.dumps(r, sort_keys=True, default=str))
        return
    if not records:
        typer.echo("no promotion history yet")
        return
    typer.echo(
        f"{'#':>3}  {'when (UTC)':19}  {'action':8}  {'version':7}  {'decision':8}  "
        f"{'champion':9}  {'by':12}  reason"
    )
    for r in records:
        change = f"{r.get('champion_before') or '-'}->{r.get('champion_after') or '-'}"
        typer.echo(
            f"{r['seq']:>3}  {r['when'][:19].replace('T', ' '):19}  {r['action']:8}  "
            f"{r.get('version')!s:7}  {r.get('decision')!s:8}  {change:9}  "
            f"{str(r.get('actor'))[:12]:12}  {(r.get('reason') or '')[:80]}"
        )


@app.command()
def score(
    input_path: Annotated[Path, typer.Argument(help="CSV or Parquet file to score")],
    output_path: Annotated[Path, typer.Argument(help="where to write predictions (.parquet/.csv)")],
    model_uri: Annotated[
        str | None, typer.Option(help="model to use (default: models:/<name>@champion)")
    ] = None,
    chunk_rows: Annotated[
        int | None, typer.Option(help="rows per chunk (score.chunk_rows)")
    ] = None,
    fail_fast: Annotated[
        bool | None,
        typer.Option(
            "--fail-fast/--report-errors",
            help="stop at the first unreadable row, or list bad rows and go on",
        ),
    ] = None,
    keep: Annotated[
        list[str] | None, typer.Option(help="input column to copy to the output (repeatable)")
    ] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Batch-score a file in chunks; bad rows are reported by row number."""
    from mlplatform import score as stage

    on_error = None if fail_fast is None else ("fail" if fail_fast else "report")
    summary = stage.run_score(
        _setup(params)[0],
        input_path,
        output_path,
        model_uri=model_uri,
        chunk_rows=chunk_rows,
        on_error=on_error,
        keep=keep,
    )
    typer.echo(
        f"scored {summary.rows_scored:,} of {summary.rows_in:,} rows with "
        f"{summary.model_name or summary.model_uri} v{summary.model_version} "
        f"({summary.rows_per_second:,.0f} rows/s) -> {summary.output}"
    )
    if summary.rows_failed:
        typer.echo(f"{summary.rows_failed:,} rows could not be scored: {summary.errors_file}")


@app.command()
def pipeline(
    params: ParamsOpt = DEFAULT_PARAMS,
    stages: Annotated[
        str | None,
        typer.Option(help="comma-separated subset, run in pipeline order (default: all)"),
    ] = None,
) -> None:
    """Run the stages in one process without DVC (what `mlflow run .` does; prefer `dvc repro`)."""
    import importlib

    chosen = STAGES
    if stages:
        wanted = [s.strip() for s in stages.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in STAGES]
        if unknown:
            raise MlplatformError(
                f"--stages: unknown stage(s) {', '.join(unknown)} (known: {', '.join(STAGES)})"
            )
        chosen = [s for s in STAGES if s in wanted]
    loaded = _setup(params)
    for name in chosen:
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
