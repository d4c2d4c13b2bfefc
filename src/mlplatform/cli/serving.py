"""Serving commands: batch scoring, and the check to run before serving a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlplatform.cli.app import DEFAULT_PARAMS, ParamsOpt, app, setup


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
    from mlplatform.serving import score as stage

    on_error = None if fail_fast is None else ("fail" if fail_fast else "report")
    summary = stage.run_score(
        setup(params)[0],
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
    if summary.request_id:
        typer.echo(
            f"prediction log: {summary.rows_logged:,} rows recorded as request "
            f"{summary.request_id} (row = file row number)"
            + (f"; {summary.rows_not_logged:,} NOT recorded" if summary.rows_not_logged else "")
        )


@app.command()
def verify(
    model_uri: Annotated[
        str,
        typer.Argument(help="models:/NAME/N, models:/NAME@ALIAS, runs:/RUN/PATH or a folder"),
    ],
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Check a model is an mlplatform model carrying data only, before `mlflow models serve`.

    Exits non-zero (one line naming the model and the reason) when it names another loader,
    carries code or pickles, or points outside its folder.
    """
    from mlplatform import model_format, model_trust

    if not Path(model_uri).is_dir() and params.is_file():
        from mlplatform import tracking

        tracking.setup(setup(params)[0])  # the store params.yaml (or MLFLOW_TRACKING_URI) names
    label = model_trust.describe(model_uri)
    with model_trust.fetched(model_uri, label) as folder:
        found = model_trust.verify_folder(folder, label)
        try:
            model_format.load(folder)  # data only: skops with the trusted types, native XGBoost
        except model_trust.ModelError:
            raise
        except Exception as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise model_trust.ModelFormatError(f"{label}: cannot load model ({reason})") from None
    typer.echo(
        f"verified: {label}: an mlplatform {found['family']} model holding data only "
        f"(loader {model_trust.LOADER_MODULE}, {found['files']} files inside the model folder, "
        "no code, no pickles, skops types on the trusted list)"
    )
