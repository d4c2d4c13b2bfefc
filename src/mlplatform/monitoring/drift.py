"""Compare a window with the training reference: per-feature drift, the verdict, the signal.

Pure: a reference dict and plain frames/arrays in, a JSON-serialisable dict out.

Tests per window (all of them enter one Benjamini-Hochberg family, so the chance of any
false alarm stays near ``alpha`` however many features there are):

- numeric and datetime features: two-sample Kolmogorov-Smirnov against the reference
  sample; booleans: chi-square homogeneity on their two values;
- categorical features: chi-square homogeneity on the tracked categories plus one pooled
  "other" group (rare and new categories), sparse groups pooled until expected counts >= 5;
- every feature with missing values on either side: a test of two proportions;
- the predicted-score distribution: Kolmogorov-Smirnov against the reference's scores, and
  the predicted-positive rate at the decision threshold: a test of two proportions.

Effect sizes: PSI over the frozen bins (or category groups) for distributions, Cohen's h
for missing rates, the absolute change of the predicted-positive rate. A test's result is
"drift" when it is significant after correction AND its effect reaches the drift floor,
"warning" when significant and above the warning floor, else "no_drift". The verdict is the
worst over features and the score.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlplatform.errors import DataValidationError
from mlplatform.monitoring import stats
from mlplatform.monitoring.columns import bin_counts, category_counts, numeric_values
from mlplatform.monitoring.performance import assess
from mlplatform.monitoring.settings import MonitoringConfig

RESULT_VERSION = 1
LEVELS = ("no_drift", "warning", "drift")
OTHER = "__other__"
MAX_NEW_LISTED = 20


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return (counts / total).tolist() if total else [0.0] * len(counts)


def _numeric(entry: dict[str, Any], values: np.ndarray) -> dict[str, Any]:
    finite = values[~np.isnan(values)]
    ref_counts = np.asarray(entry["counts"], dtype=np.float64)
    cur_counts = bin_counts(values, entry["edges"]).astype(np.float64)
    out: dict[str, Any] = {
        "psi": stats.psi(ref_counts, cur_counts),
        "bins": {
            "edges": entry["edges"],
            "reference": _shares(ref_counts),
            "current": _shares(cur_counts),
        },
        "reference_mean": entry["mean"],
        "current_mean": float(finite.mean()) if finite.size else None,
        "rows_compared": int(finite.size),
    }
    if entry["kind"] == "boolean":
        res = stats.chi2_homogeneity(ref_counts, cur_counts)
    elif finite.size and entry["sample"]:
        res = stats.ks(np.asarray(entry["sample"]), finite)
    else:
        res = None
    out.update(_test_fields(res))
    return out


def _categorical(entry: dict[str, Any], series: pd.Series) -> tuple[dict[str, Any], int]:
    counts, missing = category_counts(series)
    tracked = list(entry["categories"])
    known = set(entry["known"])
    cur = np.array([counts.get(c, 0) for c in tracked] + [0], dtype=np.float64)
    cur[-1] = sum(v for c, v in counts.items() if c not in entry["categories"])
    ref = np.array([*entry["categories"].values(), entry["other"]], dtype=np.float64)
    new = sorted(((c, v) for c, v in counts.items() if c not in known), key=lambda kv: -kv[1])
    n_present = max(int(sum(counts.values())), 1)
    res = stats.chi2_homogeneity(ref, cur)
    out = {
        "psi": stats.psi(ref, cur),
        "bins": {"labels": [*tracked, OTHER], "reference": _shares(ref), "current": _shares(cur)},
        "rows_compared": int(sum(counts.values())),
        "new_categories": {
            "count": len(new),
            "rows": int(sum(v for _, v in new)),
            "share": float(sum(v for _, v in new) / n_present),
            # With more categories than the reference remembers, "new" means "not among the
            # remembered ones": say so rather than claim they were never seen.
            "certain": bool(entry["known_complete"]),
            "top": [
                {"category": c, "count": int(v), "share": float(v / n_present)}
                for c, v in new[:MAX_NEW_LISTED]
            ],
        },
    }
    out.update(_test_fields(res))
    return out, missing


def _test_fields(res: stats.TestResult | None) -> dict[str, Any]:
    if res is None:
        return {"test": None, "statistic": None, "p_value": None}
    return {"test": res.test, "statistic": res.statistic, "p_value": res.p_value}


def _missing(entry: dict[str, Any], n_missing: int, n: int) -> dict[str, Any]:
    p_ref = entry["missing"] / entry["n"]
    p_cur = n_missing / n
    out: dict[str, Any] = {
        "reference_rate": p_ref,
        "current_rate": p_cur,
        "cohen_h": stats.cohen_h(p_ref, p_cur),
        "test": None,
        "statistic": None,
        "p_value": None,
    }
    if entry["missing"] + n_missing > 0:
        out.update(_test_fields(stats.two_proportions(entry["missing"], entry["n"], n_missing, n)))
    return out


def _score_shift(ref: dict[str, Any], scores: np.ndarray, threshold: float | None) -> dict:
    """KS and PSI of the score distribution, and the change in the predicted-positive rate.

    The positive rate at the decision threshold is what the business sees (how many cases
    get flagged); a population that drifts a little on many features can move it a lot
    while each feature, and even the score's PSI, stays under its floor.
    """
    out = _numeric(ref, scores)
    out["positive_rate"] = None
    if threshold is not None and "positives" in ref:
        positives = int(np.sum(scores >= threshold))
        rate = {
            "reference": ref["positive_rate"],
            "current": positives / len(scores),
            "change": positives / len(scores) - ref["positive_rate"],
            **_test_fields(
                stats.two_proportions(ref["positives"], ref["n"], positives, len(scores))
            ),
        }
        out["positive_rate"] = rate
    return out


def _correct(tests: list[dict[str, Any]], cfg: MonitoringConfig) -> None:
    """Benjamini-Hochberg across every test run on the window; adds adjusted p and status."""
    run = [t for t in tests if t["p_value"] is not None]
    for t, adjusted in zip(run, stats.benjamini_hochberg([t["p_value"] for t in run]), strict=True):
        t["p_value_adjusted"] = adjusted
        t["significant"] = adjusted <= cfg.alpha
    for t in tests:
        t.setdefault("p_value_adjusted", None)
        t.setdefault("significant", False)


def _worst(levels: list[str]) -> str:
    return max(levels, key=LEVELS.index) if levels else "no_drift"


def _check_inputs(reference, current, scores, labels, cfg) -> np.ndarray | None:
    absent = [c for c in reference["features"] if c not in current.columns]
    if absent:
        raise DataValidationError(f"current window: missing column(s) {', '.join(absent)}")
    if len(current) < cfg.min_rows:
        raise DataValidationError(
            f"current window: {len(current)} rows, fewer than monitoring.min_rows "
            f"({cfg.min_rows}); widen the window"
        )
    if scores is None:
        if labels is not None:
            raise DataValidationError("current window: labels given without scores")
        return None
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (len(current),) or not np.isfinite(s).all():
        raise DataValidationError(
            f"current scores: need one finite positive-class probability per row "
            f"({len(current)} rows, got shape {s.shape})"
        )
    return s


def compare(
    reference: dict[str, Any],
    current: pd.DataFrame,
    scores: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    cfg: MonitoringConfig | None = None,
    seed: int = 0,
    window: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compare a window of scored rows with the reference.

    Args:
        reference: from ``build_reference`` / ``load_reference``.
        current: the window's rows (raw or canonical); must hold every reference feature.
        scores: the model's positive-class probability per row (enables the score shift and
            the performance section).
        labels: 0/1 labels per row, NaN where not known yet (enables measured metrics;
            needs scores).
        cfg: limits (defaults if None).
        seed: seed of the bootstrap and simulations (params.seed).
        window: what the window is, copied into the result (e.g. {"label": "2026-12-01",
            "start": ..., "end": ...}); the report uses "label" on its time axis.

    Returns:
        A JSON-serialisable dict: verdict, retraining_recommended, reasons, features (per
        feature: test, statistic, p_value, p_value_adjusted, psi, status, drifted,
        importance, missing, ...), score_shift, missing, new_categories, performance.

    Raises:
        DataValidationError: a reference feature is missing from the window, the window has
            fewer than ``min_rows`` rows, scores/labels do not match the rows, or labels come
            without scores.
    """
    cfg = cfg or MonitoringConfig()
    scores = _check_inputs(reference, current, scores, labels, cfg)
    n = len(current)
    importance = reference.get("importance") or {}
    features: dict[str, dict[str, Any]] = {}
    tests: list[dict[str, Any]] = []
    for name, entry in reference["features"].items():
        if entry["kind"] == "categorical":
            feat, n_missing = _categorical(entry, current[name])
        else:
            values = numeric_values(current[name], entry["kind"])
            feat, n_missing = _numeric(entry, values), int(np.isnan(values).sum())
        feat["kind"] = entry["kind"]
        feat["missing"] = _missing(entry, n_missing, n)
        features[name] = feat
        tests += [feat, feat["missing"]]
    score_shift = None
    if scores is not None and reference.get("scores"):
        score_shift = _score_shift(reference["scores"], scores, reference.get("threshold"))
        tests.append(score_shift)
        if score_shift["positive_rate"]:
            tests.append(score_shift["positive_rate"])
    _correct(tests, cfg)
    for feat in features.values():
        feat["distribution_status"] = stats.level(
            feat["psi"], cfg.psi_warning, cfg.psi_drift, feat["significant"]
        )
        miss = feat["missing"]
        miss["status"] = stats.level(
            abs(miss["cohen_h"]), cfg.missing_warning, cfg.missing_drift, miss["significant"]
        )
        feat["status"] = _worst([feat["distribution_status"], miss["status"]])
        feat["drifted"] = feat["status"] == "drift"
    if score_shift is not None:
        score_shift["distribution_status"] = stats.level(
            score_shift["psi"], cfg.score_psi_warning, cfg.score_psi_drift,
            score_shift["significant"],
        )  # fmt: skip
        levels = [score_shift["distribution_status"]]
        rate = score_shift["positive_rate"]
        if rate:
            rate["status"] = stats.level(
                abs(rate["change"]), cfg.positive_rate_warning, cfg.positive_rate_drift,
                rate["significant"],
            )  # fmt: skip
            levels.append(rate["status"])
        score_shift["status"] = _worst(levels)
    _rank(features, importance, cfg)
    performance = assess(reference, scores, labels, cfg, seed)
    recommended, reasons = retraining_signal(features, score_shift, performance, cfg)
    statuses = [f["status"] for f in features.values()]
    if score_shift is not None:
        statuses.append(score_shift["status"])
    return {
        "format": "mlplatform.monitoring.result",
        "version": RESULT_VERSION,
        "window": {**(window or {}), "n_rows": n},
        "reference_rows": reference["n_rows"],
        "verdict": _worst(statuses),
        "retraining_recommended": recommended,
        "reasons": reasons,
        "summary": {
            "tests": sum(t["p_value"] is not None for t in tests),
            "drifted": [k for k, f in features.items() if f["status"] == "drift"],
            "warning": [k for k, f in features.items() if f["status"] == "warning"],
        },
        "features": features,
        "score_shift": score_shift,
        "missing": {k: f["missing"] for k, f in features.items() if f["missing"]["test"]},
        "new_categories": {
            k: f["new_categories"]
            for k, f in features.items()
            if f.get("new_categories", {}).get("count")
        },
        "performance": performance,
        "settings": cfg.model_dump(),
    }


