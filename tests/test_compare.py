"""Paired comparisons of runs on constructed prediction files."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from distil_kit import compare
from distil_kit.errors import KitError
from distil_kit.records import Run

ROWS = 872


def _run(folder, correct: np.ndarray, seed: int = 0) -> Run:
    """A run folder holding what a paired comparison reads: predictions.csv (and the seed in config.json)."""
    folder.mkdir(parents=True)
    label = np.arange(len(correct)) % 2
    pred = np.where(correct, label, 1 - label)
    frame = pd.DataFrame(
        {
            "idx": np.arange(len(correct)),
            "sentence": "a film",
            "label": label,
            "pred": pred,
            "prob_pos": pred * 0.8 + 0.1,
        }
    )
    frame.sample(frac=1, random_state=seed).to_csv(folder / "predictions.csv", index=False)  # any row order
    (folder / "config.json").write_text(
        json.dumps({"model": "m", "precision": "fp32", "seed": seed, "target_acc": 0.91})
    )
    return Run(folder)


def test_two_runs_compare_row_by_row(tmp_path):
    a = np.ones(ROWS, dtype=bool)
    a[:80] = False  # 792 correct
    b = a.copy()
    b[:12] = True  # 12 rows only b gets right
    b[100:103] = False  # 3 only a
    result = compare.paired(_run(tmp_path / "a", a), _run(tmp_path / "b", b))
    assert (result.only_a, result.only_b) == (3, 12)
    assert result.difference == pytest.approx(9 / ROWS * 100)
    assert result.p_value == pytest.approx(scipy_stats.binomtest(12, 15).pvalue)


def test_runs_on_other_dev_rows_are_not_paired(tmp_path):
    a = _run(tmp_path / "a", np.ones(ROWS, dtype=bool))
    b = _run(tmp_path / "b", np.ones(ROWS - 1, dtype=bool))
    with pytest.raises(KitError, match="were scored on different dev rows"):
        compare.paired(a, b)


def test_seeds_pair_and_the_rule_passes_a_small_difference(tmp_path):
    rng = np.random.default_rng(0)
    runs_a, runs_b, expected = [], [], []
    for seed in range(5):
        a = rng.random(ROWS) < 0.9
        b = a.copy()
        flip = rng.choice(ROWS, 6, replace=False)  # a few rows change, either way
        b[flip] = ~b[flip]
        runs_a.append(_run(tmp_path / f"a{seed}", a, seed))
        runs_b.append(_run(tmp_path / f"b{seed}", b, seed))
        expected.append((b.sum() - a.sum()) / ROWS * 100)
    result = compare.paired_over_seeds(runs_a, runs_b[::-1])  # pairs by seed, not by position
    assert result.seeds == [0, 1, 2, 3, 4] and result.differences == pytest.approx(expected)
    t = scipy_stats.ttest_1samp(expected, 0).confidence_interval()
    assert (result.interval.low, result.interval.high) == pytest.approx((t.low, t.high))
    assert compare.no_loss_beyond(result.interval)
    assert "PASS (a loss of more than 1 point(s) is excluded)" in result.verdict("plain", "fast")


def test_the_rule_fails_a_loss(tmp_path):
    runs_a, runs_b = [], []
    for seed in range(3):
        a = np.ones(ROWS, dtype=bool)
        b = a.copy()
        b[: 20 + seed] = False  # fast loses 2.3-2.5 points at every seed
        runs_a.append(_run(tmp_path / f"a{seed}", a, seed))
        runs_b.append(_run(tmp_path / f"b{seed}", b, seed))
    result = compare.paired_over_seeds(runs_a, runs_b)
    assert not compare.no_loss_beyond(result.interval)
    assert "fast differs; FAIL (a loss of more than 1 point(s) is not excluded)" in result.verdict("plain", "fast")


def test_seeds_in_common_are_needed(tmp_path):
    a = _run(tmp_path / "a", np.ones(ROWS, dtype=bool), seed=0)
    b = _run(tmp_path / "b", np.ones(ROWS, dtype=bool), seed=1)
    with pytest.raises(KitError, match=r"no seed in common \(\[0\] and \[1\]\)"):
        compare.paired_over_seeds([a], [b])
