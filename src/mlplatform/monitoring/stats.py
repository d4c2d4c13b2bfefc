"""The statistics behind the drift rules, each a small pure function over counts or samples.

Tests come from scipy; this module only decides what goes into them (pooling sparse
categories, which test suits a 2x2 table) and the effect sizes (PSI, Cohen's h).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import stats

# Pseudo-count added to every bin on both sides before PSI: Jeffreys' prior for a
# multinomial. An empty bin then gets a small positive share instead of log(0), and the
# smoothing shrinks as the window grows (0.5 / n), so large windows see their data.
PSI_PSEUDOCOUNT = 0.5
# Cochran's rule for the chi-square approximation: every expected count at least 5.
MIN_EXPECTED = 5.0


class TestResult(NamedTuple):
    test: str
    statistic: float
    p_value: float


def proportions(counts: np.ndarray, pseudocount: float = PSI_PSEUDOCOUNT) -> np.ndarray:
    """Smoothed shares of counts: (c + a) / (n + a * k)."""
    counts = np.asarray(counts, dtype=np.float64)
    return (counts + pseudocount) / (counts.sum() + pseudocount * counts.size)


def psi(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Population stability index over the same bins, finite even with empty bins.

    PSI = sum (q - p) * ln(q / p) over bins, with p the reference and q the current shares,
    both smoothed with ``PSI_PSEUDOCOUNT`` per bin (see ``proportions``).
    """
    ref = np.asarray(reference_counts, dtype=np.float64)
    cur = np.asarray(current_counts, dtype=np.float64)
    if ref.shape != cur.shape:
        raise ValueError(f"bins differ: {ref.shape} vs {cur.shape}")
    if ref.sum() == 0 or cur.sum() == 0:
        return 0.0
    p, q = proportions(ref), proportions(cur)
    return float(np.sum((q - p) * np.log(q / p)))


def ks(reference_sample: np.ndarray, current: np.ndarray) -> TestResult:
    """Two-sample Kolmogorov-Smirnov test (scipy: exact for small samples, else asymptotic)."""
    # scipy picks the exact distribution up to 10,000 rows a side, which takes seconds when
    # the statistic is large; the asymptotic one is accurate long before that.
    method = "exact" if len(reference_sample) * len(current) <= 1_000_000 else "asymp"
    res = stats.ks_2samp(reference_sample, current, method=method)
    return TestResult("ks", float(res.statistic), float(res.pvalue))


def pool_sparse(table: np.ndarray) -> np.ndarray:
    """Merge the sparsest columns of a 2 x k table until every expected count is >= 5.

    Columns empty on both sides are dropped. The columns too sparse for the approximation
    are pooled into one, together with the next sparsest while the pool is still too small;
    frequent categories keep their own column.
    """
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1)
    if table.shape[1] < 2 or rows.min() == 0:
        return table
    need = MIN_EXPECTED * rows.sum() / rows.min()  # a column total giving expected >= 5
    order = np.argsort(table.sum(axis=0), kind="stable")
    table = table[:, order]
    totals = table.sum(axis=0)
    k = int(np.searchsorted(totals, need, side="left"))  # columns [0, k) are too sparse
    if k == 0:
        return table
    while k < table.shape[1] and totals[:k].sum() < need:
        k += 1
    return np.column_stack([table[:, :k].sum(axis=1), table[:, k:]])


def chi2_homogeneity(reference_counts: np.ndarray, current_counts: np.ndarray) -> TestResult:
    """Chi-square test that two count vectors over the same groups share one distribution.

    A test of homogeneity (both rows are samples), not goodness of fit against the reference
    shares: with a small reference and a huge window, treating the reference shares as exact
    would turn the reference's own sampling noise into false alarms.
    """
    table = pool_sparse(np.vstack([reference_counts, current_counts]).astype(np.float64))
    if table.shape[1] < 2:
        return TestResult("chi2", 0.0, 1.0)
    res = stats.chi2_contingency(table, correction=False)
    return TestResult("chi2", float(res.statistic), float(res.pvalue))


def two_proportions(k_ref: int, n_ref: int, k_cur: int, n_cur: int) -> TestResult:
    """Test that two rates (for example missing rates) are equal.

    Pearson's chi-square on the 2x2 table (the pooled two-proportion z-test squared); Fisher's
    exact test when an expected count is below 5, where the approximation is poor.
    """
    table = np.array([[k_ref, n_ref - k_ref], [k_cur, n_cur - k_cur]], dtype=np.float64)
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    if (table.sum(axis=0) == 0).any():
        return TestResult("two_proportions", 0.0, 1.0)
    if expected.min() < MIN_EXPECTED:
        res = stats.fisher_exact(table.astype(np.int64))
        return TestResult("fisher_exact", float(res.statistic), float(res.pvalue))
    res = stats.chi2_contingency(table, correction=False)
    return TestResult("two_proportions", float(res.statistic), float(res.pvalue))


def cohen_h(p_ref: float, p_cur: float) -> float:
    """Effect size of a change between two rates: 2 asin(sqrt q) - 2 asin(sqrt p).

    Unlike an absolute difference it weighs a change near 0 or 1 more: 0% -> 1% is h = 0.2,
    as large as 10% -> 17%.
    """
    return 2.0 * math.asin(math.sqrt(p_cur)) - 2.0 * math.asin(math.sqrt(p_ref))


def benjamini_hochberg(p_values: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (scipy.stats.false_discovery_control)."""
    if not p_values:
        return []
    return [float(p) for p in stats.false_discovery_control(np.asarray(p_values), method="bh")]


def level(effect: float, warning: float, drift: float, significant: bool) -> str:
    """no_drift / warning / drift: significant after correction AND above an effect floor."""
    if not significant or effect < warning:
        return "no_drift"
    return "drift" if effect >= drift else "warning"
