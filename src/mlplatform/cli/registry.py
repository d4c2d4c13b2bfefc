"""Registry commands: promote, review, roll back, history, lineage."""

from __future__ import annotations

from typing import Annotated

import typer

from mlplatform.cli.app import DEFAULT_PARAMS, ParamsOpt, app, setup


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

    from mlplatform.registry import promote as stage

    result = stage.promote(*setup(params), version=version, dry_run=dry_run, actor=actor)
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
    reason: Annotated[str, typer.Option(help="why")],
    approve: Annotated[
        bool, typer.Option("--approve/--reject", help="approve or reject the version")
    ],
    version_arg: Annotated[
        str | None, typer.Argument(metavar="VERSION", help="the version reviewed")
    ] = None,
    version: Annotated[str | None, typer.Option(help="the same, as an option")] = None,
    role: Annotated[
        str | None,
        typer.Option(help="sign off in this role (release.signoffs); without: manual review"),
    ] = None,
    reviewer: Annotated[str | None, typer.Option(help="who reviewed it (default: $USER)")] = None,
    stage: Annotated[str, typer.Option(help="with --role: shadow, ab or champion")] = "champion",
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Sign off in a role (--role), or complete a manual review: approve (becomes champion)
    or reject a challenger."""
    from mlplatform import tracking
    from mlplatform.errors import RegistryError
    from mlplatform.registry import promote as stage_module

    loaded, paths = setup(params)
    version = version_arg or version
    if version is None:
        raise RegistryError("review: give the VERSION")
    who = reviewer or tracking.user(loaded)
    if role is not None:
        out = stage_module.signoff(
            loaded, paths, version=version, role=role, approve=approve, person=who,
            reason=reason, stage=stage,
        )  # fmt: skip
        champion = out["aliases_after"].get("champion")
        typer.echo(
            f"version {version}: {out['decision']} as {role} by {who} (#{out['seq']}); "
            f"{'; '.join(out['status'])}; champion is v{champion}"
        )
        return
    result = stage_module.review(
        loaded, paths, version=version, approve=approve, reviewer=who, reason=reason
    )
    typer.echo(
        f"version {version}: {result['decision']} by {who}; "
        f"champion is now v{result['aliases_after'].get('champion')}"
    )


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="why")] = "rollback",
    actor: Annotated[str | None, typer.Option(help="who (default: $USER)")] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Make the previous champion the champion again."""
    from mlplatform.registry import promote as stage

    result = stage.rollback(*setup(params), actor=actor, reason=reason)
    typer.echo(f"champion: v{result['champion_before']} -> v{result['champion_after']}")


@app.command()
def history(
    params: ParamsOpt = DEFAULT_PARAMS,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON lines")] = False,
) -> None:
    """Every promotion decision, review and rollback, oldest first."""
    import json

    from mlplatform.registry import promote as stage

    records = stage.history_table(setup(params)[0])
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
def lineage(
    version: Annotated[
        str, typer.Argument(help="a version (3), an alias (@champion) or models:/name@alias")
    ],
    params: ParamsOpt = DEFAULT_PARAMS,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for machines")] = False,
) -> None:
    """Where a registered version came from: code, data, params, search, gates, sign-offs."""
    import json

    from mlplatform import tracking
    from mlplatform.registry import lineage as lin

    loaded, _ = setup(params)
    client, _ = tracking.setup(loaded)
    name = loaded.registry.model_name
    info = lin.gather(client, loaded, name, lin.resolve_version(client, name, version))
    if as_json:
        typer.echo(json.dumps({**info, "problems": lin.problems(info)}, indent=2, default=str))
        return
    for line, warn in lin.render(info):
        typer.secho(line, fg=typer.colors.RED if warn else None)
