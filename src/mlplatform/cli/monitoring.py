"""Monitoring commands: late labels, drift and performance of a window, the demo batches."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlplatform.cli.app import DEFAULT_PARAMS, ParamsOpt, app, setup


def _log_url(params) -> str:
    from mlplatform import tracking
    from mlplatform.monitoring import prediction_log

    return prediction_log.resolve_url(
        params.prediction_log, tracking.tracking_uri(params), reading=True
    )


def _row_column(path: Path, given: str | None) -> str | None:
    """The row column: as given, else ``row`` when the file has one."""
    if given is not None or not path.is_file():
        return given
    import pandas as pd

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            names = pq.ParquetFile(path).schema_arrow.names
        else:
            names = list(pd.read_csv(path, nrows=0).columns)
    except Exception:
        return None  # the reader names the problem
    return "row" if "row" in names else None


@app.command()
def feedback(
    file: Annotated[Path, typer.Argument(help="CSV or Parquet with request_id and label")],
    id_column: Annotated[str, typer.Option(help="the request id column")] = "request_id",
    label_column: Annotated[str, typer.Option(help="the observed outcome column")] = "label",
    row_column: Annotated[
        str | None, typer.Option(help="the row within the request (default: 'row' if present)")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="write nothing and exit 1 if any row is refused")
    ] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Record late labels, joined to logged predictions by request id (and row).

    Unknown ids, duplicates and rows already labelled are listed, never silently dropped.
    """
    from mlplatform.monitoring.feedback import record_feedback_file

    summary = record_feedback_file(
        _log_url(setup(params)[0]),
        file,
        id_column=id_column,
        label_column=label_column,
        row_column=_row_column(file, row_column),
        strict=strict,
    )
    typer.echo(summary.message())
    if strict and summary.problems:
        raise typer.Exit(code=1)


@app.command()
def monitor(
    current: Annotated[
        list[Path] | None,
        typer.Option(help="a window file (CSV/Parquet) instead of the log; repeat, oldest first"),
    ] = None,
    since: Annotated[str | None, typer.Option(help="log window start (ISO time, UTC)")] = None,
    until: Annotated[str | None, typer.Option(help="log window end (ISO time, UTC)")] = None,
    window: Annotated[
        str | None, typer.Option(help="log window: the last 30m, 12h, 7d ... (with no --since)")
    ] = None,
    last: Annotated[int | None, typer.Option(help="only the last N logged rows")] = None,
    source: Annotated[
        str | None, typer.Option(help="only rows logged by 'serve' or by 'score'")
    ] = None,
    model_uri: Annotated[
        str | None, typer.Option(help="the version monitored (default: models:/<name>@champion)")
    ] = None,
    reference: Annotated[
        Path | None, typer.Option(help="reference file (default: the version's own)")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option(help="where monitor.json/.html go (default reports/monitoring)")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="exit 3 when the verdict is drift (scheduled jobs)")
    ] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Drift and performance of a window against the training reference; JSON + HTML report."""
    from mlplatform.monitoring.monitor import run_monitor

    result = run_monitor(
        *setup(params),
        current=current,
        since=since,
        until=until,
        window=window,
        last=last,
        source=source,
        model_uri=model_uri,
        reference=reference,
        out_dir=out_dir,
    )
    model, out = result["model"], result["outputs"]
    drifted = ", ".join(result["summary"]["drifted"]) or "none"
    typer.echo(
        f"{model['name']} v{model['version']}, {result['window']['n_rows']:,} rows "
        f"({result['window'].get('source')}): verdict {result['verdict']}; drifted features: "
        f"{drifted}; retraining recommended: {'yes' if result['retraining_recommended'] else 'no'}"
    )
    for reason in result["reasons"]:
        typer.echo(f"  - {reason}")
    typer.echo(f"report {out['html']}, {out['json']}; MLflow run {out['mlflow_run_id']}")
    if strict and result["verdict"] == "drift":
        raise typer.Exit(code=3)


@app.command("demo-batches")
def demo_batches(
    out_dir: Annotated[
        Path | None, typer.Option(help="where the batches go (default data/demo)")
    ] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Write a later batch from the real data and a deliberately shifted one (seeded)."""
    from mlplatform.monitoring.demo import run_demo

    summary = run_demo(*setup(params), out_dir=out_dir)
    files = summary["files"]
    typer.echo(
        f"{summary['rows']} rows each: {files['later']} (same population), {files['shifted']} "
        f"(shifted: {summary['shift']}); labels {files['labels']}; request body "
        f"{files['requests']}"
    )
