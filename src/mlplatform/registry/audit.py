"""The append-only audit history of a registered model.

Every decision, review and rollback is one run in an audit experiment (``<model>-audit``):
records are only ever added, each with a sequence number given out under the registry lock.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

AUDIT_TAG = "mlplatform.audit"


def audit_experiment_name(model_name: str) -> str:
    return f"{model_name}-audit"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
