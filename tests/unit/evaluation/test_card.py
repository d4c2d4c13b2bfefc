"""Model card rendering from hand-made contexts: sections, fairness wording, HTML, description."""

from __future__ import annotations

import base64
import copy
import re

import pytest

from mlplatform.config import parse_params
from mlplatform.evaluation import card
from support.project import SECTIONS, make_params

# A real (1 x 1 pixel) PNG, so the HTML embeds what the pipeline would embed.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
DATA_URI = "data:image/png;base64," + base64.b64encode(PNG).decode()
IMAGE_KEYS = (
    "roc",
    "precision_recall",
    "calibration",
    "confusion_matrix",
    "importance",
    "beeswarm",
)


def _metrics(value: float, passed: bool | None, limit: float | None) -> dict:
    return {"value": value, "limit": limit, "passed": passed}


def _fair_pass() -> dict:
    return {
        "groups_judged": ["no", "yes"],
        "groups_too_small": ["unknown"],
        "metrics": {
            "demographic_parity_difference": _metrics(0.1856, None, None),
            "equal_opportunity_difference": _metrics(0.1161, True, 0.15),
            "equalized_odds_difference": _metrics(0.1161, True, 0.15),
        },
        "rates": {
            "no": {"selection_rate": 0.064, "tpr": 0.48, "fpr": 0.03},
            "yes": {"selection_rate": 0.25, "tpr": 0.6, "fpr": 0.06},
        },
        "status": "pass",
    }


def _binary_group(group: str, rows: int, too_small: bool) -> dict:
    return {
        "group": group,
        "rows": rows,
        "too_small": too_small,
        "base_rate": 0.12,
        "positive_rate": 0.1,
        "precision": 0.7,
        "recall": 0.55,
        "f1": 0.61,
        "auc": float("nan") if too_small else 0.86,
    }


def _multi_group(group: str, rows: int, too_small: bool) -> dict:
    return {
        "group": group,
        "rows": rows,
        "too_small": too_small,
        "accuracy": 0.9,
        "precision": 0.88,
        "recall": 0.87,
        "f1": 0.875,
        "auc": 0.97,
    }


def binary_context(
    *, sensitive: bool = True, explanations: bool = True, approvals: bool = False
) -> dict:
    subgroups = {"single": [_binary_group("no", 300, False), _binary_group("yes", 176, False)]}
    fair = {}
    if sensitive:
        subgroups = {
            "afam": [
                _binary_group("no", 400, False),
                _binary_group("unknown", 4, True),
                _binary_group("yes", 72, False),
            ],
            **subgroups,
        }
        fair = {"afam": _fair_pass()}
    ctx = {
        "model": {
            "name": "credit-risk",
            "version": "3" if approvals else None,
            "family": "xgboost",
            "hyperparameters": {"max_depth": 3, "learning_rate": 0.0186, "n_estimators": 350},
            "date": "2026-01-02",
            "owner": "Credit Risk Modelling",
            "contact": "mlops@example.org",
            "run_id": "run0123456789abcdef",
            "model_uri": "models:/m-0123",
            "threshold": 0.6738,
            "threshold_rule": "best_f1",
        },
        "intended_use": "Decision support for reviewing mortgage applications.",
        "out_of_scope": ["Automated approval or denial without human review."],
        "task": "binary",
        "target": "deny",
        "classes": ["no", "yes"],
        "positive_class": "yes",
        "data": {
            "source": "built-in dataset 'hmda'",
            "rows": {"raw": 2380, "used": 2377, "train": 1425, "validation": 476, "test": 476},
            "class_balance": {
                "train": {"no": 0.8814, "yes": 0.1186},
                "test": {"no": 0.8824, "yes": 0.1176},
            },
            "duplicates_removed": 3,
            "time_column": None,
            "date_range": None,
            "features": [
                {"name": "pirat", "kind": "numeric"},
                {"name": "single", "kind": "boolean"},
            ],
            "dvc_hashes": {"data/prepared": "ff12b535.dir", "data/raw": "60915e64.dir"},
        },
        "metrics": {
            "average_precision": 0.5947,
            "roc_auc": 0.8638,
            "precision": 0.6818,
            "recall": 0.5357,
            "f1": 0.6,
            "accuracy": 0.916,
            "brier": 0.1202,
            "log_loss": 0.4022,
            "base_rate": 0.1176,
            "positive_rate": 0.0924,
        },
        "headline": list(card.HEADLINE_BINARY),
        "confusion_matrix": [[406, 14], [26, 30]],
        "per_class": None,
        "test_rows": 476,
        "sensitive_features": ["afam"] if sensitive else [],
        "slice_columns": ["single"],
        "subgroups": subgroups,
        "fairness": fair,
        "fairness_limits": {
            "demographic_parity_max": None,
            "equal_opportunity_max": 0.15,
            "equalized_odds_max": 0.15,
            "min_group_size": 30,
        },
        "explanations": None,
        "lineage": {
            "run_id": "run0123456789abcdef",
            "tune_run_id": "parent0123",
            "study_name": "credit-risk-abc",
            "params_hash": "f63801e449e78b19",
            "git_commit": "d896689fd3e6",
            "seed": 42,
        },
        "approvals": [],
        "limitations": [
            "Trained on 2,380 applications from one city and year.",
            "Subgroups of 'afam' too small to judge (< 30 test rows): unknown.",
        ],
    }
    if explanations:
        ctx["explanations"] = {
            "method": "tree",
            "output_space": "log-odds",
            "rows_explained": 476,
            "top_features": [
                {
                    "feature": "chist",
                    "mean_abs_shap": 0.5129,
                    "direction": "higher values raise the score (r=+0.92)",
                    "for_class": "yes",
                },
                {
                    "feature": "pirat",
                    "mean_abs_shap": 0.4240,
                    "direction": "higher values raise the score (r=+0.41)",
                    "for_class": "yes",
                },
            ],
        }
    if approvals:
        ctx["approvals"] = [
            {
                "when": "2026-01-03 10:00:00",
                "action": "register",
                "version": "3",
                "decision": "registered",
                "actor": "ci-bot",
                "reason": "",
            },
            {
                "when": "2026-01-03 10:05:00",
                "action": "promote",
                "version": "3",
                "decision": "approve",
                "actor": "alice",
                "reason": "average_precision +2.1% over champion v2",
            },
        ]
    return ctx


