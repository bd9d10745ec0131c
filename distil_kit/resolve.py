"""A ``RunConfig`` resolved against the machine: the device, and every run-time default (model, output folder,
precision, the fast switches) filled in, so that the run's config.json says exactly what ran."""

from __future__ import annotations

from pathlib import Path

import torch

from . import distributed, graphed_step, packing, records
from .config import RunConfig
from .errors import KitError
from .modeling import DEFAULT_MODEL, model_folder, model_type


def resolve_device(name: str, world: distributed.World | None = None) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise KitError(f"parameter 'device'={name!r}: no CUDA GPU is visible to this process; use auto or cpu")
        if world is not None and world.distributed:
            return torch.device("cuda", world.local_rank)
    return torch.device(name)


def fast_precision(device: torch.device) -> str:
    """bf16 where the hardware computes in it; fp16 on older GPUs; fp32 on CPUs that would only emulate bf16."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # torch.cpu's own probes (what inductor uses): AVX512-BF16 or AMX make bf16 matmuls native on the CPU.
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16" if native else "fp32"


def fuses_steps(cfg: RunConfig, device: torch.device, packed: bool) -> bool:
    """Whether ``micro_batch_size`` null means the whole step: the fast path on a GPU, or packed (``packed``:
    the resolved ``packing``) on any device (see ``resolve_config``)."""
    return cfg.fast and (device.type == "cuda" or packed)


def resolve_packing(cfg: RunConfig, model: str, say=print) -> bool:
    """``packing`` null: on with ``fast`` where the model's family is one packing knows; another family trains
    padded, and ``say`` tells so in one line."""
    if cfg.packing is not None:
        return cfg.packing
    if not cfg.fast:
        return False
    model_folder(model)  # a missing or broken model named in one line before its config is read
    kind = model_type(model)
    if not packing.supported(kind):
        known = " and ".join(packing.FAMILIES)
        say(f"packing: off ({model} is a {kind} model; packing knows {known}): it trains padded")
    return packing.supported(kind)


def resolve_config(cfg: RunConfig, device: torch.device, world_size: int = 1, say=print) -> RunConfig:
    """Fill every run-time default (model, output folder, micro-batch size, the fast switches, precision, CPU
    threads) so config.json is whole. ``say``: where a line about a default goes (the main process prints)."""
    model = cfg.model
    if model is None:
        folder = Path(cfg.data_dir) / "model" if cfg.data_dir else None
        model = str(folder) if folder is not None and folder.is_dir() else DEFAULT_MODEL
    packed = resolve_packing(cfg, model, say)
    precision = cfg.precision or (fast_precision(device) if cfg.fast else "fp32")
    # Fused accumulation: on a GPU the fast path trains each optimizer step's rows as one micro-batch (one launch,
    # or one graph replay, per step; the same mean loss). A CPU's time follows the computed tokens: padded, one
    # micro-batch pads every row of the step to its longest, so there the step's rows, sorted by length into
    # micro-batches of train_batch_size (bucket_batches), train faster; packed, the step's rows fill its packed
    # rows as well in one micro-batch as in several, and a few large matrix products beat many small ones.
    step_rows = cfg.train_batch_size * cfg.gradient_accumulation_steps
    micro = cfg.micro_batch_size or (step_rows if fuses_steps(cfg, device, packed) else cfg.train_batch_size)
    accumulation = step_rows // micro
    graphs_fit = graphed_step.graphs_fit(device, world_size, accumulation, precision, cfg.num_workers)
    resolved = cfg.replace(
        model=model,
        output_dir=cfg.output_dir or records.default_output_dir(),
        precision=precision,
        micro_batch_size=micro,
        packing=packed,
        # packed, a micro-batch's rows of mixed lengths fill the rows better than rows of one length
        bucket_batches=cfg.bucket_batches if cfg.bucket_batches is not None else cfg.fast and not packed,
        pad_to_multiple_of=cfg.pad_to_multiple_of or (8 if cfg.fast else 1),
        fused_adamw=cfg.fused_adamw if cfg.fused_adamw is not None else cfg.fast,
        cuda_graphs=cfg.cuda_graphs if cfg.cuda_graphs is not None else cfg.fast and graphs_fit,
        threads=cfg.threads or torch.get_num_threads(),  # torch's choice: the cores, or OMP_NUM_THREADS
    )
    if resolved.cuda_graphs and not graphs_fit:
        raise KitError(
            f"parameter 'cuda_graphs'=true: needs {graphed_step.REQUIREMENTS} (this run: device {device}, "
            f"{world_size} process(es), {accumulation} micro-batch(es) per step, num_workers "
            f"{cfg.num_workers}, precision {precision})"
        )
    return resolved
