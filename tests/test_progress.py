"""Progress, clocks, rate windows and the summary's arithmetic, with hand-made numbers: no training."""

import time

import pytest
import torch

from distil_kit import energy
from distil_kit.distributed import World
from distil_kit.errors import KitError
from distil_kit.progress import Clock, Progress, RateWindow, epochs_to_target, outcome, summary


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
    assert s["packing_efficiency"] == 0.6667  # 20000 real of the 30000 tokens computed
    assert (s["data_time"], s["global_batch_size"], s["world_size"], s["status"]) == (3.0, 32, 1, "finished")
    assert s["energy_j"] is None and s["energy_note"] == "not measured"  # no energy fields given


def test_summary_of_a_short_run_keeps_milliseconds_and_its_throughputs():
    progress = Progress(
        epoch=1, step=4, samples=100, tokens=1000, padded_tokens=1500, compile_samples=36, evals_rows=[_eval_row(500)]
    )
    # under a second of training: train 0.98765 - 0.12345 = 0.8642 s; no eval 0.8642 - 0.04333 = 0.82087 s;
    # pure 0.82087 - 0.01234 - 0.00567 = 0.80286 s. 64 samples timed: 64 / 0.8642 = 74.0569..., 64 / 0.82087 =
    # 77.9660..., 64 / 0.80286 = 79.7150...
    times = {
        "e2e": 1.23456,
        "train": 0.98765,
        "compile": 0.12345,
        "eval": 0.04333,
        "data": 0.01234,
        "checkpoint": 0.00567,
    }
    power = energy.energy_fields([(0.0, 100.0), (2.0, 300.0)], 0.0, 2.0, None, "nvml")  # 400 J over 2 s
    s = summary(
        progress, times, target_acc=None, global_batch_size=8, world_size=1, peak_memory_gib=0.5, energy_fields=power
    )
    assert (s["e2e_time"], s["train_time"], s["train_no_eval_time"], s["pure_training_computing_time"]) == (
        1.235,
        0.864,
        0.821,
        0.803,
    )
    assert (s["compile_time"], s["data_time"], s["checkpoint_time"]) == (0.123, 0.012, 0.006)
    assert (s["throughput(ips)_raw"], s["throughput(ips)_no_eval"], s["throughput(ips)_pure_compute"]) == (
        74.06,
        77.97,
        79.72,
    )
    assert s["tokens_per_s"] == 1218.2 and s["padded_tokens_per_s"] == 1827.3  # 1000 and 1500 / 0.82087
    assert (s["energy_j"], s["power_avg_w"], s["energy_source"], s["energy_note"]) == (400.0, 200.0, "nvml", None)
    assert s["epochs_to_target"] is None and s["target_correct"] is None  # no target


def test_summary_of_a_run_with_no_training_time_has_no_throughput():
    progress = Progress(evals_rows=[_eval_row(436)])
    times = {"e2e": 1.0, "train": 0.0, "compile": 0.0, "eval": 0.0, "data": 0.0, "checkpoint": 0.0}
    s = summary(progress, times, target_acc=0.91, global_batch_size=32, world_size=1, peak_memory_gib=0.0)
    assert s["throughput(ips)_raw"] is None and s["tokens_per_s"] is None


