"""The thin layer that touches the MLflow model registry.

- Aliases are the mechanism: ``champion`` serves, ``challenger`` waits for review,
  ``previous-champion`` keeps the champion it replaced, for rollback. Deprecated stages
  (Production / Staging / Archived) can be mirrored for tools that still read them.
- Every decision, review and rollback is recorded on the model version (tags) and as one
  run in an audit experiment (``<model>-audit``), which is append-only: records are only
  ever added, each with a sequence number given out under the lock.
- Read-decide-apply happens under a lock per registered model: a PostgreSQL advisory lock
  when the store is PostgreSQL (team mode), a file lock next to a local sqlite store.
  Two promotions at once therefore run one after the other: no lost update, no lost record.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlplatform.errors import RegistryError

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous-champion"
STAGE_OF = {CHAMPION: "Production", CHALLENGER: "Staging"}
AUDIT_TAG = "mlplatform.audit"
MAX_TAG = 5000


def audit_experiment_name(model_name: str) -> str:
    return f"{model_name}-audit"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------------------
# Locking.


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
    return bool(uri) and uri.startswith(("postgresql", "postgres"))


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
def lock(uri: str, model_name: str, state_dir: Path, timeout_s: float = 300) -> Iterator[None]:
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


# --------------------------------------------------------------------------------------
# Versions and aliases.


def alias_version(client: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def aliases(client: Any, name: str) -> dict[str, str]:
    return {
        a: v
        for a in (CHAMPION, CHALLENGER, PREVIOUS)
        if (v := alias_version(client, name, a)) is not None
    }


def get_version(client: Any, name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(f"registered model '{name}' has no version {version}") from None


def ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description="Registered by mlplatform; see the versions' model cards."
        )


def find_version_for_run(client: Any, name: str, run_id: str) -> str | None:
    for mv in client.search_model_versions(f"name = '{name}'"):
        if mv.run_id == run_id and mv.tags.get("mlplatform.train_run_id") == run_id:
            return str(mv.version)
    return None


def set_alias(client: Any, name: str, alias: str, version: str | None, mirror: bool) -> None:
    """Point an alias at a version (None removes it); mirror to stages if asked."""
    if version is None:
        if alias_version(client, name, alias) is not None:
            client.delete_registered_model_alias(name, alias)
        return
    client.set_registered_model_alias(name, alias, str(version))
    if mirror and alias in STAGE_OF:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            client.transition_model_version_stage(name, str(version), STAGE_OF[alias])


def archive_stage(client: Any, name: str, version: str, mirror: bool) -> None:
    if mirror:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            client.transition_model_version_stage(name, str(version), "Archived")


def tag_version(client: Any, name: str, version: str, tags: dict[str, Any]) -> None:
    for key, value in tags.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        client.set_model_version_tag(name, str(version), key, text[:MAX_TAG])


# --------------------------------------------------------------------------------------
# The append-only audit history.


def _audit_experiment(client: Any, model_name: str) -> str:
    name = audit_experiment_name(model_name)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags={AUDIT_TAG: "true"})
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _audit_runs(client: Any, model_name: str, deleted_too: bool = False) -> list[Any]:
    from mlflow.entities import ViewType

    exp = client.get_experiment_by_name(audit_experiment_name(model_name))
    if exp is None:
        return []
    return client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{AUDIT_TAG}` = 'true'",
        run_view_type=ViewType.ALL if deleted_too else ViewType.ACTIVE_ONLY,
        max_results=50_000,
    )


def _next_seq(client: Any, model_name: str) -> int:
    """One more than any sequence number given out, deleted audit runs included (so a
    deleted record leaves a visible gap rather than a reused number)."""
    seqs = [0]
    for run in _audit_runs(client, model_name, deleted_too=True):
        try:
            seqs.append(int(run.data.tags["seq"]))
        except (KeyError, ValueError):
            continue
    return max(seqs) + 1


def history(client: Any, model_name: str) -> list[dict[str, Any]]:
    """Every recorded event for the model, oldest first.

    Records come from the audit runs' ``record`` tag (shortened if needed; the whole record
    is the run's record.json).
    """
    records = []
    for run in _audit_runs(client, model_name):
        try:
            records.append(json.loads(run.data.tags["record"]))
        except (KeyError, json.JSONDecodeError):  # never written by append(); skip
            continue
    return sorted(records, key=lambda r: r["seq"])


def _compact(record: dict[str, Any], limit: int = 7900) -> str:
    """The record as JSON within MLflow's tag limit: drop bulky parts, then shorten text."""
    text = json.dumps(record, sort_keys=True, default=str)
    if len(text) <= limit:
        return text
    small = {k: v for k, v in record.items() if k not in ("rules", "candidate", "champion")}
    small["shortened"] = True
    if isinstance(small.get("reason"), str) and len(small["reason"]) > 1000:
        small["reason"] = small["reason"][:1000] + "..."
    text = json.dumps(small, sort_keys=True, default=str)
    if len(text) > limit:  # unusually long free text elsewhere: keep the essentials
        keep = (
            "seq",
            "when",
            "action",
            "version",
            "decision",
            "actor",
            "champion_before",
            "champion_after",
            "model_name",
            "dry_run",
        )
        text = json.dumps(
            {**{k: small.get(k) for k in keep}, "shortened": True}, sort_keys=True, default=str
        )
    return text


def append(client: Any, model_name: str, record: dict[str, Any]) -> dict[str, Any]:
    """Add one event to the history (call under the lock: sequence numbers must not repeat).

    The record goes into an audit run's tags (queryable) and, whole, into record.json.
    """
    exp_id = _audit_experiment(client, model_name)
    record = {**record, "seq": _next_seq(client, model_name)}
    record.setdefault("when", now_iso())
    compact = _compact(record)
    tags = {
        AUDIT_TAG: "true",
        "record": compact,
        "action": record["action"],
        "decision": str(record.get("decision")),
        "version": str(record.get("version")),
        "actor": str(record.get("actor")),
        "seq": str(record["seq"]),
    }
    # Tags go in with the run itself: there is never an audit run without its record.
    run = client.create_run(
        exp_id,
        run_name=f"{record['seq']:04d}-{record['action']}-v{record.get('version')}",
        tags=tags,
    )
    client.log_dict(run.info.run_id, record, "record.json")
    client.set_terminated(run.info.run_id, "FINISHED")
    return record


def approvals_for(records: list[dict[str, Any]], version: str) -> list[dict[str, Any]]:
    """History rows that concern one version, shaped for the model card."""
    rows = []
    for r in records:
        involved = {
            str(r.get("version")),
            str(r.get("champion_before")),
            str(r.get("champion_after")),
        }
        if str(version) in involved:
            rows.append(
                {
                    "when": r["when"][:19].replace("T", " "),
                    "action": r["action"],
                    "version": r.get("version"),
                    "decision": r.get("decision"),
                    "actor": r.get("actor"),
                    "reason": (r.get("reason") or "")[:200],
                }
            )
    return rows
