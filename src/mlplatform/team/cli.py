"""``mlplatform server`` (start the shared tracking server) and ``server add-user``.

A thin typer layer over ``server`` and ``auth``: mounted on the main CLI with
``app.add_typer(mlplatform.team.cli.app, name="server")``; ``python -m mlplatform.team``
runs it on its own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from mlplatform.errors import MlplatformError
from mlplatform.team.settings import Permission, ServerSettings, resolve

NEW_USER_PASSWORD_VAR = "MLPLATFORM_NEW_USER_PASSWORD"

app = typer.Typer(
    help="The shared MLflow tracking server of team mode (PostgreSQL, proxied artifacts).",
    add_completion=False,
)


def _base(params_path: Path | None) -> ServerSettings | None:
    """The ``server`` section of params.yaml, when the file is there and has one."""
    path = params_path or Path("params.yaml")
    if params_path is None and not path.is_file():
        return None
    from mlplatform.config import load_params

    return getattr(load_params(path), "server", None)


@app.callback(invoke_without_command=True)
def server(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="interface to bind [127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="port [5000]")] = None,
    workers: Annotated[int | None, typer.Option(help="uvicorn workers [2]")] = None,
    backend_uri: Annotated[
        str | None, typer.Option(help="PostgreSQL URI of the backend store (created if missing)")
    ] = None,
    artifacts: Annotated[
        str | None, typer.Option(help="artifacts destination: a folder or object-store URI")
    ] = None,
    allowed_hosts: Annotated[
        str | None, typer.Option(help="comma-separated Host headers to accept")
    ] = None,
    auth: Annotated[
        bool | None, typer.Option("--auth/--no-auth", help="basic auth (MLflow basic-auth app)")
    ] = None,
    default_permission: Annotated[
        str | None, typer.Option(help="permission of signed-in users without a grant [READ]")
    ] = None,
    params: Annotated[Path | None, typer.Option("--params", "-p", help="params file")] = None,
) -> None:
    """Start the tracking server in the foreground and print the URI to export."""
    if ctx.invoked_subcommand is not None:
        return
    from mlplatform.team.server import serve

    settings = resolve(
        _base(params),
        host=host,
        port=port,
        workers=workers,
        backend_uri=backend_uri,
        artifacts_destination=artifacts,
        allowed_hosts=allowed_hosts.split(",") if allowed_hosts else None,
        auth=auth,
        default_permission=default_permission,
    )
    raise typer.Exit(serve(settings))


@app.command("add-user")
def add_user(
    username: Annotated[str, typer.Argument(help="the user to create or grant")],
    permission: Annotated[
        str, typer.Option(help="READ, USE, EDIT, MANAGE or NO_PERMISSIONS")
    ] = "READ",
    experiment: Annotated[
        list[str] | None, typer.Option(help="experiment name or id (repeatable)")
    ] = None,
    model: Annotated[list[str] | None, typer.Option(help="registered model (repeatable)")] = None,
    uri: Annotated[str | None, typer.Option(help="the server [MLFLOW_TRACKING_URI]")] = None,
) -> None:
    """Create a user and grant it a permission, as the admin in MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD. The new user's password comes from
    MLPLATFORM_NEW_USER_PASSWORD or a hidden prompt, never from the command line."""
    from mlplatform.errors import ConfigError
    from mlplatform.team.auth import add_user as grant

    if permission not in Permission.__args__:
        raise ConfigError(f"--permission {permission}: expected one of {Permission.__args__}")
    target = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not target or not target.startswith(("http://", "https://")):
        raise ConfigError("--uri: give the server's http(s) address (or set MLFLOW_TRACKING_URI)")
    password = os.environ.get(NEW_USER_PASSWORD_VAR)
    if password is None and sys.stdin.isatty():
        password = typer.prompt(
            f"password for {username}", hide_input=True, confirmation_prompt=True
        )
    for line in grant(target, username, password, permission, experiment or (), model or ()):
        typer.echo(line)


def main() -> None:
    """Entry point: expected mistakes print one line and exit non-zero."""
    try:
        app()
    except MlplatformError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(exc.exit_code)
