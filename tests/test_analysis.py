"""Analysis: run folders read back, tables, figures, the report and the analysis notebook.

Run folders are written here by ``write_run`` following docs/run-folder.md, with plausible values.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distil_kit import analysis, plots, records, reference, report, stats
from distil_kit.data import Split
from distil_kit.errors import KitError
from distil_kit.report import write_report

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("loss", "accuracy", "throughput", "flagperf", "confusion", "calibration", "accuracy_by_length", "seeds")
TABLES = ("comparison", "seeds", "configs", "confidently_wrong", "accuracy_by_length")
WORDS = "the a film movie is not good bad quite charming dull and but with its story acting funny".split()


def write_run(
    folder: Path,
    *,
    model="distilbert-base-uncased",
    precision="fp32",
    batch=32,
    device="cpu",
    seed=0,
    epochs=3,
    skill=0.9,
    speed=40.0,
    dev_rows=80,
) -> Path:
    """A finished run folder with the contract's files, columns and keys; values depend on ``seed``."""
    rng = np.random.default_rng(seed + 1000 * int(skill * 100) + batch)
    folder.mkdir(parents=True)
    config = {
        "model": model,
        "data_dir": "data/sst2",
        "epochs": epochs,
        "train_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "precision": precision,
        "seed": seed,
        "target_acc": 0.91,
        "fast": False,
        "bucket_batches": False,
        "compile": False,
        "output_dir": str(folder),
    }
    steps_per_epoch = 20
    step = np.arange(1, epochs * steps_per_epoch + 1, 2)
    samples_per_s = speed * (1 + 0.05 * rng.standard_normal(len(step)))
    steps = pd.DataFrame(
        {
            "step": step,
            "epoch": step / steps_per_epoch,
            "loss": 0.7 * np.exp(-step / 15) + 0.15 + 0.05 * rng.random(len(step)),
            "lr": 5e-5 * (1 - step / (epochs * steps_per_epoch)),
            "samples_per_s": samples_per_s,
            "tokens_per_s": samples_per_s * 25,
            "elapsed_s": step * batch / speed,
        }
    )
    accuracy = np.concatenate([[0.5], skill - 0.05 / np.arange(1, epochs + 1) + 0.01 * rng.standard_normal(epochs)])
    correct = np.round(accuracy * 872).astype(int)  # counts out of the 872 dev sentences
    accuracy = correct / 872
    intervals = [stats.proportion(k, 872).interval for k in correct]
    train_s = np.arange(epochs + 1) * steps_per_epoch * batch / speed * 1.05
    evals = pd.DataFrame(
        {
            "epoch": np.arange(epochs + 1),
            "step": np.arange(epochs + 1) * steps_per_epoch,
            "accuracy": accuracy,
            "correct": correct,
            "total": 872,
            "acc_low": [i.low for i in intervals],
            "acc_high": [i.high for i in intervals],
            "eval_s": 2.0,
            "train_s": train_s,
        }
    )
    label = rng.integers(0, 2, dev_rows)
    prob_pos = np.clip(
        np.where(rng.random(dev_rows) < skill, label, 1 - label) * 0.8 + 0.1 + 0.1 * rng.standard_normal(dev_rows),
        0,
        1,
    )
    sentences = [" ".join(rng.choice(WORDS, rng.integers(2, 45))) for _ in range(dev_rows)]
    predictions = pd.DataFrame(
        {
            "idx": np.arange(dev_rows),
            "sentence": sentences,
            "label": label,
            "pred": (prob_pos >= 0.5).astype(int),
            "prob_pos": prob_pos,
        }
    )
    reached = np.flatnonzero(accuracy >= config["target_acc"])
    e2e, train_time = train_s[-1] + 30, train_s[-1]
    samples = epochs * steps_per_epoch * batch
    summary = {
        "e2e_time": e2e,
        "train_time": train_time,
        "train_no_eval_time": train_time * 0.95,
        "pure_training_computing_time": train_time * 0.8,
        "throughput(ips)_raw": samples / train_time,
        "throughput(ips)_no_eval": samples / (train_time * 0.95),
        "throughput(ips)_pure_compute": samples / (train_time * 0.8),
        "converged": bool(reached.size),
        "acc": float(accuracy[-1]),
        "acc_correct": int(correct[-1]),
        "dev_rows": 872,
        "acc_interval": [intervals[-1].low, intervals[-1].high],
        "target_correct": stats.correct_needed(config["target_acc"], 872),
        "best_acc": float(accuracy.max()),
        "epochs_run": epochs,
        "steps": int(step[-1]),
        "time_to_target": float(train_s[reached[0]]) if reached.size else None,
        "train_samples": samples,
        "train_tokens": samples * 25,
        "tokens_per_s": speed * 25,
        "peak_memory_gib": 1.5 + batch / 32,
        "compile_time": 0.0,
        "global_batch_size": batch,
        "world_size": 1,
        "status": "finished",
    }
    manifest = {
        "python": "3.11",
        "torch": "2.13",
        "transformers": "5.0",
        "cuda": None,
        "device": "cpu",
        "device_name": device,
        "device_count": 1,
        "cpu": "test cpu",
        "git_commit": "0" * 40,
        "data_files": {},
        "model_weights": {},
        "vocab_sha256": "0" * 64,
        "seed": seed,
        "command": "test",
        "world_size": 1,
        "nodes": 1,
        "backend": None,
        "created": "2025-01-01T00:00:00",
    }
    for name, obj in (("config.json", config), ("summary.json", summary), ("manifest.json", manifest)):
        (folder / name).write_text(json.dumps(obj, indent=2))
    for name, frame in (("steps.csv", steps), ("evals.csv", evals), ("predictions.csv", predictions)):
        frame.to_csv(folder / name, index=False)
    return folder


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    """Two configurations, the first repeated with seeds 1 and 2, and one unfinished run."""
    root = tmp_path_factory.mktemp("runs")
    write_run(root / "a-seed0", seed=0)
    write_run(root / "b-bf16", precision="bf16", batch=64, skill=0.95, speed=90.0)
    write_run(root / "a-seed1", seed=1)
    write_run(root / "a-seed2", seed=2)
    (root / "c-unfinished").mkdir()
    (root / "c-unfinished" / "config.json").write_text("{}")
    return root


