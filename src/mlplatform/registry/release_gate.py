"""What the release path adds to the promotion gate: shadow rules and sign-offs by role.

``promote`` asks ``gates.decide`` first; then, when configured, the candidate's latest
shadow report (``mlplatform shadow``, against today's champion) adds its rules, and an
approval waits as ``review`` until every required sign-off of the ``champion`` stage is
present for the version's current state (``state_fingerprint``). Pure except
``shadow_report_for`` (reads the report logged on the candidate's training run).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mlplatform.registry.gates import Rule, Verdict
from mlplatform.registry.signoffs import Signoff, ready, state_fingerprint
from mlplatform.serving import shadow_stats
from mlplatform.serving.release_settings import ReleaseSettings

STAGE = "champion"  # the stage a promotion passes
EVALUATED_TAG = "signoff.fingerprint"  # the state the gate evaluated, on the version
GATES_PASSED_TAG = "signoff.gates_passed"


def fingerprint(version: str, version_tags: dict[str, str], champion: str | None) -> str:
    """The state a sign-off is given against: the version's test metrics as stored, the
    champion it is compared with, and the shadow report it was judged on (if any)."""
    metrics = {k: v for k, v in version_tags.items() if k.startswith("test.")}
    extra = {"shadow": version_tags.get("shadow.report_hash", "")}
    return state_fingerprint(str(version), metrics, champion, extra)


def signoffs_of(records: list[dict[str, Any]], version: str) -> list[Signoff]:
    """The recorded sign-offs of one version, oldest first."""
    return [
        Signoff.from_dict(r["signoff"])
        for r in records
        if r.get("action") == "signoff" and str(r.get("version")) == str(version)
    ]


def shadow_report_for(client: Any, run_id: str | None, champion: str, candidate: str) -> Any:
    """The shadow report of ``candidate`` against ``champion`` logged on its run, or None."""
    import mlflow

    if not run_id:
        return None
    path = f"release/shadow_v{champion}_v{candidate}.json"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=tmp
            )
            return json.loads(Path(local).read_text())
    except Exception:
        return None


def shadow_rules(report: dict[str, Any] | None, cfg: ReleaseSettings, primary: str) -> list[Rule]:
    """Gate rules from the shadow report (a review when there is none)."""
    if report is None:
        return [
            Rule(
                "shadow_report",
                "review",
                "release.gate_uses_shadow: no shadow report against the current champion "
                "(deploy shadow, then run `mlplatform shadow`)",
            )
        ]
    return [Rule(**vars(r)) for r in shadow_stats.shadow_rules(report, cfg.shadow, primary)]


def combine(verdict: Verdict, extra: list[Rule]) -> Verdict:
    """The verdict with more rules: a failure rejects, a review holds an approval."""
    rules = verdict.rules + extra
    failed = [r for r in extra if r.outcome == "fail"]
    review = [r for r in extra if r.outcome == "review"]
    if verdict.decision == "reject":
        return Verdict("reject", verdict.reason, rules)
    if failed:
        return Verdict("reject", "; ".join(r.detail for r in failed), rules)
    if review:
        reason = "; ".join(r.detail for r in review)
        if verdict.decision == "review":
            reason = f"{verdict.reason}; {reason}"
        return Verdict("review", reason, rules)
    return Verdict(verdict.decision, verdict.reason, rules)


def signoff_rule(
    cfg: ReleaseSettings, signoffs: list[Signoff], current: str
) -> tuple[Rule | None, bool]:
    """(the sign-off rule, whether they are complete); no rule when none are required."""
    required = cfg.signoffs.for_stage(STAGE).required
    if not required:
        return None, True
    ok, reasons = ready(STAGE, signoffs, cfg.signoffs, current)
    return Rule("signoffs", "pass" if ok else "review", "; ".join(reasons)), ok
