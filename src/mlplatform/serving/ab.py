"""A/B test between the champion and a challenger: who answers, and what the outcomes say.

Pure functions of keys, outcomes and thresholds; nothing here touches MLflow or the
prediction log. ``assign_arm`` runs inside the A/B deployment (one call per request);
``compare_arms`` runs in ``mlplatform ab`` once labels have been joined to the log.

Compared is what can be measured per request once its label arrives: a proportion
(``accuracy``: the served class was right; ``outcome_rate``: a good business outcome, 1/0),
with Newcombe's hybrid score interval and the pooled two-proportion z-test; or a per-row
loss (``log_loss``, ``brier``) with Welch's interval and t-test. Ranking metrics (ROC AUC,
average precision) are not sums over requests; the shadow report compares those.

The peeking problem: the test is fixed-horizon. Its error rates hold only when it is run
once, at the sample size planned before the start. Looking at the p-value as data arrive
and stopping at the first "significant" look inflates the false-positive rate far above
``alpha`` (with daily looks, several times over). So before both arms reach the planned
size, ``compare_arms`` reports the estimates and the rows still needed, but no interval,
no p-value and no winner; once they do, it analyses exactly the first planned rows of each
arm (in the order given, which should be request time), so running it again later repeats
the same test instead of taking another look.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

from mlplatform.errors import DataValidationError
from mlplatform.serving.release_settings import CONTINUOUS_METRICS, PROPORTION_METRICS, ABConfig

Arm = Literal["champion", "challenger"]
CHAMPION: Arm = "champion"
CHALLENGER: Arm = "challenger"
Decision = Literal["challenger_better", "champion_better", "no_difference", "keep_collecting"]
LOWER_IS_BETTER = frozenset(CONTINUOUS_METRICS)
_SCALE = float(2**64)
_EPS = 1e-15


# --------------------------------------------------------------------------------------
# Assignment


def _key_text(key: Any) -> str:
    if key is None or (isinstance(key, float) and math.isnan(key)):
        raise DataValidationError(
            "A/B key is missing (None/NaN): send the key column or a request id"
        )
    if isinstance(key, bool | np.bool_):
        return str(bool(key))
    # A JSON number may arrive as 42 or 42.0: both are the same customer.
    integral = isinstance(key, float | np.floating) and float(key).is_integer()
    return str(int(key)) if integral or isinstance(key, np.integer) else str(key)


def hash_unit(key: Any, salt: str) -> float:
    """A number in [0, 1) fixed by the key and the salt, uniform over keys.

    SHA-256 rather than ``hash()``: Python salts ``hash`` of strings per process, so it
    would give one customer different arms in different server processes.

    Args:
        key: the key column value or the request id (str, int or float).
        salt: mixed in so that different experiments split customers independently.

    Raises:
        DataValidationError: the key is None or NaN.
    """
    digest = hashlib.sha256(f"{salt}\x00{_key_text(key)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def assign_arm(key: Any, share: float, salt: str) -> Arm:
    """The arm that answers this key: the same key always gets the same arm.

    Raising ``share`` only moves keys from champion to challenger (a key's hash does not
    depend on the share), so a ramp-up from 5% to 20% keeps everyone already on the
    challenger there.

    Args:
        key: the key column value or the request id.
        share: the challenger's share of keys, in [0, 1].
        salt: the experiment's salt (``ab.salt``).

    Raises:
        ValueError: share outside [0, 1].
        DataValidationError: the key is None or NaN.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"challenger share must be in [0, 1], got {share}")
    return CHALLENGER if hash_unit(key, salt) < share else CHAMPION


def assign_arms(keys: Iterable[Any], share: float, salt: str) -> np.ndarray:
    """``assign_arm`` for each key (e.g. the rows of a batch): an array of arm names.

    Raises:
        ValueError: share outside [0, 1].
        DataValidationError: a key is None or NaN.
    """
    return np.array([assign_arm(k, share, salt) for k in keys], dtype=object)