@pytest.fixture(scope="module")
def runs(run_root) -> list[records.Run]:
    return records.find_runs([run_root / "a-seed0", run_root / "b-bf16", run_root / "a-seed1", run_root / "a-seed2"])


@pytest.fixture(scope="module")
def figures(runs):
    return plots.figures(runs)


# --- reading --------------------------------------------------------------------------------------------------


def test_run_reads_the_contract(run_root):
    run = records.Run.read(run_root / "a-seed0")
    for name, columns in records.CSV_COLUMNS.items():
        frame = getattr(run, name.removesuffix(".csv"))
        assert list(frame.columns) == list(columns)
        assert pd.read_csv(run_root / "a-seed0" / name).equals(frame)
    assert run.summary == json.loads((run_root / "a-seed0" / "summary.json").read_text())
    assert analysis.run_label(run) == "distilbert-base-uncased, fp32, batch 32, cpu"


def test_find_runs_expands_globs_keeps_finished_runs_once(run_root):
    runs = records.find_runs([str(run_root / "a-*"), run_root / "a-seed1", str(run_root / "*")])
    assert [r.folder.name for r in runs] == ["a-seed0", "a-seed1", "a-seed2", "b-bf16"]
    with pytest.raises(KitError, match="matches no finished run folder"):
        records.find_runs([str(run_root / "c-*")])


def test_find_runs_says_where_a_relative_pattern_looked(run_root):
    assert [r.folder for r in records.find_runs(["b-*"], base=run_root)] == [run_root / "b-bf16"]
    with pytest.raises(KitError, match=f"c-\\*: matches no finished run folder .* under {run_root.resolve()}$"):
        records.find_runs(["c-*"], base=run_root)
    with pytest.raises(KitError, match="no runs given"):
        records.find_runs([])
    with pytest.raises(TypeError, match="a list"):
        records.find_runs(str(run_root / "*"))


def test_unfinished_run_is_named(run_root):
    with pytest.raises(KitError, match=r"summary.json: file not found; the run is unfinished"):
        records.Run.read(run_root / "c-unfinished")


def test_tables_take_what_finetune_returns(run_root):
    run = records.Run(run_root / "b-bf16")  # as finetune returns it: each file read on first use
    assert run.config["precision"] == "bf16"
    assert analysis.comparison_table([run], published=False).run.tolist() == [str(run_root / "b-bf16")]


