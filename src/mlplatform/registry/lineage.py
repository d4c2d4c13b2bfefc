"""Lineage: everything that explains one registered version, in one place.

For a version (or an alias such as ``@champion``): the git commit and whether the tree was
dirty, the dvc.lock hashes of its data and of the stages before training, whether the data
matched dvc.lock, the params hash and the params that differ from today's params.yaml, the
search's parent run and best trial, the test metrics, where its card is, every gate
outcome, and every approval, review and rollback (who, when, why).

``gather`` reads the store (the version, its training run, the audit history); ``problems``
and ``render`` are pure.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from mlplatform.config import Params
from mlplatform.errors import RegistryError
from mlplatform.registry import audit, versions

PARAMS_ARTIFACT = "lineage/params.json"  # written by the train stage
# Test metrics the report shows first (all of them are in --json).
HEADLINE = (
    "average_precision",
    "roc_auc",
    "precision",
    "recall",
    "f1",
    "f1_macro",
    "accuracy",
    "brier",
    "log_loss",
)


def resolve_version(client: Any, name: str, ref: str) -> str:
    """A version number from ``3``, ``v3``, ``@champion`` or ``models:/name@alias``.

    Raises:
        RegistryError: no such version or alias.
    """
    ref = str(ref).strip()
    m = re.fullmatch(r"(?:models:/[^/@]+)?(?:/|@)?(v?\d+|[\w-]+)", ref)
    token = m.group(1) if m else ref
    if re.fullmatch(r"v?\d+", token):
        version = token.lstrip("v")
        versions.get_version(client, name, version)  # raises naming the version
        return version
    version = versions.alias_version(client, name, token)
    if version is None:
        raise RegistryError(f"registered model '{name}' has no alias '{token}'")
    return version


def flatten(payload: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys (lists stay values)."""
    if not isinstance(payload, dict):
        return {prefix: payload}
    out: dict[str, Any] = {}
    for key, value in payload.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def params_diff(then: dict[str, Any], now: dict[str, Any]) -> list[dict[str, Any]]:
    """Keys whose value differs between the params a version was trained with and today's."""
    a, b = flatten(then), flatten(now)
    return [
        {"key": k, "then": a.get(k), "now": b.get(k)}
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def _download_json(run_id: str, path: str) -> Any | None:
    import mlflow

    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=tmp
            )
            return json.loads(Path(local).read_text())
    except Exception:
        return None


def _prefixed(tags: dict[str, str], prefix: str) -> dict[str, str]:
    return {k[len(prefix) :]: v for k, v in sorted(tags.items()) if k.startswith(prefix)}


def gather(client: Any, params: Params, name: str, version: str) -> dict[str, Any]:
    """The lineage of one version, as plain data (``--json`` prints it as it is).

    Raises:
        RegistryError: the version does not exist.
    """
    from mlflow.exceptions import MlflowException

    mv = versions.get_version(client, name, version)
    try:
        run = client.get_run(mv.run_id)
        run_tags = dict(run.data.tags)
        artifact_uri = run.info.artifact_uri
    except MlflowException:
        run_tags, artifact_uri = {}, None
    tags = {**run_tags, **dict(mv.tags)}  # the version's copy wins
    trained_with = _download_json(mv.run_id, PARAMS_ARTIFACT) if run_tags else None
    search_id = tags.get("mlplatform.tune_run_id")
    search: dict[str, Any] = {
        "parent_run_id": search_id,
        "study": tags.get("optuna.study_name"),
        "best_trial": tags.get("mlplatform.best_trial"),
    }
    if search_id:
        try:
            parent = client.get_run(search_id)
            search["trials"] = {
                k[2:]: int(v) for k, v in parent.data.metrics.items() if k.startswith("n_")
            }
            search["best_trial"] = search["best_trial"] or parent.data.tags.get("best_trial_number")
        except MlflowException:
            search["missing"] = True
    records = audit.history(client, name)
    mine = [r for r in records if str(r.get("version")) == str(version)]
    return {
        "model_name": name,
        "version": str(version),
        "aliases": sorted(a for a, v in versions.aliases(client, name).items() if v == version),
        "run_id": mv.run_id,
        "source": mv.source,
        "git": {
            "commit": tags.get("mlflow.source.git.commit"),
            "dirty": _bool(tags.get("mlplatform.git_dirty")),
        },
        "data": {
            "source": tags.get("mlplatform.data_source"),
            "dvc_lock": _prefixed(tags, "dvc.lock."),
            "matches_dvc_lock": {
                k: _bool(v) for k, v in _prefixed(tags, "mlplatform.dvc_lock_matches.").items()
            },
            "files": {
                k.removesuffix(".md5"): v for k, v in _prefixed(tags, "mlplatform.data.").items()
            },
        },
        "stages": _prefixed(tags, "dvc.stage."),
        "params": {
            "hash": tags.get("mlplatform.params_hash"),
            "hash_now": params.section_hash(),
            "recorded": trained_with is not None,
            "differs_from_current": None
            if trained_with is None
            else params_diff(trained_with, params.model_dump(mode="json")),
        },
        "search": search,
        "test_metrics": {
            k: float(v) for k, v in _prefixed(dict(mv.tags), "test.").items() if _is_number(v)
        },
        "card": {
            "run_artifacts": None if artifact_uri is None else f"{artifact_uri}/model_card/",
            "versioned": f"model_card/model_card_v{version}.md",
        },
        "gates": [
            {
                "seq": r["seq"],
                "when": r["when"],
                "decision": r.get("decision"),
                "reason": r.get("reason"),
                "rules": [
                    {"name": x["name"], "outcome": x["outcome"]} for x in r.get("rules") or []
                ],
                "dry_run": r.get("dry_run", False),
            }
            for r in mine
            if r["action"] == "promote"
        ],
        "path": [
            f"{r['action']}:{r.get('decision')}"
            for r in mine
            if r["action"] in ("deploy", "promote", "signoff", "release", "review", "shadow", "ab")
        ],
        "events": [
            {
                k: r.get(k)
                for k in (
                    "seq",
                    "when",
                    "action",
                    "decision",
                    "actor",
                    "role",
                    "reason",
                    "champion_before",
                    "champion_after",
                )
            }
            for r in records
            if str(version) in {str(r.get(k)) for k in ("version", "champion_before")}
        ],
    }


