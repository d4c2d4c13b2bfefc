"""The glue of the release path: deployment specs, the trust check of a deployment folder,
pairing shadow rows and selecting A/B rows from the log, and the release gate rules."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from mlplatform import model_trust
from mlplatform.errors import ModelError
from mlplatform.model_trust import ModelFormatError
from mlplatform.registry import gates, release_gate
from mlplatform.registry.signoffs import Signoff
from mlplatform.serving import deployment
from mlplatform.serving.deployment import DeploymentSpec
from mlplatform.serving.release_reports import ab_rows, shadow_pairs
from mlplatform.serving.release_settings import ReleaseSettings

SPEC = {"mode": "shadow", "model_name": "m", "champion_version": "1", "challenger_version": "2"}


def test_spec_round_trip_and_uris():
    spec = DeploymentSpec.from_dict(SPEC)
    assert spec.champion_uri == "models:/m/1" and spec.challenger_uri == "models:/m/2"
    again = DeploymentSpec.from_dict(spec.to_dict())
    assert again == spec


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"mode": "canary"}, "mode 'canary' is not shadow or ab"),
        ({"challenger_version": "1"}, "the same version"),
        ({"challenger_share": 1.5}, "challenger_share 1.5"),
        ({"challenger_timeout_ms": 0}, "challenger_timeout_ms 0"),
        ({"model_name": ""}, "'model_name' missing"),
    ],
)
def test_spec_refuses_bad_fields_in_one_line(change, words):
    with pytest.raises(ModelFormatError) as err:
        DeploymentSpec.from_dict({**SPEC, **change})
    assert words in str(err.value) and "\n" not in str(err.value)


def test_fault_drill_values():
    assert deployment._parse_fault(None) is None
    assert deployment._parse_fault("off") is None
    assert deployment._parse_fault("raise") == ("raise", 0.0)
    assert deployment._parse_fault("sleep:250") == ("sleep", 0.25)
    with pytest.raises(ModelError, match="MLPLATFORM_SHADOW_FAULT"):
        deployment._parse_fault("explode")


def _deployment_folder(tmp_path, extra_file: str | None = None):
    folder = tmp_path / "dep"
    data = folder / model_trust.DATA_DIR
    deployment.write_folder(data, DeploymentSpec.from_dict(SPEC))
    mlmodel = {
        "flavors": {
            "python_function": {
                "loader_module": model_trust.LOADER_MODULE,
                "data": "mlplatform_model",
            }
        }
    }
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    if extra_file:
        (data / extra_file).write_text("{}")
    return folder


def test_a_deployment_folder_passes_the_trust_check(tmp_path):
    checked = model_trust.verify_folder(_deployment_folder(tmp_path))
    assert checked["family"] == model_trust.DEPLOYMENT_FAMILY


def test_a_deployment_folder_with_anything_else_is_refused(tmp_path):
    with pytest.raises(ModelFormatError, match="unexpected file"):
        model_trust.verify_folder(_deployment_folder(tmp_path, "model.json"))


def test_a_deployment_spec_of_another_kind_is_refused(tmp_path):
    folder = _deployment_folder(tmp_path)
    (folder / model_trust.DATA_DIR / "deployment.json").write_text(json.dumps({"kind": "x"}))
    with pytest.raises(ModelFormatError, match="not a deployment spec"):
        model_trust.verify_folder(folder)


def _log(rows):
    cols = ["request_id", "row", "arm", "model_version", "key", "prediction", "latency_ms"]
    frame = pd.DataFrame(rows, columns=[*cols, "probability_1"])
    frame["label"] = None
    return frame


def test_shadow_pairs_match_request_and_row_and_keep_missing_answers():
    frame = _log(
        [
            ("a", 0, "champion", "1", None, "1", 2.0, 0.9),
            ("a", 0, "shadow", "2", None, "0", 3.0, 0.4),
            ("b", 0, "champion", "1", None, "0", 2.0, 0.1),
            ("b", 0, "shadow", "2", None, None, 60.0, np.nan),  # timed out
            ("c", 0, "champion", "1", None, "1", 2.0, 0.8),  # no shadow row at all
            ("d", 0, "champion", "1", "k", "1", 2.0, 0.8),  # an A/B row of another test
            ("a", 0, "shadow", "9", None, "1", 3.0, 0.9),  # another challenger
        ]
    )
    pairs = shadow_pairs(frame[frame["key"].isna()], "1", "2")
    assert pairs["request_id"].tolist() == ["a", "b", "c"]
    assert pairs["probability_1_b"].tolist()[0] == 0.4
    assert pairs["probability_1_b"].isna().tolist() == [False, True, True]


def test_ab_rows_keep_each_arms_own_version_with_a_key():
    frame = _log(
        [
            ("a", 0, "champion", "1", "k1", "1", 2.0, 0.9),
            ("b", 0, "challenger", "2", "k2", "0", 2.0, 0.2),
            ("c", 0, "champion", "1", None, "1", 2.0, 0.9),  # a shadow deployment's row
            ("d", 0, "challenger", "1", "k3", "1", 2.0, 0.9),  # wrong version for the arm
        ]
    )
    assert ab_rows(frame, "1", "2")["request_id"].tolist() == ["a", "b"]


def _verdict(decision):
    return gates.Verdict(decision, "base", [gates.Rule("improvement", "approve", "base")])


def test_combine_release_rules():
    review = gates.Rule("signoffs", "review", "missing sign-off by role 'x'")
    fail = gates.Rule("shadow_failures", "fail", "challenger failed")
    assert release_gate.combine(_verdict("approve"), []).decision == "approve"
    held = release_gate.combine(_verdict("approve"), [review])
    assert (held.decision, held.reason) == ("review", "missing sign-off by role 'x'")
    assert release_gate.combine(_verdict("approve"), [review, fail]).decision == "reject"
    assert release_gate.combine(_verdict("reject"), [review]).reason == "base"
    assert len(release_gate.combine(_verdict("approve"), [review]).rules) == 2


def test_no_shadow_report_holds_the_gate():
    rules = release_gate.shadow_rules(None, ReleaseSettings(), "average_precision")
    assert [r.outcome for r in rules] == ["review"]


def test_fingerprint_changes_with_metrics_champion_or_shadow_report():
    tags = {"test.roc_auc": "0.8", "mlplatform.family": "xgboost"}
    base = release_gate.fingerprint("2", tags, "1")
    assert release_gate.fingerprint("2", {**tags, "mlplatform.family": "x"}, "1") == base
    assert release_gate.fingerprint("2", {**tags, "test.roc_auc": "0.9"}, "1") != base
    assert release_gate.fingerprint("2", tags, "3") != base
    assert release_gate.fingerprint("2", {**tags, "shadow.report_hash": "h"}, "1") != base


def test_signoff_rule_counts_current_approvals_only():
    cfg = ReleaseSettings.model_validate(
        {"signoffs": {"champion": {"required": ["tech"], "allowed": {"tech": ["ann"]}}}}
    )
    assert release_gate.signoff_rule(ReleaseSettings(), [], "fp") == (None, True)
    rule, ok = release_gate.signoff_rule(cfg, [], "fp")
    assert not ok and rule.outcome == "review"
    given = Signoff("2", "champion", "tech", "ann", "approve", "ok", "fp")
    assert release_gate.signoff_rule(cfg, [given], "fp")[1]
    assert not release_gate.signoff_rule(cfg, [given], "other")[1]  # stale
    records = [{"action": "signoff", "version": "2", "signoff": given.to_dict()}]
    assert release_gate.signoffs_of(records, "2") == [given]
    assert release_gate.signoffs_of(records, "3") == []
