"""The largest micro-batch that fits: with ``micro_batch_size`` null (auto), the fast path on a GPU trains each
optimizer step's rows as one micro-batch; where the step's rows at the training split's longest length do not fit
in the GPU's memory, it takes the largest half, quarter, ... of the step that does, down to ``train_batch_size``,
and accumulates the rest (the same rows and mean loss per step: only the number of forward/backward passes
changes).

Each size is tried once before training with one forward and backward at the widest batch the run can draw (with
padding in its mask, as training batches have), the AdamW state it will hold (DDP's gradient buckets, the state copy
a CUDA graph capture holds) set aside; on a GPU a size whose trial peaks above
``HEADROOM`` of the device's memory counts as not fitting, for what the trial does not hold (CUDA graph pools,
fragmentation across batch widths). The RNG is left as it was, so a run's dropout draws do not depend on the trial.
"""

from __future__ import annotations

import torch

from . import distributed
from .errors import KitError
from .step import autocast

HEADROOM = 0.9  # the share of a GPU's memory a trial step may peak at


def candidates(step_rows: int, smallest: int) -> list[int]:
    """The whole step, then each half that still divides it, down to ``smallest`` rows."""
    sizes = [step_rows]
    while sizes[-1] % 2 == 0 and sizes[-1] // 2 >= smallest:
        sizes.append(sizes[-1] // 2)
    return sizes


def trial_step(
    model: torch.nn.Module, rows: int, width: int, device: torch.device, precision: str, held: int
) -> None:
    """One forward and backward of ``rows`` x ``width`` tokens with ``held`` more parameter-sized fp32 tensors
    allocated beside them; raises ``torch.cuda.OutOfMemoryError`` when they do not fit. Leaves no gradients and no
    RNG draws behind."""
    params = sum(p.numel() for p in model.parameters())
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            state = torch.empty(held * params, dtype=torch.float32, device=device)
            ids = torch.ones(rows, width, dtype=torch.long, device=device)
            mask = torch.ones_like(ids)
            mask[-1, -1] = 0  # padding, as training batches have: the masked attention kernels, not the unmasked
            model.train()
            with autocast(device, precision):
                logits = model(input_ids=ids, attention_mask=mask).logits
            logits.float().sum().backward()
            del state
    finally:
        model.zero_grad(set_to_none=True)


def _fits(model, rows: int, width: int, device: torch.device, precision: str, held: int) -> bool:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        trial_step(model, rows, width, device, precision, held)
    except torch.cuda.OutOfMemoryError:
        return False
    except RuntimeError as e:  # cuBLAS and cuDNN report a failed workspace allocation as their own error
        if "ALLOC_FAILED" in str(e) or "out of memory" in str(e):
            return False
        raise
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type != "cuda":
        return True
    return torch.cuda.max_memory_allocated(device) <= HEADROOM * torch.cuda.get_device_properties(device).total_memory


def fit(cfg, model: torch.nn.Module, width: int, device: torch.device, world: distributed.World) -> int:
    """The largest of ``candidates`` whose trial step at ``width`` tokens fits on every rank (they agree on the
    smallest). The device's peak-memory mark is reset afterwards: the run's own peak does not include the trials."""
    step_rows = cfg.train_batch_size * cfg.gradient_accumulation_steps
    # AdamW's exp_avg and exp_avg_sq; under DDP its gradient buckets; with CUDA graphs the copy of the weights and
    # both moments held while a shape is captured (graphed_step)
    held = 2 + world.distributed + 3 * bool(cfg.cuda_graphs)
    sizes = candidates(step_rows, cfg.train_batch_size)
    fitting = next((rows for rows in sizes if _fits(model, rows, width, device, cfg.precision, held)), 0)
    agreed = torch.tensor([-fitting], device=device)  # the smallest over ranks, as the largest of the negatives
    if world.distributed:
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
    fitting = -int(agreed.item())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if fitting == 0:
        raise KitError(
            f"parameter 'train_batch_size'={cfg.train_batch_size}: even {cfg.train_batch_size} rows of {width} "
            f"tokens do not fit in {device}'s memory for a training step; lower it (and raise "
            f"gradient_accumulation_steps to keep the global batch)"
        )
    return fitting
