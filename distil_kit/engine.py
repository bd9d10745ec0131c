"""The train/eval loop: FlagPerf's recipe and timers, run records, checkpoints, clean stops, one or many devices.

Read ``finetune`` top to bottom: resolve the config, load data and model (all checks before heavy work), evaluate
once, then train epoch by epoch with an evaluation after each, stopping at ``target_acc``.

Host syncs (the GPU waits for nothing else): the loss is read once per ``log_every`` optimizer steps (``_flush``),
clocks are read after a synchronize at epoch and evaluation boundaries, and around a step whose input shape is new
when compiling or capturing CUDA graphs (that step's time is compile time, kept out of the training timers, and its
rows and tokens are kept out of the rates: they count in train_samples and train_tokens only).
"""
from __future__ import annotations

import random
import resource
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoint, data, distributed, records
from .atomic import replace_dir, write_json_atomic
from .batching import EpochBatches, SplitDataset, TrimCollate, eval_batches
from .config import RunConfig
from .errors import KitError
from .graphed_step import INPUTS as STEP_INPUTS, GraphedSteps, capturable_lr
from .recipe import optimizer_groups, total_optimizer_steps
from .resolve import resolve_config, resolve_device
from .modeling import (file_sha256, load_classifier, load_tokenizer, model_folder, vocab_sha256,
                       weights_sha256)
from .preprocess import tokenize

GIB = 2**30
# "checkpoint": the training loop's share of checkpointing (records, RNG gather, host snapshot, any wait for the
# previous write); the disk write itself runs on a thread
FRESH_TIMERS = {"e2e_before": 0.0, "train": 0.0, "eval": 0.0, "data": 0.0, "compile": 0.0, "checkpoint": 0.0}


