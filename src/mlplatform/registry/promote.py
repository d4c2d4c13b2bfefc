"""Promote, review, roll back: the commands that move a version through the registry.

``promote`` measures the candidate and the current champion now, on the rows of the current
test split that neither was trained or validated on (so the comparison is fair; see
``fit_rows``), asks ``gates.decide`` and applies the verdict under the registry lock.
Every step leaves a record (``registry_events.record_event``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import PurePosixPath
from typing import Any

from mlplatform import locks, tracking
from mlplatform.config import Params, Paths
from mlplatform.data.dataset import load_schema, load_split
from mlplatform.errors import RegistryError
from mlplatform.evaluation import measure
from mlplatform.evaluation.measure import Figures
from mlplatform.io import read_json, write_json
from mlplatform.registry import audit, fit_rows, gates, lineage, release_gate, signoffs, versions
from mlplatform.registry.events import CardStore, record_event
from mlplatform.registry.versions import CHALLENGER, CHAMPION, PREVIOUS

log = logging.getLogger(__name__)


def _lock(params: Params, paths: Paths):
    return locks.registry_lock(
        tracking.registry_uri(params), params.registry.model_name, paths.state
    )


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """The pipeline's promote stage: the version just registered, as configured."""
    return promote(params, paths)


def promote(
    params: Params,
    paths: Paths,
    *,
    version: str | None = None,
    dry_run: bool = False,
    actor: str | None = None,
) -> dict[str, Any]:
    """Decide on the candidate and apply the decision (unless dry-run or mode says not to).

    Raises:
        RegistryError: the version does not exist, or the registry lock is busy.
    """
    cfg = params.promotion
    name = params.registry.model_name
    client, _ = tracking.setup(params)
    version = str(version or read_json(paths.registration)["version"])
    dry_run = dry_run or cfg.mode == "dry_run"
    schema = load_schema(paths)
    test = load_split(paths, "test")
    who = actor or tracking.user(params)
    if cfg.mode == "disabled":
        payload = {
            "decision": "skipped",
            "reason": "promotion.mode is disabled",
            "candidate_version": version,
            "model_name": name,
        }
        write_json(paths.promotion, payload)
        return payload
    cards = CardStore(client)
    with _lock(params, paths):
        mv = versions.get_version(client, name, version)
        _refuse_deployment(mv, name)
        before = versions.aliases(client, name)
        champion = before.get(CHAMPION)
        if champion == version:
            payload = {
                "decision": "noop",
                "reason": f"version {version} is already champion",
                "candidate_version": version,
                "champion_version": champion,
                "model_name": name,
                "dry_run": dry_run,
            }
            write_json(paths.promotion, payload)
            return payload
        cand, cand_model = measure.load(f"models:/{name}/{version}", version)
        _attachments(cand, client, mv.run_id, cards)
        cand.lineage_problems = lineage.problems(lineage.gather(client, params, name, version))
        models = {f"candidate v{version}": (cand_model, fit_rows.download(mv.run_id))}
        champ = champ_model = None
        if champion is not None:
            champ_run = versions.get_version(client, name, champion).run_id
            champ, champ_model = measure.load(f"models:/{name}/{champion}", champion)
            _attachments(champ, client, champ_run, cards)
            models[f"champion v{champion}"] = (champ_model, fit_rows.download(champ_run))
        # Neither model is graded on rows it was trained or validated on.
        keep, comparison = fit_rows.select(test, schema.target, models, cfg.min_compare_rows)
        rows = test[keep].reset_index(drop=True)
        if len(rows):
            measure.score(cand, cand_model, schema, rows)
            if champ is not None:
                measure.score(champ, champ_model, schema, rows)
        if champ is not None and cand.loaded and champ.loaded:
            sample = test[schema.feature_names].head(200)
            cand.latency_ms, champ.latency_ms = measure.latencies(
                [cand_model, champ_model], sample, cfg.latency_repeats
            )
        verdict = gates.decide(cand, champ, cfg, comparison)
        rel = params.release
        if rel.gate_uses_shadow and champion is not None:
            report = release_gate.shadow_report_for(client, mv.run_id, champion, version)
            verdict = release_gate.combine(
                verdict, release_gate.shadow_rules(report, rel, cfg.primary_metric)
            )
        gates_passed = verdict.decision == "approve"
        state = release_gate.fingerprint(version, dict(mv.tags), champion)
        given = release_gate.signoffs_of(audit.history(client, name), version)
        rule, _ = release_gate.signoff_rule(rel, given, state)
        if rule is not None:
            verdict = release_gate.combine(verdict, [rule])
        record = {
            "action": "promote",
            "model_name": name,
            "version": version,
            "decision": verdict.decision,
            "reason": verdict.reason,
            "rules": verdict.to_dict()["rules"],
            "actor": who,
            "champion_before": champion,
            "candidate": asdict(cand),
            "champion": None if champ is None else asdict(champ),
            "comparison": comparison.to_dict(),
            "dry_run": dry_run,
        }
        after = dict(before)
        if dry_run:
            record["champion_after"] = champion
        else:
            after = _apply(
                client, name, version, verdict.decision, before, params.registry.mirror_stages
            )
            record["champion_after"] = after.get(CHAMPION)
            rules = {r.name: r.outcome for r in verdict.rules}
            record = record_event(
                params,
                paths,
                client,
                cards,
                record,
                touched={version, champion},
                tags=lambda r: (
                    version,
                    {
                        **_decision_tags(r),
                        "promotion.rules": rules,
                        # A review is only valid against the champion it was compared with.
                        "promotion.champion_at_decision": champion or "none",
                        # Sign-offs are given against this state (release_gate.fingerprint).
                        release_gate.EVALUATED_TAG: state,
                        release_gate.GATES_PASSED_TAG: str(gates_passed).lower(),
                    },
                ),
            )
    payload = {
        **{k: v for k, v in record.items() if k != "action"},
        "candidate_version": version,
        "champion_version": record["champion_after"],
        "aliases_before": before,
        "aliases_after": after,
    }
    write_json(paths.promotion, payload)
    log.info(
        "promotion of %s v%s: %s (%s)%s",
        name,
        version,
        verdict.decision,
        verdict.reason,
        " [dry run: registry unchanged]" if dry_run else "",
    )
    return payload


