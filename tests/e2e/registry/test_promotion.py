"""Registry and guarded promotion end to end, against a real MLflow sqlite registry.

The tests share one project and run in order, as a reviewer's story:
first model -> champion; a crippled search -> rejected; a better model (review thresholds
relaxed) -> approved; rollback; the same better model under default thresholds -> review
(suspiciously large gain) -> approved by a reviewer; dry-run changes nothing; two
promotions at once leave one champion and an unbroken history.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from support.project import CLI, cli_env, client_for, run_cli, run_stages, write_project

pytestmark = pytest.mark.e2e

NAME = "credit-risk"
FULL = ("ingest", "prepare", "tune", "train", "evaluate", "explain", "card", "register")
RETRAIN = ("tune", "train", "evaluate", "explain", "card", "register")
# A first champion that is deliberately modest: logistic regression only.
MODEST = {
    "tune.families": {"logistic_regression": {"C": {"low": 0.01, "high": 0.1, "log": True}}},
    "tune.n_trials": 3,
}
# Trees, searched a little.
TREES = {
    "tune.families": {
        "xgboost": {
            "n_estimators": {"low": 100, "high": 200, "step": 50},
            "max_depth": {"low": 2, "high": 4},
            "learning_rate": {"low": 0.05, "high": 0.2, "log": True},
        },
    },
    "tune.n_trials": 4,
}
# A search crippled by params: one boosted stump (two distinct scores).
CRIPPLED = {
    "tune.families": {"xgboost": {"n_estimators": 1, "max_depth": 1, "learning_rate": 0.1}},
    "tune.n_trials": 1,
}
RELAXED = {
    "promotion.suspicious_gain": 100.0,
    "promotion.max_latency_increase": 100.0,
    "promotion.max_prediction_shift": 1.0,
}


def set_params(project: Path, overrides: dict) -> None:
    write_project(project, overrides)


def promote(project: Path, *args: str) -> dict:
    run_cli(project, "promote", *args)
    return json.loads((project / "reports/promotion.json").read_text())


def aliases(project: Path, name: str = NAME) -> dict[str, str]:
    return {k: str(v) for k, v in client_for(project).get_registered_model(name).aliases.items()}


def history(project: Path, params: str = "params.yaml") -> list[dict]:
    out = run_cli(project, "history", "--json", "--params", params).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("registry")
    set_params(folder, MODEST)
    run_stages(folder, *FULL)
    return folder


def test_first_model_becomes_champion(project):
    result = promote(project)
    assert result["decision"] == "approve"
    assert result["reason"] == "first model: absolute checks pass"
    assert aliases(project) == {"champion": "1"}
    rules = {r["name"]: r["outcome"] for r in result["rules"]}
    assert rules["floor:recall"] == "pass" and rules["model_card"] == "pass"
    assert "primary_drop" not in rules  # no champion: absolute checks only
    mv = client_for(project).get_model_version(NAME, "1")
    assert mv.tags["promotion.decision"] == "approve"
    assert mv.tags["mlplatform.train_run_id"]
    assert "test.average_precision" in mv.tags
    assert "**Approvals:**" in mv.description and "approve" in mv.description
    # The full card with its approvals, on the training run (reports/ stays the card stage's).
    client = client_for(project)
    run_id = client.get_model_version(NAME, "1").run_id
    names = {a.path for a in client.list_artifacts(run_id, "model_card")}
    assert {"model_card/model_card_v1.md", "model_card/model_card_v1.html"} <= names
    import mlflow

    local = mlflow.artifacts.download_artifacts(
        run_id=run_id,
        artifact_path="model_card/model_card_v1.md",
        tracking_uri=f"sqlite:///{project / 'mlflow.db'}",
    )
    text = Path(local).read_text()
    assert "## Approvals" in text and "| promote | 1 | approve |" in text


def test_crippled_candidate_is_rejected_and_champion_stays(project):
    set_params(project, CRIPPLED)
    run_stages(project, *RETRAIN)
    result = promote(project)
    assert result["candidate_version"] == "2"
    assert result["decision"] == "reject"
    failed = {r["name"] for r in result["rules"] if r["outcome"] == "fail"}
    assert failed & {"primary_drop", "floor:recall"}
    assert aliases(project) == {"champion": "1"}
    # --strict turns the same outcome into a failing exit code for CI.
    strict = run_cli(project, "promote", "--strict", "--dry-run", check=False)
    assert strict.returncode == 3


def test_better_candidate_is_approved(project):
    set_params(project, {**TREES, **RELAXED})
    run_stages(project, *RETRAIN)
    result = promote(project)
    assert result["candidate_version"] == "3"
    gain = next(r for r in result["rules"] if r["name"] == "primary_drop")["value"]
    assert gain >= 0.01, f"the tree model should beat logistic regression (gain {gain:+.2%})"
    assert result["decision"] == "approve"
    assert aliases(project) == {"champion": "3", "previous-champion": "1"}


def test_rollback_restores_previous_champion(project):
    run_cli(project, "rollback", "--reason", "incident 42", "--actor", "oncall")
    assert aliases(project) == {"champion": "1", "previous-champion": "3"}
    last = history(project)[-1]
    assert (last["action"], last["actor"], last["reason"]) == ("rollback", "oncall", "incident 42")
    assert (last["champion_before"], last["champion_after"]) == ("3", "1")


def test_large_gain_goes_to_review_and_reviewer_completes_it(project):
    set_params(project, TREES)  # default review thresholds
    result = promote(project, "--version", "3")
    assert result["decision"] == "review"
    outcomes = {r["name"]: r["outcome"] for r in result["rules"]}
    assert outcomes["suspicious_gain"] == "review"
    assert aliases(project) == {"champion": "1", "previous-champion": "3", "challenger": "3"}
    # Reviewing a version that is not waiting is refused with a one-line error.
    bad = run_cli(
        project,
        "review",
        "--version",
        "2",
        "--reviewer",
        "ann",
        "--reason",
        "x",
        "--approve",
        check=False,
    )
    assert bad.returncode != 0 and "not waiting for review" in bad.stderr
    assert "Traceback" not in bad.stderr
    run_cli(
        project,
        "review",
        "--version",
        "3",
        "--reviewer",
        "ann",
        "--reason",
        "gain explained by the richer model family",
        "--approve",
    )
    assert aliases(project) == {"champion": "3", "previous-champion": "1"}
    last = history(project)[-1]
    assert (last["action"], last["decision"], last["actor"]) == ("review", "approve", "ann")
    mv = client_for(project).get_model_version(NAME, "3")
    assert mv.tags["review.by"] == "ann"
    assert "ann" in mv.description


def test_dry_run_changes_nothing(project):
    before_aliases, before_history = aliases(project), history(project)
    versions_before = {
        mv.version: mv.tags for mv in client_for(project).search_model_versions(f"name='{NAME}'")
    }
    result = promote(project, "--version", "2", "--dry-run")
    assert result["dry_run"] is True and result["decision"] == "reject"
    assert aliases(project) == before_aliases
    assert history(project) == before_history
    versions_after = {
        mv.version: mv.tags for mv in client_for(project).search_model_versions(f"name='{NAME}'")
    }
    assert versions_after == versions_before


def test_history_is_complete_and_ordered(project):
    records = history(project)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert [(r["action"], r["version"], r["decision"]) for r in records] == [
        ("promote", "1", "approve"),
        ("promote", "2", "reject"),
        ("promote", "3", "approve"),
        ("rollback", "1", "rollback"),
        ("promote", "3", "review"),
        ("review", "3", "approve"),
    ]
    for r in records:
        assert r["actor"] and r["when"]
    printed = run_cli(project, "history").stdout
    assert "rollback" in printed and "review" in printed


def test_concurrent_promotions_leave_one_champion_and_full_history(project):
    """Two `promote` processes at once, on a fresh registered model with two versions."""
    import mlflow

    from support.project import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(project))  # MLflow resolves models:/ URIs globally

    mlflow.set_registry_uri(tracking_uri(project))
    client = client_for(project)
    name = "concurrent"
    client.create_registered_model(name)
    for source in ("1", "3"):
        mv = client.get_model_version(NAME, source)
        client.create_model_version(name, source=mv.source, run_id=mv.run_id, tags=mv.tags)
    other = project / "params-concurrent.yaml"
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["registry"]["model_name"] = name
    raw["promotion"].update(
        suspicious_gain=100.0,
        max_latency_increase=100.0,
        max_prediction_shift=1.0,
        reject_drop=100.0,
    )
    other.write_text(yaml.safe_dump(raw))
    procs = [
        subprocess.Popen(
            [str(CLI), "promote", "--params", str(other), "--version", v],
            cwd=project,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in ("1", "2")
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    records = history(project, str(other))
    assert [r["seq"] for r in records] == [1, 2]
    assert sorted(r["version"] for r in records) == ["1", "2"]
    first, second = records
    assert first["champion_before"] is None
    # The second decision saw the first one's outcome: no lost update.
    assert second["champion_before"] == first["champion_after"]
    final = {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
    assert final["champion"] == second["champion_after"]
    champions = [v for v in ("1", "2") if "champion" in client.get_model_version(name, v).aliases]
    assert champions == [final["champion"]]


# --------------------------------------------------------------------------------------
# A gate that grades fairly (issue 11): after a change of seed, the new test split holds
# rows the champion was trained or validated on.


def _fit_rows(project: Path, name: str, version: str):
    import tempfile

    import mlflow

    from mlplatform.data import fingerprints

    run_id = client_for(project).get_model_version(name, version).run_id
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path=fingerprints.ARTIFACT,
            dst_path=tmp,
            tracking_uri=f"sqlite:///{project / 'mlflow.db'}",
        )
        return fingerprints.read(Path(local))


def test_champion_is_not_graded_on_the_rows_it_was_fit_on(project):
    import mlflow
    import pandas as pd
    from sklearn.metrics import average_precision_score

    from mlplatform import model_format
    from mlplatform.data import fingerprints
    from support.project import tracking_uri

    champion = aliases(project)["champion"]
    set_params(project, {**TREES, **RELAXED, "seed": 7})  # a new split of the same data
    run_stages(project, "prepare", *RETRAIN)
    result = promote(project)
    candidate = result["candidate_version"]
    cmp = result["comparison"]
    test = pd.read_parquet(project / "data/prepared/test.parquet")
    mlflow.set_tracking_uri(tracking_uri(project))
    mlflow.set_registry_uri(tracking_uri(project))
    champ = model_format.load_pyfunc(f"models:/{NAME}/{champion}")
    specs = champ._model_impl.specs
    seen = fingerprints.seen(
        fingerprints.fingerprints(test, specs, "deny"), _fit_rows(project, NAME, champion)
    )
    assert seen.sum() > 0.5 * len(test), "a new seed puts the champion's fit rows in test"
    assert cmp["test_rows"] == len(test)
    assert cmp["excluded_by"][f"champion v{champion}"] == seen.sum()
    assert cmp["compared_rows"] <= len(test) - seen.sum()
    assert cmp["compared_rows"] < 200  # default promotion.min_compare_rows
    assert result["decision"] == "review"
    assert "promotion.min_compare_rows (200)" in result["reason"]
    assert f"champion v{champion} was fit on {seen.sum()}" in result["reason"]
    rules = {r["name"]: r for r in result["rules"]}
    assert rules["comparison_rows"]["outcome"] == "review"
    # The champion's figures come from the compared rows only, not from its training rows.
    cand_seen = fingerprints.seen(
        fingerprints.fingerprints(test, specs, "deny"), _fit_rows(project, NAME, candidate)
    )
    fresh = test[~seen & ~cand_seen]
    assert len(fresh) == cmp["compared_rows"]
    proba = champ.predict(fresh.drop(columns=["deny", "afam"]))["probability_yes"]
    honest = average_precision_score(fresh["deny"] == "yes", proba)
    recorded = result["champion"]["metrics"]["average_precision"]
    assert recorded == pytest.approx(honest, abs=1e-12)
    everywhere = champ.predict(test.drop(columns=["deny", "afam"]))["probability_yes"]
    graded_before = average_precision_score(test["deny"] == "yes", everywhere)
    print(
        f"champion v{champion} AP: all {len(test)} test rows {graded_before:.4f}, the "
        f"{len(fresh)} rows new to both {honest:.4f} ({cmp['excluded_by']})"
    )
    # The audit record and the version's tags say the same.
    last = history(project)[-1]
    assert last["comparison"]["compared_rows"] == cmp["compared_rows"]
    assert last["decision"] == "review"
    tags = client_for(project).get_model_version(NAME, candidate).tags
    assert "comparison_rows" in tags["promotion.rules"]
    assert tags["mlplatform.fit_rows"] == str(len(_fit_rows(project, NAME, candidate)))
    # With a lower floor the gate decides, on the same honest rows.
    other = project / "params-floor.yaml"
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["promotion"]["min_compare_rows"] = 20
    other.write_text(yaml.safe_dump(raw))
    run_cli(project, "promote", "--params", str(other), "--version", candidate, "--dry-run")
    decided = json.loads((project / "reports/promotion.json").read_text())
    assert {r["name"]: r["outcome"] for r in decided["rules"]}["comparison_rows"] == "pass"
    assert decided["champion"]["metrics"]["average_precision"] == pytest.approx(honest, abs=1e-12)


def test_versions_without_recorded_fit_rows_and_hostile_versions(project, tmp_path):
    """A champion registered before fit rows were recorded is compared on all rows, and the
    record says so; a version carrying a pickled python_model is rejected unread."""
    import mlflow

    from support.project import ROOT, tracking_uri

    client = client_for(project)
    mlflow.set_tracking_uri(tracking_uri(project))
    mlflow.set_registry_uri(tracking_uri(project))
    name = "legacy"
    client.create_registered_model(name)
    exp = client.get_experiment_by_name("credit-risk").experiment_id
    old_run = client.create_run(exp, run_name="release-0.1.0")
    client.log_artifacts(old_run.info.run_id, str(ROOT / "tests/fixtures/model_v0_1_0"), "model")
    client.set_terminated(old_run.info.run_id)
    client.create_model_version(name, f"runs:/{old_run.info.run_id}/model", old_run.info.run_id)
    client.set_registered_model_alias(name, "champion", "1")
    current = client.get_model_version(NAME, "3")
    client.create_model_version(name, current.source, current.run_id, tags=current.tags)

    class Pickled(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[str]) -> list[str]:
            return model_input

    with mlflow.start_run(experiment_id=exp) as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=Pickled(), pip_requirements=[])
    client.create_model_version(name, info.model_uri, run.info.run_id)

    other = project / "params-legacy.yaml"
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["registry"]["model_name"] = name
    other.write_text(yaml.safe_dump(raw))
    run_cli(project, "promote", "--params", str(other), "--version", "2", "--dry-run")
    result = json.loads((project / "reports/promotion.json").read_text())
    cmp = result["comparison"]
    assert cmp["unrecorded"] == ["champion v1"] and "could not be left out" in cmp["why"]
    flag = next(r for r in result["rules"] if r["name"] == "fit_rows_recorded")
    assert flag["outcome"] == "info" and "champion v1" in flag["detail"]
    assert result["champion"]["loaded"] is True

    run_cli(project, "promote", "--params", str(other), "--version", "3", "--dry-run")
    hostile = json.loads((project / "reports/promotion.json").read_text())
    assert hostile["decision"] == "reject"
    assert "models:/legacy/3: refused" in hostile["reason"]