def test_clock_subtracts_compile_time_from_training_time():
    fresh = Clock(started=time.perf_counter()).times()  # a new run's clock: every timer at zero
    assert {name: fresh[name] for name in ("train", "eval", "data", "compile", "checkpoint")} == dict.fromkeys(
        ("train", "eval", "data", "compile", "checkpoint"), 0.0
    )
    assert 0.0 <= fresh["e2e"] < 1.0  # end to end: this process's seconds so far, none before it
    clock = Clock(started=time.perf_counter(), totals={"train": 10.0, "compile": 4.0, "eval": 1.0})
    assert clock.train_seconds() == 6.0 and clock.no_eval_seconds() == 5.0
    clock.start_training()
    time.sleep(0.05)
    running = clock.train_seconds()
    assert 6.05 <= running < 7.0  # the running interval counts
    assert clock.times()["train"] >= running + 4.0  # in the totals too (with the compile seconds in them)
    clock.add("compile", 0.5)
    assert clock.train_seconds() == pytest.approx(running - 0.5, abs=0.02)
    clock.stop_training()
    assert not clock.training and 10.05 <= clock.totals["train"] < 11.0
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
    short = p.record_eval(793, 872, eval_s=1.0, train_s=10.0, target=0.91, training=True)  # 0.9094: one row short
    assert not p.converged and (short["acc_low"], short["acc_high"]) == (0.888514, 0.926702)  # 6 decimals
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
    assert totals.checkpoint is False  # no checkpoint asked for
    window.reset(4.0)
    assert not window and window.rows == window.compile_rows == 0
    # the next window: two more compiling steps (a new shape) and one timed; its counts add to the run's
    window.add(3, torch.tensor(0.1234567), rows=8, tokens=80, padded=96, compiled=True)
    assert window
    window.add(4, torch.tensor(0.2), rows=8, tokens=70, padded=96, compiled=True)
    window.add(5, torch.tensor(0.3), rows=8, tokens=75, padded=96, compiled=False)
    totals = window.reduce(World(), stop_requested=True, checkpoint_due=True)
    assert totals.stop and totals.checkpoint
    assert (totals.compile_rows, totals.compile_tokens, totals.compile_padded) == (16, 150, 192)
    p.step = 5
    second = p.record_window(totals, lr=1e-5, now=5.123456, seconds=5.123456 - window.start)
    # loss: (0.1234567 + 0.2 + 0.3) / 3 = 0.2078189; 8 timed rows and 75 timed tokens over 1.123456 s
    assert (second["loss"], second["samples_per_s"], second["tokens_per_s"], second["elapsed_s"]) == (
        0.207819,
        7.12,
        66.8,
        5.1235,
    )
    assert p.steps_rows == [row, second]
    assert (p.samples, p.tokens, p.padded_tokens) == (120, 1425, 1824)
    assert (p.compile_samples, p.compile_tokens, p.compile_padded_tokens) == (80, 950, 1216)


def test_a_long_windows_token_count_stays_exact():
    window = RateWindow()  # opened at the clock's zero
    assert window.start == 0.0
    window.add(1, torch.tensor(0.5), rows=1, tokens=2**24 + 1, padded=2**24 + 3, compiled=False)  # past float32
    totals = window.reduce(World(), stop_requested=False)
    assert (totals.tokens, totals.padded) == (2**24 + 1, 2**24 + 3)


@pytest.mark.parametrize(
    "missing, named",
    [(["padded_tokens"], "padded_tokens"), (["compile_tokens", "converged"], "compile_tokens, converged")],
)
def test_a_checkpoint_without_a_count_this_kit_keeps_is_refused_not_restarted_from_zero(missing, named):
    state = Progress(step=3).state_dict()
    for name in missing:
        del state[name]
    with pytest.raises(KitError, match=rf"progress has no {named}: it was written by an older kit"):
        Progress.from_state(state)


@pytest.mark.parametrize(
    "corrects, target, epochs",
    [
        ([436, 700, 794], 0.91, 2),  # 794 of 872 is exactly 0.91: reached at epoch 2, not before
        ([800, 700, 795], 0.91, 2),  # the evaluation before training does not count, even at the target
        ([436, 700, 793], 0.91, None),
        ([800, 800, 800], None, None),
    ],
)
def test_epochs_to_target_is_the_first_training_epoch_whose_count_reaches_it(corrects, target, epochs):
    rows = [_eval_row(correct, epoch) for epoch, correct in enumerate(corrects)]
    assert epochs_to_target(rows, target) == epochs


_FINISHED = {
    "acc": 795 / 872,
    "acc_correct": 795,
    "dev_rows": 872,
    "best_acc": 800 / 872,
    "epochs_run": 3,
    "time_to_target": 123.456,
    "epochs_to_target": 2,
    "target_correct": 794,
}
_FINAL = "dev accuracy 0.9117 (795/872), best 0.9174"  # 795 / 872 = 0.91170, 800 / 872 = 0.91743


@pytest.mark.parametrize(
    "time_to_target, target, line",
    [
        (123.456, 0.91, f"reached 0.91 (794/872) after 123.5 s of training, at epoch 2; {_FINAL}"),
        (None, 0.92, f"did not reach 0.92 in 3 epoch(s); {_FINAL}"),
        (None, None, f"3 epoch(s) run (no target); {_FINAL}"),
    ],
)
def test_outcome_line_leads_with_the_time_to_target(time_to_target, target, line):
    assert outcome({**_FINISHED, "time_to_target": time_to_target}, target) == line
