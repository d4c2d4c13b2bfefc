"""Serving commands: batch scoring."""

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
