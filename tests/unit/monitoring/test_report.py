"""The HTML report: self-contained, escaped, and rendered by a real headless browser."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mlplatform.monitoring import build_reference, compare
from mlplatform.monitoring.browser import check_page
from mlplatform.monitoring.report import bin_labels, render_report, write_report
from mlplatform.monitoring.settings import MonitoringConfig

CFG = MonitoringConfig(bootstrap=50)


def _score(df):
    return 1 / (1 + np.exp(-(df["ratio"].to_numpy() - 0.3) * 12))


@pytest.fixture(scope="module")
def windows(make_frame, kinds):
    rng = np.random.default_rng(0)
    ref_frame, test = make_frame(3000, seed=1), make_frame(800, seed=2)
    test_scores = _score(test)
    ref = build_reference(
        ref_frame,
        kinds,
        scores=test_scores,
        labels=(rng.uniform(size=800) < test_scores).astype(float),
        metrics={"roc_auc": 0.8, "average_precision": 0.7, "recall": 0.6},
        importance={"ratio": 0.6, "income": 0.3, "region": 0.1},
        threshold=0.5,
    )
    out = []
    for i, shift in enumerate([0.0, 0.5, 1.5]):
        cur = make_frame(1000, seed=10 + i, shift=shift, missing=0.04 * i)
        cur.loc[: 30 * i, "region"] = "<script>alert(1)</script>"
        s = _score(cur)
        labels = (rng.uniform(size=1000) < s).astype(float)
        labels[500:] = np.nan
        out.append(compare(ref, cur, s, labels, cfg=CFG, window={"label": f"week {i + 1}"}))
    return out


def _external_refs(html: str) -> list[str]:
    refs = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, re.I)
    return [r for r in refs if not r.startswith("data:image/png;base64,")]


def test_report_is_self_contained_and_escapes_data(windows):
    html = render_report(windows, title="credit-risk v3")
    assert not re.search(r"(?i)https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html)
    assert _external_refs(html) == []
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    images = re.findall(r'src="(data:image/png;base64,[^"]+)"', html)
    # metrics over time, scores, and one histogram per flagged feature
    flagged = [f for f in windows[-1]["features"].values() if f["status"] != "no_drift"]
    assert len(images) == 2 + len(flagged)
    for heading in ("Over time", "Performance", "Features", "Predicted scores", "New categories"):
        assert f"<h2>{heading}</h2>" in html
    # Drifting features first, the most important drift at the top.
    table = html[html.index("<h2>Features</h2>") :]
    assert table.index(">ratio") < table.index(">count")


def test_single_window_report_has_no_time_section(windows, make_frame, kinds):
    html = render_report(windows[0])
    assert "<h2>Over time</h2>" not in html and "No drift" in html
    # Without scores, labels or a window label: no score or performance sections.
    ref = build_reference(make_frame(1000, seed=3), kinds)
    bare = render_report([compare(ref, make_frame(500, seed=s)) for s in (4, 5)])
    assert "Window (unnamed)" in bare and "<h2>Over time</h2>" in bare
    assert "<h2>Performance</h2>" not in bare and "<h2>Predicted scores</h2>" not in bare


def test_bin_labels_read_like_intervals():
    assert bin_labels({"edges": [0.5, 1.25]}) == ["≤ 0.5", "0.5 – 1.25", "> 1.25"]
    assert bin_labels({"labels": ["a", "__other__"]}) == ["a", "other / new"]


@pytest.mark.e2e
def test_report_renders_in_headless_chromium_without_errors_or_requests(windows, tmp_path):
    """Needs Debian's chromium (apt-get install -y chromium)."""
    page = write_report(tmp_path / "report.html", windows)
    check = check_page(page, tmp_path / "report.png", width=1400, height=3400)
    assert check.console == [] and check.requests == []
    png = check.screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    # The checker itself sees errors and requests: a page with both is caught.
    bad = tmp_path / "bad.html"
    bad.write_text('<img src="http://example.invalid/x.png"><script>console.error("boom")</script>')
    caught = check_page(bad, tmp_path / "bad.png", width=400, height=300)
    assert caught.requests == ["http://example.invalid/x.png"]
    assert any("boom" in line for line in caught.console)
