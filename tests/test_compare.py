"""Paired comparisons of runs on constructed prediction files."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from distil_kit import compare, stats
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


def test_differences_either_way_over_seeds_are_no_evidence(tmp_path):
    runs_a, runs_b = [], []
    for seed, change in enumerate([+2, -1, +1]):  # fast gets 2 rows more right, 1 fewer, 1 more
        a = np.ones(ROWS, dtype=bool)
        a[:10] = False
        b = a.copy()
        if change > 0:
            b[:change] = True
        else:
            b[20 : 20 - change] = False
        runs_a.append(_run(tmp_path / f"a{seed}", a, seed))
        runs_b.append(_run(tmp_path / f"b{seed}", b, seed))
    # +0.229, -0.115, +0.115 points: mean 0.076, sd 0.175, t(0.975, 2 df) 4.303: 0.076 +- 0.435
    assert compare.paired_over_seeds(runs_a, runs_b).verdict("plain", "fast") == (
        "fast vs plain: +0.08 points on the mean over 3 seeds, 95% interval [-0.36, +0.51]: no evidence of a "
        "difference; PASS (a loss of more than 1 point(s) is excluded)"
    )


def _losing_runs(tmp_path, seeds=range(3)) -> tuple[list[Run], list[Run]]:
    """Plain gets every row right; fast gets 20 + seed rows wrong, losing 2.29-2.52 points at each seed."""
    runs_a, runs_b = [], []
    for seed in seeds:
        a = np.ones(ROWS, dtype=bool)
        b = a.copy()
        b[: 20 + seed] = False
        runs_a.append(_run(tmp_path / f"a{seed}", a, seed))
        runs_b.append(_run(tmp_path / f"b{seed}", b, seed))
    return runs_a, runs_b


def test_the_rule_fails_a_loss(tmp_path):
    result = compare.paired_over_seeds(*_losing_runs(tmp_path))
    assert not compare.no_loss_beyond(result.interval)
    assert "fast differs; FAIL (a loss of more than 1 point(s) is not excluded)" in result.verdict("plain", "fast")
    interval, passed, sentence = compare.judged(result.pairs, "plain", "fast")
    assert interval == result.interval and not passed and sentence == result.verdict("plain", "fast")
    # the t interval over the 3 seeds, about [-2.70, -2.12], lies above -3: a 3-point margin passes it
    interval, passed, sentence = compare.judged(result.pairs, "plain", "fast", margin=3)
    assert passed and sentence.startswith("fast vs plain: -2.41 points on the mean over 3 seeds, 95% interval [")
    assert sentence.endswith("]: fast differs; PASS (a loss of more than 3 point(s) is excluded)")


def test_one_seed_is_judged_on_its_paired_bootstrap_interval(tmp_path):
    a = np.ones(ROWS, dtype=bool)
    b = a.copy()
    b[:8] = False  # 8 rows only plain gets right
    a[8:10] = False  # 2 only fast: fast loses 6 rows, 0.69 points
    result = compare.paired(_run(tmp_path / "a", a), _run(tmp_path / "b", b))
    assert -2 < result.interval.low < -1
    interval, passed, sentence = compare.judged({0: result}, "plain", "fast")
    assert interval == result.interval and not passed
    assert sentence == f"{result.verdict('plain', 'fast')}; FAIL (a loss of more than 1 point(s) is not excluded)"
    interval, passed, sentence = compare.judged({0: result}, "plain", "fast", margin=2)
    assert passed and sentence.endswith("; PASS (a loss of more than 2 point(s) is excluded)")


@pytest.mark.parametrize(
    "low, margin, words",
    [
        (-0.99, 1.0, "PASS (a loss of more than 1 point(s) is excluded)"),
        (-1.0, 1.0, "FAIL (a loss of more than 1 point(s) is not excluded)"),  # a loss of exactly the margin
        (-1.5, 2.0, "PASS (a loss of more than 2 point(s) is excluded)"),
    ],
)
def test_the_rule_passes_an_interval_wholly_above_minus_the_margin(low, margin, words):
    interval = stats.Interval(low, 0.5)
    assert compare.no_loss_beyond(interval, margin) == words.startswith("PASS")
    assert compare.rule(interval, margin) == words


def test_two_single_runs_in_words_whatever_their_seeds(tmp_path):
    runs_a, runs_b = _losing_runs(tmp_path, seeds=[0, 1])
    result = compare.paired(runs_a[0], runs_b[1])  # fast loses 21 rows: 2.41 points
    assert compare.in_words(runs_a[:1], runs_b[1:]) == [
        f"{result.verdict('A', 'B')}; FAIL (a loss of more than 1 point(s) is not excluded)"
    ]
    assert result.verdict("A", "B").startswith("B vs A: -2.41 points")


def test_runs_over_seeds_in_words_give_each_seed_then_the_verdict(tmp_path):
    runs_a, runs_b = _losing_runs(tmp_path, seeds=[0, 1])
    over = compare.paired_over_seeds(runs_a, runs_b)
    assert compare.in_words(runs_a, runs_b[::-1], "plain", "fast") == [
        f"seed 0: {over.pairs[0].verdict('plain', 'fast')}",
        f"seed 1: {over.pairs[1].verdict('plain', 'fast')}",
        over.verdict("plain", "fast"),
    ]
    assert over.pairs[0].verdict("plain", "fast").startswith("fast vs plain: -2.29 points")
    # one run of plain against two of fast: paired by seed, so seed 0's pair alone, judged on its rows
    assert compare.in_words(runs_a[:1], runs_b[::-1], "plain", "fast") == [
        compare.judged({0: over.pairs[0]}, "plain", "fast")[2]
    ]


def test_seeds_must_be_in_common_and_once_a_side(tmp_path):
    a = _run(tmp_path / "a", np.ones(ROWS, dtype=bool), seed=0)
    b = _run(tmp_path / "b", np.ones(ROWS, dtype=bool), seed=1)
    with pytest.raises(KitError, match=r"no seed in common \(\[0\] and \[1\]\)"):
        compare.paired_over_seeds([a], [b])
    with pytest.raises(KitError, match=r"^paired over seeds: a seed appears twice on one side$"):
        compare.paired_over_seeds([a, a], [_run(tmp_path / "b0", np.ones(ROWS, dtype=bool), seed=0)])