def test_labels_tell_repeated_configurations_apart(runs):
    labels = analysis.run_labels(runs)
    assert labels[0] == "distilbert-base-uncased, fp32, batch 32, cpu [a-seed0]"
    assert labels[1] == "distilbert-base-uncased, bf16, batch 64, cpu"
    assert len(set(labels)) == len(labels)


@pytest.mark.parametrize("name", records.RUN_FILES)
def test_missing_file_is_named(tmp_path, name):
    folder = write_run(tmp_path / "run")
    (folder / name).unlink()
    with pytest.raises(KitError, match=name) as e:
        records.Run.read(folder)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("steps.csv", "step,epoch,loss\n1,0.1,0.7\n2,0.2,0.6,9,9\n", "malformed CSV"),
        (
            "evals.csv",
            "epoch,step,accuracy,correct,total,acc_low,acc_high,eval_s,train_s\n0,0,0.5,436,872,0.47,0.53,1,0\n"
            "1,20,high,436,872,0.47,0.53,1,10\n",
            "line 3: accuracy 'high'",
        ),
        ("predictions.csv", "idx,sentence,label\n0,good,1\n", "missing column"),
        (
            "predictions.csv",
            "idx,sentence,label,pred,prob_pos\n0,good,1,1,3.2\n",
            "prob_pos 3.2 is not a probability",
        ),
        ("steps.csv", "", "malformed CSV"),
        ("summary.json", '{"acc": 0.9,', "not valid JSON"),
        ("manifest.json", "[1, 2]", "expected a JSON object"),
        ("config.json", '{"model": "m"}', "missing key"),
    ],
)
def test_malformed_file_is_named(tmp_path, name, text, match):
    folder = write_run(tmp_path / "run")
    (folder / name).write_text(text)
    with pytest.raises(KitError, match=match) as e:
        records.Run.read(folder)
    assert str(folder / name) in str(e.value) and "\n" not in str(e.value)


# --- tables ---------------------------------------------------------------------------------------------------


def test_comparison_table_holds_summary_values_and_published_rows(runs):
    table = analysis.comparison_table(runs)
    measured = table[table.source == "measured"]
    assert len(measured) == len(runs)
    for (_, row), run in zip(measured.iterrows(), runs, strict=True):
        for column, key in analysis.SUMMARY_COLUMNS.items():
            expected = run.summary[key]
            assert row[column] == expected or (expected is None and pd.isna(row[column])), column
        assert row.device == run.manifest["device_name"] and row.precision == run.config["precision"]
        # epochs to target: the first epoch whose dev count reached 0.91 (794 of 872), from evals.csv
        reached = run.evals[(run.evals.epoch > 0) & (run.evals.correct >= 794)].epoch
        assert row.epochs_to_target == reached.iloc[0] if len(reached) else pd.isna(row.epochs_to_target)
    # time to target leads the table
    assert list(table.columns[:4]) == ["source", "label", "time_to_target_s", "epochs_to_target"]
    assert measured.epochs_to_target.notna().any() and measured.epochs_to_target.isna().any()
    published = table[table.source == "published"]
    assert len(published) == len(reference.ROWS)
    a100 = published[published.device == reference.A100]
    assert (a100.run == reference.NVIDIA).all()
    assert a100["throughput(ips)_raw"].tolist() == [1764.0, 2019.1, 283.7, 3531.1]
    assert a100["e2e_time_s"].tolist() == [361.0, 334.7, 720.8, 58.9]
    # the other vendors' DistilBERT rows, each with its README; they published accuracy and memory only
    others = published[published.device != reference.A100].set_index("label")
    assert others.loc["FlagPerf Kunlunxin R300, 1 node x 8, bs=32", ["final_acc", "run"]].tolist() == [
        0.911,
        reference.KUNLUNXIN,
    ]
    assert others.loc["FlagPerf MetaX C500, 1 node x 8", "final_acc"] == 0.908
    assert (others[others.device == reference.C500].run == reference.METAX).all()
    assert others["throughput(ips)_raw"].isna().all() and others["e2e_time_s"].isna().all()
    assert published["time_to_target_s"].isna().all()  # FlagPerf published none: nothing is filled in
    assert set(table.source) == {"measured", "published"}
    assert (analysis.comparison_table(runs, published=False).source == "measured").all()


