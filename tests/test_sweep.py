"""Seed sweeps: one run per seed, the sweep record, and a sweep continued after a stop."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch

from distil_kit import Callback, RunConfig, checkpoint, engine, sweep, trackers
from distil_kit.engine import RunInterrupted
from distil_kit.errors import KitError
from distil_kit.records import Run

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest

SEEDS = [0, 1, 2]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config(varied_model, sst2_dir) -> RunConfig:
    return RunConfig.from_dict(
        dict(
            model=str(varied_model),
            data_dir=str(sst2_dir),
            epochs=2,
            max_train_samples=64,
            train_batch_size=16,
            log_every=1,
            target_acc=0.5,
            save_model=False,
            device="cpu",
        )
    )


@pytest.fixture(scope="module")
def whole(config, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "whole"
    table = sweep.run_sweep(config.replace(output_dir=str(out)), SEEDS)
    return out, table


def test_one_run_per_seed_and_the_sweep_record(whole):
    out, table = whole
    assert table.seed.tolist() == SEEDS
    assert [p.name for p in sorted(out.glob("seed-*"))] == ["seed-0", "seed-1", "seed-2"]
    for seed, row in zip(SEEDS, table.itertuples(), strict=True):
        summary = json.loads((out / f"seed-{seed}" / "summary.json").read_text())
        assert (row.correct, row.total, row.accuracy) == (summary["acc_correct"], 872, summary["acc"])
        assert json.loads((out / f"seed-{seed}" / "config.json").read_text())["seed"] == seed
    assert table.accuracy.nunique() > 1, "seeds must draw different runs for the sweep to mean anything"
    record = json.loads((out / "sweep.json").read_text())
    assert record["seeds"] == SEEDS and record["target_correct"] == 436
    assert record["accuracy_mean"] == pytest.approx(table.accuracy.mean(), abs=1e-6)
    assert record["accuracy_sd"] == pytest.approx(table.accuracy.std(ddof=1), abs=1e-6)
    low, high = record["accuracy_mean_interval"]
    assert low < record["accuracy_mean"] < high
    assert record["pass_rate"] == f"{int(table.converged.sum())}/3"
    assert record["target_acc"] == 0.5
    # each seed's row from its run folder: the accuracy's interval, whether and when it reached the target
    for seed, row in zip(SEEDS, table.itertuples(), strict=True):
        run = Run(out / f"seed-{seed}")
        assert row.run == str(run.folder)
        assert [row.acc_low, row.acc_high] == run.summary["acc_interval"]
        assert row.converged == run.summary["converged"]
        assert row.time_to_target == pytest.approx(run.summary["time_to_target"], nan_ok=True)
        assert (None if pd.isna(row.epochs_to_target) else row.epochs_to_target) == run.summary["epochs_to_target"]
    # with a target the seeds reach: the first epoch whose evaluation reached it (419 correct: 0.48 x 872 = 418.6)
    reached = sweep.seed_table([Run(out / f"seed-{seed}") for seed in SEEDS], 0.48).epochs_to_target.tolist()
    for seed, epochs in zip(SEEDS, reached, strict=True):
        evals = Run(out / f"seed-{seed}").evals
        assert epochs == min(evals.epoch[(evals.epoch > 0) & (evals.correct >= 419)], default=None)
    # the sweep's folder: its runs and its record, nothing else (no tracker's state without report_to)
    assert sorted(p.name for p in out.iterdir()) == ["seed-0", "seed-1", "seed-2", "sweep.csv", "sweep.json"]
    # sweep.csv: the table as returned, time to target first
    written = pd.read_csv(out / "sweep.csv")
    assert written.columns[:3].tolist() == ["seed", "time_to_target", "epochs_to_target"]
    pd.testing.assert_frame_equal(written, table.astype({"time_to_target": float}), check_dtype=False)


# Six seeds' runs on 872 dev rows, target 0.9 (785 correct: 0.9 x 872 = 784.8, rounded up); seed 1 missed it.
TABLE = pd.DataFrame(
    {
        "seed": [0, 1, 2, 3, 4, 5],
        "accuracy": [c / 872 for c in (790, 785, 800, 795, 781, 792)],
        "converged": [True, False, True, True, True, True],
        "total": [872] * 6,
        "epochs_to_target": pd.array([1, None, 2, 3, 3, 2], dtype="Int64"),
        "time_to_target": [80.0, None, 200.0, 300.0, 120.0, 50.0],
    }
)


def test_the_sweep_record_summarizes_the_seeds():
    assert sweep.sweep_record(TABLE, 0.9) == {
        "seeds": [0, 1, 2, 3, 4, 5],
        "target_acc": 0.9,
        "target_correct": 785,
        "time_to_target_mlperf": 133.333,  # 5 times: 50 and 300 dropped, (80 + 120 + 200) / 3
        "epochs_to_target": {"min": 1, "median": 2.0, "max": 3},  # of 1, 2, 2, 3, 3
        "pass_rate": "5/6",
        "pass_rate_interval": [0.4365, 0.9699],  # Wilson's 95% interval for 5 of 6
        # mean 0.9065367 and sd 0.0078369 of the six; t interval: mean -+ 2.5706 (t, 5 dof) x sd / sqrt(6)
        "accuracy_mean": 0.906537,
        "accuracy_mean_interval": [0.898312, 0.914761],
        "accuracy_sd": 0.007837,
    }


def test_the_pass_rates_interval_is_given_to_four_places():
    assert sweep.sweep_record(TABLE.iloc[:3], 0.9)["pass_rate_interval"] == [0.2077, 0.9385]  # 2 of 3: 0.20766, ...


def test_a_one_seed_sweep_records_no_spread():
    assert sweep.sweep_record(TABLE.iloc[[1]], 0.9) == {
        "seeds": [1],
        "target_acc": 0.9,
        "target_correct": 785,
        "time_to_target_mlperf": None,
        "epochs_to_target": None,
        "pass_rate": "0/1",
        "pass_rate_interval": [0.0, 0.7935],  # Wilson's 95% interval for 0 of 1
        "accuracy_mean": 0.900229,  # 785 / 872
        "accuracy_mean_interval": None,
        "accuracy_sd": None,
    }


def test_a_sweep_without_target_records_the_accuracies_only():
    missed = TABLE.iloc[:2].assign(converged=False, epochs_to_target=None, time_to_target=None)
    assert sweep.sweep_record(missed, None) == {
        "seeds": [0, 1],
        "target_acc": None,
        "target_correct": None,
        "time_to_target_mlperf": None,
        "epochs_to_target": None,
        "pass_rate": "0/2",
        "pass_rate_interval": [0.0, 0.6576],  # Wilson's 95% interval for 0 of 2
        "accuracy_mean": 0.903096,  # (790 + 785) / 2 / 872
        "accuracy_mean_interval": [0.866668, 0.939525],  # mean -+ 12.706 (t, 1 dof) x sd / sqrt(2)
        "accuracy_sd": 0.004055,  # 5 / 872 / sqrt(2)
    }


class StopDuringSeed(Callback):
    """SIGINT (a Ctrl-C) in the middle of one seed's run."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_log(self, trainer, row):
        if trainer.cfg.seed == self.seed and row["step"] == 3:
            signal.raise_signal(signal.SIGINT)