def multiclass_context(*, sensitive: bool = True, explanations: bool = True) -> dict:
    ctx = binary_context(sensitive=False, explanations=explanations)
    classes = ["barolo", "grignolino", "barbera"]
    ctx["model"].update(threshold=None, threshold_rule=None, family="random_forest")
    ctx.update(
        task="multiclass",
        target="cultivar",
        classes=classes,
        positive_class=None,
        headline=list(card.HEADLINE_MULTI),
        metrics={
            "accuracy": 0.944,
            "balanced_accuracy": 0.95,
            "f1_macro": 0.9421,
            "precision_macro": 0.9388,
            "recall_macro": 0.9502,
            "roc_auc": 0.99,
            "average_precision": 0.985,
            "log_loss": 0.21,
        },
        confusion_matrix=[[12, 0, 0], [1, 12, 1], [0, 0, 10]],
        per_class={c: {"precision": 0.9, "recall": 0.9, "f1": 0.9} for c in classes},
        test_rows=36,
        sensitive_features=["region"] if sensitive else [],
        slice_columns=[],
        subgroups={},
        fairness={},
        limitations=["Test set of 36 rows: figures carry wide uncertainty."],
    )
    ctx["data"]["class_balance"] = {"test": {c: 1 / 3 for c in classes}}
    if sensitive:
        ctx["subgroups"] = {
            "region": [
                _multi_group("north", 13, False),
                _multi_group("south", 12, False),
                _multi_group("west", 3, True),
            ]
        }
        ctx["fairness"] = {
            "region": {
                "groups_judged": ["north", "south"],
                "groups_too_small": ["west"],
                "per_class": {
                    str(k): {
                        "demographic_parity_difference": 0.1,
                        "equal_opportunity_difference": 0.2,
                        "equalized_odds_difference": 0.3,
                    }
                    for k in range(3)
                },
                "metrics": {
                    "demographic_parity_difference": _metrics(0.1, None, None),
                    "equal_opportunity_difference": _metrics(0.2, False, 0.15),
                    "equalized_odds_difference": _metrics(0.3, False, 0.15),
                },
                "status": "fail",
            }
        }
    if explanations:
        ctx["explanations"]["method"] = "tree"
        ctx["explanations"]["output_space"] = "probability"
        for f, c in zip(ctx["explanations"]["top_features"], classes, strict=False):
            f["for_class"] = c
    return ctx