def _bool(text: str | None) -> bool | None:
    return None if text in (None, "", "none", "None") else str(text).lower() == "true"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def problems(info: dict[str, Any]) -> list[str]:
    """What makes a version's lineage doubtful (empty when it is clean)."""
    out = []
    if info["git"]["dirty"]:
        out.append(f"trained from a dirty tree (commit {info['git']['commit']} plus changes)")
    elif info["git"]["commit"] is None:
        out.append("no git commit recorded")
    matches = info["data"]["matches_dvc_lock"]
    if not matches:
        out.append("no record of whether its data matched dvc.lock")
    for folder, ok in matches.items():
        if ok is False:
            out.append(f"trained on {folder} that differs from what dvc.lock records")
        elif ok is None:
            out.append(f"{folder} could not be checked against dvc.lock")
    return out


def render(info: dict[str, Any]) -> list[tuple[str, bool]]:
    """The human report: (line, is_warning) pairs."""
    lines: list[tuple[str, bool]] = []

    def add(text: str, warn: bool = False) -> None:
        lines.append((text, warn))

    aliases = f" ({', '.join(info['aliases'])})" if info["aliases"] else ""
    add(f"{info['model_name']} v{info['version']}{aliases}: training run {info['run_id']}")
    for problem in problems(info):
        add(f"  ! {problem}", True)
    git = info["git"]
    add(
        f"  git       {git['commit'] or '-'}{' (dirty)' if git['dirty'] else ''}",
        bool(git["dirty"]),
    )
    data = info["data"]
    add(f"  data      {data['source']}")
    for path, md5 in data["dvc_lock"].items():
        ok = data["matches_dvc_lock"].get(path)
        note = {True: "matches dvc.lock", False: "DIFFERS from dvc.lock", None: "not checked"}[ok]
        add(f"            {path} {md5} ({note})", ok is not True)
    for split, md5 in data["files"].items():
        add(f"            {split}: md5 {md5}")
    for stage, digest in info["stages"].items():
        add(f"  stage     {stage}: dvc.lock entry {digest}")
    p = info["params"]
    add(f"  params    hash {p['hash']} (today {p['hash_now']})")
    if p["differs_from_current"] is None:
        add("            (the params it was trained with were not recorded)", True)
    elif not p["differs_from_current"]:
        add("            same as today's params.yaml")
    for d in p["differs_from_current"] or []:
        add(f"            {d['key']}: {d['then']!r} then, {d['now']!r} now", True)
    s = info["search"]
    trials = ", ".join(f"{v} {k}" for k, v in (s.get("trials") or {}).items())
    add(
        f"  search    parent run {s['parent_run_id']}, study {s['study']}, best trial "
        f"{s['best_trial']}"
        + (f" ({trials})" if trials else "")
        + (" - NOT IN THIS STORE" if s.get("missing") else ""),
        bool(s.get("missing")),
    )
    shown = [k for k in HEADLINE if k in info["test_metrics"]] or sorted(info["test_metrics"])
    metrics = ", ".join(f"{k} {info['test_metrics'][k]:.4f}" for k in shown)
    add(f"  test      {metrics or '-'}")
    add(f"  card      {info['card']['run_artifacts']} ({info['card']['versioned']})")
    for g in info["gates"]:
        rules = ", ".join(f"{r['name']}={r['outcome']}" for r in g["rules"])
        dry = " [dry run]" if g["dry_run"] else ""
        add(f"  gate #{g['seq']} {g['when'][:19]} {g['decision']}{dry}: {g['reason']}")
        if rules:
            add(f"            {rules}")
    if info.get("path"):
        add(f"  path      {' -> '.join(info['path'])}")
    for e in info["events"]:
        who = e["actor"] + (f" ({e['role']})" if e.get("role") else "")
        add(
            f"  {e['action']:9} #{e['seq']} {str(e['when'])[:19]} {e['decision']} by {who}: "
            f"{e['reason']} (champion {e['champion_before'] or '-'} -> "
            f"{e['champion_after'] or '-'})"
        )
    return lines
