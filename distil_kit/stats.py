"""The statistics behind the kit's verdicts, from scipy: accuracies as counts with Wilson intervals, paired
comparisons of two models on the same dev rows (bootstrap interval, McNemar's exact test), and summaries over seeds.

One run's dev accuracy is a count out of 872 sentences: its sampling error alone is about a point at 0.91, so a
single run's pass or fail near the target says little without its interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def excludes(self, value: float) -> bool:
        return not self.low <= value <= self.high


@dataclass(frozen=True)
class Proportion:
    """``k`` of ``n`` with its Wilson interval: a dev accuracy, or a pass rate over seeds."""

    k: int
    n: int
    interval: Interval

    @property
    def value(self) -> float:
        return self.k / self.n

    def __str__(self) -> str:
        return f"{self.value:.4f} ({self.k}/{self.n}, 95% interval {self.interval.low:.4f}-{self.interval.high:.4f})"


def proportion(k: int, n: int, confidence: float = CONFIDENCE) -> Proportion:
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence, method="wilson")
    return Proportion(int(k), int(n), Interval(float(ci.low), float(ci.high)))


def correct_needed(target: float, total: int) -> int:
    """The fewest correct rows whose accuracy reaches ``target`` (0.91 of 872: 794)."""
    return math.ceil(round(target * total, 9))


@dataclass(frozen=True)
class PairedComparison:
    """Model B against model A on the same rows: B's accuracy minus A's, in points."""

    difference: float
    interval: Interval  # paired bootstrap over rows
    only_a: int  # rows A gets right and B wrong
    only_b: int
    p_value: float  # McNemar's exact test: the discordant rows split as a fair coin would

    def verdict(self, a: str, b: str) -> str:
        sign = "+" if self.difference >= 0 else ""
        evidence = (
            "no evidence of a difference"
            if not self.interval.excludes(0.0)
            else f"{b} {'ahead' if self.difference > 0 else 'behind'}"
        )
        return (
            f"{b} vs {a}: {sign}{self.difference:.2f} points, 95% interval [{self.interval.low:+.2f}, "
            f"{self.interval.high:+.2f}]: {evidence} (McNemar p = {self.p_value:.3g}, {self.only_b} rows only {b} "
            f"gets right, {self.only_a} only {a})"
        )


def paired_comparison(
    correct_a, correct_b, confidence: float = CONFIDENCE, resamples: int = 10_000, seed: int = 0
) -> PairedComparison:
    """``correct_a``, ``correct_b``: per-row correctness of two models over the same rows, in the same order."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or not a.size:
        raise ValueError(f"paired rows: expected two equal, non-empty 1-d arrays, got shapes {a.shape} and {b.shape}")
    diff = (b.astype(float) - a.astype(float)) * 100
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    if only_a == only_b == 0:  # the models agree on every row: nothing to resample
        interval, p_value = Interval(0.0, 0.0), 1.0
    else:
        boot = stats.bootstrap(
            (diff,), np.mean, confidence_level=confidence, n_resamples=resamples, method="percentile", rng=seed
        )
        interval = Interval(float(boot.confidence_interval.low), float(boot.confidence_interval.high))
        p_value = float(stats.binomtest(only_b, only_a + only_b, 0.5).pvalue)
    return PairedComparison(float(diff.mean()), interval, only_a, only_b, p_value)


def mean_interval(values, confidence: float = CONFIDENCE) -> tuple[float, Interval | None]:
    """The mean over seeds with its t interval (None for fewer than two values)."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float(values.mean()), None
    if np.ptp(values) == 0:  # no spread over the seeds: exactly the value (scipy gives a point or float noise)
        return float(values[0]), Interval(float(values[0]), float(values[0]))
    ci = stats.ttest_1samp(values, 0.0).confidence_interval(confidence)
    return float(values.mean()), Interval(float(ci.low), float(ci.high))


def mlperf_mean(times) -> float | None:
    """MLPerf's time to train over seeds: the fastest and the slowest dropped, the rest averaged (all of them when
    fewer than five)."""
    times = sorted(float(t) for t in times)
    if not times:
        return None
    kept = times[1:-1] if len(times) >= 5 else times
    return float(np.mean(kept))