def per_row_values(
    metric: str,
    *,
    labels: Sequence[Any] | None = None,
    predicted: Sequence[Any] | None = None,
    probability: Sequence[float] | None = None,
    outcome: Sequence[float] | None = None,
    positive_class: Any = 1,
) -> np.ndarray:
    """One value of the primary metric per request; its mean per arm is the arm's figure.

    Args:
        metric: accuracy (needs labels, predicted), outcome_rate (needs outcome, 1 = good),
            log_loss or brier (need labels, probability of the positive class).
        labels: the true class of each request (NaN/None: not known yet).
        predicted: the class the serving arm answered.
        probability: the positive-class probability the serving arm answered.
        outcome: the business outcome per request, 1/0 (NaN: not known yet).
        positive_class: the label that counts as positive.

    Raises:
        DataValidationError: a needed input is missing, lengths differ, outcome is not 0/1
            or a probability is outside [0, 1].
    """

    known = PROPORTION_METRICS + CONTINUOUS_METRICS
    if metric not in known:
        raise DataValidationError(f"unknown A/B metric {metric!r}; expected one of {known}")
    name, served = {"outcome_rate": ("outcome", outcome), "accuracy": ("predicted", predicted)}.get(
        metric, ("probability", probability)
    )
    if served is None or (metric != "outcome_rate" and labels is None):
        raise DataValidationError(f"A/B metric {metric} needs labels and {name}")
    values = np.asarray(served, dtype=object if metric == "accuracy" else float)
    if metric == "outcome_rate":
        if not np.isin(values[~np.isnan(values)], (0.0, 1.0)).all():
            raise DataValidationError("A/B outcome must be 0 or 1 (1 = good outcome)")
        return values
    y = np.asarray(labels, dtype=object)
    if len(values) != len(y):
        raise DataValidationError(f"A/B inputs differ in length ({len(y)} vs {len(values)})")
    positive = (y == positive_class).astype(float)
    if metric == "accuracy":
        values = (values == y).astype(float)
    elif ((values < 0) | (values > 1)).any():
        raise DataValidationError("A/B probability outside [0, 1]")
    elif metric == "brier":
        values = (values - positive) ** 2
    else:
        values = -np.log(np.clip(np.where(positive == 1, values, 1 - values), _EPS, 1.0))
    unknown = np.array([v is None or (isinstance(v, float) and math.isnan(v)) for v in y])
    values[unknown] = np.nan
    return values


# --------------------------------------------------------------------------------------
# Planned sample size


@dataclass(frozen=True)
class SampleSize:
    """Rows per arm a fixed-horizon test needs."""

    champion: int
    challenger: int

    @property
    def total(self) -> int:
        return self.champion + self.challenger

    def to_dict(self) -> dict[str, int]:
        return {"champion": self.champion, "challenger": self.challenger, "total": self.total}


def _split(total: float, share: float) -> SampleSize:
    # Rounded up per arm, with a tolerance so 76.0000000001 does not become 77.
    return SampleSize(
        champion=math.ceil(total * (1 - share) - 1e-9), challenger=math.ceil(total * share - 1e-9)
    )


def _check_design(alpha: float, power: float, share: float, mde: float) -> tuple[float, float]:
    if not 0 < alpha < 1 or not 0 < power < 1 or not 0 < share < 1 or mde <= 0:
        raise ValueError(
            f"need 0 < alpha, power, share < 1 and mde > 0 (got alpha={alpha}, "
            f"power={power}, share={share}, mde={mde})"
        )
    return float(stats.norm.isf(alpha / 2)), float(stats.norm.ppf(power))


