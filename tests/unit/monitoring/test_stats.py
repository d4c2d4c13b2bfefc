"""The drift statistics against scipy and against answers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from mlplatform.monitoring import stats


def test_psi_of_identical_counts_is_zero_and_empty_bins_stay_finite():
    assert stats.psi([10, 20, 30], [10, 20, 30]) == pytest.approx(0.0)
    # Bins empty on one side or both: finite, positive, no warnings.
    with np.errstate(all="raise"):
        value = stats.psi([0, 50, 50, 0], [100, 0, 0, 0])
    assert math.isfinite(value) and value > 0
    assert math.isfinite(stats.psi([0, 0, 100], [0, 0, 100]))


def test_psi_matches_the_formula_with_jeffreys_smoothing():
    ref, cur = np.array([30, 70, 0]), np.array([50, 45, 5])
    p = (ref + 0.5) / (ref.sum() + 1.5)
    q = (cur + 0.5) / (cur.sum() + 1.5)
    assert stats.psi(ref, cur) == pytest.approx(np.sum((q - p) * np.log(q / p)))


def test_psi_of_a_normal_mean_shift_is_about_its_square():
    # For N(0,1) -> N(d,1) the population PSI (symmetric KL) is d**2; deciles get close.
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(200_000)
    edges = np.quantile(ref, np.linspace(0, 1, 11)[1:-1])
    for d in (0.3, 0.5):
        cur = rng.standard_normal(200_000) + d
        counts = [np.bincount(np.searchsorted(edges, x), minlength=10) for x in (ref, cur)]
        assert stats.psi(*counts) == pytest.approx(d**2, rel=0.15)


def test_benjamini_hochberg_by_hand_and_against_scipy():
    p = [0.01, 0.04, 0.03, 0.005]
    # Sorted 0.005, 0.01, 0.03, 0.04 -> p*m/rank = 0.02, 0.02, 0.04, 0.04 (already monotone).
    assert stats.benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    rng = np.random.default_rng(3)
    many = list(rng.uniform(size=40) ** 3)
    expected = sps.false_discovery_control(many, method="bh")
    assert stats.benjamini_hochberg(many) == pytest.approx(list(expected))
    assert stats.benjamini_hochberg([]) == []


def test_ks_is_scipys_two_sample_test():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=500), rng.normal(0.2, size=800)
    res = stats.ks(a, b)
    ref = sps.ks_2samp(a, b)
    assert (res.statistic, res.p_value) == pytest.approx((ref.statistic, ref.pvalue))


def test_chi2_homogeneity_equals_scipy_when_no_pooling_is_needed():
    ref, cur = np.array([120, 300, 80]), np.array([100, 250, 150])
    res = stats.chi2_homogeneity(ref, cur)
    expected = sps.chi2_contingency(np.vstack([ref, cur]), correction=False)
    assert (res.statistic, res.p_value) == pytest.approx((expected.statistic, expected.pvalue))


def test_sparse_categories_are_pooled_until_expected_counts_reach_five():
    table = np.array([[500, 400, 2, 3, 0, 3], [480, 420, 1, 2, 1, 2]], dtype=float)
    pooled = stats.pool_sparse(table)
    expected = np.outer(pooled.sum(axis=1), pooled.sum(axis=0)) / pooled.sum()
    assert expected.min() >= 5
    assert pooled.shape[1] == 3  # the two big categories keep their columns
    assert pooled.sum() == table.sum()
    # Nothing testable: one column left, p = 1.
    assert stats.chi2_homogeneity([3, 0], [1, 0]).p_value == 1.0


def test_two_proportions_is_the_z_test_squared_and_fisher_when_sparse():
    k1, n1, k2, n2 = 40, 1000, 70, 1000
    res = stats.two_proportions(k1, n1, k2, n2)
    pooled = (k1 + k2) / (n1 + n2)
    z = (k2 / n2 - k1 / n1) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    assert res.statistic == pytest.approx(z**2)
    assert res.p_value == pytest.approx(2 * sps.norm.sf(abs(z)))
    sparse = stats.two_proportions(0, 500, 3, 400)
    assert sparse.test == "fisher_exact"
    assert sparse.p_value == pytest.approx(sps.fisher_exact([[0, 500], [3, 397]]).pvalue)


def test_cohen_h_known_values():
    assert stats.cohen_h(0.0, 0.01) == pytest.approx(0.2003, abs=1e-4)
    assert stats.cohen_h(0.5, 0.5) == 0.0
    assert stats.cohen_h(0.2, 0.1) < 0


@pytest.mark.parametrize(
    ("effect", "significant", "expected"),
    [(0.5, False, "no_drift"), (0.05, True, "no_drift"), (0.15, True, "warning"),
     (0.2, True, "drift")],
)  # fmt: skip
def test_level_needs_significance_and_an_effect(effect, significant, expected):
    assert stats.level(effect, 0.1, 0.2, significant) == expected
