"""The ``server`` params section, and how the environment and flags override it.

Precedence, highest first: a command-line flag, an ``MLPLATFORM_SERVER_*`` environment
variable, the ``server`` section of params.yaml, the defaults below. Secrets never live
here: the admin password and the Flask secret key are read from the environment only (see
``auth``), and a password inside ``backend_uri`` is only ever shown masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator

from mlplatform.errors import ConfigError, MlplatformError
from mlplatform.strict import Strict

DEFAULT_BACKEND_URI = "postgresql://postgres@127.0.0.1:5432/mlflow"
# MLflow's own permission names (mlflow.server.auth.permissions), for users without a grant.
Permission = Literal["READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS"]


class ServerError(MlplatformError):
    """The tracking server cannot start or cannot be reached (its store, port or auth)."""


class ServerSettings(Strict):
    """How ``mlplatform server`` runs the shared tracking server."""

    backend_uri: str = Field(
        DEFAULT_BACKEND_URI,
        description="SQLAlchemy URI of the backend store (PostgreSQL; created if missing)",
    )
    host: str = Field("127.0.0.1", description="Interface to bind; loopback unless told otherwise")
    port: Annotated[int, Field(ge=1, le=65535)] = 5000
    workers: Annotated[int, Field(ge=1, le=64)] = Field(
        2, description="uvicorn worker processes (MLflow's default of 4 oversubscribes 2 cores)"
    )
    artifacts_destination: str = Field(
        ".mlplatform/server/artifacts",
        description="Where proxied artifacts are stored: a local folder or an object-store URI",
    )
    allowed_hosts: list[str] | None = Field(
        None,
        description="Host headers the server accepts; None = the names of the bound address",
    )
    auth: bool = Field(False, description="Basic auth (MLflow's basic-auth app)")
    auth_db_uri: str | None = Field(
        None,
        description="Users and permissions store; None = '<backend db>_auth' on the same "
        "PostgreSQL, or a sqlite file in state_dir for a non-PostgreSQL backend",
    )
    default_permission: Permission = Field(
        "READ", description="What a signed-in user may do on resources nobody granted them"
    )
    auth_cache_ttl_s: Annotated[int, Field(ge=0, le=3600)] = Field(
        30,
        description="Seconds a checked password is cached per worker (0 = off). Each check "
        "is a deliberately slow hash (about 0.3-0.6 s of CPU here): without the cache every "
        "request pays it. A changed or deleted password reaches other workers within this time",
    )
    admin_username: str = Field("admin", min_length=1)
    state_dir: str = Field(
        ".mlplatform/server", description="Private folder for the generated auth config"
    )

    @field_validator("backend_uri", "auth_db_uri")
    @classmethod
    def _has_scheme(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError("expected a URI such as postgresql://user@host:5432/mlflow")
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not [h for h in value if h.strip()]:
            raise ValueError("name at least one host, e.g. mlflow.example.com:5000")
        return [h.strip() for h in value if h.strip()] if value is not None else None


# Environment variable -> field. Values are strings; pydantic converts and validates them.
ENV_VARS = {
    "MLPLATFORM_SERVER_BACKEND_URI": "backend_uri",
    "MLPLATFORM_SERVER_HOST": "host",
    "MLPLATFORM_SERVER_PORT": "port",
    "MLPLATFORM_SERVER_WORKERS": "workers",
    "MLPLATFORM_SERVER_ARTIFACTS": "artifacts_destination",
    "MLPLATFORM_SERVER_ALLOWED_HOSTS": "allowed_hosts",
    "MLPLATFORM_SERVER_AUTH": "auth",
    "MLPLATFORM_SERVER_AUTH_DB_URI": "auth_db_uri",
    "MLPLATFORM_SERVER_DEFAULT_PERMISSION": "default_permission",
    "MLPLATFORM_SERVER_AUTH_CACHE_TTL_S": "auth_cache_ttl_s",
    "MLPLATFORM_SERVER_STATE_DIR": "state_dir",
}


def resolve(
    base: ServerSettings | None = None,
    env: Mapping[str, str] | None = None,
    **flags: Any,
) -> ServerSettings:
    """Apply environment overrides, then flags (``None`` flags are ignored), to ``base``.

    Args:
        base: the params section (defaults when None).
        env: the environment to read (``os.environ`` when None).
        flags: field values given on the command line.

    Raises:
        ConfigError: a value is invalid; the message names the variable or flag.
    """
    import os

    env = os.environ if env is None else env
    values = (base or ServerSettings()).model_dump()
    source = {name: f"server.{name}" for name in values}
    for var, name in ENV_VARS.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        values[name] = [h for h in raw.split(",")] if name == "allowed_hosts" else raw
        source[name] = var
    for name, value in flags.items():
        if name not in values:
            raise ConfigError(f"unknown server setting '{name}'")
        if value is not None:
            values[name] = value
            source[name] = f"--{name.replace('_', '-')}"
    try:
        return ServerSettings.model_validate(values, strict=False)  # env values are strings
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "server"
        raise ConfigError(f"{source.get(name, name)}: {first['msg']}") from None
