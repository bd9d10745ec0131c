"""benchmarks/bench.py --tiny: the four variants run side by side in seconds and write one CSV row each."""
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


@pytest.mark.slow
def test_tiny_benchmark_writes_all_variants(tmp_path, sst2_dir, minilm_dir):
    started = time.perf_counter()
    # one thread: a CI runner's other jobs slow a 1-thread run far less than torch's one-thread-per-core default
    done = subprocess.run([sys.executable, str(BENCH), "--tiny", "--device", "cpu", "--threads", "1",
                           "--data", str(sst2_dir), "--tokenizer", str(minilm_dir), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=180)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    assert seconds < 60, f"--tiny took {seconds:.0f} s; it must stay a CI smoke run"

    [csv] = list(tmp_path.glob("bench-cpu-*.csv"))
    frame = pd.read_csv(csv)
    assert list(frame["variant"]) == ["a", "b", "c", "d"]
    for column in ("device", "device_name", "torch", "transformers", "date", "rows", "model", "samples_per_s",
                   "tokens_per_s", "peak_mem_gib", "mem_kind", "compile_s", "x_vs_flagperf", "x_vs_hf_trainer"):
        assert column in frame.columns, column
    assert (frame["samples_per_s"] > 0).all() and (frame["tokens_per_s"] > 0).all()
    assert (frame["x_vs_flagperf"] > 0).all() and (frame["x_vs_hf_trainer"] > 0).all()
    by = frame.set_index("variant")
    assert by.loc["a", "x_vs_flagperf"] == 1 and by.loc["b", "x_vs_hf_trainer"] == 1
    # every variant trained the same rows: same real tokens (a may get fewer rows, never here with --tiny)
    assert by["real_tokens"].nunique() == 1 and by["rows_timed"].nunique() == 1
    assert by.loc["a", "padded_tokens"] == by.loc["a", "rows_timed"] * 512
    assert frame["model"].iloc[0] == "random-distilbert-tiny"
    assert "bench-cpu" in csv.name and csv.name.endswith(".csv")
    assert "x_vs_hf_trainer" in done.stdout  # the printed table


def test_bad_variants_fail_loudly(tmp_path, sst2_dir, minilm_dir):
    done = subprocess.run([sys.executable, str(BENCH), "--tiny", "--variants", "a,e", "--data", str(sst2_dir),
                           "--tokenizer", str(minilm_dir), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--variants" in done.stderr
    assert not list(tmp_path.glob("*.csv"))


@pytest.mark.slow
def test_accuracy_guard_pairs_plain_and_fast_runs_per_seed(tmp_path, sst2_dir, tiny_model):
    done = subprocess.run([sys.executable, str(BENCH), "--accuracy-guard", "--seeds", "0,1", "--model",
                           str(tiny_model), "--rows", "64", "--dev-rows", "64", "--device", "cpu", "--threads", "1",
                           "--tolerance", "100", "--data", str(sst2_dir), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    [csv] = list(tmp_path.glob("accuracy-guard-cpu-*.csv"))
    frame = pd.read_csv(csv)
    assert frame[["seed", "mode"]].values.tolist() == [[0, "plain"], [0, "fast"], [1, "plain"], [1, "fast"]]
    acc = frame.set_index(["seed", "mode"])["dev_acc"]
    paired = [100 * (acc[s, "fast"] - acc[s, "plain"]) for s in (0, 1)]
    assert frame["diff_points_fast_minus_plain"].tolist() == pytest.approx([paired[0]] * 2 + [paired[1]] * 2)
    assert frame["mean_diff_points"].iloc[0] == pytest.approx(sum(paired) / 2)
    assert frame["sem_diff_points"].iloc[0] == pytest.approx(abs(paired[0] - paired[1]) / 2)
    assert frame["passed"].all() and (frame["rows"] == 64).all()
    assert "PASS" in done.stdout


def test_accuracy_guard_refuses_repeated_seeds(tmp_path, sst2_dir, tiny_model):
    done = subprocess.run([sys.executable, str(BENCH), "--accuracy-guard", "--seeds", "0,0", "--model", str(tiny_model),
                           "--data", str(sst2_dir), "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--seeds" in done.stderr and "repeat" in done.stderr
    assert not list(tmp_path.glob("*.csv"))


def test_fast_set_cannot_change_what_every_variant_shares(tmp_path, sst2_dir, tiny_model):
    done = subprocess.run([sys.executable, str(BENCH), "--accuracy-guard", "--fast-set", "seed=3", "--model",
                           str(tiny_model), "--data", str(sst2_dir), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--fast-set seed" in done.stderr
    assert not list(tmp_path.glob("*.csv"))


def test_bad_fast_set_value_fails_before_any_run(tmp_path, sst2_dir, tiny_model):
    done = subprocess.run([sys.executable, str(BENCH), "--accuracy-guard", "--fast-set", "precision=bf17", "--model",
                           str(tiny_model), "--data", str(sst2_dir), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--fast-set" in done.stderr and "precision" in done.stderr
    assert "accuracy guard:" not in done.stdout  # refused before the data slice is written
    assert not list(tmp_path.glob("*.csv"))
