"""Paired comparisons of runs scored on the same dev rows: two runs, or two sets of runs paired by seed.

Two models scored on the same 872 sentences are compared row by row (their errors are correlated, so a paired
test sees far smaller differences than two separate intervals would). Over seeds, each seed's pair gives one
difference and the seeds give its spread. ``no_loss_beyond`` is the kit's rule for "B is as accurate as A";
``judged`` applies it to one pair or to several seeds.
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
    """B - A in accuracy points over seeds: each seed's paired comparison, and the mean difference's t interval."""

    pairs: dict[int, stats.PairedComparison]  # seed: B vs A on that seed's runs

    @property
    def seeds(self) -> list[int]:
        return sorted(self.pairs)

    @property
    def differences(self) -> list[float]:
        return [self.pairs[s].difference for s in self.seeds]

    @property
    def mean(self) -> float:
        return stats.mean_interval(self.differences)[0]

    @property
    def interval(self) -> stats.Interval | None:
        """None at one seed: one difference has no spread."""
        return stats.mean_interval(self.differences)[1]

    def verdict(self, a: str, b: str, margin: float = MARGIN_POINTS) -> str:
        interval = self.interval
        if interval is None:
            return f"{b} vs {a}: {self.mean:+.2f} points at one seed: too few seeds for an interval"
        evidence = "no evidence of a difference" if not interval.excludes(0) else f"{b} differs"
        return (
            f"{b} vs {a}: {self.mean:+.2f} points on the mean over {len(self.pairs)} seeds, 95% interval "
            f"[{interval.low:+.2f}, {interval.high:+.2f}]: {evidence}; {rule(interval, margin)}"
        )


def paired_over_seeds(runs_a: list[Run], runs_b: list[Run]) -> SeedComparison:
    """Runs of configuration B against those of A, paired by seed (each seed once on each side)."""
    by_seed_a, by_seed_b = ({r.config["seed"]: r for r in runs} for runs in (runs_a, runs_b))
    if len(by_seed_a) != len(runs_a) or len(by_seed_b) != len(runs_b):
        raise KitError("paired over seeds: a seed appears twice on one side")
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    if not seeds:
        raise KitError(f"paired over seeds: no seed in common ({sorted(by_seed_a)} and {sorted(by_seed_b)})")
    return SeedComparison({s: paired(by_seed_a[s], by_seed_b[s]) for s in seeds})


def no_loss_beyond(interval: stats.Interval, margin: float = MARGIN_POINTS) -> bool:
    """B passes against A when the 95% interval of B - A (points) lies above -``margin``."""
    return interval.low > -margin


def rule(interval: stats.Interval, margin: float = MARGIN_POINTS) -> str:
    """``no_loss_beyond`` in words: PASS or FAIL, and why."""
    ok = no_loss_beyond(interval, margin)
    excluded = "excluded" if ok else "not excluded"
    return f"{'PASS' if ok else 'FAIL'} (a loss of more than {margin:g} point(s) is {excluded})"


def judged(pairs: dict[int, stats.PairedComparison], a: str, b: str, margin: float = MARGIN_POINTS):
    """The rule on B vs A: at one seed its paired bootstrap interval over the dev rows, over several the mean
    difference's t interval over seeds. Returns (interval, passed, the verdict in words)."""
    if len(pairs) == 1:
        (result,) = pairs.values()
        interval, sentence = result.interval, result.verdict(a, b)
        return interval, no_loss_beyond(interval, margin), f"{sentence}; {rule(interval, margin)}"
    over = SeedComparison(pairs)
    return over.interval, no_loss_beyond(over.interval, margin), over.verdict(a, b, margin)


def in_words(runs_a: list[Run], runs_b: list[Run], a: str = "A", b: str = "B") -> list[str]:
    """The comparison of B's runs against A's in plain words, a line each: over several seeds each seed's paired
    difference first; then the verdict (``judged``)."""
    if len(runs_a) == 1 and len(runs_b) == 1:
        pairs = {runs_b[0].config["seed"]: paired(runs_a[0], runs_b[0])}
    else:
        pairs = paired_over_seeds(runs_a, runs_b).pairs
    lines = [f"seed {s}: {p.verdict(a, b)}" for s, p in sorted(pairs.items())] if len(pairs) > 1 else []
    return [*lines, judged(pairs, a, b)[2]]