def test_seed_groups_mean_std_and_count(runs):
    groups = analysis.seed_groups(runs).set_index("seeds")
    a = [r for r in runs if r.config["precision"] == "fp32"]
    acc = np.array([r.summary["acc"] for r in a])
    ttt = np.array([r.summary["time_to_target"] for r in a if r.summary["time_to_target"] is not None])
    assert groups.loc["0, 1, 2", "runs"] == 3
    assert groups.loc["0, 1, 2", "final_acc_mean"] == pytest.approx(acc.mean())
    assert groups.loc["0, 1, 2", "final_acc_std"] == pytest.approx(acc.std(ddof=1))
    assert groups.loc["0, 1, 2", "reached_target"] == len(ttt)
    if len(ttt) > 1:
        assert groups.loc["0, 1, 2", "time_to_target_s_mean"] == pytest.approx(ttt.mean())
    assert groups.loc["0", "runs"] == 1 and np.isnan(groups.loc["0", "final_acc_std"])


def test_a_repeated_seed_counts_once_and_is_flagged(tmp_path):
    """Three runs of seed 0 are one draw of its randomness: counted once (no zero-width interval), and named."""
    import shutil

    first = write_run(tmp_path / "a-seed0", seed=0)
    for copy in ("a-seed0-again", "a-seed0-third"):
        shutil.copytree(first, tmp_path / copy)
    write_run(tmp_path / "a-seed1", seed=1)
    write_run(tmp_path / "b-seed0", seed=0, batch=64)
    runs = records.find_runs([str(tmp_path / "*")])
    groups = analysis.seed_groups(runs).set_index("label")
    a = groups.loc["batch 32, 640 training rows"]
    assert (a.runs, a.seeds, a.repeated_seeds) == (4, "0, 1", "seed 0 ran 3 times")
    acc = [records.Run.read(tmp_path / n).summary["acc"] for n in ("a-seed0", "a-seed1")]
    assert a.final_acc_mean == pytest.approx(np.mean(acc)) and a.final_acc_std == pytest.approx(np.std(acc, ddof=1))
    assert groups.loc["batch 64, 1,280 training rows", "repeated_seeds"] == ""
    assert (groups.shared_by_all == "distilbert-base-uncased, cpu, fp32, 3 epochs max").all()
    fig = plots.seeds_figure(runs)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts[0].startswith("batch 32, 640 training rows: 2 seeds (seed 0 ran 3 times, counted once)")
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == [
        plots._wrap(label, 28) for label in ("batch 32, 640 training rows", "batch 64, 1,280 training rows")
    ]


def test_flagperf_compares_only_runs_of_its_workload(tmp_path):
    full = write_run(tmp_path / "full", epochs=3)
    summary = json.loads((full / "summary.json").read_text())
    (full / "summary.json").write_text(json.dumps({**summary, "train_samples": 3 * reference.TRAIN_ROWS}))
    smoke = write_run(tmp_path / "smoke", epochs=1)
    runs = records.find_runs([full, smoke])
    assert analysis.flagperf_workload(runs[0]) is None
    assert analysis.flagperf_workload(runs[1]) == "640 of 67,349 training rows"
    fig = plots.flagperf_figure(runs)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(labels) == 1 + len(reference.ROWS) and "[smoke]" not in " ".join(labels)
    assert "Left off, not that workload: 1 run(s) (smoke): 640 of 67,349 training rows" in fig.get_suptitle()
    table = analysis.comparison_table(runs, published=False)
    assert table.not_flagperf_workload.fillna("").tolist() == ["", "640 of 67,349 training rows"]


def test_confidently_wrong_orders_by_confidence_in_the_wrong_class(runs, tmp_path):
    predictions = pd.DataFrame(
        {
            "idx": [0, 1, 2, 3, 4],
            "sentence": ["a", "b", "c", "d", "e"],
            "label": [1, 0, 1, 0, 1],
            "pred": [0, 1, 1, 0, 0],
            "prob_pos": [0.3, 0.95, 0.99, 0.01, 0.1],
        }
    )
    predictions.to_csv(write_run(tmp_path / "fake") / "predictions.csv", index=False)
    fake = records.Run.read(tmp_path / "fake")
    top = analysis.confidently_wrong([fake], k=2)
    assert top.idx.tolist() == [1, 4]  # 0.95 for positive, then 0.9 for negative; the right ones never appear
    assert top.confidence.tolist() == pytest.approx([0.95, 0.9])
    assert len(analysis.confidently_wrong(runs, k=3)) == 3 * len(runs)