class RunInterrupted(KitError):
    """A run stopped by SIGINT/SIGTERM after writing a checkpoint; the message says how to resume."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_splits(cfg: RunConfig, tokenizer) -> dict[str, data.Split]:
    """Tokenized train (first ``max_train_samples`` rows) and dev splits; ids checked against the vocabulary."""
    splits = data.load_sst2(cfg.data_dir, vocab_size=len(tokenizer))
    splits["train"] = splits["train"].head(cfg.max_train_samples)
    if data.source_kind(cfg.data_dir) != "npz":
        splits = {name: tokenize(s, tokenizer) for name, s in splits.items()}
    return splits


class _StopSignals:
    """SIGINT/SIGTERM set a flag the loop checks after each step; a second SIGINT interrupts at once."""

    def __init__(self):
        self.received: str | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


# --- the engine --------------------------------------------------------------------------------------------------

class _Engine:
    def __init__(self, cfg: RunConfig, world: distributed.World, device: torch.device, started: float):
        self.cfg, self.world, self.device, self.started = cfg, world, device, started
        self.out = Path(cfg.output_dir)
        self.cuda = device.type == "cuda"

        self.tokenizer = load_tokenizer(cfg.model)
        self.splits = load_splits(cfg, self.tokenizer)
        seed_everything(cfg.seed)
        model = load_classifier(cfg.model).to(device)
        self._check_ids_fit(model)
        self.model = model
        self.train_model = self._wrap(model)

        train = self.splits["train"]
        self.sampler = EpochBatches(train.lengths, cfg.train_batch_size, cfg.seed, bucketed=cfg.bucket_batches,
                                    rank=world.rank, world_size=world.size)
        self.collate = TrimCollate(cfg.pad_to_multiple_of)
        self.loader = torch.utils.data.DataLoader(
            SplitDataset(train), batch_sampler=self.sampler, collate_fn=self.collate, num_workers=cfg.num_workers,
            pin_memory=self.cuda, persistent_workers=cfg.num_workers > 0,
            # Its own generator: each iter() draws a worker seed, which from the global generator would shift the
            # dropout draws of a run resumed mid-epoch away from those of the uninterrupted run.
            generator=torch.Generator().manual_seed(cfg.seed))
        self.dev = SplitDataset(self.splits["dev"])
        self.dev_batches = eval_batches(self.splits["dev"].lengths, cfg.eval_batch_size, world.rank, world.size)

        kernel = {"fused": True} if cfg.fused_adamw else {}
        self.optimizer = torch.optim.AdamW(optimizer_groups(model, cfg.weight_decay), lr=cfg.lr,
                                           capturable=cfg.cuda_graphs, **kernel)
        from transformers import get_scheduler

        self.total_steps = total_optimizer_steps(len(self.sampler), cfg.gradient_accumulation_steps, cfg.epochs)
        self.scheduler = get_scheduler("linear", self.optimizer, num_warmup_steps=0,
                                       num_training_steps=self.total_steps)
        self.graphed = None
        if cfg.cuda_graphs:
            capturable_lr(self.optimizer, device)
            self.graphed = GraphedSteps(self._loss, model, self.optimizer, device)
        self.scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
        torch.backends.cuda.matmul.allow_tf32 = cfg.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = cfg.precision == "tf32"

        # Progress of the run; everything here goes into checkpoints.
        self.epoch, self.batches_done, self.step = 0, 0, 0
        self.samples = self.tokens = 0
        self.compile_samples = self.compile_tokens = 0  # trained in steps whose time is compile time
        self.timers = dict(FRESH_TIMERS)
        self.checkpoints = checkpoint.BackgroundWriter()
        self.steps_rows: list[dict] = []
        self.evals_rows: list[dict] = []
        self.best_acc, self.time_to_target, self.converged = 0.0, None, False
        self.predictions: pd.DataFrame | None = None
        self._window: list[tuple[int, torch.Tensor]] = []  # (step, local loss) since the last flush
        self._window_rows = self._window_tokens = 0
        self._window_compile_rows = self._window_compile_tokens = 0
        self._window_start = None
        self._seen_shapes: set = set()
        self._train_clock: float | None = None
        self._scored_final = False  # predictions hold the current weights' dev scores

    # -- set-up helpers --

    def _check_ids_fit(self, model) -> None:
        size = model.get_input_embeddings().num_embeddings
        for name, split in self.splits.items():
            if int(split.input_ids.max()) >= size:
                row = int(np.flatnonzero((split.input_ids >= size).any(axis=1))[0])
                raise KitError(f"{name} split, row {row}: token id {int(split.input_ids[row].max())} is outside the "
                               f"model's embedding table of {size}; data and model come from different vocabularies")

    def _wrap(self, model):
        wrapped = model
        if self.world.distributed:
            wrapped = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.cuda else None)
        if self.cfg.compile:  # CUDA graphs are the kit's own (graphed_step), around the compiled model
            wrapped = torch.compile(wrapped)  # automatic dynamic shapes: few recompiles
        return wrapped

    def autocast(self):
        if self.cfg.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float16
            # The autocast cache of bf16 weights must not outlive a CUDA graph capture.
            return torch.autocast(self.device.type, dtype=dtype, cache_enabled=not self.cfg.cuda_graphs)
        return nullcontext()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def global_batch_size(self) -> int:
        return self.cfg.train_batch_size * self.world.size * self.cfg.gradient_accumulation_steps

    # -- clocks --

    def train_seconds(self) -> float:
        """Training-loop seconds so far (evaluation included, compile time excluded), as FlagPerf's train_time."""
        running = time.perf_counter() - self._train_clock if self._train_clock is not None else 0.0
        return self.timers["train"] + running - self.timers["compile"]

    def elapsed_no_eval(self) -> float:
        return self.train_seconds() - self.timers["eval"]

    # -- evaluation --

    @torch.inference_mode()
    def evaluate(self) -> float:
        """Accuracy on the whole dev split: each row scored once across ranks, correct counts summed."""
        model = self.model
        model.eval()
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        idx, pred, prob = [], [], []
        for rows in self.dev_batches:
            batch = self.collate([self.dev[r] for r in rows])
            with self.autocast():
                logits = model(input_ids=batch.input_ids.to(self.device),
                               attention_mask=batch.attention_mask.to(self.device)).logits
            p = torch.softmax(logits.float(), dim=-1)[:, 1]
            y = logits.argmax(dim=-1)
            correct += (y.cpu() == batch.labels).sum().to(self.device)
            idx.append(batch.idx)
            pred.append(y.cpu())
            prob.append(p.cpu())
        model.train()
        correct = int(distributed.all_reduce_sum(correct, self.world).item())
        local = (torch.cat(idx).tolist(), torch.cat(pred).tolist(), torch.cat(prob).tolist()) if idx else ([], [], [])
        parts = distributed.gather_objects(local, self.world)
        if self.world.main:
            dev = self.splits["dev"]
            frame = pd.DataFrame({"row": sum((p[0] for p in parts), []), "pred": sum((p[1] for p in parts), []),
                                  "prob_pos": sum((p[2] for p in parts), [])}).sort_values("row")
            rows = frame["row"].to_numpy()
            self.predictions = pd.DataFrame({"idx": dev.idx[rows], "sentence": dev.sentence[rows],
                                             "label": dev.label[rows], "pred": frame["pred"].to_numpy(),
                                             "prob_pos": frame["prob_pos"].round(6).to_numpy()})
        return correct / len(self.splits["dev"])

    def _evaluate_and_record(self) -> float:
        self.sync()
        t0 = time.perf_counter()
        acc = self.evaluate()
        self._scored_final = self._train_clock is not None
        self.sync()
        seconds = time.perf_counter() - t0
        if self._train_clock is not None:
            self.timers["eval"] += seconds
        train_s = round(self.train_seconds(), 4)
        self.evals_rows.append({"epoch": self.epoch, "step": self.step, "accuracy": acc, "eval_s": round(seconds, 4),
                                "train_s": train_s})
        self.best_acc = max(self.best_acc, acc)
        target = self.cfg.target_acc
        if target is not None and acc >= target and self.time_to_target is None and self._train_clock is not None:
            self.time_to_target = train_s
        return acc

    # -- training --

    def _loss(self, input_ids, attention_mask, labels, weight) -> torch.Tensor:
        """The batch's loss: rows weighted (each rank's share of the global batch; 0 for filler rows) and summed."""
        with self.autocast():
            logits = self.train_model(input_ids=input_ids, attention_mask=attention_mask).logits
        return (F.cross_entropy(logits.float(), labels, reduction="none") * weight).sum()

    def _micro_step(self, batch, group_size: int, sync_grads: bool) -> None:
        if self.graphed:  # forward, backward and the optimizer step in one replay
            loss = self.graphed.step(batch)
        else:
            tensors = {name: getattr(batch, name).to(self.device, non_blocking=True) for name in STEP_INPUTS}
            no_sync = self.train_model.no_sync if self.world.distributed and not sync_grads else nullcontext
            with no_sync():
                loss = self._loss(**tensors)
                scaled = loss / group_size
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss = loss.detach()
        self._window.append((self.step + 1, loss))
        self._window_rows += batch.n_rows
        self._window_tokens += batch.n_tokens

    def _optimizer_step(self) -> None:
        if self.graphed is None:  # a graph replay has already stepped and left no gradients behind
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

    def _flush(self, stop_requested: bool = False) -> bool:
        """Read the window's losses (the one host sync of the loss), write a steps.csv row; returns whether any
        rank asked to stop (agreed across ranks in the same collective)."""
        if not self._window:
            return stop_requested
        losses = torch.stack([loss for _, loss in self._window]).float()
        extra = torch.tensor([self._window_rows, self._window_tokens, self._window_compile_rows,
                              self._window_compile_tokens, float(stop_requested)], device=losses.device)
        packed = distributed.all_reduce_sum(torch.cat([losses, extra]), self.world).cpu()
        losses = packed[:-5] / self.world.size
        rows, tokens, compile_rows, compile_tokens = (int(v) for v in packed[-5:-1])
        stop = bool(packed[-1] > 0)
        bad = torch.nonzero(~torch.isfinite(losses)).flatten()
        if bad.numel():
            step = self._window[int(bad[0])][0]
            self._save_records()
            raise KitError(f"loss became {losses[bad[0]].item()} at step {step} (epoch {self.epoch + 1}); "
                           f"training stopped, records so far are in {self.out}")
        now = self.elapsed_no_eval()
        seconds = max(now - self._window_start, 1e-9)
        self.samples += rows
        self.tokens += tokens
        self.compile_samples += compile_rows
        self.compile_tokens += compile_tokens
        self.steps_rows.append({"step": self.step, "epoch": self.epoch + 1, "loss": round(losses.mean().item(), 6),
                                "lr": float(self.scheduler.get_last_lr()[0]),
                                "samples_per_s": round((rows - compile_rows) / seconds, 2),
                                "tokens_per_s": round((tokens - compile_tokens) / seconds, 1),
                                "elapsed_s": round(now, 4)})
        self._window, self._window_rows, self._window_tokens, self._window_start = [], 0, 0, now
        self._window_compile_rows = self._window_compile_tokens = 0
        return stop

    def train_epoch(self, signals: _StopSignals, bar) -> bool:
        """One epoch (or what is left of it); returns False when stopped by a signal (after a checkpoint)."""
        cfg, accum = self.cfg, self.cfg.gradient_accumulation_steps
        n = len(self.sampler)
        self.sampler.set_epoch(self.epoch, skip=self.batches_done)
        batches = iter(self.loader)
        self._window_start = self.elapsed_no_eval()
        while self.batches_done < n:
            group_start = self.batches_done - self.batches_done % accum
            group_size = min(accum, n - group_start)
            t0 = time.perf_counter()
            batch = next(batches)
            self.timers["data"] += time.perf_counter() - t0
            last_in_group = self.batches_done + 1 == group_start + group_size
            shape = tuple(batch.input_ids.shape)
            first_of_shape = (cfg.compile or cfg.cuda_graphs) and shape not in self._seen_shapes
            if first_of_shape:  # compilation or graph capture happens in this step: time it apart from training
                self.sync()
                t0 = time.perf_counter()
            self._micro_step(batch, group_size, sync_grads=last_in_group)
            if last_in_group:
                self._optimizer_step()
            if first_of_shape:
                self.sync()
                self.timers["compile"] += time.perf_counter() - t0
                self._seen_shapes.add(shape)
                self._window_compile_rows += batch.n_rows
                self._window_compile_tokens += batch.n_tokens
            self.batches_done += 1
            bar.update(1)
            if not last_in_group:
                continue
            at_checkpoint = cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0
            stop_now = signals.received is not None and not self.world.distributed
            if self.step % cfg.log_every == 0 or at_checkpoint or stop_now or self.batches_done == n:
                stop = self._flush(signals.received is not None)
                if self.steps_rows:
                    bar.set_postfix(loss=self.steps_rows[-1]["loss"], samples_s=self.steps_rows[-1]["samples_per_s"])
                if at_checkpoint or stop:
                    self.save_checkpoint()
                if stop:
                    return False
        return True

    # -- state --

    def state_dict(self, rng: list[dict]) -> dict:
        """Rank 0's state with every rank's ``rng`` (``rng[rank]``; ranks draw dropout for different shapes)."""
        e2e = self.timers["e2e_before"] + time.perf_counter() - self.started
        timers = {**self.timers, "train": self.train_seconds() + self.timers["compile"], "e2e_before": e2e}
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
                "rng": rng, "epoch": self.epoch, "batches_done": self.batches_done, "step": self.step,
                "samples": self.samples, "tokens": self.tokens, "compile_samples": self.compile_samples,
                "compile_tokens": self.compile_tokens, "timers": timers,
                "steps_rows": self.steps_rows, "evals_rows": self.evals_rows, "best_acc": self.best_acc,
                "time_to_target": self.time_to_target, "converged": self.converged}

    def load_state_dict(self, state: dict, source: Path) -> None:
        if len(state["rng"]) != self.world.size:  # batches, and so the rest of the run, depend on the world size
            raise KitError(f"checkpoint {source} was written by {len(state['rng'])} process(es), this run has "
                           f"{self.world.size}; resume with the same number of processes (torchrun --nproc_per_node)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.graphed:  # loading put back plain numbers where the graphs need device tensors
            capturable_lr(self.optimizer, self.device)
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(state["rng"][self.world.rank])
        for key in ("epoch", "batches_done", "step", "samples", "tokens", "compile_samples", "compile_tokens", "timers",
                    "steps_rows", "evals_rows", "best_acc", "time_to_target", "converged"):
            setattr(self, key, state[key])
        self.timers = {**FRESH_TIMERS, **self.timers}  # a timer this version added starts at zero

    def save_checkpoint(self) -> None:
        t0 = time.perf_counter()
        rng = distributed.gather_objects(checkpoint.rng_state(), self.world)

        def write():  # records first: a checkpoint on disk always has its records beside it
            self._save_records()
            self.checkpoints.save(self.state_dict(rng), self.out / "checkpoints", self.step)

        distributed.on_main(self.world, write)
        self.timers["checkpoint"] += time.perf_counter() - t0

    def _save_records(self) -> None:
        if self.world.main:
            records.write_records(self.out, self.steps_rows, self.evals_rows)

    # -- the run --

    def run(self, resumed: bool) -> None:
        try:
            with self.graphed.running() if self.graphed else nullcontext():
                self._run(resumed)
        except BaseException as error:  # the run's own error is the one reported; a failed write is noted on it
            try:
                self.checkpoints.wait()
            except KitError as write_error:
                error.add_note(str(write_error))
            raise

    def wait_for_checkpoint(self) -> None:
        """Return once the last checkpoint is on disk (a failed write raises on every rank)."""
        distributed.on_main(self.world, self.checkpoints.wait)

    def _run(self, resumed: bool) -> None:
        cfg = self.cfg
        if not resumed:
            self._evaluate_and_record()  # FlagPerf evaluates once before training
        signals = _StopSignals()
        quiet = not self.world.main
        if not quiet:
            print(f"{len(self.splits['train'])} training rows; global batch {self.global_batch_size()} "
                  f"({cfg.train_batch_size} per process x {self.world.size} process(es) x "
                  f"{cfg.gradient_accumulation_steps} accumulated); {self.total_steps} optimizer steps")
        epochs_bar = tqdm(total=cfg.epochs, initial=self.epoch, desc="epochs", disable=quiet)
        self.model.train()  # from_pretrained gives eval mode; a resumed run has had no evaluation to switch it back
        with signals:
            self._train_clock = time.perf_counter()
            while self.epoch < cfg.epochs and not self.converged:
                with tqdm(total=len(self.sampler), initial=self.batches_done, desc=f"epoch {self.epoch + 1}",
                          leave=False, disable=quiet) as bar:
                    finished = self.train_epoch(signals, bar)
                if not finished:
                    epochs_bar.close()
                    self.wait_for_checkpoint()  # inside the signal handlers: a SIGTERM cannot cut the write short
                    raise RunInterrupted(
                        f"{signals.received} received: stopped after step {self.step} and saved a checkpoint in "
                        f"{self.out / 'checkpoints'}; continue with resume: true and output_dir {self.out} (CLI: "
                        f"python -m distil_kit finetune --resume --set output_dir={self.out})")
                self.epoch += 1
                self.batches_done = 0
                acc = self._evaluate_and_record()
                self.converged = cfg.target_acc is not None and acc >= cfg.target_acc
                epochs_bar.update(1)
                epochs_bar.set_postfix(dev_acc=f"{acc:.4f}")
                self.save_checkpoint()
            self.timers["train"] = self.train_seconds() + self.timers["compile"]
            self._train_clock = None
            self.wait_for_checkpoint()
        epochs_bar.close()
        if not self._scored_final:  # resumed after the last epoch's checkpoint: score the final weights again
            self.evaluate()

    def summary(self) -> dict:
        t = self.timers
        e2e = t["e2e_before"] + time.perf_counter() - self.started
        train = t["train"] - t["compile"]
        no_eval = train - t["eval"]
        pure = no_eval - t["data"] - t["checkpoint"]
        timed_samples = self.samples - self.compile_samples  # the compiling steps' time is not in these clocks
        rate = lambda seconds: round(timed_samples / seconds, 2) if seconds > 0 else None  # noqa: E731
        if self.cuda:
            peak = torch.cuda.max_memory_allocated(self.device) / GIB
        else:  # ru_maxrss is KiB on Linux
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        return {
            "e2e_time": round(e2e, 3), "train_time": round(train, 3), "train_no_eval_time": round(no_eval, 3),
            "pure_training_computing_time": round(pure, 3), "throughput(ips)_raw": rate(train),
            "throughput(ips)_no_eval": rate(no_eval), "throughput(ips)_pure_compute": rate(pure),
            "converged": self.converged, "acc": self.evals_rows[-1]["accuracy"], "best_acc": self.best_acc,
            "epochs_run": self.epoch, "steps": self.step, "time_to_target": self.time_to_target,
            "train_samples": self.samples, "train_tokens": self.tokens,
            "tokens_per_s": round((self.tokens - self.compile_tokens) / no_eval, 1) if no_eval > 0 else None,
            "peak_memory_gib": round(peak, 3), "compile_time": round(t["compile"], 3),
            "checkpoint_time": round(t["checkpoint"], 3),
            "global_batch_size": self.global_batch_size(),
            "world_size": self.world.size, "status": "finished",
        }

    def manifest(self) -> dict:
        files = data.source_files(self.cfg.data_dir)
        return {**records.environment_manifest(), "device": str(self.device),
                "device_count": self.world.size if self.world.distributed else
                (torch.cuda.device_count() if self.cuda else 1),
                "data_source": self.cfg.data_dir or data.HUB_DATASET,
                "data_files": {str(p): file_sha256(p) for p in files},
                "model": self.cfg.model, "model_weights": weights_sha256(self.cfg.model),
                "vocab_sha256": vocab_sha256(self.tokenizer), "seed": self.cfg.seed,
                "world_size": self.world.size, "nodes": self.world.nodes, "backend": self.world.backend}

    def save_final(self) -> None:
        if not self.world.main:
            return
        self._save_records()
        records.write_predictions(self.out, self.predictions)
        if self.cfg.save_model:
            def save(tmp: Path):
                self.model.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)

            replace_dir(self.out / "model", save)
        write_json_atomic(self.out / "summary.json", self.summary())  # last: its presence marks the run finished


