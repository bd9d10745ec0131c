"""The verdicts' statistics against values computed by hand or by scipy's own tests."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from distil_kit import stats


def test_wilson_interval_of_the_target_count_matches_the_hand_computed_bounds():
    # 794/872 at z = 1.959964: centre (p + z^2/2n) / (1 + z^2/n) = 0.908750, half-width
    # z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n) = 0.018986.
    acc = stats.proportion(794, 872)
    assert acc.value == pytest.approx(0.910550, abs=1e-6)
    assert acc.interval.low == pytest.approx(0.889764, abs=2e-6)
    assert acc.interval.high == pytest.approx(0.927736, abs=2e-6)
    assert str(acc) == "0.9106 (794/872, 95% interval 0.8898-0.9277)"
    # at 90% (z = 1.644854) the same formulas give centre 0.909280, half-width 0.015923
    ninety = stats.proportion(794, 872, confidence=0.90)
    assert ninety.interval.low == pytest.approx(0.893358, abs=2e-6)
    assert ninety.interval.high == pytest.approx(0.925204, abs=2e-6)


def test_wilson_interval_stays_inside_zero_and_one():
    assert stats.proportion(0, 5).interval.low == 0.0
    every = stats.proportion(5, 5)
    assert every.interval.high == pytest.approx(1.0) and every.interval.low == pytest.approx(0.5655, abs=1e-4)


@pytest.mark.parametrize(
    "target, total, needed",
    [
        (0.91, 872, 794),
        (0.5, 872, 436),
        (0.9, 10, 9),
        (1.0, 872, 872),
        (0.905, 872, 790),  # 789.16 rows: the fraction rounds up, not to the nearest
        (0.55, 655_400, 360_470),  # exactly 360470, though 0.55 * 655400 is 360470.00000000006 in floats
    ],
)
def test_correct_rows_needed_for_a_target(target, total, needed):
    assert stats.correct_needed(target, total) == needed
    assert needed / total >= target > (needed - 1) / total


def _pair(only_a: int, only_b: int, both: int, neither: int):
    a = np.array([1] * only_a + [0] * only_b + [1] * both + [0] * neither, dtype=bool)
    b = np.array([0] * only_a + [1] * only_b + [1] * both + [0] * neither, dtype=bool)
    return a, b


def test_mcnemar_exact_on_a_constructed_pair():
    a, b = _pair(only_a=3, only_b=12, both=800, neither=57)
    result = stats.paired_comparison(a, b)
    # two-sided exact: 2 * P(X >= 12), X ~ Binomial(15, 1/2) = 2 * (455 + 105 + 15 + 1) / 2^15
    assert result.p_value == pytest.approx(2 * 576 / 2**15)
    assert result.p_value == pytest.approx(scipy_stats.binomtest(12, 15).pvalue)
    assert (result.only_a, result.only_b) == (3, 12)
    assert result.difference == pytest.approx(9 / 872 * 100)
    assert result.interval.low > 0  # nine rows' worth of gain, a difference the bootstrap resolves
    assert "fast ahead" in result.verdict("plain", "fast")
    # correctness given as 0/1 numbers compares the same as booleans
    assert stats.paired_comparison(a.astype(float), b.astype(float)) == result


def test_a_small_difference_is_no_evidence():
    a, b = _pair(only_a=10, only_b=12, both=780, neither=70)
    result = stats.paired_comparison(a, b)
    assert result.interval.low < 0 < result.interval.high
    assert result.verdict("plain", "fast").startswith("fast vs plain: +0.23 points, 95% interval [")
    # McNemar p = binomtest(12, 22).pvalue = 0.83181
    assert result.verdict("plain", "fast").endswith(
        "]: no evidence of a difference (McNemar p = 0.832, 12 rows only fast gets right, 10 only plain)"
    )
    # the bootstrap interval of a mean difference of +-1 values is about 1.96 sd / sqrt(n)
    sd = np.std((b.astype(float) - a) * 100)
    assert result.interval.high - result.interval.low == pytest.approx(2 * 1.96 * sd / math.sqrt(872), rel=0.15)


def test_identical_predictions_compare_as_equal():
    a, _ = _pair(only_a=0, only_b=0, both=800, neither=72)
    result = stats.paired_comparison(a, a)
    assert result.difference == 0 and result.p_value == 1.0 and result.interval == stats.Interval(0.0, 0.0)
    assert result.verdict("plain", "fast") == (
        "fast vs plain: +0.00 points, 95% interval [+0.00, +0.00]: no evidence of a difference "
        "(McNemar p = 1, 0 rows only fast gets right, 0 only plain)"
    )


@pytest.mark.parametrize(
    "only_a, only_b, opening, evidence",
    [
        (0, 8, "fast vs plain: +0.92 points", "fast ahead"),  # 8 rows of 872: ahead by under a point
        (8, 0, "fast vs plain: -0.92 points", "fast behind"),
    ],
)
def test_verdict_says_which_model_is_ahead(only_a, only_b, opening, evidence):
    result = stats.paired_comparison(*_pair(only_a=only_a, only_b=only_b, both=800, neither=64))
    verdict = result.verdict("plain", "fast")
    # McNemar p: all 8 discordant rows one way, 2 / 2^8 = 0.0078125
    assert verdict.startswith(f"{opening}, 95% interval [")
    assert verdict.endswith(
        f"]: {evidence} (McNemar p = 0.00781, {only_b} rows only fast gets right, {only_a} only plain)"
    )


@pytest.mark.parametrize(
    "options, scipy_options",
    [
        ({}, {"confidence_level": 0.95, "n_resamples": 10_000, "rng": 0}),
        ({"confidence": 0.9, "resamples": 2000, "seed": 3}, {"confidence_level": 0.9, "n_resamples": 2000, "rng": 3}),
    ],
)
def test_paired_interval_is_the_reproducible_percentile_bootstrap(options, scipy_options):
    # by default 10,000 resamples seeded with 0, so a rerun reproduces the interval; 60 rows keep the bootstrap
    # distribution coarse enough that the settings move its percentiles
    a, b = _pair(only_a=8, only_b=3, both=49, neither=0)
    diff = (b.astype(float) - a) * 100
    expected = scipy_stats.bootstrap((diff,), np.mean, method="percentile", **scipy_options).confidence_interval
    interval = stats.paired_comparison(a, b, **options).interval
    assert (interval.low, interval.high) == pytest.approx((expected.low, expected.high), abs=1e-9)


@pytest.mark.parametrize("a, b", [([1, 0, 1], [1, 0]), ([], []), ([[1, 0], [0, 1]], [[1, 0], [0, 1]])])
def test_unpaired_rows_are_refused(a, b):
    with pytest.raises(ValueError, match="equal, non-empty 1-d arrays"):
        stats.paired_comparison(a, b)


def test_mean_over_seeds_has_the_t_interval():
    mean, interval = stats.mean_interval([0.1, 0.3, -0.2, 0.5])
    sem = np.std([0.1, 0.3, -0.2, 0.5], ddof=1) / 2
    assert mean == pytest.approx(0.175)
    assert interval.high - mean == pytest.approx(scipy_stats.t.ppf(0.975, 3) * sem)
    assert mean - interval.low == pytest.approx(scipy_stats.t.ppf(0.975, 3) * sem)
    # two seeds already have an interval: sd 0.7071, sem 0.5, t(0.975, 1 df) = 12.7062, 1.5 +- 6.3531
    mean, interval = stats.mean_interval([1.0, 2.0])
    assert mean == 1.5 and (interval.low, interval.high) == pytest.approx((-4.853102, 7.853102), abs=1e-6)
    assert stats.mean_interval([0.4]) == (0.4, None)
    assert stats.mean_interval([True, True, False])[0] == pytest.approx(2 / 3)  # a pass rate over seeds
    assert stats.mean_interval([0.0, 0.0, 0.0]) == (0.0, stats.Interval(0.0, 0.0))


def test_mlperf_time_drops_the_fastest_and_slowest_of_five_or_more():
    assert stats.mlperf_mean([5, 1, 3, 4, 10]) == 4.0
    assert stats.mlperf_mean([2, 4]) == 3.0 and stats.mlperf_mean([]) is None
