"""PostgreSQL databases for the tracking server: URIs, create if missing, drop.

SQLAlchemy 2.1 maps a bare ``postgresql://`` URI to psycopg 3, which the project does not
install; the pinned driver is psycopg2, so URIs without a driver are given it explicitly.
Every message shows a URI with its password masked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from mlplatform.team.settings import ServerError

MAINTENANCE_DB = "postgres"
_DRIVERLESS = ("postgresql", "postgres")
# SQLSTATE codes (PostgreSQL appendix A).
_INVALID_CATALOG_NAME = "3D000"  # the database does not exist
_DUPLICATE_DATABASE = "42P04"  # someone else created it between our check and CREATE


def is_postgres(uri: str | None) -> bool:
    return bool(uri) and uri.split("://", 1)[0].split("+", 1)[0] in _DRIVERLESS


def with_driver(uri: str) -> str:
    """The URI with an explicit psycopg2 driver when it names none (other URIs unchanged)."""
    scheme, sep, rest = uri.partition("://")
    if sep and scheme in _DRIVERLESS:
        return f"postgresql+psycopg2://{rest}"
    return uri


def masked(uri: str) -> str:
    """The URI as it may be printed: its password replaced by ``***``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(uri).render_as_string(hide_password=True)
    except ArgumentError:
        # Unparseable: show the scheme only, never what might be a password.
        return uri.split("://", 1)[0] + "://..."


def database_name(uri: str) -> str:
    """The database a PostgreSQL URI points at.

    Raises:
        ServerError: it names none.
    """
    from sqlalchemy.engine import make_url

    name = make_url(with_driver(uri)).database
    if not name:
        raise ServerError(f"{masked(uri)}: the URI names no database (add /mlflow)")
    return name


def sibling(uri: str, suffix: str) -> str:
    """A URI for the database ``<name><suffix>`` on the same server, same credentials."""
    from sqlalchemy.engine import make_url

    url = make_url(with_driver(uri))
    return url.set(database=f"{database_name(uri)}{suffix}").render_as_string(hide_password=False)


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", exc)
    text = str(orig).strip()
    return text.splitlines()[0][:200] if text else type(orig).__name__


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(getattr(exc, "orig", None), "pgcode", None)


@contextlib.contextmanager
def _autocommit(uri: str, database: str | None = None) -> Iterator[Any]:
    """An AUTOCOMMIT connection (CREATE / DROP DATABASE cannot run in a transaction).

    Raises:
        ServerError: PostgreSQL refuses the connection (one line, password masked).
    """
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    url = make_url(with_driver(uri))
    if database is not None:
        url = url.set(database=database)
    engine = sa.create_engine(
        url,
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
        connect_args={"connect_timeout": 10},
    )
    try:
        try:
            conn = engine.connect()
        except sa.exc.OperationalError as exc:
            # psycopg2 gives no SQLSTATE for errors at connection time: match the text.
            missing = f'database "{url.database}" does not exist' in str(exc.orig)
            if missing or _sqlstate(exc) == _INVALID_CATALOG_NAME:
                raise LookupError(url.database) from None
            raise ServerError(f"{masked(uri)}: cannot connect ({_reason(exc)})") from None
        with conn:
            yield conn
    finally:
        engine.dispose()


def _quoted(conn: Any, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


def ensure_database(uri: str) -> bool:
    """Create the database a PostgreSQL URI names unless it exists.

    It connects to the database itself first, so a user without access to the maintenance
    database ``postgres`` can still use an existing one; CREATE DATABASE runs there.

    Returns:
        True when it was created now.

    Raises:
        ServerError: PostgreSQL refuses connections, or the database cannot be created.
    """
    import sqlalchemy as sa

    name = database_name(uri)
    try:
        with _autocommit(uri):
            return False
    except LookupError:
        pass
    try:
        with _autocommit(uri, MAINTENANCE_DB) as conn:
            conn.execute(sa.text(f"CREATE DATABASE {_quoted(conn, name)}"))
    except LookupError:
        raise ServerError(
            f"{masked(uri)}: database '{name}' does not exist and the maintenance database "
            f"'{MAINTENANCE_DB}' to create it from is missing"
        ) from None
    except sa.exc.DBAPIError as exc:
        if _sqlstate(exc) == _DUPLICATE_DATABASE:
            return False
        raise ServerError(
            f"{masked(uri)}: cannot create database '{name}' ({_reason(exc)})"
        ) from None
    return True


def drop_database(uri: str) -> None:
    """Drop the database a PostgreSQL URI names, closing its sessions (tests, benchmarks).

    Raises:
        ServerError: PostgreSQL refuses connections or the drop.
    """
    import sqlalchemy as sa

    name = database_name(uri)
    with _autocommit(uri, MAINTENANCE_DB) as conn:
        try:
            # WITH (FORCE) (PostgreSQL 13+) ends the server's pooled sessions first.
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {_quoted(conn, name)} WITH (FORCE)"))
        except sa.exc.DBAPIError as exc:
            raise ServerError(
                f"{masked(uri)}: cannot drop database '{name}' ({_reason(exc)})"
            ) from None