def test_a_stopped_sweep_continues_where_it_stopped(config, whole, tmp_path, capsys):
    out = tmp_path / "sweep"
    cfg = config.replace(output_dir=str(out), checkpoint_every=2)
    with pytest.raises(RunInterrupted):
        sweep.run_sweep(cfg, SEEDS, callbacks=[StopDuringSeed(1)])
    assert (out / "seed-0" / "summary.json").is_file() and not (out / "seed-1" / "summary.json").exists()
    assert not (out / "seed-2").exists() and not (out / "sweep.json").exists()
    first = (out / "seed-0" / "summary.json").stat().st_mtime_ns
    capsys.readouterr()

    displays = []

    class Display(Callback):  # a progress display, one made for each seed trained
        def on_run_start(self, trainer):
            displays.append(trainer.cfg.seed)

    table = sweep.run_sweep(cfg, SEEDS, make_progress=Display)
    assert (out / "seed-0" / "summary.json").stat().st_mtime_ns == first, "a finished seed is not trained again"
    assert displays == [1, 2]
    assert f"resuming from {out / 'seed-1' / 'checkpoints'}" in capsys.readouterr().out
    # the continued sweep ends where the uninterrupted one did
    assert table[["seed", "correct", "converged"]].equals(whole[1][["seed", "correct", "converged"]])


