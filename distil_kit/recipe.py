"""The kit's optimisation recipe: FlagPerf's AdamW groups (no weight decay on biases and LayerNorm weights) and a
linear learning-rate decay to zero with no warm-up over every optimizer step of the run, stepped once per optimizer
step. FlagPerf's code steps its schedule once per micro-batch over the run's micro-batches and never applies a last
partial group (docs/recipe.md, 5 and 6); ``flagperf_exact`` does as it does (``engine.Trainer.flagperf_step``)."""

from __future__ import annotations

import math

import torch

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight")  # FlagPerf's no-weight-decay parameter names


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """FlagPerf's two AdamW groups: no weight decay on biases and LayerNorm weights."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if not any(nd in n for nd in NO_DECAY)], "weight_decay": weight_decay},
        {"params": [p for n, p in named if any(nd in n for nd in NO_DECAY)], "weight_decay": 0.0},
    ]


def total_optimizer_steps(batches_per_epoch: int, accumulation: int, epochs: int) -> int:
    """Optimizer steps of the whole run: a partial accumulation group at an epoch's end is a step of its own (a
    correction: FlagPerf's code carries it into the next epoch)."""
    return math.ceil(batches_per_epoch / accumulation) * epochs


def make_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, *, fused: bool = False, capturable: bool = False
) -> torch.optim.AdamW:
    kernel = {"fused": True} if fused else {}
    return torch.optim.AdamW(optimizer_groups(model, weight_decay), lr=lr, capturable=capturable, **kernel)


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int):
    from transformers import get_scheduler

    return get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=total_steps)