def required_sample_size(
    baseline: float, mde: float, alpha: float, power: float, share: float
) -> SampleSize:
    """Rows per arm for a two-sided two-proportion z-test to detect ``mde``.

    The standard formula (Fleiss; R's ``power.prop.test``), generalised to an unequal
    split: with ``n_a = (1 - s) N`` and ``n_b = s N``,
    ``sqrt(N) |d| = z_{1-alpha/2} sqrt(pbar qbar (1/(1-s) + 1/s))
    + z_{power} sqrt(p1 q1 / (1-s) + p2 q2 / s)``, ``pbar`` the split-weighted mean.
    The test is two-sided, so this is the larger of the sizes for ``baseline + mde`` and
    ``baseline - mde`` (where each stays within [0, 1]).

    Args:
        baseline: the champion's expected proportion (e.g. accuracy), in [0, 1].
        mde: smallest absolute difference to detect.
        alpha: two-sided significance level.
        power: probability of detecting a true difference of ``mde``.
        share: the challenger's share of requests.

    Raises:
        ValueError: parameters out of range, or ``baseline +/- mde`` both leave [0, 1].
    """
    z_a, z_b = _check_design(alpha, power, share, mde)
    if not 0 <= baseline <= 1:
        raise ValueError(f"baseline proportion must be in [0, 1], got {baseline}")
    p1, s = baseline, share
    totals = []
    for p2 in (p1 + mde, p1 - mde):
        if not 0 <= p2 <= 1:
            continue
        pbar = (1 - s) * p1 + s * p2
        null = z_a * math.sqrt(pbar * (1 - pbar) * (1 / (1 - s) + 1 / s))
        alt = z_b * math.sqrt(p1 * (1 - p1) / (1 - s) + p2 * (1 - p2) / s)
        totals.append(((null + alt) / mde) ** 2)
    if not totals:
        raise ValueError(f"baseline {baseline} +/- mde {mde} leaves [0, 1]")
    return _split(max(totals), share)


def required_sample_size_means(
    sd: float, mde: float, alpha: float, power: float, share: float
) -> SampleSize:
    """Rows per arm for a two-sided two-sample test of means to detect ``mde``.

    ``N = (z_{1-alpha/2} + z_{power})^2 sd^2 (1/(1-s) + 1/s) / mde^2`` (normal
    approximation; Welch's t needs a handful more rows only when N is tiny).

    Args:
        sd: the per-row standard deviation of the metric (e.g. of the Brier loss).
        mde: smallest absolute difference of means to detect.
        alpha: two-sided significance level.
        power: probability of detecting a true difference of ``mde``.
        share: the challenger's share of requests.

    Raises:
        ValueError: parameters out of range.
    """
    z_a, z_b = _check_design(alpha, power, share, mde)
    if not sd > 0:
        raise ValueError(f"standard deviation must be positive, got {sd}")
    total = (z_a + z_b) ** 2 * sd**2 * (1 / (1 - share) + 1 / share) / mde**2
    return _split(total, share)