def images(value: str | None = DATA_URI) -> dict[str, str | None]:
    return dict.fromkeys(IMAGE_KEYS, value)


def _headings(markdown: str) -> list[str]:
    return [m.group(2) for m in re.finditer(r"^(#{1,3}) (.+)$", markdown, re.M)]


def _section(markdown: str, title: str) -> str:
    """Text of the '## title' section, up to the next '## ' heading."""
    start = markdown.index(f"\n## {title}")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end != -1 else None]


CASES = {
    "binary": lambda: binary_context(),
    "binary-no-sensitive": lambda: binary_context(sensitive=False),
    "binary-no-explanations": lambda: binary_context(explanations=False),
    "binary-approvals": lambda: binary_context(approvals=True),
    "multiclass": lambda: multiclass_context(),
    "multiclass-no-sensitive": lambda: multiclass_context(sensitive=False),
    "multiclass-no-explanations": lambda: multiclass_context(explanations=False),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("imgs", [None, DATA_URI], ids=["no-images", "images"])
def test_markdown_has_every_section(case, imgs):
    md = card.render_markdown(CASES[case](), images(imgs))
    heads = _headings(md)
    for title in SECTIONS:
        assert any(h.startswith(title) for h in heads), (title, heads)
    # Order as a reader expects it.
    positions = [next(i for i, h in enumerate(heads) if h.startswith(t)) for t in SECTIONS]
    assert positions == sorted(positions)
    assert "{{" not in md and "{%" not in md


@pytest.mark.parametrize("case", CASES)
def test_html_has_every_section_and_is_self_contained(case):
    html = card.render_html(CASES[case](), images())
    assert html.lstrip().startswith("<!doctype html>")
    for title in SECTIONS:
        assert re.search(rf"<h[1-3][^>]*>{re.escape(title)}", html), title
    assert "<table>" in html
    srcs = re.findall(r'\bsrc="([^"]*)"', html)
    assert len(srcs) == len(IMAGE_KEYS) - (0 if CASES[case]()["explanations"] else 2)
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1]) == PNG
    refs = re.findall(r'\b(?:src|href)\s*=\s*["\']?([^"\'\s>]+)', html, re.I)
    assert not [r for r in refs if re.match(r"(?i)(https?:)?//", r)]
    assert "<link" not in html and "<script" not in html


def test_binary_card_content():
    md = card.render_markdown(binary_context(approvals=True), images())
    assert "# Model card: credit-risk version 3" in md
    assert "| Decision threshold | 0.6738 (rule: best_f1" in md
    assert "positive: `yes`" in md
    evaluation = _section(md, "Evaluation")
    assert "threshold 0.6738" in evaluation
    assert "| average_precision | 0.595 |" in evaluation
    assert "| brier | 0.120 |" in evaluation
    assert "    406  14" in evaluation
    assert "![ROC](data:image/png;base64," in evaluation
    data = _section(md, "Training data")
    assert "1,425 train, 476 validation, 476 test (3 duplicate rows removed" in data
    assert "Class balance (test): no 88.2%, yes 11.8%" in data
    assert "not applicable (no time column" in data
    assert "DVC hash of `data/raw`: `60915e64.dir`" in data
    approvals = _section(md, "Approvals")
    assert "| when (UTC) | action | version | decision | by | reason |" in approvals
    assert "| 2026-01-03 10:05:00 | promote | 3 | approve | alice |" in approvals
    assert "not recorded" not in _section(md, "Lineage")
    assert "`d896689fd3e6`" in _section(md, "Lineage")


def test_no_approvals_and_no_lineage_commit_are_said_so():
    ctx = binary_context()
    ctx["lineage"]["git_commit"] = None
    md = card.render_markdown(ctx, images(None))
    assert "No promotion decision recorded yet" in _section(md, "Approvals")
    assert "not recorded (not a git checkout)" in _section(md, "Lineage")
    assert "version not registered yet" not in md
    assert "| Version | not registered yet |" in md
    assert "![" not in md  # no image paths given, none shown