def test_accuracy_by_length_buckets_every_sentence(runs):
    table = analysis.accuracy_by_length(runs)
    first = table[table.run == analysis.run_labels(runs)[0]]
    p = runs[0].predictions
    assert first.sentences.sum() == len(p)
    overall = (first.sentences * first.accuracy.fillna(0)).sum() / first.sentences.sum()
    assert overall == pytest.approx((p.label == p.pred).mean())
    assert first.length_words.iloc[0] == "1-5" and first.length_words.iloc[-1] == "41+"


# --- figures --------------------------------------------------------------------------------------------------


def _labelled(ax, axis: str) -> bool:
    """The axis has a label, or shares it with an axes that has one (stacked panels, a twin axis)."""
    shared = ax.get_shared_x_axes() if axis == "x" else ax.get_shared_y_axes()
    return any(getattr(a, f"get_{axis}label")() for a in shared.get_siblings(ax))


def test_figures_have_titles_labelled_axes_and_legends(figures, runs):
    assert set(figures) == set(FIGURES)
    for name, fig in figures.items():
        assert fig.get_suptitle() or any(ax.get_title() for ax in fig.axes), name
        for ax in fig.axes:
            assert _labelled(ax, "x") and _labelled(ax, "y"), (name, ax.get_title())
    common, labels = analysis.legend_labels(runs)
    for name in ("loss", "accuracy", "throughput", "calibration", "accuracy_by_length"):
        legend_texts = [t.get_text() for t in figures[name].legends[0].get_texts()]
        assert all(any(label in text for text in legend_texts) for label in labels), name
        assert common in figures[name].get_suptitle().replace("\n", " "), name


def test_accuracy_figure_has_one_line_per_run(figures, runs):
    for ax in figures["accuracy"].axes:
        named = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
        assert named == analysis.legend_labels(runs)[1]


def test_legends_name_what_differs_and_titles_what_is_shared(runs):
    seeds = [r for r in runs if r.config["precision"] == "fp32"]  # one configuration, seeds 0, 1 and 2
    common, labels = analysis.legend_labels(seeds)
    assert labels == ["seed 0", "seed 1", "seed 2"]
    assert common == "distilbert-base-uncased, cpu, fp32, batch 32, 640 training rows, 3 epochs max"
    fig = plots.accuracy_figure(seeds)
    assert fig.get_suptitle() == f"Dev accuracy while training\n{common}"
    assert [t.get_text() for t in fig.legends[0].get_texts()][:3] == labels
    # two configurations: the seed, precision, batch and rows differ; the model, device and epochs are shared
    common, labels = analysis.legend_labels(runs)
    assert labels[:2] == ["fp32, batch 32, 640 training rows, seed 0", "bf16, batch 64, 1,280 training rows, seed 0"]
    assert common == "distilbert-base-uncased, cpu, 3 epochs max"
    # runs alike in every fact: the config key that differs, then the folder
    assert analysis.legend_labels([seeds[0], seeds[0]])[1] == ["a-seed0", "a-seed0"]


def test_identical_runs_stay_visible(runs):
    """Two runs that draw the same values: each line has its own style and marker, the later marker smaller."""
    lines = [line for line in plots.accuracy_figure([runs[0], runs[0]]).axes[0].get_lines() if line.get_marker()]
    lines = [line for line in lines if line.get_label() and not line.get_label().startswith("_")]
    assert len(lines) == 2
    assert lines[0].get_linestyle() != lines[1].get_linestyle() and lines[0].get_marker() != lines[1].get_marker()
    assert lines[0].get_markersize() > lines[1].get_markersize() and lines[0].get_markerfacecolor() == "none"


def test_many_runs_draw_intervals_as_error_bars_not_stacked_bands(run_root, tmp_path):
    runs = records.find_runs([write_run(tmp_path / f"s{s}", seed=s) for s in range(5)])
    by_epoch = plots.accuracy_figure(runs).axes[0]
    assert not [c for c in by_epoch.collections if type(c).__name__ == "FillBetweenPolyCollection"]
    assert len(by_epoch.containers) == 5  # one set of error bars a run
    few = plots.accuracy_figure(runs[:2]).axes[0]
    bands = [c for c in few.collections if "Poly" in type(c).__name__]
    assert len(bands) == 2 and all(c.get_alpha() <= 0.1 for c in bands)