@pytest.mark.slow
def test_seeds_trained_at_once_end_as_one_at_a_time(config, whole, tmp_path, capsys):
    out = tmp_path / "at-once"
    table = sweep.run_sweep(config.replace(output_dir=str(out)), SEEDS, concurrent=2)
    printed = capsys.readouterr().out
    assert "training 3 seeds, 2 at a time" in printed
    assert all(f"seed {s}: " in printed for s in SEEDS)
    # one thread per process, as the sequential sweep (one_thread): the same runs to the last bit
    assert table.drop(columns="run").equals(whole[1].drop(columns="run"))
    for seed in SEEDS:
        assert "optimizer steps" in (out / "logs" / f"seed-{seed}.log").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["logs", "seed-0", "seed-1", "seed-2", "sweep.csv", "sweep.json"]


@pytest.mark.slow
def test_the_notebooks_sweep_trains_seeds_at_once(config, whole, tmp_path, capsys):
    from distil_kit import notebook

    runs = notebook.sweep(config.replace(output_dir=str(tmp_path / "nb")), SEEDS[:2], concurrent=2)
    assert [r.summary["acc_correct"] for r in runs] == whole[1].correct.tolist()[:2]
    assert "training 2 seeds, 2 at a time" in capsys.readouterr().out


def test_seeds_at_once_refuse_bad_counts_and_callbacks(config, tmp_path):
    cfg = config.replace(output_dir=str(tmp_path / "s"))
    with pytest.raises(KitError, match=r"parameter 'concurrent'=0: expected a whole number >= 1"):
        sweep.run_sweep(cfg, SEEDS, concurrent=0)
    for seeds in (SEEDS, SEEDS[:2]):
        with pytest.raises(KitError, match=r"parameter 'concurrent'=2: seeds trained at once take no callbacks"):
            sweep.run_sweep(cfg, seeds, concurrent=2, callbacks=[Callback()])
    assert not (tmp_path / "s").exists()


@pytest.fixture
def trained_elsewhere(whole, monkeypatch):
    """Training replaced by copies of ``whole``'s finished runs; each call noted: ("at once", seeds, concurrent) for
    ``concurrent_seeds``, ("here", seed, callbacks) for a run in this process, ("parent", folder name, seeds) and
    ("record", seeds, files) for the sweep's MLflow parent run."""
    calls = []

    def finished(cfg):
        shutil.copytree(whole[0] / f"seed-{cfg.seed}", cfg.output_dir, dirs_exist_ok=True)

    def at_once(configs, concurrent):
        calls.append(("at once", [c.seed for c in configs], concurrent))
        for cfg in configs:
            finished(cfg)

    def here(cfg, callbacks=(), progress=None):
        calls.append(("here", cfg.seed, list(callbacks)))
        finished(cfg)

    @contextmanager
    def parent(config, seeds):
        calls.append(("parent", Path(config.output_dir).name, seeds))
        yield lambda record, files: calls.append(("record", record["seeds"], [Path(f).name for f in files]))

    monkeypatch.setattr(sweep, "concurrent_seeds", at_once)
    monkeypatch.setattr(engine, "finetune", here)
    monkeypatch.setattr(trackers, "sweep_parent", parent)
    return calls


def test_seeds_go_to_processes_of_their_own_while_two_or_more_are_left(config, whole, tmp_path, trained_elsewhere):
    calls, marker = trained_elsewhere, Callback()
    table = sweep.run_sweep(config.replace(output_dir=str(tmp_path / "two"), target_acc=0.48), [0, 1], concurrent=2)
    assert calls == [("at once", [0, 1], 2)] and table.seed.tolist() == [0, 1]
    reached = sweep.seed_table([Run(whole[0] / f"seed-{seed}") for seed in (0, 1)], 0.48).epochs_to_target
    assert table.epochs_to_target.tolist() == reached.tolist() and reached.notna().any()  # the run's own target
    calls.clear()
    shutil.copytree(whole[0] / "seed-0", tmp_path / "one" / "seed-0")  # finished: one seed left
    one = config.replace(output_dir=str(tmp_path / "one"), target_acc=0.48)
    sweep.run_sweep(one, [0, 1], callbacks=[marker], concurrent=3)
    assert calls == [("here", 1, [marker])]
    two, one = (pd.read_csv(tmp_path / name / "sweep.csv").drop(columns="run") for name in ("two", "one"))
    pd.testing.assert_frame_equal(two, one)  # the same seeds' runs, however they trained


