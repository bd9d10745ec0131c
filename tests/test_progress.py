"""Progress, clocks, rate windows and the summary's arithmetic, with hand-made numbers: no training."""

import time

import pytest
import torch

from distil_kit.distributed import World
from distil_kit.errors import KitError
from distil_kit.progress import Clock, Progress, RateWindow, summary


def _eval_row(correct: int, epoch: int = 0) -> dict:
    return {
        "epoch": epoch,
        "accuracy": correct / 872,
        "correct": correct,
        "total": 872,
        "acc_low": 0.0,
        "acc_high": 1.0,
    }


def test_summary_nests_flagperf_times_and_leaves_compile_out():
    progress = Progress(
        epoch=2,
        step=40,
        samples=1000,
        tokens=20000,
        padded_tokens=30000,
        compile_samples=100,
        compile_tokens=1000,
        compile_padded_tokens=1500,
        best_acc=0.9,
        converged=True,
        time_to_target=33.0,
        evals_rows=[_eval_row(436, 0), _eval_row(795, 1), _eval_row(767, 2)],
    )
    # 60 s in the training loop, 10 of them compiling: train_time 50; minus 5 s of evaluation: 45; minus 3 s of
    # data loading and 2 s of checkpointing: 40 s of pure compute. 900 samples were timed (100 compiled).
    times = {"e2e": 75.0, "train": 60.0, "compile": 10.0, "eval": 5.0, "data": 3.0, "checkpoint": 2.0}
    s = summary(progress, times, target_acc=0.91, global_batch_size=32, world_size=1, peak_memory_gib=1.23456)
    assert (s["e2e_time"], s["train_time"], s["train_no_eval_time"], s["pure_training_computing_time"]) == (
        75.0,
        50.0,
        45.0,
        40.0,
    )
    assert s["throughput(ips)_raw"] == 18.0 and s["throughput(ips)_no_eval"] == 20.0
    assert s["throughput(ips)_pure_compute"] == 22.5
    assert s["tokens_per_s"] == 422.2  # (20000 - 1000) / 45
    assert s["padded_tokens_per_s"] == 633.3 and s["train_padded_tokens"] == 30000  # (30000 - 1500) / 45
    assert s["compile_time"] == 10.0 and s["checkpoint_time"] == 2.0 and s["peak_memory_gib"] == 1.235
    assert (s["acc"], s["best_acc"], s["converged"], s["time_to_target"]) == (767 / 872, 0.9, True, 33.0)
    assert (s["epochs_run"], s["steps"], s["train_samples"], s["train_tokens"]) == (2, 40, 1000, 20000)
    # time to target leads; 795 of 872 reached 0.91 (794) at epoch 1
    assert list(s)[:2] == ["time_to_target", "epochs_to_target"] and s["epochs_to_target"] == 1


def test_summary_of_a_run_with_no_training_time_has_no_throughput():
    progress = Progress(evals_rows=[_eval_row(436)])
    times = {"e2e": 1.0, "train": 0.0, "compile": 0.0, "eval": 0.0, "data": 0.0, "checkpoint": 0.0}
    s = summary(progress, times, target_acc=0.91, global_batch_size=32, world_size=1, peak_memory_gib=0.0)
    assert s["throughput(ips)_raw"] is None and s["tokens_per_s"] is None


def test_clock_subtracts_compile_time_from_training_time():
    clock = Clock(started=time.perf_counter(), totals={"train": 10.0, "compile": 4.0, "eval": 1.0})
    assert clock.train_seconds() == 6.0 and clock.no_eval_seconds() == 5.0
    clock.start_training()
    time.sleep(0.05)
    running = clock.train_seconds()
    assert 6.05 <= running < 7.0  # the running interval counts
    clock.add("compile", 0.5)
    assert clock.train_seconds() == pytest.approx(running - 0.5, abs=0.02)
    clock.stop_training()
    assert not clock.training and clock.totals["train"] >= 10.05
    # what a checkpoint keeps: the training clock with compile time in it, and the end-to-end time so far
    state = clock.state_dict()
    assert state["train"] == clock.totals["train"] and state["compile"] == 4.5
    resumed = Clock(time.perf_counter(), state)
    assert resumed.train_seconds() == pytest.approx(clock.train_seconds())
    assert resumed.times()["e2e"] >= state["e2e_before"] > 0


