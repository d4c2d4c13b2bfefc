"""Sign-offs by role: who must approve a version before it passes a stage, and whether they have.

Pure functions of the recorded sign-offs, the ``signoffs`` params section and the version's
current state; nothing here touches MLflow. The thin registry layer records a sign-off
(``mlplatform review VERSION --role R --approve|--reject --reason ...``) after
``check_signoff`` accepts it, stores ``Signoff.to_dict()`` in the audit trail, and moves the
version only when ``ready`` says so and the gates pass.

A sign-off is given against a state of the version: its fingerprint (``state_fingerprint``)
covers the version, its metrics and the champion it was compared with. When any of them
changes (a re-evaluation, a new champion), earlier sign-offs are stale: they are listed but
no longer count, and the roles must sign again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from mlplatform.errors import RegistryError
from mlplatform.serving.release_settings import STAGES, SignoffConfig, StageSignoffs

SignoffDecision = Literal["approve", "reject"]


@dataclass(frozen=True)
class Signoff:
    """One recorded sign-off (an entry of the audit trail)."""

    version: str
    stage: str
    role: str
    person: str
    decision: SignoffDecision
    reason: str
    fingerprint: str
    when: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Signoff:
        """Read back ``to_dict`` output (e.g. an audit record).

        Raises:
            RegistryError: a field is missing or the decision is not approve/reject.
        """
        names = ("version", "stage", "role", "person", "decision", "reason", "fingerprint")
        missing = [k for k in names if k not in raw]
        if missing:
            raise RegistryError(f"sign-off record lacks {', '.join(missing)}: {dict(raw)}")
        if raw["decision"] not in ("approve", "reject"):
            raise RegistryError(
                f"sign-off record of version {raw['version']} has decision "
                f"{raw['decision']!r} (expected approve or reject)"
            )
        return cls(**{k: str(raw[k]) for k in names}, when=str(raw.get("when", "")))


def state_fingerprint(
    version: str,
    metrics: Mapping[str, Any],
    champion_version: str | None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """A short hash of the state a sign-off is given against.

    Args:
        version: the registered version signed off.
        metrics: its figures as stored on the version (e.g. the ``test.*`` tags); pass the
            same representation each time (stored strings, not recomputed floats).
        champion_version: the champion it was compared with (None: no champion).
        extra: anything else a sign-off depends on (e.g. the shadow report's hash).
    """
    state = {
        "version": str(version),
        "metrics": {str(k): str(v) for k, v in metrics.items()},
        "champion": None if champion_version is None else str(champion_version),
        "extra": {str(k): str(v) for k, v in (extra or {}).items()},
    }
    blob = json.dumps(state, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _stage(stage: str, cfg: SignoffConfig) -> StageSignoffs:
    if stage not in STAGES:
        raise RegistryError(
            f"unknown promotion stage {stage!r}; expected one of {', '.join(STAGES)}"
        )
    return cfg.for_stage(stage)


def required_for(stage: str, cfg: SignoffConfig) -> tuple[str, ...]:
    """The roles that must approve at ``stage`` (empty: none configured).

    Raises:
        RegistryError: the stage is not one of shadow, ab, champion.
    """
    return tuple(_stage(stage, cfg).required)


def allowed_people(stage: str, role: str, cfg: SignoffConfig) -> tuple[str, ...]:
    """The people who may give ``role`` at ``stage`` (empty if the role is not required).

    Raises:
        RegistryError: the stage is not one of shadow, ab, champion.
    """
    return tuple(_stage(stage, cfg).allowed.get(role, ()))


def check_signoff(
    person: str,
    role: str,
    stage: str,
    cfg: SignoffConfig,
    *,
    version: str,
    evaluated_fingerprint: str | None = None,
    current_fingerprint: str | None = None,
) -> None:
    """Refuse a sign-off that may not be given; return None when it may.

    Args:
        person: who signs.
        role: the role they sign as.
        stage: the stage the version is to pass.
        cfg: the ``signoffs`` params section.
        version: the version signed off (for the message).
        evaluated_fingerprint: the state the gates evaluated (recorded at promotion time).
        current_fingerprint: the version's state now; when it differs from the evaluated
            one, the version changed since (new metrics, new champion) and the sign-off
            is refused until it is evaluated again.

    Raises:
        RegistryError: unknown stage, no person, a role not required at this stage, a
            person not allowed to give it, or a version that changed since evaluation.
    """
    required = required_for(stage, cfg)
    if not person or not person.strip():
        raise RegistryError(f"sign-off of version {version} as '{role}': name the person")
    if role not in required:
        needed = ", ".join(required) if required else "none"
        raise RegistryError(
            f"version {version}: role '{role}' is not required at stage '{stage}' "
            f"(required: {needed})"
        )
    allowed = allowed_people(stage, role, cfg)
    if person not in allowed:
        raise RegistryError(
            f"version {version}: '{person}' may not sign off as '{role}' at stage "
            f"'{stage}' (allowed: {', '.join(allowed)})"
        )
    if (
        evaluated_fingerprint is not None
        and current_fingerprint is not None
        and evaluated_fingerprint != current_fingerprint
    ):
        raise RegistryError(
            f"version {version} changed since it was evaluated for stage '{stage}' (new "
            f"metrics or a new champion): evaluate it again before '{role}' signs off"
        )


def new_signoff(
    *,
    version: str,
    stage: str,
    role: str,
    person: str,
    approve: bool,
    reason: str,
    fingerprint: str,
    cfg: SignoffConfig,
    when: str = "",
    evaluated_fingerprint: str | None = None,
) -> Signoff:
    """A checked sign-off, ready to record.

    Args:
        version: the version signed off.
        stage: the stage it is to pass.
        role: the role signed as.
        person: who signs.
        approve: True to approve, False to reject.
        reason: why (required).
        fingerprint: the version's state now (``state_fingerprint``).
        cfg: the ``signoffs`` params section.
        when: timestamp (ISO 8601), set by the caller.
        evaluated_fingerprint: the state the gates evaluated, if recorded.

    Raises:
        RegistryError: as ``check_signoff``, or no reason given.
    """
    if not reason or not reason.strip():
        raise RegistryError(f"sign-off of version {version} as '{role}': give a --reason")
    check_signoff(
        person,
        role,
        stage,
        cfg,
        version=version,
        evaluated_fingerprint=evaluated_fingerprint,
        current_fingerprint=fingerprint,
    )
    decision: SignoffDecision = "approve" if approve else "reject"
    return Signoff(str(version), stage, role, person, decision, reason.strip(), fingerprint, when)


@dataclass
class SignoffStatus:
    """Where the sign-offs of one version at one stage stand."""

    stage: str
    required: list[str]
    approved: dict[str, list[str]] = field(default_factory=dict)  # role -> people
    missing: list[str] = field(default_factory=list)
    rejected: list[Signoff] = field(default_factory=list)
    stale: list[Signoff] = field(default_factory=list)
    ignored: list[Signoff] = field(default_factory=list)  # role/person not (or no longer) allowed

    @property
    def complete(self) -> bool:
        return not self.missing and not self.rejected

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "required": self.required,
            "approved": self.approved,
            "missing": self.missing,
            "rejected": [s.to_dict() for s in self.rejected],
            "stale": [s.to_dict() for s in self.stale],
            "ignored": [s.to_dict() for s in self.ignored],
            "complete": self.complete,
        }


def missing_signoffs(
    stage: str, signoffs: Iterable[Signoff], cfg: SignoffConfig, version_fingerprint: str
) -> SignoffStatus:
    """Which required roles have a current approval, which are missing, rejected or stale.

    Rules: only sign-offs for this stage whose fingerprint equals the current one count
    (others are stale); a person's latest sign-off for a role replaces their earlier ones
    (so a reviewer can change their mind); a role is satisfied by one current approval
    from an allowed person and blocked by a current rejection from any allowed person;
    sign-offs by people not (or no longer) allowed are ignored and listed.

    Args:
        stage: shadow, ab or champion.
        signoffs: the version's recorded sign-offs, oldest first.
        cfg: the ``signoffs`` params section.
        version_fingerprint: the version's state now.

    Raises:
        RegistryError: unknown stage.
    """
    required = list(required_for(stage, cfg))
    status = SignoffStatus(stage=stage, required=required)
    latest: dict[tuple[str, str], Signoff] = {}
    for s in signoffs:
        if s.stage != stage:
            continue
        if s.fingerprint != version_fingerprint:
            status.stale.append(s)
        elif s.role not in required or s.person not in allowed_people(stage, s.role, cfg):
            status.ignored.append(s)
        else:
            latest[(s.role, s.person)] = s
    for role in required:
        given = [s for (r, _), s in latest.items() if r == role]
        rejections = [s for s in given if s.decision == "reject"]
        approvers = sorted(s.person for s in given if s.decision == "approve")
        status.rejected.extend(rejections)
        if approvers:
            status.approved[role] = approvers
        elif not rejections:
            status.missing.append(role)
    return status


def ready(
    stage: str, signoffs: Iterable[Signoff], cfg: SignoffConfig, version_fingerprint: str
) -> tuple[bool, list[str]]:
    """Whether the sign-offs let the version pass ``stage``, and why (one line each).

    The gates must pass as well; that is for the caller to combine.

    Args:
        stage: shadow, ab or champion.
        signoffs: the version's recorded sign-offs, oldest first.
        cfg: the ``signoffs`` params section.
        version_fingerprint: the version's state now.

    Raises:
        RegistryError: unknown stage.
    """
    status = missing_signoffs(stage, signoffs, cfg, version_fingerprint)
    if not status.required:
        return True, [f"no sign-offs required at stage '{stage}'"]
    reasons = [f"rejected by '{s.person}' as '{s.role}': {s.reason}" for s in status.rejected]
    reasons += [
        f"missing sign-off by role '{role}' (allowed: "
        f"{', '.join(allowed_people(stage, role, cfg))})"
        for role in status.missing
    ]
    reasons += [
        f"stale sign-off by '{s.person}' as '{s.role}' (given against an earlier state of "
        f"version {s.version}: metrics or champion changed since)"
        for s in status.stale
        if s.role in status.missing
    ]
    if status.complete:
        who = "; ".join(f"{r}: {', '.join(p)}" for r, p in status.approved.items())
        return True, [f"all required sign-offs at stage '{stage}' present ({who})"]
    return False, reasons
