"""Locks: a POSIX record lock on a file (local stores), a PostgreSQL session advisory lock
(team mode).

Read-decide-apply in the registry happens under a lock per registered model, so two
promotions at once run one after the other: no lost update, no lost record.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlplatform.errors import RegistryError
from mlplatform.postgres import is_postgres, pg_connect

log = logging.getLogger(__name__)


def _lock_key(name: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"mlplatform:{name}".encode()).digest()[:8], "big", signed=True
    )


# Client-side TCP keepalives for the lock's idle session (a firewall or NAT keeps it open,
# and the client notices a dead server); options in the URL's query take precedence.
_LOCK_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 60,
    "keepalives_interval": 10,
    "keepalives_count": 6,
}


def _keep_lock_session(cur: Any) -> None:
    """Settings for the session that holds an advisory lock.

    The session sits idle while the work runs (a whole search, for a study lock): a
    server-side idle_session_timeout would end it and silently drop the lock. Instead the
    server probes the client, so a holder whose machine died or dropped off the network
    loses the lock in about 2 minutes (the server's default is 2 hours).
    """
    import psycopg2

    with contextlib.suppress(psycopg2.errors.UndefinedObject):  # PostgreSQL < 14
        cur.execute("SET idle_session_timeout = 0")
    # The server's side of the same keepalive timing the client uses.
    for name in ("keepalives_idle", "keepalives_interval", "keepalives_count"):
        cur.execute(f"SET tcp_{name} = %s", (_LOCK_KEEPALIVES[name],))


@contextlib.contextmanager
def pg_advisory_lock(uri: str, key: str, timeout_s: float, busy: str) -> Iterator[None]:
    """A PostgreSQL session advisory lock on ``key``, held while the block runs.

    Raises:
        MlplatformError: not taken within timeout_s (``busy`` says who holds it).
    """
    import psycopg2

    conn = pg_connect(uri, **_LOCK_KEEPALIVES)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            _keep_lock_session(cur)
            # 0 would disable the timeout in PostgreSQL: wait at least 1 ms.
            cur.execute("SET lock_timeout = %s", (f"{max(1, int(timeout_s * 1000))}ms",))
            try:
                cur.execute("SELECT pg_advisory_lock(%s)", (_lock_key(key),))
            except psycopg2.errors.LockNotAvailable:
                raise RegistryError(busy) from None
        yield
    finally:
        with contextlib.suppress(Exception), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(key),))
        conn.close()


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float, busy: str) -> Iterator[None]:
    """A POSIX record lock on ``path``: held by this process only (not by forked children).

    Raises:
        MlplatformError: not taken within timeout_s.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a") as fh:
        while True:
            try:
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    raise RegistryError(busy) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.lockf(fh, fcntl.LOCK_UN)


def _sqlite_path(uri: str) -> Path:
    """The database file of a sqlite URI, absolute (so every working directory agrees)."""
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).resolve()


@contextlib.contextmanager
def registry_lock(
    uri: str, model_name: str, state_dir: Path, timeout_s: float = 300
) -> Iterator[None]:
    """Serialise read-decide-apply for one registered model of the registry at ``uri``.

    Raises:
        RegistryError: the lock could not be taken within timeout_s.
    """
    busy = f"registered model '{model_name}': another registry change holds the lock"
    if is_postgres(uri):
        with pg_advisory_lock(uri, f"registry:{model_name}", timeout_s, busy):
            yield
        return
    if uri.startswith("sqlite:///"):
        db = _sqlite_path(uri)
        path = db.with_name(f"{db.name}.{model_name}.lock")
    else:
        # A remote tracking server: the lock only covers this machine.
        log.warning("registry URI %s: the registry lock covers this machine only", uri)
        digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
        path = state_dir / f"registry-{digest}-{model_name}.lock"
    with file_lock(path, timeout_s, f"{busy} ({path})"):
        yield