def test_smoothing_tracks_a_short_run():
    """16 logged rows falling from 0.69 to 0.50: TensorBoard's bias-corrected average ends near the last rows;
    an average of weight 0.9 over so few rows would trail by half the run."""
    rng = np.random.default_rng(0)
    loss = pd.Series(np.linspace(0.69, 0.50, 16) + 0.005 * rng.standard_normal(16))
    assert plots.smoothed(loss).iloc[-1] == pytest.approx(loss.iloc[-3:].mean(), abs=0.02)
    assert loss.ewm(alpha=0.1).mean().iloc[-1] > 0.55  # the fixed weight's lag
    long = pd.Series(np.full(1000, 0.3))
    assert plots.smoothed(long).iloc[-1] == pytest.approx(0.3)
    assert plots.smoothed(pd.Series([0.7, 0.6])).tolist() == [0.7, 0.6]  # a couple of rows: shown as logged


def test_accuracy_figure_without_target(runs, tmp_path):
    run = runs[0]
    folder = write_run(tmp_path / "open-ended")
    (folder / "config.json").write_text(json.dumps({**run.config, "target_acc": None}))
    untargeted = records.Run.read(folder)
    fig = plots.accuracy_figure([untargeted])
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts[0] == "open-ended" and not any("target" in text for text in texts)  # one run: named by its folder


def test_token_length_histogram():
    mask = np.zeros((6, 12), dtype=np.int64)
    for row, n in enumerate([3, 5, 5, 8, 12, 2]):
        mask[row, :n] = 1
    split = Split(
        idx=np.arange(6),
        sentence=np.array(["x"] * 6),
        label=np.zeros(6, dtype=np.int64),
        input_ids=mask.copy(),
        attention_mask=mask,
    )
    fig = plots.token_length_histogram({"train": split, "dev": split.head(3)})
    ax = fig.axes[0]
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "train: stored width L = 12" in texts and "dev: stored width L = 12" in texts
    assert any("512" in t for t in texts)


def test_report_writes_every_figure_and_table(run_root, tmp_path):
    written = write_report(records.find_runs([str(run_root / "*")]), tmp_path / "out")
    assert (
        {p.name for p in (tmp_path / "out").iterdir()}
        == set(written)
        == {f"{stem}.png" for stem in FIGURES} | {f"{stem}.csv" for stem in TABLES}
    )
    for stem in FIGURES:
        png = tmp_path / "out" / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    for stem in TABLES:
        assert not pd.read_csv(tmp_path / "out" / f"{stem}.csv").empty
    comparison = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert comparison.run.tolist()[:4] == [str(run_root / n) for n in ("a-seed0", "a-seed1", "a-seed2", "b-bf16")]


# --- the notebook ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_analysis_notebook_writes_figures_and_table(run_root, tmp_path):
    papermill = pytest.importorskip("papermill")
    out_dir = tmp_path / "analysis_out"
    runs = json.dumps([str(run_root / "a-seed0"), str(run_root / "b-bf16")])  # a list as -p passes it: text
    nb = papermill.execute_notebook(
        str(ROOT / "notebooks" / "analysis.ipynb"),
        str(tmp_path / "out.ipynb"),
        parameters={"runs": runs, "out_dir": str(out_dir), "html": True},
        cwd=str(tmp_path),
        kernel_name="python3",
        progress_bar=False,
    )
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == len(FIGURES)  # every figure shows inline
    for stem in FIGURES:
        assert (out_dir / f"{stem}.png").stat().st_size > 0
    assert "data:image/png;base64," in (out_dir / "report.html").read_text()  # html: the notebook, run again
    comparison = pd.read_csv(out_dir / "comparison.csv")
    measured = comparison[comparison.source == "measured"]
    assert measured.final_acc.tolist() == pytest.approx(
        [json.loads((run_root / n / "summary.json").read_text())["acc"] for n in ("a-seed0", "b-bf16")]
    )


