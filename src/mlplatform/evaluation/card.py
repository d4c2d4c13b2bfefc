"""Model card: gathered from the pipeline's outputs, rendered from Jinja2 templates.

``build_context`` collects every figure the card shows (pure data, saved as
reports/card.json for the promotion gate); ``render_*`` turn it into Markdown, a
self-contained HTML page (images embedded) and a compact Markdown description for the
registered model version (registry descriptions are limited to 5,000 characters).
"""

from __future__ import annotations

import base64
import html
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import numpy as np

from mlplatform import model_format
from mlplatform.config import Params, Paths
from mlplatform.data.dataset import load_schema, load_split
from mlplatform.evaluation import fairness
from mlplatform.io import read_json, write_json, write_text
from mlplatform.tracking import dvc_lock_hashes

log = logging.getLogger(__name__)

DESCRIPTION_LIMIT = 5000
HEADLINE_BINARY = (
    "average_precision",
    "roc_auc",
    "precision",
    "recall",
    "f1",
    "accuracy",
    "brier",
    "log_loss",
)
HEADLINE_MULTI = (
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "precision_macro",
    "recall_macro",
    "roc_auc",
    "average_precision",
    "log_loss",
)


_MD_SPECIAL = str.maketrans({"<": "&lt;", ">": "&gt;", **{c: "\\" + c for c in "\\`[]|"}})
_HTML_SPECIAL = str.maketrans({c: f"&#{ord(c)};" for c in "\\`*_[]()!|"})


def _md_escape(value: Any) -> Any:
    """Values from the data must not become links, images, HTML or table cells in Markdown,
    nor end a table row, list item or heading with a line break.

    Values already formatted by the ``code``, ``paragraph`` or ``trusted`` filters pass
    unchanged.
    """
    if isinstance(value, markupsafe.Markup) or not isinstance(value, str):
        return value
    return _one_line(value).translate(_MD_SPECIAL)


def _md_paragraph(value: Any) -> markupsafe.Markup:
    """Free text from params.yaml whose line breaks are meant (intended use): escaped only."""
    return markupsafe.Markup(str(value).translate(_MD_SPECIAL))


def _html_escape(value: Any) -> Any:
    """Values from the data must not become live HTML, links or table cells in the page.

    The Markdown is turned into HTML, so Markdown syntax is neutralised as well.
    """
    if value is None or isinstance(value, markupsafe.Markup):
        return value
    return _html_text(_one_line(value))


def _html_paragraph(value: Any) -> markupsafe.Markup:
    """``_md_paragraph`` for the page: HTML-escaped, line breaks kept."""
    return markupsafe.Markup(_html_text(str(value)))


def _html_text(text: str) -> str:
    """Text that stays text on the page: no HTML, and no Markdown once the card is rendered."""
    return html.escape(text, quote=True).translate(_HTML_SPECIAL)


def _one_line(value: Any) -> str:
    """Any line break (\\r, \\n, Unicode separators) would end a code span or table row."""
    return " ".join(str(value).splitlines())


def _code(value: Any) -> markupsafe.Markup:
    """A value as an inline Markdown code span (inert; ``|`` escaped the GFM-table way)."""
    text = _one_line(value).replace("`", "'").replace("|", "\\|")
    return markupsafe.Markup(f"`{text}`")


def _html_code(value: Any) -> markupsafe.Markup:
    """A value as an HTML <code> element, for the Markdown that becomes the HTML page."""
    return markupsafe.Markup(f"<code>{_html_text(_one_line(value))}</code>")


def _trusted(value: Any) -> Any:
    """Our own values (image paths, data URIs): inserted as they are."""
    return value if value is None else markupsafe.Markup(str(value))


def _environment(finalize, code, paragraph) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mlplatform.evaluation", "templates"),
        autoescape=False,  # Markdown templates; values are escaped by `finalize`
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        finalize=finalize,
    )
    env.filters["fmt"] = _fmt
    env.filters["code"] = code
    env.filters["paragraph"] = paragraph
    env.filters["trusted"] = _trusted
    return env


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


