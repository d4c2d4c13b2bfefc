"""explain -> card end to end: SHAP outputs, the model card and what is logged on the run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_wine

from support.project import SECTIONS, TRAIN_STAGES, client_for, run_stages, write_project

CULTIVARS = {0: "barolo", 1: "grignolino", 2: "barbera"}
REGIONS = ("north", "south", "east")


def _read(project: Path, rel: str) -> dict:
    return json.loads((project / rel).read_text())


def _all_artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for a in client.list_artifacts(run_id, path):
        if a.is_dir:
            out |= _all_artifacts(client, run_id, a.path)
        else:
            out.add(a.path)
    return out


def _assert_sections(md: str, html: str) -> None:
    heads = re.findall(r"^#{1,3} (.+)$", md, re.M)
    for title in SECTIONS:
        assert any(h.startswith(title) for h in heads), (title, heads)
        assert re.search(rf"<h[1-3][^>]*>{re.escape(title)}", html), title


def _fairness_section(md: str) -> str:
    start = md.index("\n## Fairness")
    return md[start : md.index("\n## ", start + 1)]


def _assert_self_contained(html: str) -> list[str]:
    srcs = re.findall(r'\bsrc="([^"]*)"', html)
    assert srcs, "no image embedded"
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    refs = re.findall(r'\b(?:src|href)\s*=\s*["\']?([^"\'\s>]+)', html, re.I)
    assert not [r for r in refs if re.match(r"(?i)(https?:)?//", r)]
    assert "<table>" in html
    return srcs


def _check_additivity(table: pd.DataFrame, prefix: str = "") -> None:
    shap_cols = [c for c in table.columns if c.startswith(f"{prefix}shap_")]
    assert shap_cols
    total = table[shap_cols].sum(axis=1) + table[f"{prefix}base_value"]
    np.testing.assert_allclose(total, table[f"{prefix}model_output"], rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------
# (a) Binary: the shared HMDA project.


@pytest.fixture(scope="module")
def hmda(trained_project) -> Path:
    """explain + card once on the shared project (adds outputs only; params untouched)."""
    run_stages(trained_project, "explain", "card")
    return trained_project


@pytest.mark.e2e
def test_binary_explain_outputs(hmda):
    folder = hmda / "reports" / "explain"
    for name in ("importance.png", "beeswarm.png", "shap_values.parquet", "summary.json"):
        assert (folder / name).is_file(), name
    summary = _read(hmda, "reports/explain/summary.json")
    assert summary["explained_outputs"] == ["yes"]
    assert summary["max_additivity_error"] < 1e-4
    top = [f["feature"] for f in summary["top_features"]]
    assert 0 < len(top) <= 5
    for feature in top:
        slug = re.sub(r"[^\w-]", "_", feature)
        assert (folder / f"dependence_{slug}.png").is_file(), feature
    chosen = summary["chosen_rows"]
    assert chosen["highest_risk"] and chosen["borderline"]
    for kind in ("highest_risk", "borderline"):
        for rank in range(1, len(chosen[kind]) + 1):
            assert (folder / f"waterfall_{kind}_{rank}.png").is_file()
    assert not (folder / f"waterfall_highest_risk_{len(chosen['highest_risk']) + 1}.png").exists()

    table = pd.read_parquet(folder / "shap_values.parquet")
    assert len(table) == summary["rows_explained"]
    assert table["row"].tolist() == summary["sample_rows"]
    _check_additivity(table)
    schema = _read(hmda, "data/prepared/schema.json")
    features = {f["name"] for f in schema["features"]}
    shap_cols = {c.removeprefix("shap_") for c in table.columns if c.startswith("shap_")}
    assert shap_cols == features  # source columns, never encoded names
    assert "afam" not in shap_cols  # sensitive, kept out of the model


@pytest.mark.e2e
def test_binary_artifacts_on_the_training_run(hmda):
    run_id = _read(hmda, "reports/train.json")["run_id"]
    artifacts = _all_artifacts(client_for(hmda), run_id)
    for name in ("importance.png", "beeswarm.png", "shap_values.parquet", "summary.json"):
        assert f"explain/{name}" in artifacts
    for name in ("model_card.md", "model_card.html", "card.json"):
        assert f"model_card/{name}" in artifacts


@pytest.mark.e2e
def test_binary_card(hmda):
    md = (hmda / "reports" / "model_card.md").read_text()
    html = (hmda / "reports" / "model_card.html").read_text()
    _assert_sections(md, html)
    srcs = _assert_self_contained(html)
    # ROC, precision-recall, calibration, confusion matrix, importance, beeswarm.
    assert len(srcs) == 6
    # The Markdown file points at the image files next to it.
    for rel in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (hmda / "reports" / rel).is_file(), rel
    assert "![Global importance](explain/importance.png)" in md

    ctx = _read(hmda, "reports/card.json")
    assert ctx["task"] == "binary"
    assert ctx["model"]["run_id"] == _read(hmda, "reports/train.json")["run_id"]
    assert ctx["explanations"]["rows_explained"] > 0
    afam = ctx["fairness"]["afam"]
    assert afam["status"] in ("pass", "fail")
    assert afam["groups_judged"] == ["no", "yes"]
    m = afam["metrics"]
    assert m["demographic_parity_difference"]["passed"] is None  # no limit in params.yaml
    assert m["equal_opportunity_difference"]["limit"] == 0.15
    eo = max(
        abs(afam["rates"]["no"]["tpr"] - afam["rates"]["yes"]["tpr"]),
        abs(afam["rates"]["no"]["fpr"] - afam["rates"]["yes"]["fpr"]),
    )
    assert m["equalized_odds_difference"]["value"] == pytest.approx(eo)
    assert f"### afam: {afam['status'].upper()}" in _fairness_section(md)
    assert set(ctx["subgroups"]) == {"afam", "single", "selfemp"}


# --------------------------------------------------------------------------------------
# (b, c) Multiclass: the wine data from scikit-learn, with a sensitive column added.


def wine_project(folder: Path, sensitive: list[str]) -> Path:
    wine = load_wine(as_frame=True).frame
    wine = wine.rename(columns={"target": "cultivar"})
    wine["cultivar"] = wine["cultivar"].map(CULTIVARS)
    wine["region"] = [REGIONS[i % 3] for i in range(len(wine))]
    sources = folder / "data" / "sources"
    sources.mkdir(parents=True)
    wine.to_csv(sources / "wine.csv", index=False)
    return write_project(
        folder,
        {
            "data.source": "data/sources/wine.csv",
            "data.target": "cultivar",
            "data.positive_class": None,
            "data.sensitive_features": sensitive,
            "data.slice_columns": [],
            "tune.metric": "average_precision",
            "tune.n_trials": 4,
            "card.fairness.min_group_size": 5,
            "card.intended_use": "Testing multiclass model cards.",
            "card.limitations": [],
            "promotion.floors": {},
            "mlflow.experiment": "wine",
            "registry.model_name": "wine",
        },
    )


# ingest, prepare, tune, train, evaluate, explain, card (run_stages: one CLI process).
STAGES = (*TRAIN_STAGES, "explain", "card")


@pytest.fixture(scope="module")
def wine(tmp_path_factory) -> Path:
    project = wine_project(tmp_path_factory.mktemp("wine"), ["region"])
    run_stages(project, *STAGES)
    return project


@pytest.fixture(scope="module")
def wine_unaudited(tmp_path_factory) -> Path:
    project = wine_project(tmp_path_factory.mktemp("wine_plain"), [])
    run_stages(project, *STAGES)
    return project


@pytest.mark.e2e
def test_multiclass_explain_outputs(wine):
    folder = wine / "reports" / "explain"
    summary = _read(wine, "reports/explain/summary.json")
    classes = list(CULTIVARS.values())
    assert sorted(summary["explained_outputs"]) == sorted(classes)
    assert len(summary["base_value"]) == 3
    for cls in classes:
        assert (folder / f"beeswarm_{cls}.png").is_file(), cls
    assert not (folder / "beeswarm.png").exists()
    assert (folder / "importance.png").is_file()
    assert summary["max_additivity_error"] < 1e-4

    table = pd.read_parquet(folder / "shap_values.parquet")
    assert len(table) == summary["rows_explained"]
    for cls in classes:
        _check_additivity(table, f"{cls}:")
    features = {
        c.split(":shap_", 1)[1] for c in table.columns if c.startswith(f"{classes[0]}:shap_")
    }
    wine_columns = set(load_wine(as_frame=True).feature_names)
    assert features == wine_columns  # region is sensitive: not a model input
    assert not [c for c in table.columns if c.startswith("shap_")]


@pytest.mark.e2e
def test_multiclass_card(wine):
    md = (wine / "reports" / "model_card.md").read_text()
    html = (wine / "reports" / "model_card.html").read_text()
    _assert_sections(md, html)
    srcs = _assert_self_contained(html)
    assert len(srcs) >= 2  # at least the evaluation plots and the importance plot

    ctx = _read(wine, "reports/card.json")
    assert ctx["task"] == "multiclass"
    assert ctx["positive_class"] is None
    assert ctx["model"]["threshold"] is None
    assert {"f1_macro", "balanced_accuracy", "accuracy"} <= set(ctx["headline"])
    evaluation = md[md.index("## Evaluation") : md.index("## Performance by subgroup")]
    for k in ("f1_macro", "balanced_accuracy", "precision_macro", "recall_macro"):
        assert re.search(rf"\| {k} \| \d\.\d{{3}} \|", evaluation), k
    assert "Decision threshold" not in md
    assert len(ctx["confusion_matrix"]) == 3
    assert "(sensitive)" in md and "precision (macro)" in md

    region = ctx["fairness"]["region"]
    assert region["status"] in ("pass", "fail")
    assert region["groups_judged"] == sorted(REGIONS)
    assert set(region["per_class"]) == {"0", "1", "2"}
    for name, m in region["metrics"].items():
        assert m["value"] == pytest.approx(max(v[name] for v in region["per_class"].values()))
    fair = _fairness_section(md)
    assert f"### region: {region['status'].upper()}" in fair
    assert "largest over classes" in fair
    assert "(class " in md  # explanation directions name the class

    run_id = ctx["model"]["run_id"]
    artifacts = _all_artifacts(client_for(wine), run_id)
    assert {f"explain/beeswarm_{c}.png" for c in CULTIVARS.values()} <= artifacts
    assert "model_card/model_card.html" in artifacts


@pytest.mark.e2e
def test_no_sensitive_features_card_says_fairness_not_assessed(wine_unaudited):
    md = (wine_unaudited / "reports" / "model_card.md").read_text()
    html = (wine_unaudited / "reports" / "model_card.html").read_text()
    _assert_sections(md, html)
    ctx = _read(wine_unaudited, "reports/card.json")
    assert ctx["fairness"] == {} and ctx["sensitive_features"] == []
    fair = _fairness_section(md)
    assert "No sensitive features declared" in fair
    assert "fairness was not assessed" in fair
    assert "No sensitive features declared" in html
    assert "there are no subgroups to report" in md
    # region is an ordinary feature when not declared sensitive, and is explained as one
    # source column (its three one-hot columns summed).
    assert "region" in {f["name"] for f in ctx["data"]["features"]}
    table = pd.read_parquet(wine_unaudited / "reports" / "explain" / "shap_values.parquet")
    assert [c for c in table.columns if c.endswith(":shap_region")] == [
        f"{c}:shap_region" for c in sorted(CULTIVARS.values())
    ]
    assert not [c for c in table.columns if "region_" in c]
    for cls in CULTIVARS.values():
        _check_additivity(table, f"{cls}:")
