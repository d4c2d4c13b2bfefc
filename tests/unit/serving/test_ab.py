"""A/B core: arm assignment, sample size, the tests and the fixed-horizon decision."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mlplatform.errors import DataValidationError
from mlplatform.serving import ab
from mlplatform.serving.release_settings import ABConfig

# --------------------------------------------------------------------------------------
# Assignment


@pytest.mark.parametrize("share", [0.1, 0.5, 0.8])
def test_split_of_10000_keys_is_within_three_binomial_sigmas(share):
    n = 10_000
    arms = ab.assign_arms((f"customer-{i}" for i in range(n)), share, "exp-1")
    challengers = int((arms == ab.CHALLENGER).sum())
    sigma = math.sqrt(n * share * (1 - share))  # binomial sd of the challenger count
    assert abs(challengers - n * share) < 3 * sigma


def test_hash_is_uniform_on_unit_interval():
    u = np.array([ab.hash_unit(i, "s") for i in range(10_000)])
    assert u.min() >= 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 0.001


def test_same_key_same_arm_whatever_the_call_order():
    keys = [f"k{i}" for i in range(500)]
    forward = {k: ab.assign_arm(k, 0.3, "salt") for k in keys}
    rng = np.random.default_rng(1)
    shuffled = list(rng.permutation(keys))
    backward = {k: ab.assign_arm(k, 0.3, "salt") for k in shuffled}
    batch = dict(zip(keys, ab.assign_arms(keys, 0.3, "salt"), strict=True))
    assert forward == backward == batch


def test_known_hash_values_do_not_change_between_releases():
    # Frozen literals: a changed hash would move live customers between arms on upgrade.
    assert ab.hash_unit("customer-1", "mlplatform-ab") == 0.9750376337413689
    arms = [ab.assign_arm(f"customer-{i}", 0.5, "mlplatform-ab") for i in range(6)]
    assert arms == ["challenger", "champion", "champion", "champion", "challenger", "champion"]


def test_int_and_integral_float_keys_agree_and_salt_reshuffles():
    assert ab.hash_unit(42, "s") == ab.hash_unit(42.0, "s") == ab.hash_unit("42", "s")
    a = ab.assign_arms(range(2000), 0.5, "one")
    b = ab.assign_arms(range(2000), 0.5, "two")
    agree = (a == b).mean()
    assert 0.45 < agree < 0.55  # independent splits agree about half the time


def test_raising_the_share_only_moves_keys_to_the_challenger():
    keys = range(3000)
    low = ab.assign_arms(keys, 0.05, "s")
    high = ab.assign_arms(keys, 0.2, "s")
    assert not ((low == ab.CHALLENGER) & (high == ab.CHAMPION)).any()


def test_missing_key_and_bad_share_are_refused():
    with pytest.raises(DataValidationError, match="key is missing"):
        ab.assign_arm(None, 0.5, "s")
    with pytest.raises(DataValidationError, match="key is missing"):
        ab.assign_arm(float("nan"), 0.5, "s")
    with pytest.raises(ValueError, match="share"):
        ab.assign_arm("a", 1.5, "s")
    assert ab.assign_arm("a", 0.0, "s") == ab.CHAMPION
    assert ab.assign_arm("a", 1.0, "s") == ab.CHALLENGER


# --------------------------------------------------------------------------------------
# Sample size


def test_sample_size_matches_r_power_prop_test():
    # R documentation, stats::power.prop.test(p1 = .50, p2 = .75, power = .90) => n = 76.7
    size = ab.required_sample_size(0.50, 0.25, alpha=0.05, power=0.90, share=0.5)
    assert size.champion == size.challenger == 77
    assert size.total == 154
    # The same formula, 20% -> 25% at 80% power: 1,093.7 per group.
    assert ab.required_sample_size(0.20, 0.05, 0.05, 0.80, 0.5).champion == 1094


def test_sample_size_unequal_split_needs_more_in_total():
    even = ab.required_sample_size(0.8, 0.03, 0.05, 0.8, 0.5)
    skewed = ab.required_sample_size(0.8, 0.03, 0.05, 0.8, 0.1)
    assert skewed.total > even.total
    assert skewed.challenger / skewed.total == pytest.approx(0.1, abs=0.01)


def test_sample_size_of_means_matches_the_closed_form():
    # 2 (1.96 + 0.8416)^2 sd^2 / mde^2 per arm, sd 0.2, mde 0.02: 1569.8
    size = ab.required_sample_size_means(0.2, 0.02, 0.05, 0.8, 0.5)
    z = stats.norm.isf(0.025) + stats.norm.ppf(0.8)
    assert size.champion == math.ceil(2 * z**2 * 0.04 / 0.0004) == 1570


def test_sample_size_refuses_impossible_designs():
    with pytest.raises(ValueError, match="leaves"):
        ab.required_sample_size(0.5, 0.6, 0.05, 0.8, 0.5)
    with pytest.raises(ValueError):
        ab.required_sample_size(0.5, 0.1, 0.05, 0.8, 0.0)
    # near 1, only the downward effect is possible: it plans for that one
    assert ab.required_sample_size(0.99, 0.02, 0.05, 0.8, 0.5).champion > 0


# --------------------------------------------------------------------------------------
# Intervals and tests


def test_newcombe_interval_matches_newcombe_1998():
    # Newcombe (1998), Statistics in Medicine 17:873, Table II, method 10.
    lo, hi = ab.newcombe_interval(48, 80, 56, 70, 0.95)  # 56/70 - 48/80
    assert (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)
    lo, hi = ab.newcombe_interval(3, 10, 9, 10, 0.95)  # 9/10 - 3/10
    assert (round(lo, 4), round(hi, 4)) == (0.1705, 0.8090)


def test_z_test_equals_chi_square_without_continuity_correction():
    z, p = ab.two_proportion_z(430, 1000, 480, 1000)
    chi2, p_chi, _, _ = stats.chi2_contingency([[430, 570], [480, 520]], correction=False)
    assert p == pytest.approx(p_chi, rel=1e-10)
    assert z**2 == pytest.approx(chi2, rel=1e-10)
    assert z > 0  # challenger (second) higher
    assert ab.two_proportion_z(10, 10, 20, 20) == (0.0, 1.0)


# --------------------------------------------------------------------------------------
# The decision


def _simulate(rng, n_a, n_b, p_a, p_b):
    arms = np.array([ab.CHAMPION] * n_a + [ab.CHALLENGER] * n_b, dtype=object)
    values = np.concatenate([rng.random(n_a) < p_a, rng.random(n_b) < p_b]).astype(float)
    order = rng.permutation(n_a + n_b)  # interleaved, as requests arrive
    return arms[order], values[order]


def _rates(cfg, n_sims, p_a, p_b, seed):
    size = ab.required_sample_size(
        cfg.baseline, cfg.min_detectable_effect, cfg.alpha, cfg.power, cfg.challenger_share
    )
    rng = np.random.default_rng(seed)
    decisions = []
    for _ in range(n_sims):
        arms, values = _simulate(rng, size.champion, size.challenger, p_a, p_b)
        decisions.append(ab.compare_arms(arms, values, cfg).decision)
    return {d: decisions.count(d) / n_sims for d in set(decisions)}


def test_known_effect_is_detected_with_about_the_planned_power():
    cfg = ABConfig(baseline=0.5, min_detectable_effect=0.05, power=0.8, alpha=0.05)
    n_sims = 400
    rates = _rates(cfg, n_sims, 0.50, 0.55, seed=7)
    sigma = math.sqrt(0.8 * 0.2 / n_sims)  # 0.02
    assert abs(rates.get("challenger_better", 0) - 0.8) < 3 * sigma
    assert rates.get("champion_better", 0) < 0.01


def test_type_one_error_is_near_alpha_without_an_effect():
    cfg = ABConfig(baseline=0.8, min_detectable_effect=0.05, alpha=0.05)
    n_sims = 1000
    rates = _rates(cfg, n_sims, 0.8, 0.8, seed=11)
    false_positive = rates.get("challenger_better", 0) + rates.get("champion_better", 0)
    sigma = math.sqrt(0.05 * 0.95 / n_sims)
    assert abs(false_positive - 0.05) < 3 * sigma
    assert set(rates) <= {"no_difference", "challenger_better", "champion_better"}


def test_welch_power_on_a_continuous_loss():
    cfg = ABConfig(primary_metric="brier", baseline_sd=0.2, min_detectable_effect=0.02)
    size = ab.required_sample_size_means(0.2, 0.02, 0.05, 0.8, 0.5)
    rng = np.random.default_rng(3)
    n_sims, better = 200, 0
    for _ in range(n_sims):
        arms = np.array([ab.CHAMPION] * size.champion + [ab.CHALLENGER] * size.challenger)
        values = np.concatenate(
            [rng.normal(0.20, 0.2, size.champion), rng.normal(0.18, 0.2, size.challenger)]
        )
        result = ab.compare_arms(arms, values, cfg)
        assert result.test == "welch_t"
        better += result.decision == "challenger_better"  # lower loss is better
    assert abs(better / n_sims - 0.8) < 3 * math.sqrt(0.16 / n_sims)


def test_no_winner_before_the_planned_size_even_with_a_huge_effect():
    cfg = ABConfig(baseline=0.5, min_detectable_effect=0.02, challenger_share=0.2)
    size = ab.required_sample_size(0.5, 0.02, 0.05, 0.8, 0.2)
    rng = np.random.default_rng(0)
    arms, values = _simulate(rng, 2000, 400, 0.5, 0.95)
    result = ab.compare_arms(arms, values, cfg)
    assert result.decision == "keep_collecting"
    assert result.p_value is None and result.interval is None
    assert result.rows_needed == {
        "champion": size.champion - 2000,
        "challenger": size.challenger - 400,
    }
    assert result.more_requests == max(
        math.ceil((size.champion - 2000) / 0.8), math.ceil((size.challenger - 400) / 0.2)
    )
    assert "no winner before" in result.reason
    assert result.estimate["challenger"] > 0.9  # estimates are shown, not judged
    assert result.to_dict()["decision"] == "keep_collecting"


def test_at_the_horizon_only_the_planned_rows_are_analysed():
    cfg = ABConfig(baseline=0.5, min_detectable_effect=0.1)
    size = ab.required_sample_size(0.5, 0.1, 0.05, 0.8, 0.5)
    rng = np.random.default_rng(5)
    arms, values = _simulate(rng, size.champion * 3, size.challenger * 3, 0.5, 0.5)
    first = ab.compare_arms(arms[: len(arms) // 2], values[: len(arms) // 2], cfg)
    later = ab.compare_arms(arms, values, cfg)
    assert first.used == later.used == {"champion": size.champion, "challenger": size.challenger}
    assert first.p_value == later.p_value  # a later run repeats the test, not another look


def test_unlabelled_rows_wait_and_the_blinded_plan_is_used_without_a_baseline():
    cfg = ABConfig(min_detectable_effect=0.05)
    arms = np.array(["champion", "challenger"] * 50, dtype=object)
    values = np.tile([1.0, 0.0, np.nan, 1.0], 25)
    result = ab.compare_arms(arms, values, cfg)
    assert result.collected == {"champion": 25, "challenger": 50}
    assert result.planning["source"].startswith("pooled")
    assert result.planning["baseline"] == pytest.approx(50 / 75)
    assert result.decision == "keep_collecting"
    empty = ab.compare_arms([], [], cfg)
    assert empty.decision == "keep_collecting" and empty.required is None


def test_bad_arm_names_are_refused():
    with pytest.raises(DataValidationError, match="arm must be"):
        ab.compare_arms(["champion", "treatment"], [1.0, 0.0], ABConfig())


def test_per_row_values():
    y = ["yes", "no", "yes", None]
    assert ab.per_row_values("accuracy", labels=y, predicted=["yes", "yes", "yes", "no"]).tolist()[
        :3
    ] == [1.0, 0.0, 1.0]
    brier = ab.per_row_values(
        "brier", labels=y, probability=[0.9, 0.2, 0.5, 0.5], positive_class="yes"
    )
    assert brier[:3] == pytest.approx([0.01, 0.04, 0.25]) and math.isnan(brier[3])
    ll = ab.per_row_values("log_loss", labels=[1, 0], probability=[0.8, 0.3])
    assert ll == pytest.approx([-math.log(0.8), -math.log(0.7)])
    with pytest.raises(DataValidationError, match="0 or 1"):
        ab.per_row_values("outcome_rate", outcome=[1, 2])
    with pytest.raises(DataValidationError, match="needs labels and predicted"):
        ab.per_row_values("accuracy", labels=[1])
    with pytest.raises(DataValidationError, match="unknown A/B metric 'auc'"):
        ab.per_row_values("auc", labels=[1], probability=[0.5])


def test_config_rules():
    assert ABConfig().test_kind == "two_proportion_z"
    assert ABConfig(primary_metric="log_loss").test_kind == "welch_t"
    with pytest.raises(ValueError, match="two_proportion_z needs a proportion"):
        ABConfig(primary_metric="brier", test="two_proportion_z")
    with pytest.raises(ValueError, match="baseline_sd"):
        ABConfig(primary_metric="brier", baseline=0.5)
    with pytest.raises(ValueError, match=r"unknown_key|Extra inputs"):
        ABConfig(unknown_key=1)
