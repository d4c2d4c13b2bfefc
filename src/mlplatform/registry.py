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


def _pg_dsn(uri: str) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    parts = {
        "host": url.host,
        "port": url.port,
        "dbname": url.database,
        "user": url.username,
        "password": url.password,
    }
    return " ".join(f"{k}={v}" for k, v in parts.items() if v is not None)


@contextlib.contextmanager
def lock(uri: str, model_name: str, state_dir: Path, timeout_s: float = 300) -> Iterator[None]:
    """Serialise read-decide-apply for one registered model.

    Raises:
        RegistryError: the lock could not be taken within timeout_s.
    """
    if uri.startswith(("postgresql", "postgres")):
        import psycopg2

        conn = psycopg2.connect(_pg_dsn(uri))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                # 0 would disable the timeout in PostgreSQL: wait at least 1 ms.
                cur.execute("SET lock_timeout = %s", (f"{max(1, int(timeout_s * 1000))}ms",))
                try:
                    cur.execute("SELECT pg_advisory_lock(%s)", (_lock_key(model_name),))
                except psycopg2.errors.LockNotAvailable:
                    raise RegistryError(
                        f"registered model '{model_name}': another promotion holds the lock"
                    ) from None
            yield
        finally:
            with contextlib.suppress(Exception), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(model_name),))
            conn.close()
        return
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///") + f".{model_name}.lock")
    else:
        # A remote tracking server: the lock only covers this machine.
        log.warning("tracking URI %s: promotion lock covers this machine only", uri)
        path = state_dir / f"registry-{model_name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "w") as fh:
        while True:
            try:
                # POSIX record lock: held by this process only (not by forked children).
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RegistryError(
                        f"registered model '{model_name}': another promotion holds {path}"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.lockf(fh, fcntl.LOCK_UN)


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


def _audit_runs(client: Any, model_name: str) -> list[Any]:
    exp = client.get_experiment_by_name(audit_experiment_name(model_name))
    if exp is None:
        return []
    return client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{AUDIT_TAG}` = 'true'", max_results=50_000
    )


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
    from mlflow.entities import RunTag

    exp_id = _audit_experiment(client, model_name)
    # Counted from the runs themselves, so a record can never reuse a sequence number.
    record = {**record, "seq": len(_audit_runs(client, model_name)) + 1}
    record.setdefault("when", now_iso())
    compact = _compact(record)
    run = client.create_run(
        exp_id, run_name=f"{record['seq']:04d}-{record['action']}-v{record.get('version')}"
    )
    tags = {
        AUDIT_TAG: "true",
        "record": compact,
        "action": record["action"],
        "decision": str(record.get("decision")),
        "version": str(record.get("version")),
        "actor": str(record.get("actor")),
        "seq": str(record["seq"]),
    }
    client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
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
