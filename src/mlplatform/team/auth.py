"""Basic auth for the tracking server (MLflow's ``basic-auth`` app, ``mlflow[auth]``).

MLflow reads its auth settings from an ini file named by ``MLFLOW_AUTH_CONFIG_PATH`` and
the admin's password from ``MLFLOW_AUTH_ADMIN_PASSWORD``. Nothing secret is committed: the
ini is generated at each start into a fresh private folder (0700, file 0600) and holds no
password of its own; the admin password stays in the environment. MLflow uses it only to
create the admin the first time the auth store is empty (later starts keep the stored
password; change it with the update-password API).

The Flask secret key (CSRF protection of the sign-up form) must be the same in every worker:
``mlflow server`` hands its environment to all uvicorn workers, so a key generated once per
start is shared by them. Several servers behind one address need the same key: set
``MLFLOW_FLASK_SERVER_SECRET_KEY`` yourself then.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from mlplatform.team.database import ensure_database, is_postgres, sibling
from mlplatform.team.settings import ServerError, ServerSettings

PASSWORD_VAR = "MLFLOW_AUTH_ADMIN_PASSWORD"
USERNAME_VAR = "MLFLOW_AUTH_ADMIN_USERNAME"
SECRET_KEY_VAR = "MLFLOW_FLASK_SERVER_SECRET_KEY"
CONFIG_PATH_VAR = "MLFLOW_AUTH_CONFIG_PATH"
MIN_PASSWORD = 12  # MLflow's password policy (mlflow.utils.validation._validate_password)


def admin_username(settings: ServerSettings, env: Mapping[str, str]) -> str:
    """The admin's name: MLflow's MLFLOW_AUTH_ADMIN_USERNAME wins over the settings."""
    return env.get(USERNAME_VAR) or settings.admin_username


def check_password(env: Mapping[str, str], var: str = PASSWORD_VAR) -> str:
    """The password in ``var``.

    Raises:
        ServerError: it is unset, empty or shorter than MLflow accepts.
    """
    password = env.get(var)
    if not password:
        raise ServerError(
            f"basic auth needs the admin password in the environment: export {var}=... "
            "(it is never read from a file)"
        )
    if len(password) < MIN_PASSWORD:
        raise ServerError(f"{var}: the password must be at least {MIN_PASSWORD} characters")
    return password


def auth_db_uri(settings: ServerSettings) -> str:
    """Where users and permissions live: next to the backend store unless told otherwise."""
    if settings.auth_db_uri:
        return settings.auth_db_uri
    if is_postgres(settings.backend_uri):
        return sibling(settings.backend_uri, "_auth")
    return f"sqlite:///{Path(settings.state_dir).resolve() / 'basic_auth.db'}"


def render_config(settings: ServerSettings, database_uri: str, username: str) -> str:
    """The basic_auth.ini MLflow reads; no password in it (the admin's comes from env)."""
    return (
        "[mlflow]\n"
        f"default_permission = {settings.default_permission}\n"
        f"database_uri = {database_uri}\n"
        f"admin_username = {username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
        f"auth_cache_ttl_seconds = {settings.auth_cache_ttl_s}\n"
    )


def write_private(folder: Path, name: str, text: str) -> Path:
    """Write ``text`` to a new file readable by this user only (0600), in ``folder``."""
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


def prepare(settings: ServerSettings, env: Mapping[str, str]) -> tuple[dict[str, str], Path]:
    """Check the secrets, create the auth database, write the auth config.

    Returns:
        (variables to add to the server's environment, the private folder holding the
        config: remove it once the server has stopped).

    Raises:
        ServerError: the admin password is missing or too short, or the auth database
            cannot be reached or created.
    """
    from mlplatform.team.database import with_driver

    check_password(env)
    database_uri = with_driver(auth_db_uri(settings))
    if is_postgres(database_uri):
        ensure_database(database_uri)
    state = Path(settings.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="auth-", dir=state))  # mkdtemp: mode 0700
    config = write_private(
        folder,
        "basic_auth.ini",
        render_config(settings, database_uri, admin_username(settings, env)),
    )
    extra = {
        CONFIG_PATH_VAR: str(config.resolve()),
        SECRET_KEY_VAR: env.get(SECRET_KEY_VAR) or secrets.token_urlsafe(32),
    }
    return extra, folder


def _one_line(exc: Exception) -> str:
    text = str(getattr(exc, "message", exc)).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def add_user(
    tracking_uri: str,
    username: str,
    password: str | None,
    permission: str,
    experiments: Iterable[str] = (),
    models: Iterable[str] = (),
) -> list[str]:
    """Create a user (unless it exists) and grant it ``permission`` on experiments/models.

    Runs as the admin named by MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD. An
    existing grant is replaced by the new level.

    Args:
        tracking_uri: the server, e.g. ``http://127.0.0.1:5000``.
        password: the new user's password (ignored when the user exists already).
        permission: READ, USE, EDIT, MANAGE or NO_PERMISSIONS.
        experiments: experiment names or ids.
        models: registered model names.

    Returns:
        What was done, one line each.

    Raises:
        ServerError: the admin's credentials are refused, an experiment does not exist,
            or the server rejects the request.
    """
    import warnings

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with warnings.catch_warnings():
        # Importing mlflow.server warns about starlette internals: not the user's concern.
        warnings.simplefilter("ignore")
        from mlflow.server.auth.client import AuthServiceClient

    auth = AuthServiceClient(tracking_uri)
    done: list[str] = []
    try:
        try:
            auth.get_user(username)
            done.append(f"user '{username}' exists: password unchanged")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            if password is None or len(password) < MIN_PASSWORD:
                raise ServerError(
                    f"user '{username}': a password of at least {MIN_PASSWORD} characters "
                    "is needed to create it"
                ) from None
            auth.create_user(username, password)
            done.append(f"user '{username}' created")
        client = MlflowClient(tracking_uri)
        targets = [("experiment", _experiment_id(client, e), e) for e in experiments]
        targets += [("registered_model", m, m) for m in models]
        for kind, resource_id, label in targets:
            _grant(auth, username, kind, resource_id, permission)
            done.append(f"{permission} on {kind.replace('_', ' ')} '{label}'")
    except MlflowException as exc:
        raise ServerError(f"{tracking_uri}: {_explain(exc)}") from None
    return done


def _explain(exc: Exception) -> str:
    code = getattr(exc, "error_code", "")
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or " 401 " in str(exc):
        return (
            "the admin's credentials were refused (set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD to an admin)"
        )
    return _one_line(exc)


def _experiment_id(client, name_or_id: str) -> str:
    exp = client.get_experiment_by_name(name_or_id)
    if exp is not None:
        return exp.experiment_id
    if name_or_id.isdigit():
        return client.get_experiment(name_or_id).experiment_id
    raise ServerError(f"experiment '{name_or_id}' does not exist on this server")


def _grant(auth, username: str, kind: str, resource_id: str, permission: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        auth.grant_user_permission(username, kind, resource_id, permission)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        # MLflow has no update for a per-user grant: replace it.
        auth.revoke_user_permission(username, kind, resource_id)
        auth.grant_user_permission(username, kind, resource_id, permission)
