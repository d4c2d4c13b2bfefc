"""Release commands: deploy a challenger in shadow or A/B, and report what each shows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mlplatform.cli.app import DEFAULT_PARAMS, ParamsOpt, app, setup


@app.command()
def deploy(
    mode: Annotated[str, typer.Argument(help="shadow, ab, off (remove both) or status")],
    challenger: Annotated[
        str | None, typer.Option(help="the version to deploy against the champion")
    ] = None,
    actor: Annotated[str | None, typer.Option(help="who (default: $USER)")] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Register a shadow or A/B deployment version and point its alias at it.

    Serve it with `mlflow models serve -m models:/NAME@shadow` (or @ab).
    """
    from mlplatform.errors import RegistryError
    from mlplatform.serving import release

    loaded, paths = setup(params)
    if mode == "status":
        typer.echo(json.dumps(release.status(loaded), indent=2, default=str))
        return
    if mode == "off":
        removed = release.off(loaded, paths, actor=actor)
        typer.echo(f"removed alias(es): {', '.join(removed)}" if removed else "nothing deployed")
        return
    if mode not in release.ALIASES:
        raise RegistryError(f"deploy: {mode!r} is not shadow, ab, off or status")
    if challenger is None:
        raise RegistryError(f"deploy {mode}: give --challenger VERSION")
    out = release.deploy(loaded, paths, mode, challenger, actor=actor)
    typer.echo(
        f"{mode} deployment v{out['deployment_version']}: champion v{out['champion_version']}, "
        f"challenger v{out['challenger_version']}; serve {out['model_uri']}"
    )


@app.command()
def shadow(
    current: Annotated[
        Path | None, typer.Option(help="score this CSV/Parquet file offline by both instead")
    ] = None,
    challenger: Annotated[
        str | None, typer.Option(help="with --current: the challenger (default: @shadow's)")
    ] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Shadow report: agreement, score correlation, positive-rate shift, disagreements."""
    from mlplatform.serving import release_reports

    loaded, paths = setup(params)
    report = release_reports.shadow(loaded, paths, current=current, challenger=challenger)
    fig = release_reports.shadow_figures(report)
    agreement = "-" if fig["agreement"] is None else f"{fig['agreement']:.2%}"
    shift = "-" if fig["positive_rate_shift"] is None else f"{fig['positive_rate_shift']:+.2%}"
    typer.echo(
        f"shadow v{report['challenger_version']} vs champion v{report['champion_version']}: "
        f"{fig['compared_rows']} rows compared, agreement {agreement}, positive-rate shift "
        f"{shift} -> {paths.reports / 'shadow.json'}, {paths.reports / 'shadow.html'}"
    )


@app.command("ab")
def ab_command(params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """A/B report: the primary metric per arm, the difference, the test, rows still needed."""
    from mlplatform.serving import release_reports

    loaded, paths = setup(params)
    report = release_reports.ab_test(loaded, paths)
    typer.echo(f"{report['decision']}: {report['reason']}")
    typer.echo(
        f"served {report['served']}, labelled {report['collected']} -> "
        f"{paths.reports / 'ab.json'}, {paths.reports / 'ab.html'}"
    )