@pytest.mark.parametrize(
    "report_to, rank, parented",
    [(["mlflow"], None, True), (["mlflow"], "0", True), (["mlflow"], "1", False), (["tensorboard"], None, False)],
)
def test_a_sweep_reported_to_mlflow_is_one_parent_run_on_rank_0(
    config, tmp_path, trained_elsewhere, monkeypatch, report_to, rank, parented
):
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    sweep.run_sweep(config.replace(output_dir=str(tmp_path / "s"), report_to=report_to), [2, 0])
    expected = [("here", 2, []), ("here", 0, [])]
    if parented:  # around the seeds' runs, finished with the record and its two files
        expected = [("parent", "s", [2, 0]), *expected, ("record", [2, 0], ["sweep.csv", "sweep.json"])]
    assert trained_elsewhere == expected


def test_seeds_trained_at_once_log_beside_their_run_folders(tmp_path):
    assert sweep.seed_log(tmp_path / "sweep" / "seed-3") == tmp_path / "sweep" / "logs" / "seed-3.log"


def test_a_sweep_needs_distinct_seeds_and_a_folder(config, tmp_path):
    with pytest.raises(sweep.KitError, match=r"parameter 'seeds'=\[1, 1\]: expected distinct whole numbers"):
        sweep.run_sweep(config.replace(output_dir=str(tmp_path / "s")), [1, 1])
    with pytest.raises(KitError, match=r"^parameter 'seeds'=\[\]: expected distinct whole numbers, at least one$"):
        sweep.run_sweep(config.replace(output_dir=str(tmp_path / "s")), [])
    with pytest.raises(KitError, match=r"^parameter 'output_dir': a sweep needs a folder to hold its seed-<s>/ runs"):
        sweep.run_sweep(config, SEEDS)  # no output_dir
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_killed_cli_sweep_continues_to_the_same_record(config, whole, tmp_path):
    """SIGKILL while seed 1 trains (after a checkpoint of it is on disk); the same command continues the sweep."""
    out = tmp_path / "sweep"
    sets = [
        a
        for key, value in {**config.to_dict(), "output_dir": out, "checkpoint_every": 1}.items()
        if value is not None
        for a in ("--set", f"{key}={value}")
    ]
    command = [sys.executable, "-m", "distil_kit", "finetune", "--seeds", "0,1,2", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 240
    while not checkpoint.checkpoints(out / "seed-1" / "checkpoints"):
        assert proc.poll() is None, "the sweep ended before seed 1 wrote a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint of seed 1 after 240 s"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert (out / "seed-0" / "summary.json").is_file() and not (out / "seed-1" / "summary.json").exists()

    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming from {out / 'seed-1' / 'checkpoints'}" in done.stdout
    record, uninterrupted = (json.loads((folder / "sweep.json").read_text()) for folder in (out, whole[0]))
    timing = ("time_to_target_mlperf",)  # seconds differ between any two runs
    assert {k: v for k, v in record.items() if k not in timing} == {
        k: v for k, v in uninterrupted.items() if k not in timing
    }  # as if never killed
    assert f"sweep record: {out / 'sweep.json'}" in done.stdout


def test_seeds_from_a_params_file_or_a_set(tmp_path):
    from distil_kit.config import load_sweep_config

    config, seeds, _ = load_sweep_config(ROOT / "params" / "fast_sweep.yaml")
    assert seeds == [0, 1, 2, 3, 4] and config.fast and config.epochs == 1
    assert load_sweep_config(ROOT / "params" / "fast_sweep.yaml", ["seeds=[7, 8]"])[1] == [7, 8]
    assert load_sweep_config(ROOT / "params" / "fast.yaml")[1] is None
    for bad in ("[1, 1]", "[]", "3", "[-1]", "[0.5]"):
        with pytest.raises(KitError, match=r"parameter 'seeds'=.*: expected a list of distinct whole numbers >= 0"):
            load_sweep_config(None, [f"seeds={bad}"])
    assert load_sweep_config(ROOT / "params" / "fast_sweep.yaml")[2] == 1
    assert load_sweep_config(ROOT / "params" / "fast_sweep.yaml", ["concurrent=5"])[2] == 5
    for bad in ("0", "2.5", "two"):
        with pytest.raises(KitError, match=r"--set 'concurrent=.*': parameter 'concurrent'=.*: expected a whole"):
            load_sweep_config(None, [f"concurrent={bad}"])


def test_every_params_file_loads():
    from distil_kit.config import load_sweep_config

    for path in sorted((ROOT / "params").glob("*.yaml")):
        load_sweep_config(path)
