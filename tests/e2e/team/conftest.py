"""Fixtures for the team-mode tests: a real tracking server on the real PostgreSQL
(127.0.0.1:5432, trust auth), one per test module, on a fresh database with a unique name
created by the server's own code path, on a free port. ``team_server`` stops the process
group and drops the databases even when a test fails. (Helpers are handed out as fixtures:
with --import-mode=importlib a test module cannot import this file.)"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlplatform.team.database import database_name, drop_database, with_driver
from mlplatform.team.server import Server, start
from mlplatform.team.settings import ServerSettings

PG = os.environ.get("MLPLATFORM_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_db_uri(tag: str) -> str:
    return f"{PG}/mlplatform_test_{tag}_{secrets.token_hex(4)}"


def database_exists(uri: str) -> bool:
    import sqlalchemy as sa

    engine = sa.create_engine(with_driver(f"{PG}/postgres"), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": database_name(uri)}
            ).first()
        return found is not None
    finally:
        engine.dispose()


@contextlib.contextmanager
def running_server(folder: Path, env: dict[str, str] | None = None, **fields) -> Iterator[Server]:
    """Start a server on a fresh database; stop it and drop its databases afterwards."""
    settings = ServerSettings(
        backend_uri=fields.pop("backend_uri", None) or fresh_db_uri("srv"),
        port=free_port(),
        workers=1,
        artifacts_destination=str(folder / "artifacts"),
        state_dir=str(folder / "state"),
        **fields,
    )
    dbs = [settings.backend_uri]
    if settings.auth:
        from mlplatform.team.auth import auth_db_uri

        dbs.append(auth_db_uri(settings))
    assert not any(database_exists(db) for db in dbs), "the test database must be fresh"
    server = None
    try:
        t0 = time.perf_counter()
        server = start(settings, env={**os.environ, **(env or {})}, log_path=folder / "log.txt")
        server.started_s = time.perf_counter() - t0
        yield server
    finally:
        if server is not None:
            server.stop()
        for db in dbs:
            drop_database(db)


@pytest.fixture(scope="session")
def team_server():
    """``with team_server(folder, env=..., **settings) as server:`` (see running_server)."""
    return running_server


@pytest.fixture(scope="session")
def pg():
    """PostgreSQL helpers: ``pg.base``, ``pg.fresh_uri(tag)``, ``pg.exists(uri)``,
    ``pg.free_port()``."""
    import types

    return types.SimpleNamespace(
        base=PG, fresh_uri=fresh_db_uri, exists=database_exists, free_port=free_port
    )