def test_subgroup_table_flags_small_groups():
    md = card.render_markdown(binary_context(), images())
    sub = _section(md, "Performance by subgroup")
    assert "### afam (sensitive)" in sub
    assert "### single\n" in sub
    rows = {line.split("|")[1].strip(): line for line in sub.splitlines() if line.startswith("|")}
    assert "too small to judge" in rows["unknown"]
    assert rows["unknown"].count("n/a") == 1  # AUC of a group too small: nan -> n/a
    assert "too small to judge" not in rows["no"]
    assert "too small to judge" not in rows["yes"]


def test_fairness_section_binary():
    md = card.render_markdown(binary_context(), images())
    fair = _section(md, "Fairness")
    assert "### afam: PASS" in fair
    assert "demographic parity difference <= none" in fair
    assert "equal-opportunity (TPR) difference <= 0.15" in fair
    assert "at least 30 test rows" in fair
    assert "| demographic parity difference | 0.186 | none | reported |" in fair
    assert "| equal opportunity difference | 0.116 | 0.15 | pass |" in fair
    assert "Groups too small to judge: unknown." in fair
    assert "Multiclass" not in fair


def test_fairness_section_multiclass_fail():
    md = card.render_markdown(multiclass_context(), images())
    fair = _section(md, "Fairness")
    assert "### region: FAIL" in fair
    assert "largest over classes, one against the rest" in fair
    assert "| equalized odds difference | 0.300 | 0.15 | FAIL |" in fair
    assert "Groups too small to judge: west." in fair


def test_fairness_not_assessed_gives_the_reason():
    ctx = binary_context()
    ctx["fairness"]["afam"] = {
        "groups_judged": ["no"],
        "groups_too_small": ["yes"],
        "status": "not assessed",
        "reason": "fewer than two groups with at least 30 rows",
    }
    md = card.render_markdown(ctx, images())
    fair = _section(md, "Fairness")
    assert "### afam: NOT ASSESSED" in fair
    assert "Not assessed: fewer than two groups with at least 30 rows." in fair
    assert "Groups too small to judge: yes." in fair
    desc = card.render_description(ctx)
    assert "afam: not assessed" in desc


@pytest.mark.parametrize("make", [binary_context, multiclass_context], ids=["binary", "multi"])
def test_no_sensitive_features_is_said_explicitly(make):
    ctx = make(sensitive=False)
    md = card.render_markdown(ctx, images())
    fair = _section(md, "Fairness")
    assert "No sensitive features declared" in fair
    assert "fairness was not assessed" in fair
    assert "PASS" not in fair and "FAIL" not in fair
    html = card.render_html(ctx, images())
    assert "No sensitive features declared" in html
    assert "not assessed (no sensitive features declared)" in card.render_description(ctx)


def test_no_subgroups_at_all_is_said_explicitly():
    md = card.render_markdown(multiclass_context(sensitive=False), images())
    assert "there are no subgroups to report" in _section(md, "Performance by subgroup")


def test_multiclass_card_content():
    md = card.render_markdown(multiclass_context(), images())
    assert "Decision threshold" not in md
    assert "classes: barolo, grignolino, barbera)" in md
    assert "positive:" not in md
    evaluation = _section(md, "Evaluation")
    assert "threshold" not in evaluation.splitlines()[0]
    for k in ("f1_macro", "balanced_accuracy", "precision_macro", "recall_macro"):
        assert f"| {k} |" in evaluation
    assert "| f1_macro | 0.942 |" in evaluation
    assert "brier" not in evaluation
    sub = _section(md, "Performance by subgroup")
    assert "| group | rows | accuracy | precision (macro) |" in sub
    west = next(line for line in sub.splitlines() if "| west |" in line)
    assert "too small to judge" in west
    shap_section = _section(md, "Explanations (SHAP)")
    assert "(class barolo)" in shap_section and "(class grignolino)" in shap_section


def test_explanations_present_and_absent():
    md = card.render_markdown(binary_context(), images())
    sec = _section(md, "Explanations (SHAP)")
    assert "tree explainer on 476 test rows; values in log-odds space" in sec
    assert "| chist | 0.5129 | higher values raise the score (r=+0.92) |" in sec
    assert "![Global importance](data:image/png;base64," in sec
    assert "![SHAP beeswarm](data:image/png;base64," in sec
    none = card.render_markdown(binary_context(explanations=False), images())
    sec = _section(none, "Explanations (SHAP)")
    assert "Explanations have not been computed (run `mlplatform explain`)" in sec
    assert "![" not in sec
    assert "**Top features:** not computed" in card.render_description(
        binary_context(explanations=False)
    )


