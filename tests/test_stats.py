"""Paired statistics on constructed cases whose answers are known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from platypus_nb import stats


def test_mcnemar_exact_p_for_ten_discordant_pairs_all_one_way():
    new = [1] * 10 + [1] * 5 + [0] * 5
    old = [0] * 10 + [1] * 5 + [0] * 5
    assert stats.mcnemar_exact(new, old) == (10, 0, pytest.approx(2 * 0.5 ** 10))


def test_mcnemar_exact_matches_the_binomial_sum_and_is_symmetric():
    # b = 7, c = 2: p = 2 * P(X <= 2), X ~ Bin(9, 1/2) = 2 * (1 + 9 + 36) / 512
    new, old = [1] * 7 + [0] * 2, [0] * 7 + [1] * 2
    assert stats.mcnemar_exact(new, old)[2] == pytest.approx(2 * 46 / 512)
    assert stats.mcnemar_exact(old, new)[2] == pytest.approx(2 * 46 / 512)
    # Balanced discordance or none at all: no evidence of change.
    assert stats.mcnemar_exact([1, 0], [0, 1])[2] == 1.0
    assert stats.mcnemar_exact([1, 1, 0], [1, 1, 0]) == (0, 0, 1.0)


def test_mcnemar_rejects_non_binary_or_unpaired_outcomes():
    with pytest.raises(ValueError, match="0 or 1"):
        stats.mcnemar_exact([0.5, 1], [0, 1])
    with pytest.raises(ValueError, match="same items"):
        stats.mcnemar_exact([0, 1, 1], [0, 1])


def test_bootstrap_interval_excludes_zero_for_a_consistent_gain_and_contains_it_for_noise():
    gain = np.r_[np.ones(30), np.zeros(70)]          # 30 of 100 questions won, none lost: +0.30
    low, high = stats.paired_bootstrap_ci(gain, seed=1)
    assert 0 < low < 0.30 < high
    noise = np.r_[np.ones(20), -np.ones(20), np.zeros(60)]   # as many won as lost: mean 0
    low, high = stats.paired_bootstrap_ci(noise, seed=1)
    assert low < 0 < high and high - low == pytest.approx(2 * 1.96 * math.sqrt(0.4 / 100), rel=0.1)


def test_bootstrap_is_seeded_and_its_p_value_follows_the_interval():
    d = np.random.default_rng(0).normal(0.1, 1.0, 200)
    assert stats.paired_bootstrap_ci(d, seed=7) == stats.paired_bootstrap_ci(d, seed=7)
    assert stats.paired_bootstrap_ci(d, seed=7) != stats.paired_bootstrap_ci(d, seed=8)
    assert stats.bootstrap_p_value(np.ones(50) * 0.2, seed=0) == pytest.approx(1 / stats.BOOTSTRAP_RESAMPLES)
    assert stats.bootstrap_p_value(np.zeros(50), seed=0) == 1.0
    assert stats.bootstrap_p_value([1.0, -1.0] * 25, seed=0) > 0.5


def test_holm_adjusts_in_step_down_order_and_keeps_nans():
    assert stats.holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_one_bootstrap_gives_the_interval_and_p_value_of_the_two_separate_calls():
    rng = np.random.default_rng(3)
    for d in (rng.normal(0.1, 1.0, 40), np.zeros(12), np.ones(30) * 0.5):
        assert stats.paired_bootstrap(d, seed=5) == (*stats.paired_bootstrap_ci(d, seed=5),
                                                     stats.bootstrap_p_value(d, seed=5))


def test_wilson_interval_matches_published_values_and_stays_in_the_unit_interval():
    # each bound inverts the score test: (k/n - p)^2 = z^2 p (1 - p) / n, z = 1.959964 at 95%
    z = 1.959964
    for k, n in [(1, 10), (4, 348), (27, 470)]:
        for p in stats.wilson_interval(k, n):
            assert (k / n - p) ** 2 == pytest.approx(z * z * p * (1 - p) / n, rel=1e-5)
    assert stats.wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=5e-5))
    assert stats.wilson_interval(1, 10) == (pytest.approx(0.0179, abs=5e-5), pytest.approx(0.4042, abs=5e-5))
    low, high = stats.wilson_interval(9, 10)  # the mirror image of 1 / 10
    assert (low, high) == (pytest.approx(1 - 0.4042, abs=5e-5), pytest.approx(1 - 0.0179, abs=5e-5))
    assert stats.wilson_interval(10, 10)[1] == 1.0
    narrow, wide = stats.wilson_interval(40, 400), stats.wilson_interval(4, 40)
    assert wide[0] < narrow[0] < 0.1 < narrow[1] < wide[1]  # ten times the sample, a narrower interval
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))
    with pytest.raises(ValueError, match="0 <= k <= n"):
        stats.wilson_interval(5, 4)
