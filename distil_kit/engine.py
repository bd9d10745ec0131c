"""``finetune``: the kit's recipe (or, ``flagperf_exact``, FlagPerf's own computation) and FlagPerf's timers, run
records, checkpoints, clean stops, on one or many devices.

Read ``finetune`` top to bottom: resolve the config, check the output folder, set up the ``Trainer`` (data and
model loaded and checked before heavy work), load a checkpoint when resuming, evaluate once, then train epoch by
epoch (``Trainer.train_epoch``) with an evaluation after each, stopping at ``target_acc``.

Host syncs (the GPU waits for nothing else): the losses are read once per ``log_every`` optimizer steps
(``Trainer.log``), clocks are read after a synchronize at evaluations, and around a step with an input shape not
seen before when compiling or capturing CUDA graphs (that step's time is compile time, see ``progress.Clock``).
"""

from __future__ import annotations

import os
import resource
import shutil
import time
import warnings
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from . import (
    atomic,
    batching,
    checkpoint,
    data,
    distributed,
    flagperf,
    micro_batch,
    model_card,
    packing,
    records,
    resuming,
)
from .atomic import replace_dir, write_json_atomic
from .batching import batches_of_each_shape, train_loader
from .callbacks import Callback, CallbackList, TqdmProgress
from .config import RunConfig, micro_batches_per_step
from .errors import KitError
from .evaluate import Evaluation, evaluate
from .inputs import check_ids_fit, load_splits, seed_everything
from .modeling import (
    file_sha256,
    load_classifier,
    load_tokenizer,
    max_positions,
    model_folder,
    model_type,
    vocab_sha256,
    weights_sha256,
)
from .power import EnergyMeter, measured_energy
from .progress import Clock, Progress, RateWindow, WindowTotals, summary
from .recipe import make_optimizer, make_scheduler, total_optimizer_steps
from .resolve import fuses_steps, resolve_config, resolve_device
from .step import autocast, make_step
from .stop_signals import StopSignals
from .trackers import trackers

GIB = 2**30


class RunInterrupted(KitError):
    """A run stopped by SIGINT/SIGTERM after writing a checkpoint; the message says how to resume."""