def _rank(features: dict[str, dict], importance: dict[str, float], cfg: MonitoringConfig) -> None:
    """Importance, top-k membership and the importance x drift rank of every feature.

    Without a SHAP ranking every feature weighs the same and every one counts as important:
    nothing then says a drifting feature does not matter.
    """
    k = len(features)
    ranked = sorted((v, n) for n, v in importance.items() if v > 0 and n in features)[::-1]
    top = {n for _, n in ranked[: cfg.important_features]} if importance else set(features)
    for name, feat in features.items():
        share = importance.get(name) if importance else None
        feat["importance"] = share
        feat["important"] = name in top
        size = max(feat["psi"], abs(feat["missing"]["cohen_h"]))
        feat["rank_score"] = (share if share is not None else 1.0 / k) * size
    order = sorted(features, key=lambda n: (-LEVELS.index(features[n]["status"]),
                                            -features[n]["rank_score"], n))  # fmt: skip
    for i, name in enumerate(order, start=1):
        features[name]["rank"] = i


def retraining_signal(
    features: dict[str, dict],
    score_shift: dict | None,
    performance: dict | None,
    cfg: MonitoringConfig,
) -> tuple[bool, list[str]]:
    """Whether to recommend retraining, and why (one sentence per reason).

    Reasons: drift on an important feature (top ``important_features`` by SHAP), drift of the
    score distribution, or the primary metric down by more than ``metric_drop`` with its
    interval below the test value (measured on labels, or estimated without them).
    """
    reasons = []
    for name, f in sorted(features.items(), key=lambda kv: kv[1]["rank"]):
        if f["drifted"] and f["important"]:
            share = f["importance"]
            what = []
            if f["distribution_status"] == "drift":
                what.append(f"PSI {f['psi']:.2f}")
            if f["missing"]["status"] == "drift":
                m = f["missing"]
                what.append(f"missing {m['reference_rate']:.1%} -> {m['current_rate']:.1%}")
            what.append(f"importance {share:.0%}" if share is not None else "no SHAP ranking")
            reasons.append(f"drift on important feature {name} ({', '.join(what)})")
    if score_shift is not None and score_shift["status"] == "drift":
        what = [f"PSI {score_shift['psi']:.2f}"]
        rate = score_shift["positive_rate"]
        if rate and rate["status"] == "drift":
            what.append(f"predicted positive {rate['reference']:.1%} -> {rate['current']:.1%}")
        reasons.append(f"the predicted scores drifted ({', '.join(what)})")
    if performance:
        m = cfg.primary_metric
        for source in ("measured", "estimated"):
            fig = (performance.get(source) or {}).get(m)
            if fig and fig["degraded"]:
                reasons.append(
                    f"{m} {source} {fig['value']:.3f} (interval {fig['low']:.3f}-"
                    f"{fig['high']:.3f}) against {fig['reference']:.3f} on the test set, "
                    f"{fig['relative_change']:+.0%}"
                )
    return bool(reasons), reasons
