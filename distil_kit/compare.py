"""Paired comparisons of runs scored on the same dev rows: two runs, or two sets of runs paired by seed.

Two models scored on the same 872 sentences are compared row by row (their errors are correlated, so a paired
test sees far smaller differences than two separate intervals would). Over seeds, each seed's pair gives one
difference and the seeds give its spread. ``no_loss_beyond`` is the kit's rule for "B is as accurate as A".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import stats
from .errors import KitError
from .records import Run

MARGIN_POINTS = 1.0  # the loss of accuracy, in points, a faster configuration may not be shown to exceed


def correct_rows(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(dev idx, correct?) of a run's predictions, in idx order."""
    p = run.predictions.sort_values("idx")
    return p.idx.to_numpy(), (p.pred == p.label).to_numpy()


def paired(a: Run, b: Run) -> stats.PairedComparison:
    """Run ``b`` against run ``a`` on their common dev rows, which must be all of each run's rows."""
    (idx_a, ok_a), (idx_b, ok_b) = correct_rows(a), correct_rows(b)
    if not np.array_equal(idx_a, idx_b):
        raise KitError(
            f"{b.folder} and {a.folder} were scored on different dev rows ({len(idx_b)} and {len(idx_a)}); a paired "
            f"comparison needs the same rows"
        )
    return stats.paired_comparison(ok_a, ok_b)


@dataclass(frozen=True)
class SeedComparison:
    """B - A in accuracy points, one difference per seed, with the mean's t interval over seeds."""

    seeds: list[int]
    differences: list[float]
    mean: float
    interval: stats.Interval | None

    def verdict(self, a: str, b: str, margin: float = MARGIN_POINTS) -> str:
        n = len(self.seeds)
        if self.interval is None:
            return f"{b} vs {a}: {self.mean:+.2f} points at one seed: too few seeds for an interval"
        ok = no_loss_beyond(self.interval, margin)
        evidence = "no evidence of a difference" if not self.interval.excludes(0) else f"{b} differs"
        rule = f"a loss of more than {margin:g} point(s) is {'excluded' if ok else 'not excluded'}"
        return (
            f"{b} vs {a}: {self.mean:+.2f} points on the mean over {n} seeds, 95% interval "
            f"[{self.interval.low:+.2f}, {self.interval.high:+.2f}]: {evidence}; {'PASS' if ok else 'FAIL'} ({rule})"
        )


def paired_over_seeds(runs_a: list[Run], runs_b: list[Run]) -> SeedComparison:
    """Runs of configuration B against those of A, paired by seed (each seed once on each side)."""
    by_seed_a, by_seed_b = ({r.config["seed"]: r for r in runs} for runs in (runs_a, runs_b))
    if len(by_seed_a) != len(runs_a) or len(by_seed_b) != len(runs_b):
        raise KitError("paired over seeds: a seed appears twice on one side")
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    if not seeds:
        raise KitError(f"paired over seeds: no seed in common ({sorted(by_seed_a)} and {sorted(by_seed_b)})")
    differences = [paired(by_seed_a[s], by_seed_b[s]).difference for s in seeds]
    mean, interval = stats.mean_interval(differences)
    return SeedComparison(seeds, differences, mean, interval)


def no_loss_beyond(interval: stats.Interval, margin: float = MARGIN_POINTS) -> bool:
    """B passes against A when the 95% interval of B - A (points) lies above -``margin``."""
    return interval.low > -margin


def in_words(runs_a: list[Run], runs_b: list[Run], a: str = "A", b: str = "B") -> list[str]:
    """The comparison of B's runs against A's in plain words, a line each: the paired difference of each pair
    (one run a side, or one per seed), then, over several seeds, the mean difference's interval and the rule's
    verdict (``no_loss_beyond``)."""
    if len(runs_a) == 1 and len(runs_b) == 1:
        result = paired(runs_a[0], runs_b[0])
        rule = "PASS" if no_loss_beyond(result.interval) else "FAIL"
        return [
            f"{result.verdict(a, b)}; {rule} (a loss of more than {MARGIN_POINTS:g} point(s) "
            f"{'excluded' if rule == 'PASS' else 'not excluded'})"
        ]
    over = paired_over_seeds(runs_a, runs_b)
    by_seed_a, by_seed_b = ({r.config["seed"]: r for r in runs} for runs in (runs_a, runs_b))
    lines = [f"seed {s}: {paired(by_seed_a[s], by_seed_b[s]).verdict(a, b)}" for s in over.seeds]
    return [*lines, over.verdict(a, b)]
