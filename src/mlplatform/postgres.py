"""PostgreSQL connections for the project's own use (locks), with one-line errors that
never show a password.
"""

from __future__ import annotations

from typing import Any

from mlplatform.errors import RegistryError


def pg_connect(uri: str, **defaults: Any) -> Any:
    """A psycopg2 connection for a SQLAlchemy PostgreSQL URL (query options included, and
    preferred over ``defaults``)."""
    import psycopg2
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    kwargs = {
        **defaults,
        "host": url.host,
        "port": url.port,
        "dbname": url.database,
        "user": url.username,
        "password": url.password,
        **{k: (v if isinstance(v, str) else v[-1]) for k, v in url.query.items()},
    }
    try:
        return psycopg2.connect(**{k: v for k, v in kwargs.items() if v is not None})
    except psycopg2.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "no reason"
        raise RegistryError(
            f"{url.render_as_string(hide_password=True)}: cannot connect ({reason})"
        ) from None


def is_postgres(uri: str | None) -> bool:
    """Is this a PostgreSQL URL (any SQLAlchemy driver)?"""
    return bool(uri) and uri.startswith(("postgresql", "postgres"))