def _attachments(fig: Figures, client: Any, run_id: str | None, cards: CardStore) -> None:
    """What the version's training run carries: the card, the explanations, fairness."""
    if not run_id:
        return
    fig.has_card = _has_artifact(client, run_id, "model_card/model_card.html")
    fig.has_explanations = _has_artifact(client, run_id, "explain/summary.json")
    ctx = cards.context(run_id) or {}
    fig.fairness = {k: v["status"] for k, v in ctx.get("fairness", {}).items()}


def _has_artifact(client: Any, run_id: str, path: str) -> bool:
    parent = str(PurePosixPath(path).parent)
    try:
        return any(a.path == path for a in client.list_artifacts(run_id, parent))
    except Exception:
        return False


def _event(
    action: str,
    name: str,
    version: str,
    decision: str,
    reason: str,
    actor: str,
    before: dict[str, str],
    after: dict[str, str],
) -> dict[str, Any]:
    """An audit record of a review or rollback (promote records carry its figures too)."""
    return {
        "action": action,
        "model_name": name,
        "version": version,
        "decision": decision,
        "reason": reason,
        "actor": actor,
        "champion_before": before.get(CHAMPION),
        "champion_after": after.get(CHAMPION),
    }


def _decision_tags(record: dict[str, Any]) -> dict[str, str]:
    """The tags every decision leaves on its version."""
    return {
        "promotion.decision": record["decision"],
        "promotion.reason": record["reason"],
        "promotion.actor": record["actor"],
        "promotion.at": record["when"],
        "promotion.seq": str(record["seq"]),
    }


