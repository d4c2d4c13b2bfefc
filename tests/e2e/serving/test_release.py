"""The release path end to end: shadow and A/B deployment versions served by the real
`mlflow models serve`, the prediction log, `mlplatform shadow` / `ab`, and sign-offs by role
on a real MLflow sqlite registry.

One small project with two registered versions (v1 logistic regression, champion; v2
XGBoost), shared by the tests, which run in order.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from support.project import client_for, run_cli, run_stages, tracking_uri, write_project
from support.serving import invoke, served

pytestmark = pytest.mark.e2e

NAME = "credit-risk"
FIRST = ("ingest", "prepare", "tune", "train", "evaluate", "explain", "card", "register")
RETRAIN = ("tune", "train", "evaluate", "explain", "card", "register")
MODEST = {
    "tune.families": {"logistic_regression": {"C": {"low": 0.01, "high": 0.1, "log": True}}},
    "tune.n_trials": 2,
}
TREES = {  # with the seed in params.yaml, better than MODEST on the gate's rows
    "tune.families": {
        "xgboost": {
            "n_estimators": {"low": 25, "high": 50, "step": 25},
            "max_depth": {"low": 2, "high": 3},
        }
    },
    "tune.n_trials": 2,
}
RELAXED = {
    "promotion.suspicious_gain": 100.0,
    "promotion.max_latency_increase": 100.0,
    "promotion.max_prediction_shift": 1.0,
}
SIGNOFFS = {
    "release.signoffs": {
        "champion": {
            "required": ["technical", "model_risk"],
            "allowed": {"technical": ["ann"], "model_risk": ["cara"]},
        }
    }
}
KEY = "customer_id"


def registered(project: Path) -> str:
    return json.loads((project / "reports/registration.json").read_text())["version"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("release")
    write_project(folder, MODEST)
    run_stages(folder, *FIRST, "promote")
    write_project(folder, {**TREES, **RELAXED, "release.ab.key_column": KEY})
    run_stages(folder, *RETRAIN)
    assert registered(folder) == "2"
    return folder


@pytest.fixture(scope="module")
def rows(project) -> list[dict]:
    test = pd.read_parquet(project / "data/prepared/test.parquet").drop(columns=["deny"])
    return json.loads(test.head(120).to_json(orient="records"))


def log_env(project: Path, **extra: str) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": tracking_uri(project),
        "MLPLATFORM_PREDICTION_LOG": f"sqlite:///{project / 'predictions.db'}",
        **extra,
    }


def read_log(project: Path):
    from mlplatform.monitoring import prediction_log

    return prediction_log.read_window(f"sqlite:///{project / 'predictions.db'}")


def warm(port: int, rows: list[dict]) -> None:
    """The first requests of a fresh server pay for imports and caches: not measured."""
    for r in rows[:5]:
        assert invoke(port, {"dataframe_records": [r]})[0] == 200


def timed(port: int, record: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    status, out = invoke(port, {"dataframe_records": [record]})
    assert status == 200, out
    return (time.perf_counter() - start) * 1000, out["predictions"][0]


def test_deploy_refuses_bad_versions(project):
    for bad, words in (("99", "no version 99"), ("1", "is the champion"), ("x", "version number")):
        proc = run_cli(project, "deploy", "shadow", "--challenger", bad, check=False)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], proc.stderr
    assert json.loads(run_cli(project, "deploy", "status").stdout)["shadow"] is None


def test_shadow_answers_are_the_champions_and_the_log_holds_both(project, rows):
    out = run_cli(project, "deploy", "shadow", "--challenger", "2").stdout
    assert "champion v1, challenger v2" in out
    status = json.loads(run_cli(project, "deploy", "status").stdout)
    shadow_version = status["shadow"]["deployment_version"]
    env = log_env(project)
    with served(f"models:/{NAME}@champion", project, env={"MLFLOW_TRACKING_URI": env[
        "MLFLOW_TRACKING_URI"]}) as champ_port:  # fmt: skip
        alone = [timed(champ_port, r) for r in rows]
    with served(f"models:/{NAME}@shadow", project, env=env) as port:
        shadowed = [timed(port, r) for r in rows]
        time.sleep(1.0)  # the log's writer flushes every 200 ms
    for (_, a), (_, s) in zip(alone, shadowed, strict=True):
        assert s["prediction"] == a["prediction"]
        assert s["probability_yes"] == a["probability_yes"]
        assert len(s["request_id"]) == 32
    frame = read_log(project)
    ids = {s["request_id"] for _, s in shadowed}
    mine = frame[frame["request_id"].isin(ids)]
    assert set(mine["arm"]) == {"champion", "shadow"}
    assert set(mine[mine["arm"] == "champion"]["model_version"]) == {"1"}
    assert set(mine[mine["arm"] == "shadow"]["model_version"]) == {"2"}
    champ_rows = mine[mine["arm"] == "champion"]
    assert set(champ_rows["request_id"]) == ids
    assert (mine[mine["arm"] == "shadow"]["prediction"].notna()).mean() > 0.9
    # The report from the log: JSON with agreement, HTML, tags and artifacts on both versions.
    run_cli(project, "shadow", env={"MLPLATFORM_PREDICTION_LOG": env["MLPLATFORM_PREDICTION_LOG"]})
    report = json.loads((project / "reports/shadow.json").read_text())
    assert report["rows"]["total"] == len(rows)
    assert 0.5 <= report["agreement"] <= 1.0
    assert report["source"]["deployment_version"] == shadow_version
    assert "agreement" in (project / "reports/shadow.html").read_text()
    client = client_for(project)
    tags = client.get_model_version(NAME, "2").tags
    assert float(tags["shadow.agreement"]) == pytest.approx(report["agreement"])
    for version in ("1", "2"):
        run_id = client.get_model_version(NAME, version).run_id
        names = [a.path for a in client.list_artifacts(run_id, "release")]
        assert "release/shadow_v1_v2.json" in names


@pytest.mark.parametrize("fault", ["raise", "sleep:2000"])
def test_a_failing_or_slow_challenger_does_not_change_or_stall_the_answer(project, rows, fault):
    env = log_env(project)
    sample = rows[:60]
    with served(f"models:/{NAME}@champion", project, env={"MLFLOW_TRACKING_URI": env[
        "MLFLOW_TRACKING_URI"]}) as champ_port:  # fmt: skip
        warm(champ_port, rows[-5:])
        alone = [timed(champ_port, r) for r in sample]
    with served(
        f"models:/{NAME}@shadow", project, env={**env, "MLPLATFORM_SHADOW_FAULT": fault}
    ) as port:
        warm(port, rows[-5:])
        shadowed = [timed(port, r) for r in sample]
        time.sleep(3.0)  # a sleeping challenger's rows are logged when its call ends
    for (_, a), (_, s) in zip(alone, shadowed, strict=True):
        assert (s["prediction"], s["probability_yes"]) == (a["prediction"], a["probability_yes"])
    added = statistics.median(t for t, _ in shadowed) - statistics.median(t for t, _ in alone)
    slowest = max(t for t, _ in shadowed)
    print(f"\nshadow fault {fault}: median added latency {added:.2f} ms, slowest {slowest:.1f} ms")
    # Loose bounds (a loaded 2-core machine): the 2 s sleep is never waited for.
    assert added < 25.0
    assert slowest < 1000.0
    frame = read_log(project)
    ids = {s["request_id"] for _, s in shadowed}
    shadow_rows = frame[frame["request_id"].isin(ids) & (frame["arm"] == "shadow")]
    assert len(shadow_rows) == len(sample)  # every row logged, with no challenger answer
    assert shadow_rows["prediction"].isna().all()


def test_ab_split_and_stable_arm_per_key(project, rows):
    import mlflow

    from mlplatform.serving import ab

    run_cli(project, "deploy", "ab", "--challenger", "2")
    mlflow.set_tracking_uri(tracking_uri(project))
    mlflow.set_registry_uri(tracking_uri(project))
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@ab")
    n = 10_000
    base = pd.DataFrame([rows[i % len(rows)] for i in range(n)])
    base[KEY] = [f"c{i}" for i in range(n)]
    out = model.predict(base)
    share = (out["arm"] == "challenger").mean()
    print(f"\nA/B challenger share on {n} keys: {share:.4f} (configured 0.5)")
    assert abs(share - 0.5) < 0.02  # 4 binomial standard deviations
    expected = ab.assign_arms(base[KEY], 0.5, "mlplatform-ab")
    picked = np.random.default_rng(0).choice(n, 2000, replace=False)
    again = model.predict(base.iloc[picked].reset_index(drop=True))
    assert (again["arm"].to_numpy() == out["arm"].to_numpy()[picked]).all()  # same key, same arm
    assert (out["arm"].to_numpy() == expected).all()
    assert set(out.loc[out["arm"] == "challenger", "model_version"]) == {"2"}
    # A few through the real server: each answer says its arm, the log records it.
    env = log_env(project)
    with served(f"models:/{NAME}@ab", project, env=env) as port:
        answers = []
        for i, r in enumerate(rows[:40]):
            status, body = invoke(port, {"dataframe_records": [{**r, KEY: f"c{i}"}]})
            assert status == 200, body
            answers.append(body["predictions"][0])
        time.sleep(1.0)
    assert [a["arm"] for a in answers] == list(expected[:40])
    frame = read_log(project)
    logged = frame[frame["request_id"].isin({a["request_id"] for a in answers})]
    assert len(logged) == 40
    assert sorted(logged["key"]) == sorted(f"c{i}" for i in range(40))
    by_id = logged.set_index("request_id")["arm"]
    assert all(by_id[a["request_id"]] == a["arm"] for a in answers)


def test_ab_report_declares_no_winner_before_the_sample_size(project):
    from mlplatform.monitoring import feedback

    frame = read_log(project)
    served_rows = frame[frame["key"].notna()]
    labels = pd.DataFrame(
        {
            "request_id": served_rows["request_id"],
            "label": ["yes" if i % 2 else "no" for i in range(len(served_rows))],
        }
    )
    feedback.record_feedback(f"sqlite:///{project / 'predictions.db'}", labels.head(30))
    env = {"MLPLATFORM_PREDICTION_LOG": f"sqlite:///{project / 'predictions.db'}"}
    out = run_cli(project, "ab", env=env).stdout
    report = json.loads((project / "reports/ab.json").read_text())
    assert report["decision"] == "keep_collecting" and report["winner"] is None
    assert "no winner before" in out
    assert sum(report["collected"].values()) == 30
    assert report["p_value"] is None
    assert (project / "reports/ab.html").is_file()


def test_promotion_refuses_a_deployment_version(project):
    status = json.loads(run_cli(project, "deploy", "status").stdout)
    dep = status["ab"]["deployment_version"]
    proc = run_cli(project, "promote", "--version", dep, check=False)
    assert proc.returncode != 0
    assert "is a ab deployment" in proc.stderr and "promote v2 itself" in proc.stderr
    run_cli(project, "deploy", "off")
    status = json.loads(run_cli(project, "deploy", "status").stdout)
    assert status["shadow"] is None and status["ab"] is None


def test_signoffs_by_role_end_to_end(project):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["release"]["signoffs"] = SIGNOFFS["release.signoffs"]
    (project / "params.yaml").write_text(yaml.safe_dump(raw))

    def review(*args: str, check: bool = True):
        return run_cli(project, "review", *args, check=check)

    # Before the gate has evaluated it: refused.
    proc = review("2", "--role", "technical", "--approve", "--reason", "x", "--reviewer", "ann",
                  check=False)  # fmt: skip
    assert proc.returncode != 0 and "has not been through the gate" in proc.stderr
    run_cli(project, "promote", "--version", "2")
    promo = json.loads((project / "reports/promotion.json").read_text())
    assert promo["decision"] == "review"
    assert "missing sign-off by role 'technical'" in promo["reason"]
    assert "missing sign-off by role 'model_risk'" in promo["reason"]
    # A manual approval cannot skip the sign-offs.
    proc = review("2", "--approve", "--reason", "skip", "--reviewer", "ann", check=False)
    assert proc.returncode != 0 and "needs its sign-offs first" in proc.stderr
    # Wrong role, wrong person.
    proc = review("2", "--role", "legal", "--approve", "--reason", "x", "--reviewer", "ann",
                  check=False)  # fmt: skip
    assert proc.returncode != 0 and "not required at stage 'champion'" in proc.stderr
    proc = review("2", "--role", "model_risk", "--approve", "--reason", "x", "--reviewer",
                  "ann", check=False)  # fmt: skip
    assert proc.returncode != 0 and "'ann' may not sign off as 'model_risk'" in proc.stderr
    # One role present: still waiting.
    out = review("2", "--role", "technical", "--approve", "--reason", "code reviewed",
                 "--reviewer", "ann").stdout  # fmt: skip
    assert "missing sign-off by role 'model_risk'" in out and "champion is v1" in out
    # All present and the gates passed: champion.
    out = review("2", "--role", "model_risk", "--approve", "--reason", "risk accepted",
                 "--reviewer", "cara").stdout  # fmt: skip
    assert "champion is v2" in out
    client = client_for(project)
    assert str(client.get_registered_model(NAME).aliases["champion"]) == "2"
    # Stale: evaluated against champion v2, then the champion changes (rollback to v1).
    write_project(project, {**MODEST, **RELAXED, **SIGNOFFS})
    run_stages(project, *RETRAIN)
    v3 = registered(project)
    run_cli(project, "promote", "--version", v3)
    review(v3, "--role", "technical", "--approve", "--reason", "ok", "--reviewer", "ann")
    run_cli(project, "rollback", "--reason", "drill")
    proc = review(v3, "--role", "model_risk", "--approve", "--reason", "late", "--reviewer",
                  "cara", check=False)  # fmt: skip
    assert proc.returncode != 0 and "changed since it was evaluated" in proc.stderr
    # The audit trail and lineage show every sign-off: who, role, when, why; and the path.
    history = [json.loads(x) for x in run_cli(project, "history", "--json").stdout.splitlines()]
    signed = [h for h in history if h["action"] == "signoff"]
    assert [(h["version"], h["role"], h["actor"]) for h in signed] == [
        ("2", "technical", "ann"), ("2", "model_risk", "cara"), (v3, "technical", "ann")
    ]  # fmt: skip
    assert all(h["when"] and h["reason"] for h in signed)
    lineage = run_cli(project, "lineage", "2").stdout
    assert "approve by ann (technical): code reviewed" in lineage
    assert "approve by cara (model_risk): risk accepted" in lineage
    assert "shadow by" in lineage and "shadow    #" in lineage  # the deployment, the report
    path_line = next(line for line in lineage.splitlines() if line.strip().startswith("path"))
    assert "deploy:shadow" in path_line and path_line.rstrip().endswith("release:approve")
    info = json.loads(run_cli(project, "lineage", "2", "--json").stdout)
    assert any(e["action"] == "shadow" for e in info["events"])
    assert np.isfinite(float(client.get_model_version(NAME, "2").tags["shadow.agreement"]))
