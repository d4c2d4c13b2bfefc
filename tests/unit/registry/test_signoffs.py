"""Sign-off rules: required roles, who may give them, stale and rejected sign-offs."""

from __future__ import annotations

import pytest

from mlplatform.errors import RegistryError
from mlplatform.registry import signoffs as so
from mlplatform.serving.release_settings import SignoffConfig

CFG = SignoffConfig.model_validate(
    {
        "champion": {
            "required": ["technical", "model_risk"],
            "allowed": {"technical": ["ann", "bob"], "model_risk": ["cara"]},
        },
        "shadow": {"required": ["technical"], "allowed": {"technical": ["ann"]}},
    }
)
FP = so.state_fingerprint("3", {"test.roc_auc": "0.81"}, champion_version="2")


def _s(role, person, decision="approve", fingerprint=FP, stage="champion", reason="ok"):
    return so.Signoff("3", stage, role, person, decision, reason, fingerprint)


def test_required_roles_per_stage():
    assert so.required_for("champion", CFG) == ("technical", "model_risk")
    assert so.required_for("ab", CFG) == ()
    assert so.required_for("champion", SignoffConfig()) == ()
    with pytest.raises(RegistryError, match="unknown promotion stage 'prod'"):
        so.required_for("prod", CFG)


def test_wrong_role_is_refused_naming_role_stage_and_version():
    with pytest.raises(RegistryError) as err:
        so.check_signoff("ann", "legal", "champion", CFG, version="3")
    message = str(err.value)
    assert "version 3" in message and "'legal'" in message and "'champion'" in message
    assert "required: technical, model_risk" in message
    with pytest.raises(RegistryError, match=r"not required at stage 'ab'.*required: none"):
        so.check_signoff("ann", "technical", "ab", CFG, version="3")


def test_person_not_allowed_is_refused():
    with pytest.raises(
        RegistryError, match=r"'bob' may not sign off as 'model_risk'.*allowed: cara"
    ):
        so.check_signoff("bob", "model_risk", "champion", CFG, version="3")
    so.check_signoff("cara", "model_risk", "champion", CFG, version="3")  # allowed: no error


def _new(**changes):
    kwargs = dict(
        version="3", stage="champion", role="technical", person="ann", approve=True,
        reason="fine", fingerprint=FP, cfg=CFG,
    )  # fmt: skip
    return so.new_signoff(**{**kwargs, **changes})


def test_signoff_on_a_changed_version_is_refused_at_recording():
    changed = so.state_fingerprint("3", {"test.roc_auc": "0.81"}, champion_version="4")
    with pytest.raises(RegistryError, match="version 3 changed since it was evaluated"):
        _new(fingerprint=changed, evaluated_fingerprint=FP)
    with pytest.raises(RegistryError, match="give a --reason"):
        _new(reason="  ")
    with pytest.raises(RegistryError, match="'bob' may not sign off as 'model_risk'"):
        _new(role="model_risk", person="bob")
    made = _new(approve=False, reason=" drift ", when="2026-01-01T00:00:00Z")
    assert made.decision == "reject" and made.reason == "drift"
    assert made.when == "2026-01-01T00:00:00Z"
    assert so.Signoff.from_dict(made.to_dict()) == made
    assert _new(evaluated_fingerprint=FP).decision == "approve"  # unchanged since evaluation


def test_fingerprint_changes_with_metrics_champion_and_version():
    base = so.state_fingerprint("3", {"a": "1", "b": "2"}, "2")
    assert base == so.state_fingerprint("3", {"b": "2", "a": "1"}, "2")  # key order
    assert base != so.state_fingerprint("3", {"a": "1", "b": "3"}, "2")
    assert base != so.state_fingerprint("3", {"a": "1", "b": "2"}, "4")
    assert base != so.state_fingerprint("3", {"a": "1", "b": "2"}, None)
    assert base != so.state_fingerprint("5", {"a": "1", "b": "2"}, "2")


def test_missing_role():
    status = so.missing_signoffs("champion", [_s("technical", "ann")], CFG, FP)
    assert status.missing == ["model_risk"] and not status.complete
    ok, reasons = so.ready("champion", [_s("technical", "ann")], CFG, FP)
    assert not ok
    assert reasons == ["missing sign-off by role 'model_risk' (allowed: cara)"]


def test_all_present():
    given = [_s("technical", "bob"), _s("model_risk", "cara")]
    status = so.missing_signoffs("champion", given, CFG, FP)
    assert status.complete and status.approved == {"technical": ["bob"], "model_risk": ["cara"]}
    ok, reasons = so.ready("champion", given, CFG, FP)
    assert ok and "technical: bob; model_risk: cara" in reasons[0]


def test_stale_signoff_does_not_count_and_is_reported():
    old = so.state_fingerprint("3", {"test.roc_auc": "0.79"}, champion_version="2")
    given = [_s("technical", "ann", fingerprint=old), _s("model_risk", "cara")]
    status = so.missing_signoffs("champion", given, CFG, FP)
    assert status.missing == ["technical"] and status.stale == [given[0]]
    ok, reasons = so.ready("champion", given, CFG, FP)
    assert not ok
    assert any(r.startswith("stale sign-off by 'ann' as 'technical'") for r in reasons)
    # signing again against the current state completes it
    assert so.ready("champion", [*given, _s("technical", "ann")], CFG, FP)[0]


def test_rejection_by_a_required_role_blocks_even_with_an_approval():
    given = [
        _s("technical", "ann"),
        _s("technical", "bob", "reject", reason="leakage in feature x"),
        _s("model_risk", "cara"),
    ]
    ok, reasons = so.ready("champion", given, CFG, FP)
    assert not ok
    assert reasons == ["rejected by 'bob' as 'technical': leakage in feature x"]
    # bob changes his mind: his latest sign-off replaces the rejection
    assert so.ready("champion", [*given, _s("technical", "bob")], CFG, FP)[0]


def test_signoffs_of_other_stages_and_disallowed_people_do_not_count():
    given = [
        _s("technical", "ann", stage="shadow"),
        _s("model_risk", "dan"),  # not (or no longer) allowed
        _s("technical", "ann"),
    ]
    status = so.missing_signoffs("champion", given, CFG, FP)
    assert status.missing == ["model_risk"]
    assert status.ignored == [given[1]]
    assert so.ready("shadow", given, CFG, FP)[0]


def test_no_signoffs_required():
    assert so.ready("ab", [], CFG, FP) == (True, ["no sign-offs required at stage 'ab'"])
    assert so.ready("champion", [], SignoffConfig(), FP)[0]


def test_config_validation():
    with pytest.raises(ValueError, match="required role 'model_risk' has no allowed people"):
        SignoffConfig.model_validate({"champion": {"required": ["model_risk"], "allowed": {}}})
    with pytest.raises(ValueError, match="not in required: legal"):
        SignoffConfig.model_validate({"champion": {"required": [], "allowed": {"legal": ["x"]}}})
    with pytest.raises(ValueError, match="champoin"):  # a typo is not silently no sign-offs
        SignoffConfig.model_validate({"champoin": {}})
    with pytest.raises(ValueError, match="listed twice"):
        SignoffConfig.model_validate({"ab": {"required": ["t", "t"], "allowed": {"t": ["a"]}}})
    with pytest.raises(RegistryError, match="decision 'maybe'"):
        so.Signoff.from_dict({**_s("technical", "ann").to_dict(), "decision": "maybe"})
