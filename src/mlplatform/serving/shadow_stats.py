"""Shadow figures: how a challenger that saw the same requests differs from the champion.

Pure functions of the two models' outputs on the same rows (from the prediction log, or
from a file scored offline by both); nothing here touches MLflow. ``shadow_report`` makes a
JSON-ready dict; ``shadow_rules`` turns it into gate rules shaped like ``gates.Rule``.

A row the challenger did not answer (it raised, or was slower than the shadow timeout) has
a NaN probability: it counts towards the challenger's failure rate and is left out of every
comparison.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, average_precision_score, recall_score, roc_auc_score

from mlplatform.errors import DataValidationError
from mlplatform.registry.gates import Rule  # the gate's own rule type: merged into its verdict
from mlplatform.serving.release_settings import ShadowConfig

Outcome = Literal["pass", "fail", "review"]
_EPS = 1e-9


@dataclass
class ModelOutputs:
    """One model's answers on the shadow rows (one entry per row, same order for both).

    Attributes:
        proba: positive-class probability; NaN where the model gave no answer.
        predicted: the class it answered, at its own threshold (None where no answer).
        latency_ms: time it took per row (optional).
        version: registered version, for the report.
    """

    proba: Sequence[float]
    predicted: Sequence[Any]
    latency_ms: Sequence[float] | None = None
    version: str | None = None


def _finite(x: float) -> float | None:
    """JSON has no NaN: an undefined figure (e.g. a correlation of constants) is None."""
    return None if x is None or not math.isfinite(x) else float(x)


def _correlations(a: np.ndarray, b: np.ndarray) -> dict[str, float | None]:
    if len(a) < 2:
        return {"pearson": None, "spearman": None}
    with warnings.catch_warnings():
        # A constant score (e.g. a dummy model) has no correlation: reported as None.
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return {
            "pearson": _finite(stats.pearsonr(a, b).statistic),
            "spearman": _finite(stats.spearmanr(a, b).statistic),
        }


def latency_summary(latency_ms: Sequence[float] | None) -> dict[str, float | int | None] | None:
    """p50, p99 and mean latency in ms (NaN entries ignored); None without timings."""
    if latency_ms is None:
        return None
    lat = np.asarray(latency_ms, dtype=float)
    lat = lat[np.isfinite(lat)]
    if not len(lat):
        return {"n": 0, "p50_ms": None, "p99_ms": None, "mean_ms": None}
    p50, p99 = np.percentile(lat, [50, 99])
    return {
        "n": len(lat),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "mean_ms": float(lat.mean()),
    }


# Metrics compared when labels are joined. The point estimates come from scikit-learn; the
# bootstrap recomputes them on resampled rows with the vectorised twins below (the same
# definitions: tests check them against scikit-learn), because a thousand resamples times
# four scikit-learn calls per model take about 20 s even on 1,000 rows.
MetricFn = Callable[[np.ndarray, np.ndarray], float]
_LABELLED: dict[str, tuple[bool, MetricFn]] = {
    "roc_auc": (True, roc_auc_score),
    "average_precision": (True, average_precision_score),
    "accuracy": (False, accuracy_score),
    "recall": (False, lambda y, pred: recall_score(y, pred, zero_division=0)),
}
# Resamples scored at once: (chunk x rows) arrays of about 2 MB ran faster here than 16 MB.
_CELLS = 250_000


def _metric_values(y: np.ndarray, proba: np.ndarray, pos: np.ndarray) -> dict[str, float]:
    """Each labelled metric on one set of rows; NaN where undefined (a single class)."""
    out: dict[str, float] = {}
    both = 0 < y.sum() < len(y)
    for name, (uses_scores, fn) in _LABELLED.items():
        if uses_scores and not both:
            out[name] = math.nan
        else:
            out[name] = float(fn(y, proba if uses_scores else pos))
    return out


class _Ranked:
    """One model's scores sorted once, to score many weightings of the rows quickly.

    A bootstrap resample is a weighting of the rows (how often each was drawn); ROC AUC and
    average precision of duplicated rows equal those of weighted rows, computed per group
    of tied scores exactly as scikit-learn's ``roc_auc_score`` / ``average_precision_score``.
    """

    def __init__(self, y: np.ndarray, proba: np.ndarray, pos: np.ndarray) -> None:
        self.order = np.argsort(proba, kind="stable")
        s = proba[self.order]
        self.starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        self.y_sorted = y[self.order].astype(float)
        self.y = y.astype(float)
        self.hit = (pos == y).astype(float)
        self.tp = (pos * y).astype(float)

    def metrics(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """Metrics for each row of ``w`` (resamples x rows); NaN where undefined."""
        ws = w[:, self.order]
        # Per group of tied scores, ascending: weight of positives (p) and negatives (q).
        p = ws * self.y_sorted
        if len(self.starts) < len(self.order):
            ws, p = (np.add.reduceat(x, self.starts, axis=1) for x in (ws, p))
        q = ws - p
        p_tot, q_tot = p.sum(axis=1), q.sum(axis=1)
        defined = (p_tot > 0) & (q_tot > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            below = np.cumsum(q, axis=1) - q  # negatives scored lower
            auc = (p * (below + 0.5 * q)).sum(axis=1) / (p_tot * q_tot)
            # Average precision: at each group's threshold, everything scored at or above it.
            tp = p_tot[:, None] - (np.cumsum(p, axis=1) - p)
            flagged = tp + (q_tot[:, None] - below)
            precision = np.divide(tp, flagged, out=np.zeros_like(tp), where=flagged > 0)
            ap = (p * precision).sum(axis=1) / p_tot
            positives = w @ self.y
            recall = np.where(positives > 0, (w @ self.tp) / positives, 0.0)
        return {
            "roc_auc": np.where(defined, auc, np.nan),
            "average_precision": np.where(defined, ap, np.nan),
            "accuracy": (w @ self.hit) / w.sum(axis=1),
            "recall": recall,
        }


def _resample_weights(rng: np.random.Generator, b: int, n: int) -> np.ndarray:
    idx = rng.integers(0, n, (b, n)) + (np.arange(b) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(float)


def paired_bootstrap(
    y: np.ndarray,
    champion: tuple[np.ndarray, np.ndarray],
    challenger: tuple[np.ndarray, np.ndarray],
    *,
    n_boot: int,
    confidence: float,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Metric differences (challenger - champion) with paired percentile bootstrap intervals.

    Each resample draws rows once and computes both models' metrics on those same rows,
    so the interval reflects the models' difference rather than the noise of the rows
    (two independent bootstraps would give a much wider interval for correlated models).

    Args:
        y: true labels as 0/1 (1 = positive class).
        champion: (positive-class probability, predicted positive 0/1) of the champion.
        challenger: the same for the challenger.
        n_boot: number of resamples.
        confidence: interval level, e.g. 0.95.
        seed: the random seed (params.yaml ``seed``), so a report can be reproduced.

    Raises:
        DataValidationError: no rows.
    """
    n = len(y)
    if n == 0:
        raise DataValidationError("shadow metrics need at least one labelled row")
    full_a = _metric_values(y, *champion)
    full_b = _metric_values(y, *challenger)
    ranked_a, ranked_b = _Ranked(y, *champion), _Ranked(y, *challenger)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CELLS // n)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in _LABELLED}
    for start in range(0, n_boot, chunk):
        w = _resample_weights(rng, min(chunk, n_boot - start), n)
        ma, mb = ranked_a.metrics(w), ranked_b.metrics(w)
        for name in _LABELLED:
            parts[name].append(mb[name] - ma[name])
    tail = (1 - confidence) / 2 * 100
    out: dict[str, dict[str, Any]] = {}
    for name in _LABELLED:
        d = np.concatenate(parts[name])
        d = d[np.isfinite(d)]
        lo, hi = np.percentile(d, [tail, 100 - tail]) if len(d) else (math.nan, math.nan)
        out[name] = {
            "champion": _finite(full_a[name]),
            "challenger": _finite(full_b[name]),
            "difference": _finite(full_b[name] - full_a[name]),
            "interval": [_finite(lo), _finite(hi)],
            "resamples": len(d),  # those where the metric is defined (both classes)
        }
    return out