@pytest.mark.slow
def test_analysis_notebook_runs_twice_in_one_kernel_with_its_runs_edited(run_root, tmp_path, monkeypatch):
    """Run All, edit runs and out_dir in the parameters cell, Run All again: the second pass reads the new runs."""
    import os

    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata["tags"]

    def parameters(runs: list[str], out_dir: Path):
        return nbformat.v4.new_code_cell(
            f"runs = {runs!r}\nout_dir = {str(out_dir)!r}\nbenchmarks = []\npaired = []\nhtml = False"
        )

    first = [str(run_root / "a-seed0")]
    both = [*first, str(run_root / "b-bf16")]
    cells = [parameters(first, tmp_path / "first"), *code[1:], parameters(both, tmp_path / "both"), *code[1:]]
    run = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c.source) for c in cells])
    run.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(run, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    for out_dir, runs in ((tmp_path / "first", first), (tmp_path / "both", both)):
        assert pd.read_csv(out_dir / "comparison.csv").query("source == 'measured'").run.tolist() == runs


BENCH_SAMPLES = sorted((ROOT / "tests" / "fixtures").glob("bench-sample-*.csv"))  # two real `bench.py --tiny` runs


def test_benchmark_figure_from_a_benchmark_csv(tmp_path):
    results = BENCH_SAMPLES
    assert results, "tests/fixtures/ holds no benchmark CSV"
    figures = plots.benchmark_figures([results[0]])
    ax = next(iter(figures.values())).axes[0]
    assert len(ax.get_yticklabels()) == len(pd.read_csv(results[0])) and ax.get_xlabel()
    assert pd.read_csv(results[0]).date[0][:19] in ax.get_title()
    written = plots.save_figures(figures, tmp_path)
    assert written[0].stat().st_size > 10_000


def test_benchmark_figures_of_two_runs_on_one_machine_have_different_titles():
    results = BENCH_SAMPLES
    assert len(results) >= 2, "expected two benchmark CSVs of one machine in tests/fixtures/"
    titles = [fig.axes[0].get_title() for fig in plots.benchmark_figures(results[:2]).values()]
    assert titles[0] != titles[1]


def test_seeds_figure_says_when_no_seed_reached_the_target(tmp_path):
    # skill 0.8: dev accuracy stays far below 0.91 at every seed; skill 0.95 reaches it
    slow = [write_run(tmp_path / f"slow-{s}", seed=s, skill=0.8) for s in (0, 1, 2)]
    fast = [write_run(tmp_path / f"fast-{s}", seed=s, skill=0.95, batch=64) for s in (0, 1)]
    times = plots.seeds_figure(records.find_runs(slow)).axes[1]
    assert [t.get_text() for t in times.texts] == ["none of the 3 seeds reached the target"]
    assert not list(times.get_xticks())  # no made-up time scale
    times = plots.seeds_figure(records.find_runs([*slow, *fast])).axes[1]
    assert [t.get_text() for t in times.texts] == ["none of the 3 seeds reached the target"]
    assert len(times.collections[1].get_offsets()) == 2 and len(times.get_xticks())  # the two seeds that reached it


def test_accuracy_by_length_keeps_runs_whose_folders_share_a_name(tmp_path):
    """Two sweeps' seed-0 folders: one line of seven buckets each (the table's labels matched both runs)."""
    runs = records.find_runs(
        [write_run(tmp_path / sweep / "seed-0", batch=batch) for sweep, batch in (("a", 32), ("b", 32))]
    )
    assert analysis.run_labels(runs)[0].endswith("[a/seed-0]")
    containers = plots.accuracy_by_length_figure(runs).axes[0].containers  # one set of error bars a run
    assert [len(c.lines[0].get_xdata()) for c in containers] == [7, 7]


@pytest.mark.slow
def test_html_report_embeds_figures_and_tables_without_code(run_root, tmp_path):
    import html as html_text

    import nbformat

    pytest.importorskip("papermill")
    runs = records.find_runs([run_root / "a-seed0", run_root / "a-seed1", run_root / "b-bf16"])
    path = report.write_html(runs, tmp_path / "out")
    assert path == tmp_path / "out" / "report.html"
    page = path.read_text()
    notebook = nbformat.read(report.NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            for line in cell.source.splitlines():
                if len(line) > 20:  # short lines (a bare name) may appear as text; code lines must not
                    assert html_text.escape(line) not in page and line not in page, line
    assert "hl-ipython3" not in page  # no highlighted code block
    assert page.count("data:image/png;base64,") >= len(FIGURES)  # every figure embedded, none linked
    assert not re.search(r'<img[^>]+src="(?!data:)', page)
    assert 'src="http' not in page  # nothing fetched from the network (the template's CDN scripts left out)
    for text in ("Configurations", "FlagPerf NVIDIA A100-SXM4-40GB, 1 node x 8 GPUs", "a-seed0", "bf16"):
        assert text in page, text
    assert "Written files" not in page  # tagged not-in-report
    assert (tmp_path / "out" / "seeds.png").is_file() and (tmp_path / "out" / "configs.csv").is_file()