def test_progress_round_trips_through_a_checkpoint_state():
    progress = Progress(epoch=1, batches_done=7, step=12, samples=300, steps_rows=[{"step": 12}])
    state = {"model": "ignored", **progress.state_dict()}
    assert Progress.from_state(state) == progress


def test_time_to_target_is_the_first_training_evaluation_that_reaches_it():
    p = Progress()
    p.record_eval(828, 872, eval_s=1.0, train_s=0.0, target=0.91, training=False)  # before training: no target
    assert p.time_to_target is None and not p.converged
    p.record_eval(793, 872, eval_s=1.0, train_s=10.0, target=0.91, training=True)  # 0.9094: one row short
    assert not p.converged
    row = p.record_eval(794, 872, eval_s=1.23456, train_s=20.123456, target=0.91, training=True)
    assert row == {
        "epoch": 0,
        "step": 0,
        "accuracy": 794 / 872,
        "correct": 794,
        "total": 872,
        "acc_low": 0.889764,
        "acc_high": 0.927736,
        "eval_s": 1.2346,
        "train_s": 20.1235,
    }
    assert p.time_to_target == 20.1235 and p.converged and p.best_acc == 828 / 872
    p.record_eval(800, 872, eval_s=1.0, train_s=30.0, target=0.91, training=True)
    assert p.time_to_target == 20.1235
    p.record_eval(436, 872, eval_s=1.0, train_s=40.0, target=None, training=True)
    assert not p.converged


def test_summary_gives_the_final_count_its_interval_and_the_count_the_target_needs():
    p = Progress(evals_rows=[])
    p.record_eval(794, 872, eval_s=1.0, train_s=5.0, target=0.91, training=True)
    times = {"e2e": 9.0, "train": 6.0, "compile": 0.0, "eval": 1.0, "data": 0.0, "checkpoint": 0.0}
    s = summary(p, times, target_acc=0.91, global_batch_size=32, world_size=1, peak_memory_gib=0.0)
    assert (s["acc_correct"], s["dev_rows"], s["target_correct"]) == (794, 872, 794)
    assert s["acc_interval"] == [0.889764, 0.927736]
    assert (
        summary(p, times, target_acc=None, global_batch_size=32, world_size=1, peak_memory_gib=0.0)["target_correct"]
        is None
    )


def test_window_rates_leave_the_compiling_steps_rows_out():
    window = RateWindow(start=2.0)
    window.add(1, torch.tensor(0.7), rows=64, tokens=800, padded=1024, compiled=True)
    window.add(2, torch.tensor(0.3), rows=32, tokens=400, padded=512, compiled=False)
    totals = window.reduce(World(), stop_requested=False)
    assert totals.losses.tolist() == pytest.approx([0.7, 0.3])
    assert (totals.rows, totals.tokens, totals.padded, totals.compile_rows, totals.compile_tokens) == (
        96,
        1200,
        1536,
        64,
        800,
    )
    assert (totals.compile_padded, totals.stop) == (1024, False)
    assert window.step_of(1) == 2
    p = Progress(step=2)
    row = p.record_window(totals, lr=1e-5, now=4.0, seconds=4.0 - window.start)
    assert (p.padded_tokens, p.compile_padded_tokens) == (1536, 1024)
    assert row == {
        "step": 2,
        "epoch": 1,
        "loss": 0.5,
        "lr": 1e-5,
        "samples_per_s": 16.0,
        "tokens_per_s": 200.0,
        "elapsed_s": 4.0,
    }
    assert (p.samples, p.tokens, p.compile_samples, p.compile_tokens) == (96, 1200, 64, 800)
    window.reset(4.0)
    assert not window and window.rows == window.compile_rows == 0
    window.add(3, torch.tensor(0.1), rows=8, tokens=80, padded=96, compiled=False)
    assert window.reduce(World(), stop_requested=True).stop


def test_a_checkpoint_without_a_count_this_kit_keeps_is_refused_not_restarted_from_zero():
    state = Progress(step=3).state_dict()
    del state["padded_tokens"]
    with pytest.raises(KitError, match=r"progress has no padded_tokens: it was written by an older kit"):
        Progress.from_state(state)
