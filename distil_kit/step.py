"""One optimizer step behind one call: ``step(micro_batches)`` trains one optimizer step's micro-batches and
performs exactly that update, returning the step's loss (this rank's share of the mean over the step's rows, left
on the device: reading it is a host sync).

``EagerStep`` runs forward and backward per micro-batch (the rows' weights already make the micro-batches' losses
sum to the step's mean; under DDP gradients are synchronised on the last micro-batch only), then the optimizer
step, with the fp16 grad scaler where one is used. ``graphed_step.GraphedStep`` keeps the same contract with
the whole step replayed as one CUDA graph.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial

import torch
import torch.nn.functional as F

from .batching import Batch, tensors
from .config import micro_batches_per_step
from .flagperf import flagperf_loss
from .graphed_step import GraphedStep
from .packing import PackedClassifier


def autocast(device: torch.device, precision: str, cuda_graphs: bool = False):
    """bf16/fp16 autocast where the run computes in it; nothing in fp32 and tf32."""
    if precision not in ("bf16", "fp16"):
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    # The autocast cache of bf16 weights must not outlive a CUDA graph capture.
    return torch.autocast(device.type, dtype=dtype, cache_enabled=not cuda_graphs)


def batch_loss(model, amp, input_ids, attention_mask, labels, weight, **packed) -> torch.Tensor:
    """The batch's loss: rows weighted (their share of the step, see ``batching``; 0 for filler rows) and summed.
    ``packed``: a packed batch's ``position_ids`` and ``starts``, for a ``packing.PackedClassifier``."""
    with amp():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **packed).logits
    return (F.cross_entropy(logits.float(), labels, reduction="none") * weight).sum()


class EagerStep:
    """``model`` is the model as trained (wrapped in DDP or torch.compile where the run uses them)."""

    def __init__(
        self,
        model,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        amp,
        scaler: torch.amp.GradScaler | None = None,
        distributed: bool = False,
        loss=None,
    ):
        self.model, self.optimizer, self.device, self.scaler = model, optimizer, device, scaler
        self.loss = partial(loss or batch_loss, model, amp)  # ``loss(model, amp, **batch tensors)``
        self.distributed = distributed

    def running(self):
        return nullcontext()

    def optimizer_loaded(self) -> None:
        """Nothing to redo after a checkpoint is loaded (see ``GraphedStep.optimizer_loaded``)."""

    def __call__(self, micro_batches: list[Batch]) -> torch.Tensor:
        loss = self.accumulate(micro_batches)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def accumulate(self, micro_batches: list[Batch]) -> torch.Tensor:
        """Forward and backward only: the gradients add up until a later call applies them (``flagperf_exact``'s
        group left partial at an epoch's end)."""
        losses = []
        for i, batch in enumerate(micro_batches):
            inputs = {name: t.to(self.device, non_blocking=True) for name, t in tensors(batch).items()}
            last = i == len(micro_batches) - 1
            # DDP all-reduces gradients in backward: only the group's last backward needs it.
            with self.model.no_sync() if self.distributed and not last else nullcontext():
                loss = self.loss(**inputs)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            losses.append(loss.detach())
        return torch.stack(losses).sum()


def make_step(model, optimizer, device: torch.device, cfg, world) -> EagerStep | GraphedStep:
    """The run's step (``cfg``: its ``RunConfig``), made after the scheduler: graphed where ``cfg.cuda_graphs``
    (see ``graphed_step.graphs_fit``), eager otherwise; the forward runs through DDP and torch.compile where the
    run uses them, on packed batches where it packs."""
    trained = PackedClassifier(model) if cfg.packing else model
    if world.distributed:
        ids = [device.index] if device.type == "cuda" else None
        trained = torch.nn.parallel.DistributedDataParallel(trained, device_ids=ids)
    if cfg.compile:  # CUDA graphs are the kit's own (graphed_step), around the compiled model
        trained = torch.compile(trained)  # automatic dynamic shapes: few recompiles
    amp = partial(autocast, device, cfg.precision, cfg.cuda_graphs)
    if cfg.cuda_graphs:
        return GraphedStep(partial(batch_loss, trained, amp), model, optimizer, device)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    if cfg.flagperf_exact:  # FlagPerf's loss, and its DDP gradients averaged at every backward (no no_sync)
        return EagerStep(
            trained,
            optimizer,
            device,
            amp,
            scaler,
            loss=partial(flagperf_loss, accumulation=micro_batches_per_step(cfg)),
        )
    return EagerStep(trained, optimizer, device, amp, scaler, world.distributed)