def _missing(values: np.ndarray) -> np.ndarray:
    return np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in values])


def _as_array(name: str, values: Sequence[Any], n: int, dtype: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim != 1 or len(arr) != n:
        raise DataValidationError(f"shadow input {name} has {len(arr)} rows, expected {n}")
    return arr


def shadow_report(
    champion: ModelOutputs,
    challenger: ModelOutputs,
    *,
    positive_class: Any = 1,
    labels: Sequence[Any] | None = None,
    index: Sequence[Any] | None = None,
    top_k: int = 20,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The shadow figures of a challenger against the champion on the same rows.

    Args:
        champion: the champion's answers.
        challenger: the challenger's answers (NaN probability where it gave none).
        positive_class: the class counted as positive in ``predicted`` and ``labels``.
        labels: true classes where known (None/NaN: not yet); adds metric differences.
        index: a row id per row (request id, row number) for the disagreement list, so the
            caller can attach SHAP top features; default: the position.
        top_k: how many of the most-disagreeing rows to list.
        n_boot: bootstrap resamples for the metric intervals.
        confidence: interval level.
        seed: random seed of the bootstrap.

    Returns:
        A JSON-ready dict with ``rows``, ``agreement`` (share of compared rows with the same
        class), ``correlation``, ``positive_rate`` (and its ``shift``, challenger minus
        champion), ``probability_difference``, ``disagreements``, ``latency`` and, with
        labels, ``metrics`` (differences with paired bootstrap intervals).

    Raises:
        DataValidationError: inputs of different lengths, or a probability outside [0, 1].
    """
    pa = np.asarray(champion.proba, dtype=float)
    n = len(pa)
    pb = _as_array("challenger.proba", challenger.proba, n, float)
    ca = _as_array("champion.predicted", champion.predicted, n, object)
    cb = _as_array("challenger.predicted", challenger.predicted, n, object)
    rows = _as_array("index", index, n, object) if index is not None else np.arange(n)
    for name, p in (("champion", pa), ("challenger", pb)):
        if (p[np.isfinite(p)] < 0).any() or (p[np.isfinite(p)] > 1).any():
            raise DataValidationError(f"shadow {name} probability outside [0, 1]")
    miss_a = ~np.isfinite(pa) | _missing(ca)
    miss_b = ~np.isfinite(pb) | _missing(cb)
    both = ~miss_a & ~miss_b
    m = int(both.sum())
    _check_positive_class(positive_class, ca[both], cb[both], labels)
    pos_a = ca[both] == positive_class
    pos_b = cb[both] == positive_class
    diff = np.abs(pa[both] - pb[both])
    report: dict[str, Any] = {
        "champion_version": champion.version,
        "challenger_version": challenger.version,
        "rows": {
            "total": n,
            "compared": m,
            "champion_missing": int(miss_a.sum()),
            "challenger_missing": int(miss_b.sum()),
            "challenger_failure_rate": float(miss_b.mean()) if n else None,
        },
        "agreement": float((pos_a == pos_b).mean()) if m else None,
        "correlation": _correlations(pa[both], pb[both]),
        "positive_rate": {
            "champion": float(pos_a.mean()) if m else None,
            "challenger": float(pos_b.mean()) if m else None,
            "shift": float(pos_b.mean() - pos_a.mean()) if m else None,
        },
        "probability_difference": {
            "mean_abs": float(diff.mean()) if m else None,
            "max_abs": float(diff.max()) if m else None,
        },
        "disagreements": _top_disagreements(
            rows[both], pa[both], pb[both], ca[both], cb[both], top_k
        ),
        "latency": {
            "champion": latency_summary(champion.latency_ms),
            "challenger": latency_summary(challenger.latency_ms),
        },
        "metrics": None,
    }
    if labels is not None:
        y_all = _as_array("labels", labels, n, object)
        known = both & ~_missing(y_all)
        report["rows"]["labelled"] = int(known.sum())
        if known.any():
            y = (y_all[known] == positive_class).astype(int)
            report["metrics"] = paired_bootstrap(
                y,
                (pa[known], (ca[known] == positive_class).astype(int)),
                (pb[known], (cb[known] == positive_class).astype(int)),
                n_boot=n_boot,
                confidence=confidence,
                seed=seed,
            )
    return report


def _check_positive_class(positive: Any, *columns: Sequence[Any] | None) -> None:
    # With two classes on show and neither the positive one, every rate would silently be 0.
    seen: set[Any] = set()
    for col in columns:
        if col is not None:
            arr = np.asarray(col, dtype=object)
            seen.update(arr[~_missing(arr)].tolist())
    if len(seen) >= 2 and positive not in seen:
        shown = ", ".join(sorted(map(repr, seen))[:5])
        raise DataValidationError(
            f"shadow positive class {positive!r} is not among the classes ({shown})"
        )


def _top_disagreements(
    rows: np.ndarray, pa: np.ndarray, pb: np.ndarray, ca: np.ndarray, cb: np.ndarray, k: int
) -> list[dict[str, Any]]:
    # Stable sort: among equal gaps the earlier row comes first, so reports repeat.
    order = np.argsort(-np.abs(pa - pb), kind="stable")[:k]
    return [
        {
            "index": rows[i].item() if hasattr(rows[i], "item") else rows[i],
            "champion_proba": float(pa[i]),
            "challenger_proba": float(pb[i]),
            "abs_difference": float(abs(pa[i] - pb[i])),
            "champion_class": ca[i].item() if hasattr(ca[i], "item") else ca[i],
            "challenger_class": cb[i].item() if hasattr(cb[i], "item") else cb[i],
        }
        for i in order
    ]


def shadow_rules(
    report: dict[str, Any], cfg: ShadowConfig, primary_metric: str | None = None
) -> list[Rule]:
    """Gate rules from a shadow report, in the style of ``gates.compare``.

    - ``shadow_rows``: review until ``cfg.min_rows`` rows were compared (keep shadowing).
    - ``shadow_failures``: fail if the challenger failed or timed out on more than
      ``cfg.max_challenger_failure_rate`` of the rows (it would fail users the same way).
    - ``shadow_agreement``: review below ``cfg.min_agreement``.
    - ``shadow_positive_rate_shift``: review when |shift| exceeds the limit.
    - ``shadow_latency``: review when the challenger's p99 exceeds the shadow timeout.
    - ``shadow_metric:<primary>``: with labels, review when the interval of the
      difference lies wholly below zero (the challenger is worse on live traffic).

    Args:
        report: a ``shadow_report`` dict.
        cfg: the ``shadow`` params section.
        primary_metric: the promotion's primary metric, if the report has it.
    """
    rows = report["rows"]
    compared = rows["compared"]
    if compared < cfg.min_rows:
        # The other figures are too noisy to judge on so few rows.
        return [
            Rule(
                "shadow_rows",
                "review",
                f"only {compared} rows compared in shadow (need {cfg.min_rows}): keep the "
                "shadow deployment running",
                compared,
                cfg.min_rows,
            )
        ]
    rules = [
        Rule("shadow_rows", "pass", f"{compared} rows compared in shadow", compared, cfg.min_rows)
    ]
    fail_rate = rows["challenger_failure_rate"] or 0.0
    rules.append(
        Rule(
            "shadow_failures",
            "fail" if fail_rate > cfg.max_challenger_failure_rate + _EPS else "pass",
            f"challenger failed or timed out on {rows['challenger_missing']} of "
            f"{rows['total']} rows ({fail_rate:.2%})",
            fail_rate,
            cfg.max_challenger_failure_rate,
        )
    )
    agreement = report["agreement"]
    rules.append(
        Rule(
            "shadow_agreement",
            "pass" if agreement >= cfg.min_agreement - _EPS else "review",
            f"predicted classes agree on {agreement:.2%} of compared rows",
            agreement,
            cfg.min_agreement,
        )
    )
    shift = report["positive_rate"]["shift"]
    rules.append(
        Rule(
            "shadow_positive_rate_shift",
            "pass" if abs(shift) <= cfg.max_positive_rate_shift + _EPS else "review",
            f"predicted-positive rate {report['positive_rate']['champion']:.2%} -> "
            f"{report['positive_rate']['challenger']:.2%} ({shift:+.2%})",
            abs(shift),
            cfg.max_positive_rate_shift,
        )
    )
    lat = (report.get("latency") or {}).get("challenger") or {}
    if lat.get("p99_ms") is not None:
        p99 = lat["p99_ms"]
        rules.append(
            Rule(
                "shadow_latency",
                "pass" if p99 <= cfg.challenger_timeout_ms else "review",
                f"challenger p99 latency {p99:.1f} ms (shadow timeout "
                f"{cfg.challenger_timeout_ms:g} ms)",
                p99,
                cfg.challenger_timeout_ms,
            )
        )
    metric = (report.get("metrics") or {}).get(primary_metric or "")
    if metric and metric["interval"][1] is not None:
        lo, hi = metric["interval"]
        rules.append(
            Rule(
                f"shadow_metric:{primary_metric}",
                "review" if hi < 0 else "pass",
                f"{primary_metric} on labelled shadow rows: {metric['difference']:+.4f} "
                f"(challenger - champion), interval [{lo:+.4f}, {hi:+.4f}]",
                metric["difference"],
                0.0,
            )
        )
    return rules