def test_limitations_listed_or_none():
    md = card.render_markdown(binary_context(), images())
    assert "- Trained on 2,380 applications" in _section(md, "Known limitations")
    ctx = binary_context()
    ctx["limitations"] = []
    assert "- None recorded." in _section(card.render_markdown(ctx, images()), "Known limitations")


def test_markdown_with_relative_image_paths():
    imgs = {k: f"plots/{k}.png" for k in IMAGE_KEYS}
    md = card.render_markdown(binary_context(), imgs)
    assert "![ROC](plots/roc.png)" in md
    assert "![Global importance](plots/importance.png)" in md


def test_html_title():
    html = card.render_html(binary_context(approvals=True), images())
    assert "<title>Model card: credit-risk v3</title>" in html
    html = card.render_html(binary_context(), images())
    assert "<title>Model card: credit-risk</title>" in html


def test_html_escapes_values_that_come_from_the_data():
    ctx = binary_context()
    evil = '<img src="https://evil.example/x.png">'
    ctx["subgroups"]["afam"][0]["group"] = evil
    html = card.render_html(ctx, images())
    assert evil not in html
    assert not [s for s in re.findall(r'\bsrc="([^"]*)"', html) if s.startswith("http")]


MD_LINK = "[click](https://evil.example/x) ![i](https://evil.example/i.png) <b>x</b> a|b"


def _poison(ctx):
    ctx["subgroups"]["afam"][0]["group"] = MD_LINK
    ctx["data"]["features"][0]["name"] = "col`) [x](https://evil.example)"
    ctx["model"]["name"] = "credit</title><script>alert(1)</script>"
    return ctx


def test_markdown_syntax_from_the_data_stays_text_in_html():
    html = card.render_html(_poison(binary_context()), images())
    assert "<a " not in html and 'evil.example/i.png"' not in html
    assert not re.findall(r'<img[^>]*src="https?:', html)
    assert "<script>" not in html and "<b>x</b>" not in html
    assert "<title>Model card: credit&lt;/title&gt;" in html


def test_line_breaks_in_data_values_cannot_end_a_code_span():
    import markdown

    ctx = binary_context()
    ctx["data"]["features"][0]["name"] = "a\r\r<img src=x onerror=alert(1)>\u2028b"
    html = card.render_html(ctx, images())
    assert "<img src=x" not in html and "onerror=alert(1)>" not in html
    rendered = markdown.markdown(card.render_markdown(ctx, images()), extensions=["tables"])
    assert "<img src=x" not in rendered


def test_line_breaks_in_data_values_cannot_break_a_table_row():
    ctx = binary_context()
    ctx["subgroups"]["afam"][0]["group"] = "first\nsecond"
    ctx["intended_use"] = "Decision support.\n\nNot for automated denial."
    md, page = card.render_markdown(ctx, images()), card.render_html(ctx, images())
    for text in (md, page):
        assert "first\nsecond" not in text and "first second" in text
    # Line breaks in the intended use are meant: kept (two paragraphs on the page).
    assert "Decision support.\n\nNot for automated denial." in md
    assert "<p>Decision support.</p>\n<p>Not for automated denial.</p>" in page
    row = next(line for line in md.splitlines() if "first second" in line)
    assert row.startswith("|") and row.endswith("|")


def test_markdown_syntax_from_the_data_stays_text_in_markdown():
    import markdown

    for text in (
        card.render_markdown(_poison(binary_context()), images()),
        card.render_description(_poison(binary_context())),
    ):
        rendered = markdown.markdown(text, extensions=["tables"])
        assert "<a " not in rendered, text
        assert "<b>" not in rendered
        assert not re.findall(r'<img[^>]*src="https?:', rendered)
    md = card.render_markdown(_poison(binary_context()), images())
    assert "\\[click\\](https://evil.example/x)" in md  # escaped, still readable


# --------------------------------------------------------------------------------------
# Registry description.


