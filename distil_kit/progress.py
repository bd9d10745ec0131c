"""A run's progress and clocks as data, and the summary computed from them.

``Progress`` is everything a run has done so far (it goes into every checkpoint, whole); ``Clock`` holds the timers
and owns their one rule: the training clock runs through the steps that compile or capture, whose seconds are kept
apart in ``compile`` and subtracted from training time. ``RateWindow`` collects the losses and counts of the steps
since the last steps.csv row. ``summary`` is a pure function of progress and times.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch

from . import distributed, energy, stats
from .errors import KitError

TIMERS = ("train", "eval", "data", "compile", "checkpoint")


@dataclass
class Progress:
    epoch: int = 0  # epochs finished
    batches_done: int = 0  # micro-batches of the current epoch trained (on this rank)
    step: int = 0  # optimizer steps
    samples: int = 0  # training rows, all ranks
    tokens: int = 0  # their real (unpadded) tokens
    padded_tokens: int = 0  # the tokens the model computed: rows x batch width, padding included
    compile_samples: int = 0  # the share of samples trained in steps whose time is compile time
    compile_tokens: int = 0
    compile_padded_tokens: int = 0
    best_acc: float = 0.0
    time_to_target: float | None = None  # training seconds when dev accuracy first reached the target
    converged: bool = False
    steps_rows: list[dict] = field(default_factory=list)  # steps.csv so far
    evals_rows: list[dict] = field(default_factory=list)  # evals.csv so far

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> Progress:
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in state]
        if missing:  # a count that restarted from 0 would be a wrong rate, not a missing one
            raise KitError(
                f"the checkpoint's progress has no {', '.join(missing)}: it was written by an older kit; resume it "
                f"with the kit's commit named in the run's manifest.json (git_commit)"
            )
        return cls(**{f.name: state[f.name] for f in dataclasses.fields(cls)})

    def record_eval(
        self, correct: int, total: int, eval_s: float, train_s: float, target: float | None, training: bool
    ) -> dict:
        """An evals.csv row: the correct count with its Wilson interval. Only evaluations inside the training loop
        (not the one before it) reach the target."""
        accuracy = stats.proportion(correct, total)
        row = {
            "epoch": self.epoch,
            "step": self.step,
            "accuracy": accuracy.value,
            "correct": correct,
            "total": total,
            "acc_low": round(accuracy.interval.low, 6),
            "acc_high": round(accuracy.interval.high, 6),
            "eval_s": round(eval_s, 4),
            "train_s": round(train_s, 4),
        }
        self.evals_rows.append(row)
        self.best_acc = max(self.best_acc, accuracy.value)
        reached = target is not None and correct >= stats.correct_needed(target, total)
        if training:
            self.converged = reached
            if reached and self.time_to_target is None:
                self.time_to_target = row["train_s"]
        return row

    def record_window(self, window: WindowTotals, lr: float, now: float, seconds: float) -> dict:
        """Count a window's rows and tokens; its steps.csv row. Rates leave out the compiling steps' rows, whose
        time is not in ``seconds``."""
        self.samples += window.rows
        self.tokens += window.tokens
        self.padded_tokens += window.padded
        self.compile_samples += window.compile_rows
        self.compile_tokens += window.compile_tokens
        self.compile_padded_tokens += window.compile_padded
        row = {
            "step": self.step,
            "epoch": self.epoch + 1,
            "loss": round(window.losses.mean().item(), 6),
            "lr": lr,
            "samples_per_s": round((window.rows - window.compile_rows) / seconds, 2),
            "tokens_per_s": round((window.tokens - window.compile_tokens) / seconds, 1),
            "elapsed_s": round(now, 4),
        }
        self.steps_rows.append(row)
        return row


class Clock:
    """The run's timers, in seconds, carried across a resume. ``started`` is this process's start
    (``time.perf_counter``); ``e2e_before`` the end-to-end seconds of the processes before it."""

    def __init__(self, started: float, totals: dict | None = None):
        self.started = started
        self.totals = {"e2e_before": 0.0, **dict.fromkeys(TIMERS, 0.0), **(totals or {})}
        self._train_since: float | None = None

    @property
    def training(self) -> bool:
        return self._train_since is not None

    def start_training(self) -> None:
        self._train_since = time.perf_counter()

    def stop_training(self) -> None:
        self.totals["train"] += time.perf_counter() - self._train_since
        self._train_since = None

    def add(self, timer: str, seconds: float) -> None:
        self.totals[timer] += seconds

    def train_seconds(self) -> float:
        """Training-loop seconds so far, evaluation included and compile time excluded (FlagPerf's train_time)."""
        running = time.perf_counter() - self._train_since if self._train_since is not None else 0.0
        return self.totals["train"] + running - self.totals["compile"]

    def no_eval_seconds(self) -> float:
        return self.train_seconds() - self.totals["eval"]

    def times(self) -> dict:
        """The totals now: the training clock's running interval counted, ``e2e`` up to this moment."""
        return {
            **self.totals,
            "train": self.train_seconds() + self.totals["compile"],
            "e2e": self.totals["e2e_before"] + time.perf_counter() - self.started,
        }

    def state_dict(self) -> dict:
        times = self.times()
        return {**{name: times[name] for name in TIMERS}, "e2e_before": times["e2e"]}


@dataclass(frozen=True)
class WindowTotals:
    """A window's losses and counts summed over ranks; ``stop``: some rank asked to stop; ``checkpoint``: some
    rank's checkpoint clock ran out."""

    losses: torch.Tensor
    rows: int
    tokens: int
    padded: int
    compile_rows: int
    compile_tokens: int
    compile_padded: int
    stop: bool
    checkpoint: bool = False


class RateWindow:
    """The steps since the last steps.csv row: their losses (left on the device until ``reduce``) and counts."""

    def __init__(self, start: float = 0.0):
        self.reset(start)

    def reset(self, start: float) -> None:
        self.start = start  # the clock's no-eval seconds when the window opened
        self.losses: list[tuple[int, torch.Tensor]] = []  # (step, its loss)
        self.rows = self.tokens = self.padded = self.compile_rows = self.compile_tokens = self.compile_padded = 0

    def add(self, step: int, loss: torch.Tensor, rows: int, tokens: int, padded: int, compiled: bool) -> None:
        self.losses.append((step, loss))
        self.rows += rows
        self.tokens += tokens
        self.padded += padded
        if compiled:
            self.compile_rows += rows
            self.compile_tokens += tokens
            self.compile_padded += padded

    def __bool__(self) -> bool:
        return bool(self.losses)

    def reduce(self, world: distributed.World, stop_requested: bool, checkpoint_due: bool = False) -> WindowTotals:
        """Sum over ranks in one collective, the stop and checkpoint requests with it (every rank then decides
        alike); the host sync of the losses."""
        losses = torch.stack([loss for _, loss in self.losses]).float()
        counts = [self.rows, self.tokens, self.padded, self.compile_rows, self.compile_tokens, self.compile_padded]
        # float64: token counts of a long window pass float32's exact integers (2**24)
        extra = torch.tensor(
            [*counts, float(stop_requested), float(checkpoint_due)], dtype=torch.float64, device=losses.device
        )
        packed = distributed.all_reduce_sum(torch.cat([losses.double(), extra]), world).cpu()
        *sums, stop, due = (int(v) for v in packed[-8:])
        return WindowTotals(packed[:-8].float() / world.size, *sums, stop > 0, due > 0)

    def step_of(self, index: int) -> int:
        return self.losses[index][0]


def epochs_to_target(evals_rows: list[dict], target: float | None) -> int | None:
    """The first epoch after which the dev count reached the target (the evaluation before training aside)."""
    if target is None:
        return None
    reached = [
        r["epoch"] for r in evals_rows if r["epoch"] > 0 and r["correct"] >= stats.correct_needed(target, r["total"])
    ]
    return int(reached[0]) if reached else None


def outcome(summary: dict, target_acc: float | None) -> str:
    """How a finished run ended, in one line, time to target first (the notebook's display and the CLI end with
    it)."""
    final = (
        f"dev accuracy {summary['acc']:.4f} ({summary['acc_correct']}/{summary['dev_rows']}), "
        f"best {summary['best_acc']:.4f}"
    )
    if target_acc is None:
        return f"{summary['epochs_run']} epoch(s) run (no target); {final}"
    if summary["time_to_target"] is None:
        return f"did not reach {target_acc:g} in {summary['epochs_run']} epoch(s); {final}"
    return (
        f"reached {target_acc:g} ({summary['target_correct']}/{summary['dev_rows']}) after "
        f"{summary['time_to_target']:.1f} s of training, at epoch {summary['epochs_to_target']}; {final}"
    )


def summary(
    progress: Progress,
    times: dict,
    *,
    target_acc: float | None,
    global_batch_size: int,
    world_size: int,
    peak_memory_gib: float,
    energy_fields: dict | None = None,
) -> dict:
    """summary.json: time to target first (training seconds and epochs until dev accuracy first reached the
    target; null when it never did), then FlagPerf's timers and throughputs, then the kit's own fields. ``times`` as
    ``Clock.times``.
    The final accuracy comes with its correct count, its 95% Wilson interval and the count the target needs.

    FlagPerf's three times nest: train_time (the training loop, evaluations included) holds train_no_eval_time,
    which holds pure_training_computing_time (forward, backward and optimizer step: data loading and the loop's
    share of checkpointing taken out). Compile time is in none of them, and the samples of the compiling steps
    are left out of the throughputs. ``energy_fields``: the training's energy (``energy.energy_fields``; null, with
    why, when not given).
    """
    train = times["train"] - times["compile"]
    no_eval = train - times["eval"]
    pure = no_eval - times["data"] - times["checkpoint"]
    timed_samples = progress.samples - progress.compile_samples

    def rate(seconds: float) -> float | None:
        return round(timed_samples / seconds, 2) if seconds > 0 else None

    tokens_per_s = (progress.tokens - progress.compile_tokens) / no_eval if no_eval > 0 else None
    padded_per_s = (progress.padded_tokens - progress.compile_padded_tokens) / no_eval if no_eval > 0 else None
    last = progress.evals_rows[-1]
    return {
        "time_to_target": progress.time_to_target,
        "epochs_to_target": epochs_to_target(progress.evals_rows, target_acc),
        "e2e_time": round(times["e2e"], 3),
        "train_time": round(train, 3),
        "train_no_eval_time": round(no_eval, 3),
        "pure_training_computing_time": round(pure, 3),
        "throughput(ips)_raw": rate(train),
        "throughput(ips)_no_eval": rate(no_eval),
        "throughput(ips)_pure_compute": rate(pure),
        "converged": progress.converged,
        "acc": last["accuracy"],
        "acc_correct": last["correct"],
        "dev_rows": last["total"],
        "acc_interval": [last["acc_low"], last["acc_high"]],
        "target_correct": stats.correct_needed(target_acc, last["total"]) if target_acc is not None else None,
        "best_acc": progress.best_acc,
        "epochs_run": progress.epoch,
        "steps": progress.step,
        "train_samples": progress.samples,
        "train_tokens": progress.tokens,
        "tokens_per_s": round(tokens_per_s, 1) if tokens_per_s is not None else None,
        "train_padded_tokens": progress.padded_tokens,
        "padded_tokens_per_s": round(padded_per_s, 1) if padded_per_s is not None else None,
        "packing_efficiency": round(progress.tokens / progress.padded_tokens, 4) if progress.padded_tokens else None,
        "peak_memory_gib": round(peak_memory_gib, 3),
        "compile_time": round(times["compile"], 3),
        "checkpoint_time": round(times["checkpoint"], 3),
        "data_time": round(times["data"], 3),
        "global_batch_size": global_batch_size,
        "world_size": world_size,
        **(energy_fields if energy_fields is not None else energy.unmeasured("not measured")),
        "status": "finished",
    }