def wilson_interval(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a proportion (scipy's ``binomtest``)."""
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def newcombe_interval(
    k_a: int, n_a: int, k_b: int, n_b: int, confidence: float
) -> tuple[float, float]:
    """Newcombe's hybrid score interval (his method 10) for ``k_b/n_b - k_a/n_a``.

    Chosen over the Wald interval, whose coverage falls well below nominal when a rate is
    near 0 or 1 or an arm is small (both common here: accuracies near 0.9, small shares);
    Newcombe's interval, built from the two Wilson intervals, stays close to nominal and
    never leaves [-1, 1].

    Args:
        k_a: successes in arm a (the champion); n_a: its rows.
        k_b: successes in arm b (the challenger); n_b: its rows.
        confidence: e.g. 0.95.
    """
    p_a, p_b = k_a / n_a, k_b / n_b
    lo_a, hi_a = wilson_interval(k_a, n_a, confidence)
    lo_b, hi_b = wilson_interval(k_b, n_b, confidence)
    d = p_b - p_a
    return (
        d - math.sqrt((p_b - lo_b) ** 2 + (hi_a - p_a) ** 2),
        d + math.sqrt((hi_b - p_b) ** 2 + (p_a - lo_a) ** 2),
    )


def two_proportion_z(k_a: int, n_a: int, k_b: int, n_b: int) -> tuple[float, float]:
    """Two-sided z-test of equal proportions with the pooled variance: (z, p-value).

    The same p-value as a chi-square test of the 2x2 table without continuity correction.
    Both arms all successes (or all failures) carry no evidence of a difference: (0, 1).
    """
    pooled = (k_a + k_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 0.0, 1.0
    z = (k_b / n_b - k_a / n_a) / se
    return z, float(2 * stats.norm.sf(abs(z)))


# --------------------------------------------------------------------------------------
# The comparison


@dataclass
class ABResult:
    """What ``mlplatform ab`` reports; ``difference`` is challenger minus champion.

    ``collected``: labelled rows per arm; ``used``: rows analysed; ``rows_needed``: rows
    each arm still lacks; ``more_requests``: requests that takes at the configured split.
    """

    decision: Decision
    reason: str
    metric: str
    test: str
    alpha: float
    power: float
    min_detectable_effect: float
    collected: dict[str, int]
    used: dict[str, int]
    estimate: dict[str, float | None]
    difference: float | None
    planning: dict[str, Any]
    required: dict[str, int] | None = None
    rows_needed: dict[str, int] | None = None
    more_requests: int | None = None
    interval: list[float] | None = None
    statistic: float | None = None
    p_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (no numpy scalars)."""
        return asdict(self)


def _arm_arrays(arms: Sequence[Any], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    arm = np.asarray(arms, dtype=object)
    val = np.asarray(values, dtype=float)
    if len(arm) != len(val):
        raise DataValidationError(
            f"A/B arms and values differ in length ({len(arm)} vs {len(val)})"
        )
    bad = sorted({str(a) for a in arm} - {CHAMPION, CHALLENGER})
    if bad:
        raise DataValidationError(
            f"A/B arm must be champion or challenger, got {', '.join(bad[:5])}"
        )
    labelled = ~np.isnan(val)  # rows whose label has not arrived yet wait
    return val[labelled & (arm == CHAMPION)], val[labelled & (arm == CHALLENGER)]


def _plan(
    cfg: ABConfig, a: np.ndarray, b: np.ndarray, baseline: float | None, sd: float | None
) -> tuple[SampleSize | None, dict[str, Any]]:
    proportion = cfg.primary_metric in PROPORTION_METRICS
    key = "baseline" if proportion else "baseline_sd"
    given, configured = (baseline, cfg.baseline) if proportion else (sd, cfg.baseline_sd)
    value, source = (given, "given") if given is not None else (configured, "params")
    pooled = np.concatenate([a, b])
    if value is None and len(pooled) >= 2:
        # Blinded: both arms pooled, so the plan never peeks at the difference.
        value = float(pooled.mean() if proportion else pooled.std(ddof=1))
        source = "pooled estimate (both arms)"
    plan = {key: value, "source": source}
    if value is None or (not proportion and value == 0):  # no rows, or all losses equal
        return None, plan
    planner = required_sample_size if proportion else required_sample_size_means
    design = (cfg.min_detectable_effect, cfg.alpha, cfg.power, cfg.challenger_share)
    return planner(value, *design), plan


def compare_arms(
    arms: Sequence[Any],
    values: Sequence[float],
    cfg: ABConfig,
    *,
    baseline: float | None = None,
    baseline_sd: float | None = None,
) -> ABResult:
    """Compare the primary metric per arm; decide only at the planned sample size.

    Args:
        arms: the arm that served each request ('champion' or 'challenger'), in request
            time order.
        values: the primary metric per request (``per_row_values``); NaN = label not in yet.
        cfg: the ``ab`` params section.
        baseline: the champion's expected proportion to plan the size with (overrides
            ``cfg.baseline``; e.g. its test-set accuracy from the registry).
        baseline_sd: the same for a loss metric's per-row standard deviation.

    Returns:
        ``keep_collecting`` (with the rows still needed per arm and the requests that
        takes at the configured split) until both arms reach the planned size; then
        ``challenger_better``, ``champion_better`` or ``no_difference`` from a two-sided
        test at ``cfg.alpha`` on the first planned rows of each arm.

    Raises:
        DataValidationError: an arm name is not champion/challenger, or lengths differ.
    """
    a_all, b_all = _arm_arrays(arms, values)
    size, plan = _plan(cfg, a_all, b_all, baseline, baseline_sd)
    collected = {CHAMPION: len(a_all), CHALLENGER: len(b_all)}
    result = ABResult(
        decision="keep_collecting",
        reason="no labelled rows yet to plan the sample size from (set ab.baseline or "
        "ab.baseline_sd to plan it in advance)",
        metric=cfg.primary_metric,
        test=cfg.test_kind,
        alpha=cfg.alpha,
        power=cfg.power,
        min_detectable_effect=cfg.min_detectable_effect,
        collected=collected,
        used=collected,
        estimate=_means(a_all, b_all),
        difference=_diff(a_all, b_all),
        planning=plan,
    )
    if size is None:
        return result
    result.required = size.to_dict()
    need = {
        CHAMPION: max(0, size.champion - len(a_all)),
        CHALLENGER: max(0, size.challenger - len(b_all)),
    }
    result.rows_needed = need
    share = cfg.challenger_share
    result.more_requests = max(
        math.ceil(need[CHAMPION] / (1 - share)), math.ceil(need[CHALLENGER] / share)
    )
    if result.more_requests:
        # Estimates only: no interval or p-value, which would invite stopping early.
        result.reason = (
            f"fixed-horizon test: no winner before {size.champion} champion and "
            f"{size.challenger} challenger labelled rows; {need[CHAMPION]} and "
            f"{need[CHALLENGER]} more needed (about {result.more_requests} more requests "
            f"at a {share:.0%} challenger share)"
        )
        return result
    a, b = a_all[: size.champion], b_all[: size.challenger]
    statistic, p, interval = _test(cfg.test_kind, a, b, 1 - cfg.alpha)
    result.used = {CHAMPION: len(a), CHALLENGER: len(b)}
    result.estimate, result.difference = _means(a, b), _diff(a, b)
    result.statistic, result.p_value, result.interval = statistic, p, interval
    result.decision, result.reason = _verdict(cfg, result.difference, p)
    return result


def _test(kind: str, a: np.ndarray, b: np.ndarray, confidence: float):
    """(statistic, two-sided p-value, interval of b - a) of the configured test."""
    if kind == "two_proportion_z":
        ka, kb = int(a.sum()), int(b.sum())
        statistic, p = two_proportion_z(ka, len(a), kb, len(b))
        lo, hi = newcombe_interval(ka, len(a), kb, len(b), confidence)
        return float(statistic), p, [lo, hi]
    res = stats.ttest_ind(b, a, equal_var=False)
    if math.isnan(res.pvalue):  # no variance in either arm: the rows cannot tell them apart
        d = float(b.mean() - a.mean())
        return 0.0, 1.0, [d, d]
    ci = res.confidence_interval(confidence)
    return float(res.statistic), float(res.pvalue), [float(ci.low), float(ci.high)]


def _verdict(cfg: ABConfig, diff: float, p: float) -> tuple[Decision, str]:
    metric = cfg.primary_metric
    if p >= cfg.alpha:
        return "no_difference", (
            f"{metric}: difference {diff:+.4f} (challenger - champion) not significant at "
            f"alpha {cfg.alpha} (p = {p:.3g}) at the planned sample size"
        )
    better = diff < 0 if metric in LOWER_IS_BETTER else diff > 0
    decision: Decision = "challenger_better" if better else "champion_better"
    winner = "challenger" if better else "champion"
    return decision, (
        f"{metric}: difference {diff:+.4f} (challenger - champion), p = {p:.3g} < alpha "
        f"{cfg.alpha} at the planned sample size: the {winner} is better"
    )


def _means(a: np.ndarray, b: np.ndarray) -> dict[str, float | None]:
    return {arm: float(x.mean()) if len(x) else None for arm, x in ((CHAMPION, a), (CHALLENGER, b))}


def _diff(a: np.ndarray, b: np.ndarray) -> float | None:
    return float(b.mean() - a.mean()) if len(a) and len(b) else None