def _apply(
    client: Any, name: str, version: str, decision: str, before: dict[str, str], mirror: bool
) -> dict[str, str]:
    """Move the aliases for a decision; returns the aliases afterwards."""
    champion = before.get(CHAMPION)
    if decision == "approve":
        if champion is not None:
            versions.set_alias(client, name, PREVIOUS, champion, mirror)
            versions.archive_stage(client, name, champion, mirror)
        versions.set_alias(client, name, CHAMPION, version, mirror)
        # A challenger waiting for review was compared with the old champion: that
        # comparison no longer holds (it must be promoted again against the new one).
        if before.get(CHALLENGER) is not None:
            versions.set_alias(client, name, CHALLENGER, None, mirror)
    elif decision == "review":
        versions.set_alias(client, name, CHALLENGER, version, mirror)
    return versions.aliases(client, name)


def review(
    params: Params, paths: Paths, *, version: str, approve: bool, reviewer: str, reason: str
) -> dict[str, Any]:
    """Complete a manual review: approve (the version becomes champion) or reject it.

    Raises:
        RegistryError: no reason given, the version is not waiting for review, or it was
            compared with another champion than today's (promote it again first).
    """
    if not reason.strip():
        raise RegistryError("review: give a --reason")
    name = params.registry.model_name
    mirror = params.registry.mirror_stages
    client, _ = tracking.setup(params)
    version = str(version)
    with _lock(params, paths):
        mv = versions.get_version(client, name, version)
        _refuse_deployment(mv, name)
        before = versions.aliases(client, name)
        required = params.release.signoffs.for_stage(release_gate.STAGE).required
        if approve and required:
            state = release_gate.fingerprint(version, dict(mv.tags), before.get(CHAMPION))
            given = release_gate.signoffs_of(audit.history(client, name), version)
            ok, why = signoffs.ready(release_gate.STAGE, given, params.release.signoffs, state)
            if not ok:
                raise RegistryError(
                    f"registered model '{name}' version {version} needs its sign-offs first "
                    f"(`mlplatform review {version} --role ROLE --approve --reason ...`): "
                    + "; ".join(why)
                )
        pending = before.get(CHALLENGER) == version or mv.tags.get("promotion.decision") == "review"
        if not pending:
            raise RegistryError(
                f"registered model '{name}' version {version} is not waiting for review "
                f"(challenger is {before.get(CHALLENGER) or 'unset'})"
            )
        compared_with = mv.tags.get("promotion.champion_at_decision")
        champion_now = before.get(CHAMPION) or "none"
        if approve and compared_with is not None and compared_with != champion_now:
            raise RegistryError(
                f"registered model '{name}' version {version} was compared with champion "
                f"{compared_with}, but the champion is now {champion_now}; run "
                f"`mlplatform promote --version {version}` again before reviewing it"
            )
        decision = "approve" if approve else "reject"
        if approve:
            after = _apply(client, name, version, "approve", before, mirror)
        else:
            if before.get(CHALLENGER) == version:
                versions.set_alias(client, name, CHALLENGER, None, mirror)
            versions.archive_stage(client, name, version, mirror)
            after = versions.aliases(client, name)
        record = record_event(
            params,
            paths,
            client,
            CardStore(client),
            _event("review", name, version, decision, reason, reviewer, before, after),
            touched={version, before.get(CHAMPION)},
            tags=lambda r: (version, {**_decision_tags(r), "review.by": reviewer}),
        )
    log.info("review of %s v%s by %s: %s", name, version, reviewer, decision)
    return {**record, "aliases_before": before, "aliases_after": after}


def _refuse_deployment(mv: Any, name: str) -> None:
    from mlplatform.serving import release

    if release.is_deployment(mv):
        spec = release.spec_of(mv)
        raise RegistryError(
            f"registered model '{name}' version {mv.version} is a {spec.mode} deployment "
            f"(champion v{spec.champion_version}, challenger v{spec.challenger_version}), not "
            f"a model: promote v{spec.challenger_version} itself"
        )


