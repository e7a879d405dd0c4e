"""Bootstrap intervals against cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from align.gates.stats import bootstrap_ci, mean_ci


def test_two_point_sample_spans_both_values():
    # Resampled means of [0, 1] are 0 (p=1/4), 0.5 (p=1/2) and 1 (p=1/4): the 2.5th and 97.5th percentiles
    # are exactly 0 and 1.
    assert bootstrap_ci(np.mean, [0.0, 1.0], n_resamples=4000, seed=1) == (0.0, 1.0)


def test_constant_sample_has_a_zero_width_interval():
    assert bootstrap_ci(np.mean, [0.3] * 50) == pytest.approx((0.3, 0.3))


def test_bernoulli_mean_interval_matches_the_normal_approximation():
    values = np.array([1.0] * 120 + [0.0] * 280)  # p = 0.3, n = 400
    half_width = 1.96 * math.sqrt(0.3 * 0.7 / 400)  # 0.0449
    low, high = bootstrap_ci(np.mean, values, n_resamples=4000, seed=0)
    assert low == pytest.approx(0.3 - half_width, abs=0.01)
    assert high == pytest.approx(0.3 + half_width, abs=0.01)


def test_fixed_seed_is_reproducible_and_the_seed_matters():
    values = np.random.default_rng(5).random(60)
    assert bootstrap_ci(np.mean, values, seed=3) == bootstrap_ci(np.mean, values, seed=3)
    assert bootstrap_ci(np.mean, values, seed=3) != bootstrap_ci(np.mean, values, seed=4)


def test_arrays_are_resampled_together():
    a = np.arange(30, dtype=float)
    # Rows stay paired: a - b is 0 in every resample, although each column varies.
    assert bootstrap_ci(lambda x, y: float(np.mean(x - y)), a, a.copy()) == (0.0, 0.0)


def test_strata_keep_their_sizes():
    groups = np.array(["a"] * 7 + ["b"] * 3)
    share_a = bootstrap_ci(lambda g: float(np.mean(g == "a")), groups, strata=groups)
    assert share_a == pytest.approx((0.7, 0.7))
    unstratified = bootstrap_ci(lambda g: float(np.mean(g == "a")), groups)
    assert unstratified[0] < 0.7 < unstratified[1]


def test_nan_resamples_are_left_out_and_edge_cases():
    # The statistic is undefined (nan) when a resample has no positive value; those resamples are skipped.
    values = np.array([0.0] * 5 + [2.0])
    low, high = bootstrap_ci(lambda v: float(v[v > 0].mean()) if (v > 0).any() else float("nan"), values)
    assert (low, high) == (2.0, 2.0)
    assert all(math.isnan(x) for x in bootstrap_ci(np.mean, []))
    assert bootstrap_ci(np.mean, [0.4]) == (0.4, 0.4)
    value, ci = mean_ci([1.0, 2.0, 3.0])
    assert value == 2.0 and ci[0] <= 2.0 <= ci[1]
    with pytest.raises(ValueError):
        bootstrap_ci(np.mean, [1.0, 2.0], [1.0])


def test_stratified_resamples_draw_what_rng_choice_per_stratum_draws():
    """The intervals equal the plain algorithm's: per resample, rng.choice within each stratum in sorted order."""
    rng = np.random.default_rng(7)
    values = rng.normal(size=30)
    strata = np.array(list("abcab") * 6)
    strata[0] = "z"  # a stratum of one unit among larger ones

    def reference(statistic, column, groups, n_resamples=200, seed=3):
        generator = np.random.default_rng(seed)
        resampled = []
        for _ in range(n_resamples):
            idx = np.concatenate([generator.choice(np.flatnonzero(groups == g), size=(groups == g).sum(), replace=True)
                                  for g in np.unique(groups)])
            resampled.append(statistic(column[idx]))
        alpha = (1 - 0.95) / 2
        return tuple(float(x) for x in np.percentile(resampled, [100 * alpha, 100 * (1 - alpha)]))

    def spread(v):
        return float(v.max() - v.mean())

    assert bootstrap_ci(spread, values, strata=strata, n_resamples=200, seed=3) == reference(spread, values, strata)


def test_one_unit_per_stratum_gives_a_zero_width_interval():
    values = np.array([0.1, 0.5, 0.9])
    assert bootstrap_ci(lambda v: float(v.max() - v.min()), values, strata=["a", "b", "c"]) == (0.8, 0.8)