@pytest.mark.parametrize("case", CASES)
def test_description_is_compact_and_complete(case):
    ctx = CASES[case]()
    text = card.render_description(ctx)
    assert len(text) <= card.DESCRIPTION_LIMIT
    assert "truncated" not in text
    assert text.startswith(f"**{ctx['model']['family']}** for `{ctx['target']}`")
    assert "**Fairness:**" in text and "**Lineage:**" in text and "**Approvals:**" in text
    assert ctx["model"]["run_id"] in text
    assert "data:image" not in text


def test_description_content():
    text = card.render_description(binary_context(approvals=True))
    assert "at threshold 0.6738 (476 rows)" in text
    # afam: pass (<short name> 0.186, <short name> 0.116, <short name> 0.116)
    assert re.search(r"afam: pass \([^)]*0\.186, [^)]*0\.116, [^)]*0\.116\)", text), text
    assert "**Top features:** chist, pirat" in text
    assert "- 2026-01-03 10:05:00 promote v3: **approve** by alice (average_precision" in text
    assert "- none yet" not in text
    assert "- none yet" in card.render_description(binary_context())


def test_description_shows_the_last_six_approvals():
    ctx = binary_context(approvals=True)
    template = ctx["approvals"][1]
    ctx["approvals"] = [{**template, "actor": f"person{i}"} for i in range(10)]
    text = card.render_description(ctx)
    assert [f"person{i}" in text for i in range(10)] == [False] * 4 + [True] * 6


def test_description_is_truncated_to_the_registry_limit():
    ctx = binary_context(approvals=True)
    long = "x" * 300
    ctx["intended_use"] = "Use it carefully. " * 200
    ctx["fairness"] = {f"feature_{i:03d}_{long}": copy.deepcopy(_fair_pass()) for i in range(60)}
    ctx["explanations"]["top_features"] = [
        {"feature": f"f{i}_{long}", "mean_abs_shap": 0.1, "direction": "up", "for_class": "yes"}
        for i in range(50)
    ]
    ctx["limitations"] = [f"limitation {i}: {long}" for i in range(50)]
    full = card._env.get_template("model_version_description.md.j2").render(**ctx)
    assert len(full) > 5 * card.DESCRIPTION_LIMIT
    text = card.render_description(ctx)
    assert len(text) <= card.DESCRIPTION_LIMIT
    assert len(text) > card.DESCRIPTION_LIMIT - 100  # filled up to the limit, not cut short
    assert text.endswith("_(truncated: the full card is on the training run, model_card/)_")
    assert text.startswith(full[:1000])


# --------------------------------------------------------------------------------------
# Formatting and limitations.


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [
        (None, 3, "n/a"),
        (True, 3, "yes"),
        (False, 3, "no"),
        (1234567, 3, "1,234,567"),
        (0.123456, 3, "0.123"),
        (0.123456, 4, "0.1235"),
        (float("nan"), 3, "n/a"),
        (float("inf"), 3, "n/a"),
        ("text", 3, "text"),
    ],
)
def test_fmt(value, digits, expected):
    assert card._fmt(value, digits) == expected


def test_limitations_from_context():
    params = parse_params(make_params({"card.limitations": ["Stated by the owner."]}))
    ctx = binary_context()
    ctx["fairness"]["single"] = {
        "status": "not assessed",
        "reason": "fewer than two groups with at least 30 rows",
        "groups_judged": [],
        "groups_too_small": [],
    }
    ctx["fairness"]["afam"]["status"] = "fail"
    ctx["fairness"]["afam"]["metrics"]["equalized_odds_difference"]["passed"] = False
    notes = card._limitations(params, ctx)
    assert notes[0] == "Stated by the owner."
    assert "Subgroups of 'afam' too small to judge (< 30 test rows): unknown." in notes
    assert "Fairness limits exceeded for 'afam': equalized_odds_difference." in notes
    assert any(n.startswith("Fairness for 'single' not assessed: fewer than two") for n in notes)
    assert any(n.startswith("Imbalanced data (positive rate 11.8% in the test set)") for n in notes)
    assert "Test set of 476 rows: figures carry wide uncertainty." in notes

    big = binary_context(sensitive=False)
    big["test_rows"] = 5000
    big["metrics"]["base_rate"] = 0.4
    assert card._limitations(parse_params(make_params()), big) == list(
        parse_params(make_params()).card.limitations
    )
