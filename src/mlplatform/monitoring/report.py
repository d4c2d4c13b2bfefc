"""The monitoring report: one self-contained HTML page from one or more window results.

Self-contained means the page makes no request at all: styles are inline, fonts are the
reader's own, charts are PNG images embedded as data URIs (matplotlib, no pyplot state),
and there is no script. Text from the data goes through Jinja2 with autoescaping on.

With several windows (oldest first), the page shows the metrics and verdicts over time and
details the latest window.
"""

from __future__ import annotations

import base64
import io
import itertools
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from matplotlib.figure import Figure

from mlplatform.io import write_text
from mlplatform.monitoring.settings import METRICS

MAX_HISTOGRAMS = 12
REF_COLOUR, CUR_COLOUR = "#8c9db5", "#d9622b"
SERIES = (("measured", CUR_COLOUR, "-"), ("estimated", "#3b6ea8", "--"))
_env = jinja2.Environment(
    loader=jinja2.PackageLoader("mlplatform.monitoring", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    # No "Software" stamp and a fixed dpi: the same result renders to the same bytes.
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _num(x: float) -> str:
    return f"{x:.3g}"


def bin_labels(bins: dict[str, Any], kind: str = "numeric") -> list[str]:
    """Readable labels of a feature's frozen bins (or its category groups)."""
    if "labels" in bins:
        return ["other / new" if b == "__other__" else str(b) for b in bins["labels"]]
    edges = bins["edges"]
    if kind == "boolean" and edges == [0.5]:
        return ["false / no", "true / yes"]
    if not edges:
        return ["all"]
    labels = [f"≤ {_num(edges[0])}"]
    labels += [f"{_num(a)} – {_num(b)}" for a, b in itertools.pairwise(edges)]
    return [*labels, f"> {_num(edges[-1])}"]


def bars_chart(title: str, bins: dict[str, Any], kind: str = "numeric") -> str:
    """Reference against current share per bin, as a PNG data URI."""
    labels = bin_labels(bins, kind)
    x = np.arange(len(labels))
    fig = Figure(figsize=(max(4.8, 0.5 * len(labels) + 2), 2.8))
    ax = fig.add_subplot()
    ax.bar(x - 0.2, bins["reference"], 0.4, label="reference", color=REF_COLOUR)
    ax.bar(x + 0.2, bins["current"], 0.4, label="current", color=CUR_COLOUR)
    ax.set_xticks(x, labels, rotation=35 if len(labels) > 4 else 0, ha="right", fontsize=7)
    ax.set_ylabel("share of rows")
    ax.set_xlabel(kind, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _series(results: list[dict], source: str, metric: str) -> tuple[list, list, list]:
    values, lows, highs = [], [], []
    for r in results:
        fig = ((r.get("performance") or {}).get(source) or {}).get(metric) or {}
        values.append(fig.get("value"))
        lows.append(fig.get("low"))
        highs.append(fig.get("high"))
    return values, lows, highs


def _as_float(xs: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in xs], dtype=np.float64)


def metrics_over_time(results: list[dict], metrics: list[str]) -> str | None:
    """Measured and estimated metrics per window with intervals and the test value."""
    labels = [str(r["window"].get("label", i + 1)) for i, r in enumerate(results)]
    x = np.arange(len(results))
    fig = Figure(figsize=(9, 2.6 * len(metrics)))
    drew = False
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(len(metrics), 1, i + 1)
        for source, colour, style in SERIES:
            v, lo, hi = (_as_float(s) for s in _series(results, source, metric))
            if np.isnan(v).all():
                continue
            drew = True
            ax.plot(x, v, style, marker="o", color=colour, label=source)
            ax.fill_between(x, lo, hi, color=colour, alpha=0.15, linewidth=0)
        ref = ((results[-1].get("performance") or {}).get("estimated") or {}).get(metric) or {}
        if ref.get("reference") is not None:
            ax.axhline(ref["reference"], color="#555", linewidth=1, linestyle=":", label="test set")
        ax.set_ylabel(metric, fontsize=8)
        ax.set_xticks(x, labels, fontsize=7, rotation=20 if len(labels) > 6 else 0)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _png(fig) if drew else None


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return format(value, spec)


def _pfmt(value: float | None) -> str:
    if value is None:
        return "–"
    return "< 1e-300" if value == 0 else (f"{value:.2g}" if value < 0.001 else f"{value:.3f}")


def _performance_rows(perf: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not perf:
        return []
    rows = []
    for metric in METRICS:
        est = (perf.get("estimated") or {}).get(metric) or {}
        got = (perf.get("measured") or {}).get(metric) or {}
        ref = est.get("reference", got.get("reference"))
        rows.append(
            {
                "metric": metric,
                "primary": metric == perf["primary_metric"],
                "reference": _fmt(ref),
                "measured": got,
                "estimated": est,
                "degraded": bool(got.get("degraded") or est.get("degraded")),
            }
        )
    return rows


def context(results: list[dict[str, Any]], title: str) -> dict[str, Any]:
    """Everything the template needs, computed from the window results alone."""
    latest = results[-1]
    feats = sorted(latest["features"].items(), key=lambda kv: kv[1]["rank"])
    flagged = [(n, f) for n, f in feats if f["status"] != "no_drift"][:MAX_HISTOGRAMS]
    score = latest.get("score_shift")
    perf = latest.get("performance")
    primary = perf["primary_metric"] if perf else None
    return {
        "title": title,
        "r": latest,
        "features": feats,
        "histograms": [
            (n, bars_chart(f"{n}: PSI {f['psi']:.2f}", f["bins"], f["kind"])) for n, f in flagged
        ],
        "score_chart": bars_chart("predicted score", score["bins"], "score") if score else None,
        "performance_rows": _performance_rows(perf),
        "history": results if len(results) > 1 else [],
        "history_chart": (
            metrics_over_time(results, list(dict.fromkeys([primary, "roc_auc"])))
            if len(results) > 1 and primary
            else None
        ),
        "fmt": _fmt,
        "pfmt": _pfmt,
    }


def render_report(results: dict[str, Any] | list[dict[str, Any]], title: str | None = None) -> str:
    """The HTML report of one window result, or of several (oldest first).

    Args:
        results: ``compare`` output(s).
        title: page title (default "Monitoring report").
    """
    items = [results] if isinstance(results, dict) else list(results)
    if not items:
        raise ValueError("no window results to report")
    page = _env.get_template("report.html.j2")
    return page.render(**context(items, title or "Monitoring report"))


def write_report(
    path: Path | str, results: dict[str, Any] | list[dict[str, Any]], title: str | None = None
) -> Path:
    """Render the report and write it atomically to path."""
    write_text(path, render_report(results, title))
    return Path(path)