# Markdown for files and descriptions; the same Markdown with HTML-escaped values for the page.
_env = _environment(_md_escape, _code, _md_paragraph)
_html_env = _environment(_html_escape, _html_code, _html_paragraph)
# The HTML page around the rendered card: plain HTML autoescaping, no Markdown rules.
_page_env = jinja2.Environment(
    loader=jinja2.PackageLoader("mlplatform.evaluation", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _image(path: Path) -> str | None:
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _limitations(params: Params, ctx: dict[str, Any]) -> list[str]:
    notes = list(params.card.limitations)
    for feature, groups in ctx["subgroups"].items():
        small = [g["group"] for g in groups if g["too_small"]]
        if small:
            notes.append(
                f"Subgroups of '{feature}' too small to judge (< "
                f"{params.card.fairness.min_group_size} test rows): {', '.join(small)}."
            )
    for feature, result in ctx["fairness"].items():
        if result["status"] == "fail":
            failed = [k for k, v in result["metrics"].items() if v["passed"] is False]
            notes.append(f"Fairness limits exceeded for '{feature}': {', '.join(failed)}.")
        elif result["status"] == "not assessed":
            notes.append(f"Fairness for '{feature}' not assessed: {result['reason']}.")
    if ctx["task"] == "binary":
        base = ctx["metrics"].get("base_rate")
        if base is not None and base < 0.2:
            notes.append(
                f"Imbalanced data (positive rate {base:.1%} in the test set): read precision, "
                "recall and average precision rather than accuracy."
            )
    if ctx["test_rows"] < 1000:
        notes.append(f"Test set of {ctx['test_rows']} rows: figures carry wide uncertainty.")
    return notes


def build_context(
    params: Params,
    paths: Paths,
    *,
    version: str | None = None,
    approvals: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Everything the card shows, as plain data."""
    schema = load_schema(paths)
    trained = read_json(paths.train_report)
    tuned = read_json(paths.tune_report)
    evaluation = read_json(paths.metrics)
    summary = read_json(paths.data_summary)
    explain = (
        read_json(paths.explain / "summary.json")
        if (paths.explain / "summary.json").exists()
        else None
    )
    model = model_format.load(paths.model)
    test = load_split(paths, "test")
    proba = model.predict_proba(test)
    pred = model.labels(proba)
    y = schema.encode_target(test[schema.target]).to_numpy()
    limits = params.card.fairness

    subgroups, fair = {}, {}
    for col in dict.fromkeys([*schema.sensitive_features, *schema.slice_columns]):
        groups = fairness.group_labels(test[col])
        subgroups[col] = fairness.subgroup_table(y, pred, proba, groups, limits.min_group_size)
        if col in schema.sensitive_features:
            fair[col] = fairness.assess(y, pred, groups, len(schema.classes), limits)

    test_metrics = evaluation["test"]
    headline = HEADLINE_BINARY if schema.task == "binary" else HEADLINE_MULTI
    lock = dvc_lock_hashes(paths.root, [paths.prepared, paths.raw.parent])
    time_range = summary.get("time_range")
    ctx: dict[str, Any] = {
        "model": {
            "name": params.registry.model_name,
            "version": version,
            "family": trained["family"],
            "hyperparameters": trained["hyperparameters"],
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "owner": params.card.owner,
            "contact": params.card.contact,
            "run_id": trained["run_id"],
            "model_uri": trained["model_uri"],
            "threshold": trained["threshold"],
            "threshold_rule": trained["threshold_rule"],
        },
        "intended_use": params.card.intended_use,
        "out_of_scope": list(params.card.out_of_scope),
        "task": schema.task,
        "target": schema.target,
        "classes": [str(c) for c in schema.classes],
        "positive_class": None if schema.positive_class is None else str(schema.positive_class),
        "data": {
            "source": schema.source,
            "rows": summary["rows"],
            "class_balance": summary["class_balance"],
            "duplicates_removed": summary["duplicates_removed"],
            "time_column": schema.time_column,
            "date_range": time_range,
            "features": [{"name": s.name, "kind": s.kind} for s in schema.features],
            "dvc_hashes": lock,
        },
        "metrics": {
            k: test_metrics[k]
            for k in (*headline, "base_rate", "positive_rate")
            if k in test_metrics
        },
        "headline": [k for k in headline if k in test_metrics],
        "confusion_matrix": test_metrics["confusion_matrix"],
        "per_class": test_metrics.get("per_class"),
        "test_rows": test_metrics["n_rows"],
        "sensitive_features": list(schema.sensitive_features),
        "slice_columns": list(schema.slice_columns),
        "subgroups": subgroups,
        "fairness": fair,
        "fairness_limits": limits.model_dump(),
        "explanations": None
        if explain is None
        else {
            "method": explain["method"],
            "output_space": explain["output_space"],
            "rows_explained": explain["rows_explained"],
            "top_features": explain["top_features"],
        },
        "lineage": {
            "run_id": trained["run_id"],
            "tune_run_id": tuned["parent_run_id"],
            "study_name": tuned["study_name"],
            **_run_lineage(params, trained["run_id"]),
            "seed": params.seed,
        },
        "approvals": approvals or [],
    }
    ctx["limitations"] = _limitations(params, ctx)
    return ctx


def _run_lineage(params: Params, run_id: str) -> dict[str, Any]:
    """Git commit and params hash as recorded on the training run (not today's params)."""
    try:
        from mlplatform import tracking

        client, _ = tracking.setup(params)
        tags = client.get_run(run_id).data.tags
    except Exception:  # the card renders without the store
        tags = {}
    return {
        "git_commit": tags.get("mlflow.source.git.commit"),
        "params_hash": tags.get("mlplatform.params_hash", params.section_hash()),
    }


def image_files(paths: Paths) -> dict[str, Path]:
    """The plots a card shows: name -> PNG file in reports/."""
    return {
        "roc": paths.plots / "roc.png",
        "precision_recall": paths.plots / "precision_recall.png",
        "calibration": paths.plots / "calibration.png",
        "confusion_matrix": paths.plots / "confusion_matrix.png",
        "importance": paths.explain / "importance.png",
        "beeswarm": paths.explain / "beeswarm.png",
    }


def embedded_images(paths: Paths) -> dict[str, str | None]:
    """Plot name -> data URI, for the self-contained HTML page."""
    return {k: _image(p) for k, p in image_files(paths).items()}


def relative_images(paths: Paths) -> dict[str, str | None]:
    """Plot name -> path relative to reports/, for the Markdown file next to them."""
    return {
        k: (str(p.relative_to(paths.reports)) if p.is_file() else None)
        for k, p in image_files(paths).items()
    }


def render_markdown(
    ctx: dict[str, Any], imgs: dict[str, str | None], for_html: bool = False
) -> str:
    """The card as Markdown; ``imgs`` maps plot names to paths or data URIs (or None)."""
    env = _html_env if for_html else _env
    return env.get_template("model_card.md.j2").render(**ctx, images=imgs)


def render_html(ctx: dict[str, Any], imgs: dict[str, str | None]) -> str:
    """One self-contained page: the Markdown card with every image embedded."""
    import markdown

    body = markdown.markdown(render_markdown(ctx, imgs, for_html=True), extensions=["tables"])
    title = ctx["model"]["name"] + (
        f" v{ctx['model']['version']}" if ctx["model"]["version"] else ""
    )
    return _page_env.get_template("model_card.html.j2").render(body=body, title=title)


def render_description(ctx: dict[str, Any]) -> str:
    """The card, compact, for a registered model version's description (<= 5,000 chars)."""
    text = _env.get_template("model_version_description.md.j2").render(**ctx)
    if len(text) > DESCRIPTION_LIMIT:
        note = "\n\n_(truncated: the full card is on the training run, model_card/)_"
        text = text[: DESCRIPTION_LIMIT - len(note)] + note
    return text


def run(params: Params, paths: Paths) -> dict[str, Any]:
    """Render the card; write reports/model_card.{md,html} and card.json; log onto the run."""

    from mlplatform import tracking

    ctx = build_context(params, paths)
    write_json(paths.card_json, ctx)
    write_text(paths.card_md, render_markdown(ctx, relative_images(paths)))
    write_text(paths.card_html, render_html(ctx, embedded_images(paths)))
    client, _ = tracking.setup(params)
    for path in (paths.card_md, paths.card_html, paths.card_json):
        client.log_artifact(ctx["model"]["run_id"], str(path), "model_card")
    statuses = {k: v["status"] for k, v in ctx["fairness"].items()}
    log.info("model card written (%s); fairness: %s", paths.card_html, statuses or "n/a")
    return ctx