def _fitted_micro_batch(cfg: RunConfig, model, train: data.Split, device: torch.device, world) -> RunConfig:
    """``cfg`` with the largest micro-batch that fits (``micro_batch``) at the widest batch ``train`` can give (its
    longest row padded as the collate pads it); graphs off when the step no longer is one micro-batch (a graph
    replays one)."""
    longest, multiple = int(train.lengths.max()), cfg.pad_to_multiple_of
    width = min(train.input_ids.shape[1], -(-longest // multiple) * multiple)
    rows = micro_batch.fit(cfg, model, width, device, world)
    if rows == cfg.micro_batch_size:
        return cfg
    if world.main:
        print(
            f"micro_batch_size auto: {cfg.micro_batch_size} rows of up to {width} tokens do not fit in {device}'s "
            f"memory; training {rows} rows a micro-batch, {cfg.micro_batch_size // rows} accumulated"
            + (" (cuda_graphs off: a graph replays a step of one micro-batch)" if cfg.cuda_graphs else "")
        )
    return cfg.replace(micro_batch_size=rows, cuda_graphs=False)


class Trainer:
    """One run's model, data, optimizer, step, progress and clocks; ``finetune`` drives it."""

    def __init__(
        self,
        cfg: RunConfig,
        world: distributed.World,
        device: torch.device,
        started: float,
        callbacks,
        fit_micro_batch: bool = False,
    ):
        self.world, self.device = world, device
        self.out = Path(cfg.output_dir)
        self.callbacks = CallbackList(callbacks)
        kind = model_type(cfg.model)
        if cfg.packing and not packing.supported(kind):
            raise KitError(
                f"parameter 'packing'=true: packs {' and '.join(packing.FAMILIES)} models; {cfg.model} is a "
                f"{kind} model: train it with packing false"
            )
        self.tokenizer = load_tokenizer(cfg.model)
        self.splits = load_splits(cfg, self.tokenizer)
        data.check_positions(self.splits, max_positions(cfg.model), f"model {cfg.model}")  # before loading it
        seed_everything(cfg.seed)
        self.model = load_classifier(cfg.model).to(device)
        check_ids_fit(self.splits, self.model)
        if fit_micro_batch:
            cfg = _fitted_micro_batch(cfg, self.model, self.splits["train"], device, world)
        self.cfg = cfg

        self.exact = cfg.flagperf_exact  # FlagPerf's own computation (flagperf.py, docs/recipe.md)
        self.sampler, self.loader = (flagperf.train_loader if self.exact else train_loader)(
            self.splits["train"], cfg, rank=world.rank, world_size=world.size, pin_memory=device.type == "cuda"
        )

        self.accumulation = micro_batches_per_step(cfg)  # 1 when fused (micro_batch_size: the whole step)
        micro_batches = self.batches_per_epoch * cfg.epochs
        if self.exact:  # FlagPerf counts micro-batches over the run: the last partial group is never applied
            self.total_steps = micro_batches // self.accumulation
        else:
            self.total_steps = total_optimizer_steps(self.batches_per_epoch, self.accumulation, cfg.epochs)
        self.optimizer = make_optimizer(
            self.model, cfg.lr, cfg.weight_decay, fused=cfg.fused_adamw, capturable=cfg.cuda_graphs
        )
        # FlagPerf steps its schedule once per micro-batch (train/trainer.py), the kit once per optimizer step
        self.scheduler = make_scheduler(self.optimizer, micro_batches if self.exact else self.total_steps)
        self.step = make_step(self.model, self.optimizer, device, cfg, world)
        torch.backends.cuda.matmul.allow_tf32 = cfg.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = cfg.precision == "tf32"

        self.progress, self.clock, self.window = Progress(), Clock(started), RateWindow()
        self.checkpoints = checkpoint.BackgroundWriter()
        self.last_checkpoint = time.perf_counter()  # checkpoint_minutes counts from here
        self.predictions: pd.DataFrame | None = None
        self.scored_final = False  # predictions hold the final weights' dev scores
        self._seen_shapes: set[tuple] = set()
        self.step_queued = torch.cuda.Event() if device.type == "cuda" else None  # done once the last step ran
        self.flagperf_counted: int | None = None  # FlagPerf's last dev count (exact: duplicates included)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.sampler)

    @property
    def hardware(self) -> str:
        """What trains: the device (a GPU's name with it) and the CPU threads torch computes with."""
        name = f" ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else ""
        return f"{self.device}{name}, {torch.get_num_threads()} CPU thread(s)"

    @property
    def train_rows(self) -> int:
        return len(self.splits["train"])

    @property
    def global_batch_size(self) -> int:
        return self.cfg.train_batch_size * self.world.size * self.cfg.gradient_accumulation_steps

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- the loop --

    def train_epoch(self, signals: StopSignals) -> bool:
        """One epoch, or what is left of it; False when stopped by a signal (after a checkpoint)."""
        cfg, p, n = self.cfg, self.progress, self.batches_per_epoch
        self.sampler.set_epoch(p.epoch, skip=p.batches_done)
        if self.exact and p.batches_done == 0:
            flagperf.draw_loader_seed()  # FlagPerf's iter() of its training loader, at the epoch's start only
        batches = iter(self.loader)
        self.window.reset(self.clock.no_eval_seconds())
        while p.batches_done < n:
            t0 = time.perf_counter()
            # FlagPerf counts micro-batches over the run: a group left partial at an epoch's end carries over
            pending = (p.epoch * n + p.batches_done) % self.accumulation if self.exact else 0
            micro = [next(batches) for _ in range(min(self.accumulation - pending, n - p.batches_done))]
            # On a GPU the host fetches the next batch while the steps it queued still run: that time is data time
            # (left out of pure compute) only if the GPU had caught up by the end of it (an event query, no sync).
            if self.step_queued is None or self.step_queued.query():
                self.clock.add("data", time.perf_counter() - t0)
            self.train_step(micro, apply=pending + len(micro) == self.accumulation or not self.exact)
            if self.step_queued is not None:
                self.step_queued.record()
            p.batches_done += len(micro)
            stop_asked = signals.received is not None
            epoch_end = p.batches_done == n  # the epoch's own checkpoint follows its evaluation
            at_checkpoint = cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0
            log_now = p.step % cfg.log_every == 0 or at_checkpoint or epoch_end
            # One process stops at once; ranks agree on a stop, and on a checkpoint the clock asks for, in the log's
            # collective, so they stop and checkpoint at a log row.
            if log_now or (stop_asked and not self.world.distributed):
                totals = self.log(stop_asked)
                if totals.stop or not epoch_end and (at_checkpoint or totals.checkpoint):
                    self.save_checkpoint()
                if totals.stop:
                    return False
        return True

    def train_step(self, micro: list, apply: bool = True) -> None:
        """One optimizer step (without it when not ``apply``: a partial group whose gradients carry over, as
        FlagPerf's do); when it meets a new input shape while compiling or capturing, its time is compile time and
        its rows are left out of the rates."""
        shapes = {batching.shape(batch) for batch in micro}
        compiles = (self.cfg.compile or self.cfg.cuda_graphs) and not shapes <= self._seen_shapes
        if compiles:
            self.sync()
            t0 = time.perf_counter()
        if self.exact:
            loss = self.flagperf_step(micro, apply)
        else:
            loss = self.step(micro)
            self.scheduler.step()
        self.progress.step += int(apply)
        if compiles:
            self.sync()
            self.clock.add("compile", time.perf_counter() - t0)
            self._seen_shapes |= shapes
        rows, tokens = sum(b.n_rows for b in micro), sum(b.n_tokens for b in micro)
        padded = sum(b.input_ids.numel() for b in micro)
        self.window.add(self.progress.step, loss, rows, tokens, padded, compiles)

    def flagperf_step(self, micro: list, apply: bool) -> torch.Tensor:
        """FlagPerf's group (train/trainer.py, ``train_one_step``): the schedule steps after every micro-batch, so
        the update uses the learning rate after all but the group's last; the optimizer steps at the last when
        ``apply``. Its loss for the records: the mean of the micro-batches' mean losses."""
        losses = []
        for i, batch in enumerate(micro):
            update = apply and i == len(micro) - 1
            losses.append(self.step([batch]) if update else self.step.accumulate([batch]))
            with warnings.catch_warnings():  # torch warns of a schedule stepped before the first update: FlagPerf's
                warnings.simplefilter("ignore", UserWarning)
                self.scheduler.step()
        return torch.stack(losses).sum() * self.accumulation / len(micro)

    def capture_ahead(self) -> None:
        """Every input shape the rest of the run meets, captured as one CUDA graph each as training starts (timed
        as compile time), so that no step stalls mid-run for a capture."""
        p = self.progress
        batches = batches_of_each_shape(self.loader, range(p.epoch, self.cfg.epochs), skip=p.batches_done)
        self.sync()
        t0 = time.perf_counter()
        for batch in batches:
            self.step.capture(batch)
        self.sync()
        self.clock.add("compile", time.perf_counter() - t0)
        self._seen_shapes |= {batching.shape(b) for b in batches}

    def stop_agreed(self, signals: StopSignals) -> bool:
        """Whether any rank was asked to stop (one collective under torchrun)."""
        asked = torch.tensor([float(signals.received is not None)], device=self.device)
        return bool(distributed.all_reduce_sum(asked, self.world).item() > 0)

    def checkpoint_due(self) -> bool:
        minutes = self.cfg.checkpoint_minutes
        return bool(minutes) and time.perf_counter() - self.last_checkpoint >= 60 * minutes

    def log(self, stop_asked: bool) -> WindowTotals:
        """A steps.csv row from the window (reading its losses is the host sync); the window's totals say whether
        any rank asked to stop or for a timed checkpoint."""
        totals = self.window.reduce(self.world, stop_asked, self.checkpoint_due())
        bad = torch.nonzero(~torch.isfinite(totals.losses)).flatten()
        if bad.numel():  # the records hold every row before this one (each written as it was made)
            raise KitError(
                f"loss became {totals.losses[bad[0]].item()} at step {self.window.step_of(int(bad[0]))} "
                f"(epoch {self.progress.epoch + 1}); training stopped, records so far are in {self.out}"
            )
        now = self.clock.no_eval_seconds()
        row = self.progress.record_window(
            totals, float(self.scheduler.get_last_lr()[0]), now, max(now - self.window.start, 1e-9)
        )
        self.window.reset(now)
        self.record(steps=True)
        self.callbacks.fire("on_log", self, row)
        return totals

    def score(self) -> Evaluation:
        """The current weights on the dev split, in the run's precision and padding (FlagPerf's evaluation when
        exact: its count, duplicates included, kept for the summary)."""
        cfg = self.cfg
        amp = partial(autocast, self.device, cfg.precision, cfg.cuda_graphs)
        if self.exact:
            result = flagperf.evaluate(
                self.model,
                self.splits["dev"],
                batch_size=cfg.eval_batch_size,
                device=self.device,
                world=self.world,
                amp=amp,
            )
            self.flagperf_counted = result.counted
            return result
        return evaluate(
            self.model,
            self.splits["dev"],
            batch_size=cfg.eval_batch_size,
            device=self.device,
            world=self.world,
            amp=amp,
            pad_to_multiple_of=cfg.pad_to_multiple_of,
            packing=cfg.packing,
        )

    def evaluate(self) -> float:
        """Score the dev split and record it (evals.csv); its time counts as evaluation inside the loop only."""
        self.sync()
        t0 = time.perf_counter()
        result = self.score()
        self.sync()
        seconds = time.perf_counter() - t0
        self.predictions, self.scored_final = result.predictions, self.clock.training
        if self.clock.training:
            self.clock.add("eval", seconds)
        row = self.progress.record_eval(
            result.correct,
            result.total,
            seconds,
            self.clock.train_seconds(),
            self.cfg.target_acc,
            training=self.clock.training,
        )
        self.record(evals=True)
        self.callbacks.fire("on_evaluate", self, row)
        return result.accuracy

    # -- state --

    def state_dict(self, rng: list[dict]) -> dict:
        """Everything a resumed run needs; ``rng[rank]`` is each rank's RNG state (ranks draw different dropout)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.step.scaler.state_dict() if self.step.scaler else None,
            "rng": rng,
            # exact: the gradients of a group left partial at an epoch's end, which the next epoch completes
            "grads": [p.grad for p in self.model.parameters()] if self.exact else None,
            "timers": self.clock.state_dict(),
            **self.progress.state_dict(),
        }

    def load_state_dict(self, state: dict, source: Path) -> None:
        if len(state["rng"]) != self.world.size:  # batches, and so the rest of the run, depend on the world size
            raise KitError(
                f"checkpoint {source} was written by {len(state['rng'])} process(es), this run has "
                f"{self.world.size}; resume with the same number of processes (torchrun --nproc_per_node)"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step.optimizer_loaded()
        if self.step.scaler and state["scaler"]:
            self.step.scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"][self.world.rank])
        if state.get("grads"):
            for param, grad in zip(self.model.parameters(), state["grads"], strict=True):
                param.grad = None if grad is None else grad.to(param.device)
        self.progress = Progress.from_state(state)
        self.clock = Clock(self.clock.started, state["timers"])

    def save_checkpoint(self) -> None:
        t0 = self.last_checkpoint = time.perf_counter()
        rng = distributed.gather_objects(checkpoint.rng_state(), self.world)

        def write():  # the records beside it already hold every row up to this step (Trainer.record)
            self.checkpoints.save(self.state_dict(rng), self.out / "checkpoints", self.progress.step)

        distributed.on_main(self.world, write)
        self.clock.add("checkpoint", time.perf_counter() - t0)
        self.callbacks.fire("on_checkpoint", self, self.progress.step)

    def wait_for_checkpoint(self) -> None:
        """Return once the last checkpoint is on disk (a failed write raises on every rank)."""
        distributed.on_main(self.world, self.checkpoints.wait)

    def save_records(self) -> None:
        """steps.csv and evals.csv whole from the progress, fsynced: at the start (a resume's cut to its checkpoint)
        and in the finished run."""
        if self.world.main:
            records.write_records(self.out, self.progress.steps_rows, self.progress.evals_rows)

    def record(self, steps: bool = False, evals: bool = False) -> None:
        """steps.csv or evals.csv rewritten with the row just made, so a killed run keeps its rows up to the last
        one (each write atomic). Cheap next to what it follows (a log row's host sync, an evaluation); in the loop
        its time is the loop's writing (checkpoint time), not compute."""
        if not self.world.main:
            return
        t0 = time.perf_counter()
        p = self.progress
        # No fsync (a few ms a row on a busy disk): a killed process loses nothing the kernel holds, and after a
        # crash of the machine the resume rewrites both files from its checkpoint (save_records, fsynced).
        steps_rows, evals_rows = (p.steps_rows if steps else None), (p.evals_rows if evals else None)
        records.write_records(self.out, steps_rows, evals_rows, fsync=False)
        if self.clock.training:
            self.clock.add("checkpoint", time.perf_counter() - t0)

    def summary(self) -> dict:
        result = summary(
            self.progress,
            self.clock.times(),
            target_acc=self.cfg.target_acc,
            global_batch_size=self.global_batch_size,
            world_size=self.world.size,
            peak_memory_gib=peak_memory_gib(self.device),
            energy_fields=measured_energy(self.callbacks),
        )
        if self.exact:  # FlagPerf's own figures where its definitions differ from the kit's (run_pretraining.py)
            micro_batches = self.progress.epoch * self.batches_per_epoch
            result["flagperf_acc"] = self.flagperf_counted / len(self.splits["dev"])  # duplicates counted
            # every micro-batch counted as full, on every device
            result["flagperf_num_trained_samples"] = micro_batches * self.cfg.train_batch_size * self.world.size
        return result


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def train(trainer: Trainer, signals: StopSignals, resumed: bool) -> None:
    """The run: an evaluation first (FlagPerf's), then epochs until ``epochs`` or the target accuracy. A stop asked
    for at any point (``signals``) ends it at the next place a checkpoint can be written, with that checkpoint."""
    cfg, p = trainer.cfg, trainer.progress
    trainer.callbacks.fire("on_run_start", trainer)
    if not resumed:
        trainer.evaluate()
        if trainer.stop_agreed(signals):  # asked while loading or during the first evaluation
            _stop(trainer, signals, checkpoint=True)
    trainer.model.train()  # from_pretrained gives eval mode; a resumed run has had no evaluation to switch it back
    trainer.clock.start_training()
    if cfg.cuda_graphs:
        trainer.capture_ahead()
    while p.epoch < cfg.epochs and not p.converged:
        if not trainer.train_epoch(signals):
            _stop(trainer, signals, checkpoint=False)  # train_epoch has written it
        p.epoch += 1
        p.batches_done = 0
        trainer.evaluate()
        trainer.save_checkpoint()
        if p.epoch < cfg.epochs and not p.converged and trainer.stop_agreed(signals):  # asked during the evaluation
            _stop(trainer, signals, checkpoint=False)
    trainer.clock.stop_training()
    trainer.wait_for_checkpoint()
    if not trainer.scored_final:  # resumed after the last epoch's checkpoint: score the final weights again
        trainer.predictions = trainer.score().predictions


def _stop(trainer: Trainer, signals: StopSignals, checkpoint: bool) -> None:
    if checkpoint:
        trainer.save_checkpoint()
    trainer.wait_for_checkpoint()  # inside the signal handlers: a SIGTERM cannot cut the write short
    trainer.callbacks.fire("on_stop", trainer, signals.received)
    raise RunInterrupted(
        f"{signals.received or 'a stop'} received: stopped after step {trainer.progress.step} and saved a "
        f"checkpoint in {trainer.out / 'checkpoints'}; continue with resume: true and output_dir {trainer.out} "
        f"(CLI: python -m distil_kit finetune --resume --set output_dir={trainer.out})"
    )


def finetune(
    config: RunConfig | dict | None = None, callbacks=(), progress: Callback | None = None, **overrides
) -> records.Run:
    """Fine-tune per ``config`` (a RunConfig or a dict of parameters, updated by ``overrides``) and return the Run.

    ``callbacks`` (``callbacks.Callback``) observe the run, after ``progress``, the progress display (the caller's
    choice: ``notebook.finetune`` hands in a ``notebook.NotebookProgress``; by default terminal bars).
    Under torchrun every rank calls this; only rank 0 writes the run folder.
    """
    started = time.perf_counter()
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(dict(config or {}))
    if overrides:
        cfg = cfg.replace(**overrides)
    cfg = _after_elastic_restart(cfg)
    if cfg.resume:  # the saved run's parameters (a refusal if others are asked for)
        cfg = resuming.resumed_config(cfg)
    data.source_kind(cfg.data_dir)  # a missing data folder fails here, before anything else
    # SIGINT/SIGTERM from here on only ask for a stop: the run ends at its next checkpoint, never mid-write.
    with (
        StopSignals() as signals,
        distributed.joined_world(
            cfg.device != "cpu" and torch.cuda.is_available(), cfg.collective_timeout_s
        ) as world,
    ):
        if not world.main:
            _quiet_libraries()
        device = resolve_device(cfg.device, world)
        auto_micro = cfg.micro_batch_size is None  # a resumed run keeps its own
        cfg = resolve_config(cfg, device, world.size, say=print if world.main else lambda _: None)
        # micro_batch_size auto and fused on a GPU: the whole step if it fits in the device's memory
        fit_micro = auto_micro and device.type == "cuda" and fuses_steps(cfg, device, cfg.packing)
        model_folder(cfg.model)  # a missing folder, or one without weights or config, fails before data loading
        # (a fast run's was checked already, resolving packing from the model's family)
        out = Path(cfg.output_dir)
        records.check_folder_path(out, "output_dir")
        # one process per run folder; the run's CPU threads (resolve_config: torch's choice unless set)
        with records.lock_run(out) if world.main else nullcontext(), torch_threads(cfg.threads):
            distributed.on_main(world, lambda: _tidy(out))
            # A taken folder, a resume without a readable checkpoint or with another world size: refused before
            # loading.
            records.check_output_dir(out, cfg.resume, cfg.overwrite, world_size=world.size)
            if cfg.resume:
                distributed.on_main(world, lambda: resuming.check_data_unchanged(out, cfg.data_dir))
            # the trackers start here, before loading: one that cannot is a one-line error, not one after training
            callbacks = [
                progress or TqdmProgress(),
                EnergyMeter.for_device(device, world),
                *trackers(cfg, world),
                *callbacks,
            ]
            trainer = Trainer(cfg, world, device, started, callbacks, fit_micro)  # loads, checks inputs
            if cfg.resume:
                state, path = checkpoint.load_latest(out / "checkpoints")
                trainer.load_state_dict(state, path)
                if world.main:
                    print(f"resuming from {path} (epoch {trainer.progress.epoch + 1}, step {trainer.progress.step})")
            # Only now, with every input checked, is the folder (an old run in it, with overwrite) touched.
            distributed.on_main(world, lambda: _start_run_folder(trainer))
            _run(trainer, signals, resumed=cfg.resume)
    return records.Run(Path(cfg.output_dir))


@contextmanager
def torch_threads(threads: int):
    """torch's CPU threads set to ``threads`` while inside, then back: in a kernel the next run starts from torch's
    own choice again."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(trainer: Trainer, signals: StopSignals, resumed: bool) -> None:
    """``train``, then the final files; the run's own error is the one reported, a failed write noted on it."""
    try:
        with trainer.step.running():
            train(trainer, signals, resumed)
    except BaseException as error:
        try:
            trainer.checkpoints.wait()
        except KitError as write_error:
            error.add_note(str(write_error))
        if trainer.world.main and records.settle_replaced(trainer.out) == "restored":
            error.add_note(f"the run it was to overwrite is back in {trainer.out}")
        raise
    result = trainer.summary()
    if trainer.world.main:
        _save_final(trainer, result)
        records.settle_replaced(trainer.out)
        if signals.received:  # asked for while the final files were written: the run finished first
            print(f"{signals.received} received while saving the finished run: its files are complete")
    trainer.callbacks.fire("on_run_end", trainer, result)


def _save_final(trainer: Trainer, result: dict) -> None:
    """The finished run's files; a failed write (a full disk) leaves the run unfinished with its last checkpoint,
    which a resume scores and saves again."""
    try:
        trainer.save_records()  # fsynced, as every file summary.json marks finished (rows came without: record)
        records.write_predictions(trainer.out, trainer.predictions)
        if trainer.cfg.save_model:

            def save(tmp: Path):
                trainer.model.save_pretrained(tmp)
                trainer.tokenizer.save_pretrained(tmp)
                model_card.write_model_card(tmp, trainer.out, result)

            replace_dir(trainer.out / "model", save)
        write_json_atomic(trainer.out / "summary.json", result)  # last: its presence marks the run finished
    except OSError as e:
        raise KitError(
            f"{trainer.out}: the finished run's files could not be written ({checkpoint.write_error(e)}); its last "
            f"checkpoint is kept: make room, then resume (resume: true) to write them"
        ) from e
    if not trainer.cfg.keep_checkpoints:  # a finished run is never resumed: its checkpoints only take space
        shutil.rmtree(trainer.out / "checkpoints", ignore_errors=True)


def _after_elastic_restart(cfg: RunConfig) -> RunConfig:
    """Under ``torchrun --max-restarts``, a restarted attempt continues the run the failed attempt left in
    ``output_dir``: from its last checkpoint, or from the start when it died before its first one."""
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    out = Path(cfg.output_dir) if cfg.output_dir else None
    if attempt == 0 or cfg.resume or out is None or records.run_state(out) != "unfinished":
        return cfg
    has_checkpoint = bool(checkpoint.checkpoints(out / "checkpoints"))
    if os.environ.get("RANK", "0") == "0":
        how = "resuming it from its last checkpoint" if has_checkpoint else "it had no checkpoint: starting it again"
        print(f"torchrun restart {attempt}: {out} holds the failed attempt's run; {how}")
    return cfg.replace(resume=True, overwrite=False) if has_checkpoint else cfg.replace(overwrite=True)


def _tidy(out: Path) -> None:
    """What earlier processes left: the run an interrupted overwrite set aside (restored or dropped), and the
    temporary files of killed writes."""
    if records.settle_replaced(out) == "restored":
        print(f"{out}: the overwrite that stopped before its first checkpoint left the earlier run; it is back")
    atomic.remove_leftovers(out)


def _start_run_folder(trainer: Trainer) -> None:
    cfg, out = trainer.cfg, trainer.out
    records.prepare_output_dir(out, cfg.resume, cfg.overwrite)
    write_json_atomic(out / "config.json", cfg.to_dict())  # on a resume: with its safe changes (resuming)
    if not cfg.resume:
        write_json_atomic(out / "manifest.json", _manifest(trainer))
    # The records from the start: empty, or a resume's cut to its checkpoint (rows a killed run logged after the
    # checkpoint are trained again, and would be there twice).
    trainer.save_records()


def _manifest(trainer: Trainer) -> dict:
    cfg, world = trainer.cfg, trainer.world
    cuda = trainer.device.type == "cuda"
    return {
        **records.environment_manifest(),
        "device": str(trainer.device),
        "device_count": world.size if world.distributed else (torch.cuda.device_count() if cuda else 1),
        "data_source": cfg.data_dir or data.HUB_DATASET,
        "data_files": {str(p): file_sha256(p) for p in data.source_files(cfg.data_dir)},
        "model": cfg.model,
        "model_weights": weights_sha256(cfg.model),
        "vocab_sha256": vocab_sha256(trainer.tokenizer),
        "seed": cfg.seed,
        "world_size": world.size,
        "nodes": world.nodes,
        "backend": world.backend,
    }


def _quiet_libraries() -> None:
    """Ranks other than 0 print nothing of their own: no transformers progress bars or warnings."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