def signoff(
    params: Params,
    paths: Paths,
    *,
    version: str,
    role: str,
    approve: bool,
    person: str,
    reason: str,
    stage: str = release_gate.STAGE,
) -> dict[str, Any]:
    """Record one sign-off; when it completes the required ones of a version whose gates
    passed, the version becomes champion.

    Raises:
        RegistryError: a deployment version, a version the gate has not evaluated, a role
            not required, a person not allowed, or a version changed since it was evaluated.
    """
    name = params.registry.model_name
    cfg = params.release.signoffs
    client, _ = tracking.setup(params)
    version = str(version)
    with _lock(params, paths):
        mv = versions.get_version(client, name, version)
        _refuse_deployment(mv, name)
        before = versions.aliases(client, name)
        champion = before.get(CHAMPION)
        evaluated = mv.tags.get(release_gate.EVALUATED_TAG)
        if evaluated is None:
            raise RegistryError(
                f"registered model '{name}' version {version} has not been through the gate: "
                f"run `mlplatform promote --version {version}` before signing off"
            )
        state = release_gate.fingerprint(version, dict(mv.tags), champion)
        given = signoffs.new_signoff(
            version=version, stage=stage, role=role, person=person, approve=approve,
            reason=reason, fingerprint=state, cfg=cfg, when=audit.now_iso(),
            evaluated_fingerprint=evaluated,
        )  # fmt: skip
        cards = CardStore(client)
        record = record_event(
            params, paths, client, cards,
            {"action": "signoff", "model_name": name, "version": version, "stage": stage,
             "role": role, "decision": given.decision, "reason": given.reason,
             "actor": person, "signoff": given.to_dict(), "champion_before": champion,
             "champion_after": champion},
            touched={version},
            tags=lambda r: (version, {f"signoff.{stage}.{role}.{person}": given.decision}),
        )  # fmt: skip
        done, why = signoffs.ready(
            stage, release_gate.signoffs_of(audit.history(client, name), version), cfg, state
        )
        after = before
        passed = mv.tags.get(release_gate.GATES_PASSED_TAG) == "true"
        if stage == release_gate.STAGE and done and passed and champion != version:
            after = _apply(client, name, version, "approve", before, params.registry.mirror_stages)
            record_event(
                params, paths, client, cards,
                _event("release", name, version, "approve",
                       f"gates passed and {why[0]}", person, before, after),
                touched={version, champion},
                tags=lambda r: (version, _decision_tags(r)),
            )  # fmt: skip
    log.info("sign-off of %s v%s as %s by %s: %s", name, version, role, person, given.decision)
    return {**record, "complete": done, "status": why, "aliases_after": after}


def rollback(params: Params, paths: Paths, *, actor: str | None, reason: str) -> dict[str, Any]:
    """Make the previous champion the champion again (the demoted one becomes previous).

    Raises:
        RegistryError: there is no previous champion to roll back to.
    """
    name = params.registry.model_name
    mirror = params.registry.mirror_stages
    client, _ = tracking.setup(params)
    who = actor or tracking.user(params)
    with _lock(params, paths):
        before = versions.aliases(client, name)
        previous, current = before.get(PREVIOUS), before.get(CHAMPION)
        if previous is None:
            raise RegistryError(
                f"registered model '{name}' has no '{PREVIOUS}' alias to roll back to"
            )
        versions.set_alias(client, name, CHAMPION, previous, mirror)
        versions.set_alias(client, name, PREVIOUS, current, mirror)
        if current is not None:
            versions.archive_stage(client, name, current, mirror)
        after = versions.aliases(client, name)
        record = record_event(
            params,
            paths,
            client,
            CardStore(client),
            _event(
                "rollback", name, previous, "rollback", reason or "rollback", who, before, after
            ),
            touched={previous, current},
            tags=None
            if current is None
            else lambda r: (current, {"rolled_back.at": r["when"], "rolled_back.by": who}),
        )
    log.info("rolled back %s: champion v%s -> v%s", name, current, previous)
    return {**record, "aliases_before": before, "aliases_after": after}


def history_table(params: Params) -> list[dict[str, Any]]:
    """Every recorded event of the registered model, oldest first."""
    from mlplatform.registry import audit

    client, _ = tracking.setup(params)
    return audit.history(client, params.registry.model_name)
