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


def test_wilson_interval_stays_inside_zero_and_one():
    assert stats.proportion(0, 5).interval.low == 0.0
    every = stats.proportion(5, 5)
    assert every.interval.high == pytest.approx(1.0) and every.interval.low == pytest.approx(0.5655, abs=1e-4)


@pytest.mark.parametrize("target, total, needed", [(0.91, 872, 794), (0.5, 872, 436), (0.9, 10, 9), (1.0, 872, 872)])
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


def test_a_small_difference_is_no_evidence():
    a, b = _pair(only_a=10, only_b=12, both=780, neither=70)
    result = stats.paired_comparison(a, b)
    assert result.interval.low < 0 < result.interval.high
    assert result.verdict("plain", "fast").startswith("fast vs plain: +0.23 points, 95% interval [")
    assert "no evidence of a difference" in result.verdict("plain", "fast")
    # the bootstrap interval of a mean difference of +-1 values is about 1.96 sd / sqrt(n)
    sd = np.std((b.astype(float) - a) * 100)
    assert result.interval.high - result.interval.low == pytest.approx(2 * 1.96 * sd / math.sqrt(872), rel=0.15)


def test_identical_predictions_compare_as_equal():
    a, _ = _pair(only_a=0, only_b=0, both=800, neither=72)
    result = stats.paired_comparison(a, a)
    assert result.difference == 0 and result.p_value == 1.0 and not result.interval.excludes(0)


def test_unpaired_rows_are_refused():
    with pytest.raises(ValueError, match="equal, non-empty 1-d arrays"):
        stats.paired_comparison([1, 0, 1], [1, 0])


def test_mean_over_seeds_has_the_t_interval():
    mean, interval = stats.mean_interval([0.1, 0.3, -0.2, 0.5])
    sem = np.std([0.1, 0.3, -0.2, 0.5], ddof=1) / 2
    assert mean == pytest.approx(0.175)
    assert interval.high - mean == pytest.approx(scipy_stats.t.ppf(0.975, 3) * sem)
    assert stats.mean_interval([0.4]) == (0.4, None)
    assert stats.mean_interval([0.0, 0.0, 0.0]) == (0.0, stats.Interval(0.0, 0.0))


def test_mlperf_time_drops_the_fastest_and_slowest_of_five_or_more():
    assert stats.mlperf_mean([5, 1, 3, 4, 10]) == 4.0
    assert stats.mlperf_mean([2, 4]) == 3.0 and stats.mlperf_mean([]) is None
