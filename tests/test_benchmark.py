"""benchmarks/: bench.py --tiny runs the five variants side by side in seconds and writes one CSV row each; guard.py
pairs plain and fast runs per seed; measure.py's memory and CPU-time readings; the results folder documents itself.

Nothing here reads the recorded results' CSVs: the CSV schema is checked against tests/fixtures/bench-sample-1.csv.
"""

import importlib.util
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

ROOT = Path(__file__).resolve().parents[1]
BENCH, GUARD = ROOT / "benchmarks" / "bench.py", ROOT / "benchmarks" / "guard.py"
RESULTS = ROOT / "benchmarks" / "results"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _measure():
    spec = importlib.util.spec_from_file_location("bench_measure", ROOT / "benchmarks" / "measure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tiny_benchmark_writes_all_variants(tmp_path, sst2_dir, minilm_dir):
    started = time.perf_counter()
    # one thread: a CI runner's other jobs slow a 1-thread run far less than torch's one-thread-per-core default
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--tiny",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--data",
            str(sst2_dir),
            "--tokenizer",
            str(minilm_dir),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    assert seconds < 60, f"--tiny took {seconds:.0f} s; it must stay a CI smoke run"

    [csv] = list(tmp_path.glob("bench-cpu-*.csv"))
    frame = pd.read_csv(csv)
    assert list(frame["variant"]) == ["a", "b", "c", "d", "e", "p", "q"]  # a CPU has no TF32: no strict-fp32 row
    # the fixtures that stand in for recorded results keep the schema bench.py writes
    assert list(frame.columns) == list(pd.read_csv(FIXTURES / "bench-sample-1.csv").columns)
    assert (frame["samples_per_s"] > 0).all() and (frame["tokens_per_s"] > 0).all()
    assert (frame["x_vs_flagperf"] > 0).all() and (frame["x_vs_hf_trainer"] > 0).all()
    assert (frame["peak_mem_gib"] > 0).all() and (frame["mem_kind"] == "cpu_rss_peak_delta").all()
    assert (frame["others_cpu_share"] >= 0).all()
    assert ((frame["mfu"] > 0) & (frame["mfu"] < 1)).all() and (frame["matmul_tflops"] > 0).all()
    assert (frame["global_batch"] == 256).all()
    by = frame.set_index("variant")
    # on a CPU: 8 x 32, but the packed fast path's whole step as one micro-batch (and its bare loop over its batches)
    assert by["micro_batch"].to_dict() == dict(a=32, b=32, c=32, d=32, e=32, p=256, q=256)
    assert by.loc["a", "x_vs_flagperf"] == 1 and by.loc["b", "x_vs_hf_trainer"] == 1 and by.loc["d", "x_vs_fast"] == 1
    assert by.loc["e", "x_vs_bare"] == by.loc["q", "x_vs_bare"] == 1  # each bare loop is its kit variant's reference
    p_over_q = by.loc["p", "samples_per_s"] / by.loc["q", "samples_per_s"]
    assert by.loc["p", "x_vs_bare"] == pytest.approx(p_over_q, rel=1e-4)
    # every variant trained the same rows: same real tokens (a may get fewer rows, never here with --tiny)
    assert by["real_tokens"].nunique() == 1 and by["rows_timed"].nunique() == 1
    assert by.loc["a", "padded_tokens"] == by.loc["a", "rows_timed"] * 512
    assert (by["padded_tokens"] >= by["real_tokens"]).all()
    # e trained exactly d's batches, in d's precision, and q p's packed ones, which compute far fewer tokens
    for column in ("padded_tokens", "steps", "precision"):
        assert by.loc["e", column] == by.loc["d", column], column
        assert by.loc["q", column] == by.loc["p", column], column
    assert by.loc["p", "padded_tokens"] < 0.8 * by.loc["d", "padded_tokens"]
    # 64 rows at FlagPerf's 32 x 8: one (short) optimizer step, except in FlagPerf's computation, which never applies
    # the run's last partial group
    assert by.loc["a", "steps"] == 0 and (by.drop(index="a")["steps"] == 1).all()
    assert frame["model"].iloc[0] == "random-distilbert-tiny"
    assert "bench-cpu" in csv.name and csv.name.endswith(".csv")
    # the printed table and targets, the padding-adjusted one from the padded counts (b pads more than d)
    assert "x_vs_bare" in done.stdout and "target d >= 2.5x hf_trainer: " in done.stdout
    assert "target p >= 1.3x fast: " in done.stdout
    assert re.search(r"target d >= 0.9 x its padding advantage over b \((\d\.\d+)x\)", done.stdout)


@pytest.mark.parametrize(
    ("variants", "expected"),
    [
        ("a,f", "expected a comma-separated subset of a,b,c,d,e,p,q"),
        ("a,e", "e trains d's batches, so it needs d"),
        ("d,q", "q trains p's batches, so it needs p"),
    ],
)
def test_bad_variants_fail_loudly(tmp_path, sst2_dir, minilm_dir, variants, expected):
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--tiny",
            "--variants",
            variants,
            "--data",
            str(sst2_dir),
            "--tokenizer",
            str(minilm_dir),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and f"--variants {variants!r}" in done.stderr and expected in done.stderr
    assert not list(tmp_path.glob("*.csv"))


@pytest.mark.slow
def test_accuracy_guard_pairs_plain_and_fast_runs_per_seed(tmp_path, sst2_dir, tiny_model):
    done = subprocess.run(
        [
            sys.executable,
            str(GUARD),
            "--seeds",
            "0,1",
            "--model",
            str(tiny_model),
            "--rows",
            "64",
            "--dev-rows",
            "64",
            "--device",
            "cpu",
            "--threads",
            "1",
            "--margin",
            "100",
            "--data",
            str(sst2_dir),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [csv] = list(tmp_path.glob("accuracy-guard-cpu-*.csv"))
    frame = pd.read_csv(csv)
    assert frame[["seed", "mode"]].values.tolist() == [[0, "plain"], [0, "fast"], [1, "plain"], [1, "fast"]]
    acc = frame.set_index(["seed", "mode"])["dev_acc"]
    paired = [100 * (acc[s, "fast"] - acc[s, "plain"]) for s in (0, 1)]
    assert frame["diff_points_fast_minus_plain"].tolist() == pytest.approx([paired[0]] * 2 + [paired[1]] * 2)
    # two seeds: the t interval of the mean paired difference, which the rule reads against the margin
    t = scipy_stats.ttest_1samp(paired, 0).confidence_interval()
    assert frame["interval_low_points"].iloc[0] == pytest.approx(t.low)
    assert frame["interval_high_points"].iloc[0] == pytest.approx(t.high)
    assert frame["passed"].all() and (frame["rows"] == 64).all() and (frame["margin_points"] == 100).all()
    assert "fast vs plain: " in done.stdout and "on the mean over 2 seeds" in done.stdout and "PASS" in done.stdout


def test_accuracy_guard_refuses_repeated_seeds(tmp_path, sst2_dir, tiny_model):
    done = subprocess.run(
        [
            sys.executable,
            str(GUARD),
            "--seeds",
            "0,0",
            "--model",
            str(tiny_model),
            "--data",
            str(sst2_dir),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--seeds" in done.stderr and "repeat" in done.stderr
    assert not list(tmp_path.glob("*.csv"))


def test_fast_set_cannot_change_what_every_variant_shares(tmp_path, sst2_dir, tiny_model):
    done = subprocess.run(
        [
            sys.executable,
            str(GUARD),
            "--fast-set",
            "seed=3",
            "--model",
            str(tiny_model),
            "--data",
            str(sst2_dir),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--fast-set seed" in done.stderr
    assert not list(tmp_path.glob("*.csv"))


def test_bad_fast_set_value_fails_before_any_run(tmp_path, sst2_dir, tiny_model):
    done = subprocess.run(
        [
            sys.executable,
            str(GUARD),
            "--fast-set",
            "precision=bf17",
            "--model",
            str(tiny_model),
            "--data",
            str(sst2_dir),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--fast-set" in done.stderr and "precision" in done.stderr
    assert "accuracy guard:" not in done.stdout  # refused before the data slice is written
    assert not list(tmp_path.glob("*.csv"))


@pytest.mark.parametrize("script", [BENCH, GUARD], ids=["bench", "guard"])
def test_help_names_the_default_out_folder_and_no_issue_numbers(script):
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bench_out/" in done.stdout and "--out benchmarks/results" in done.stdout
    assert not re.search(r"\bissue\b|#\d", done.stdout, re.I)


def test_default_out_folder_is_ignored_by_git():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "bench_out/bench-cpu-2cores-x.csv"])
    assert done.returncode == 0, "bench_out/ must be git-ignored: the scripts write their CSVs there by default"


@pytest.mark.parametrize("sampling", [False, True], ids=["kernel-peak", "sampled"])
def test_peak_memory_sees_a_transient_allocation(monkeypatch, sampling):
    measure = _measure()
    if sampling:  # where the kernel's peak mark cannot be reset, a psutil thread samples the RSS
        monkeypatch.setattr(measure, "_reset_kernel_peak", lambda: False)
    elif not measure._reset_kernel_peak():
        pytest.skip("the kernel's peak-RSS mark cannot be reset here")
    import torch

    with measure.PeakMemory(torch.device("cpu")) as mem:
        block = np.ones(2**28 // 8)  # 256 MiB, touched
        time.sleep(0.3)  # the sampling thread reads every 0.1 s
        del block
    assert 0.2 < mem.gib < 1.0, mem.gib
    assert mem.kind == "cpu_rss_peak_delta"


def test_contention_counts_other_processes_not_this_one():
    measure = _measure()
    contention = measure.Contention()
    end = time.perf_counter() + 0.5
    while time.perf_counter() < end:  # this process busy: its own CPU time is left out
        pass
    share = contention.others_share()
    assert 0.0 <= share <= 1.0


def test_results_folder_documents_every_file_it_holds():
    readme = (RESULTS / "README.md").read_text()
    held = sorted(p.relative_to(RESULTS) for p in RESULTS.rglob("*") if p.is_file() and p.name != "README.md")
    for path in held:
        assert path.suffix not in (".py", ".sh"), f"{path}: results hold measurements and their commands, no scripts"
        named = str(path) if path.parent == Path(".") else f"{path.parts[0]}/"
        assert named in readme, f"benchmarks/results/README.md does not describe {path}"
    for name in re.findall(r"`([\w.-]+\.csv)`", readme):
        if re.match(r"(bench|accuracy-guard|guard)-", name):
            assert (RESULTS / name).is_file(), f"README names {name}, which is not in benchmarks/results/"
    assert not re.search(r"\bissue\b|#\d", readme, re.I)


def test_the_benchmark_refuses_to_set_what_its_variants_differ_in(tmp_path, sst2_dir, tiny_model):
    command = [sys.executable, str(BENCH), "--tiny", "--fast-set", "packing=false", "--data", str(sst2_dir)]
    done = subprocess.run([*command, "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--fast-set packing: the benchmark sets it, d padded and p packed" in done.stderr
    assert not list(tmp_path.glob("*.csv"))


def _step_layout():
    spec = importlib.util.spec_from_file_location("step_layout", ROOT / "benchmarks" / "step_layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_step_layout_trains_the_same_rows_per_step_and_packing_computes_the_fewest_tokens():
    layout = _step_layout()
    from distil_kit.data import Split

    lengths = np.random.default_rng(0).integers(3, 60, size=600)  # 3 steps of 256, the last short
    mask = (np.arange(64)[None, :] < lengths[:, None]).astype(np.int64)
    split = Split(np.arange(600), np.array(["x"] * 600), np.zeros(600, dtype=np.int64), mask * 1000, mask)
    per_real, rows = {}, {}
    for name, (micro, packed) in layout.LAYOUTS.items():
        steps = layout.layout_steps(split, micro, packed)
        assert [len(step) for step in steps] == [256 // micro] * 2 + [-(-88 // micro)], name
        rows[name] = [sorted(int(i) for b in step for i in b.idx if i >= 0) for step in steps]
        # each step's loss is the mean over its rows, however they are laid out
        assert [float(sum(b.weight.sum() for b in step)) for step in steps] == pytest.approx([1.0] * 3), name
        per_real[name] = layout.padded_per_real(steps)
        if name == "padded, 8 sorted micro-batches of 32":  # sorted by length within the step
            for step in steps:
                spans = [(lengths[b.idx].min(), lengths[b.idx].max()) for b in step]
                assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
        first_two = layout.layout_steps(split, micro, packed, n_steps=2)
        assert [[b.idx.tolist() for b in step] for step in first_two] == [
            [b.idx.tolist() for b in s] for s in steps[:2]
        ]
    first = next(iter(rows.values()))
    assert all(r == first for r in rows.values()) and sorted(sum(first, [])) == list(range(600))
    one_padded, sorted_padded, packed_8, packed_1 = per_real.values()
    assert one_padded > sorted_padded > packed_8 > packed_1 >= 1.0


@pytest.mark.slow
def test_step_layout_times_every_layout(sst2_dir, tiny_model):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_layout.py"), "--data", str(sst2_dir)]
        + ["--model", str(tiny_model), "--steps", "1", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    timed = re.findall(r"^  (.+): ([\d.]+) samples/s$", done.stdout, re.M)
    assert [name for name, _ in timed] == list(_step_layout().LAYOUTS) and all(float(v) > 0 for _, v in timed)
    assert "packed, one micro-batch of 256: 1.0" in done.stdout  # SST-2 packs to about one computed token per real