def finetune(config: RunConfig | dict | None = None, **overrides) -> records.Run:
    """Fine-tune per ``config`` (a RunConfig or a dict of parameters, updated by ``overrides``) and return the Run.

    Under torchrun every rank calls this; only rank 0 writes the run folder.
    """
    started = time.perf_counter()
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(dict(config or {}))
    if overrides:
        cfg = cfg.replace(**overrides)
    data.source_kind(cfg.data_dir)  # a missing data folder fails here, before anything else
    with distributed.joined_world(use_cuda=cfg.device != "cpu" and torch.cuda.is_available()) as world:
        if not world.main:
            _quiet_libraries()
        device = resolve_device(cfg.device, world)
        if cfg.resume:
            cfg = _resumed_config(cfg)
        cfg = resolve_config(cfg, device, world.size)
        model_folder(cfg.model)  # a missing folder, or one without weights or config, fails before data loading
        out = Path(cfg.output_dir)
        records.check_output_dir(out, cfg.resume, cfg.overwrite)  # refuse a taken folder before heavy loading
        engine = _Engine(cfg, world, device, started)  # loads and checks data and model
        if cfg.resume:
            state, path = checkpoint.load_latest(out / "checkpoints")
            engine.load_state_dict(state, path)
            if world.main:
                print(f"resuming from {path} (epoch {engine.epoch + 1}, step {engine.step})")
        # Only now, with every input checked, is the folder (an old run in it, with overwrite) touched.
        distributed.on_main(world, lambda: _start_run_folder(engine))
        engine.run(resumed=cfg.resume)
        engine.save_final()
    return records.Run(Path(cfg.output_dir))


def _start_run_folder(engine: _Engine) -> None:
    cfg, out = engine.cfg, engine.out
    records.prepare_output_dir(out, cfg.resume, cfg.overwrite)
    if not cfg.resume:
        write_json_atomic(out / "config.json", cfg.to_dict())
        write_json_atomic(out / "manifest.json", engine.manifest())


def _quiet_libraries() -> None:
    """Ranks other than 0 print nothing of their own: no transformers progress bars or warnings."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _resumed_config(cfg: RunConfig) -> RunConfig:
    """The interrupted run's own config: a resumed run continues exactly what was started."""
    saved = Path(cfg.output_dir or ".") / "config.json"
    if not cfg.output_dir or not saved.is_file():
        raise KitError(f"resume: output_dir {cfg.output_dir or '(empty)'} holds no run to resume; name the "
                       f"interrupted run's folder")
    # output_dir as given: the folder may have been moved or copied since config.json was written
    values = {**records.Run(saved.parent).config, "resume": True, "overwrite": False, "output_dir": cfg.output_dir}
    return RunConfig.from_dict(values, source=str(saved))
