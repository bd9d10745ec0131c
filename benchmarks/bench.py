"""Side-by-side training throughput at FlagPerf's recipe (global batch 256) on one SST-2 slice, in one process:
FlagPerf as it ran, a plain HF Trainer script, the kit at FlagPerf's settings, the kit's fast mode, and a bare
PyTorch loop over the fast mode's own batches.

Every variant trains the first ``--rows`` training rows of SST-2 for one epoch in optimizer steps of 256 rows
(micro-batches of 32, 8 accumulated: FlagPerf's A100 1x1 configuration), lr 5e-5, weight decay 0, linear decay,
no warm-up, seed 0:

  a  FlagPerf as it ran: the kit's ``flagperf_exact`` mode, which computes what FlagPerf's code computes
     (docs/recipe.md: its seeded RandomSampler, every row at the files' 512 width, 32 x 8 accumulation counted over
     the run with each micro-batch's loss divided by 8, the scheduler stepped per micro-batch, its evaluation of 4
     rows at a time), on the slice padded to 512 by the kit's preprocess. FlagPerf's "fp32" ran with TF32
     matmuls (NVIDIA's container on A100s): on a GPU with TF32, ``a`` runs with TF32 allowed and ``a-fp32`` strict
     fp32, and every ratio is to the faster of the two; on a CPU there is no TF32 and ``a`` is fp32.
  b  a plain Hugging Face ``Trainer`` script at FlagPerf's settings: ``per_device_train_batch_size=32``,
     ``gradient_accumulation_steps=8``, ``max_grad_norm=0`` (FlagPerf does not clip), ``DataCollatorWithPadding``
     (pad to each micro-batch's longest row), its defaults otherwise (fused AdamW), in bf16 wherever d runs in bf16
     (GPUs, CPUs with native bf16), no evaluation, logging and saving off.
  c  the kit (``distil_kit.engine.finetune``) at FlagPerf's settings (fast=False).
  d  the kit's fast mode padded (fast=True, packing=False): on a GPU each step as one micro-batch of 256 (or the
     largest part of it that fits, micro_batch.py), on a CPU as 8 micro-batches sorted by length within the step
     (see resolve.py).
  p  the kit's fast mode packed (its default for DistilBERT: whole sentences end to end, packing.py), the same steps,
     each as one micro-batch (on a CPU too).
  q  a bare loop, as e, over exactly p's packed batches.
  e  the practical limit: a bare PyTorch loop (no records, no checks, no data loading: the batches are collated
     and on the device before the clock starts) over exactly d's batches, with d's precision and optimizer.

Reported per variant: samples/s, real and padded tokens/s (real: the rows' own tokens; padded: what the model
computed), peak memory, and model FLOP utilisation: 6 x the model's non-embedding parameters x real tokens/s over
the bf16 matmul rate this script measures on the same device (``matmul_tflops``); ratios of samples/s to a, b and e.

Timing: one whole epoch over the slice for every variant (first step included), after one untimed process-wide
warm-up (a few forward/backward/AdamW steps of the model, which are then thrown away). For b and e the clock runs
from the first batch to the end of the last optimizer step (model loading, tokenizing and the Trainer's set-up
excluded); for a, c and d it is the kit's own ``throughput(ips)_no_eval`` and ``tokens_per_s`` from summary.json
(evaluation excluded; on a GPU with compile or CUDA graphs, the steps that compile or capture are excluded and
shown as compile_s). Peak memory: on a GPU ``torch.cuda.max_memory_allocated`` during the variant (stats reset
before it); on CPU the peak process RSS during the variant minus the RSS just before it, model loading included (see
measure.PeakMemory).

On CPU FlagPerf's 512-padded recipe is slow: ``--flagperf-rows`` gives variant a fewer rows (every one of its
micro-batches has the same [32, 512] shape, so its samples/s does not depend on which rows it gets; as in FlagPerf,
a last accumulation group shorter than 8 micro-batches is trained but never applied).

The CSV goes to bench_out/ (ignored by git); ``--out benchmarks/results`` records a result. Fast vs plain dev
accuracy is benchmarks/guard.py.

Examples:
  python benchmarks/bench.py --tiny                                   # seconds: the CI smoke run
  python benchmarks/bench.py --rows 2048 --flagperf-rows 64 --threads 2   # CPU
  python benchmarks/bench.py --rows 16384 --flagperf-rows 4096        # GPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout: import the kit from it
    sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    ACCUMULATION,
    BATCH,
    LR,
    MAX_LEN,
    SEED,
    STEP_ROWS,
    BenchError,
    Context,
    add_run_options,
    check_positive,
    fast_label,
    fast_settings,
    lead_columns,
    minilm_folder,
    run_kit,
    write_csv,
    write_slice,
)
from measure import Contention, PeakMemory, environment, matmul_tflops, sync, trim_heap  # noqa: E402

from distil_kit.errors import KitError  # noqa: E402
from distil_kit.resolve import resolve_config, resolve_device  # noqa: E402

VARIANTS = {
    "a": "FlagPerf as it ran (pad 512, 32 x 8)",
    "b": "HF Trainer (32 x 8, dynamic padding)",
    "c": "kit, FlagPerf settings",
    "d": "kit, fast, padded",
    "e": "bare loop over d's batches",
    "p": "kit, fast, packed",
    "q": "bare loop over p's batches",
}
BARE = {"e": "d", "q": "p"}  # each bare loop and the kit variant whose batches it trains
STRICT_FP32 = "a-fp32"  # variant a again with TF32 off, where the GPU has TF32
# The targets this CPU's table is held to: (variant, ratio column, at least this many times the reference).
CPU_TARGETS = (
    ("d", "x_vs_hf_trainer", 2.5),
    ("d", "x_vs_flagperf", 100.0),
    ("d", "x_vs_bare", 0.9),
    ("p", "x_vs_fast", 1.3),
    ("p", "x_vs_hf_trainer", 2.5),
    ("p", "x_vs_bare", 0.9),
)
PADDING_SHARE = 0.9  # and d turns at least this share of its padding advantage over b into speed
TIMING = (
    "whole epoch per variant after an untimed process-wide warm-up; b/e timed here from first batch to last "
    "optimizer step, a/c/d summary.json throughput(ips)_no_eval (eval and compile steps excluded)"
)


# --- the model -------------------------------------------------------------------------------------------------


def build_model(spec: str, tokenizer: str, tiny: bool, tmp: Path) -> str:
    """The model folder every variant loads: ``spec`` itself, or a random DistilBERT saved under ``tmp``
    (throughput does not depend on the weights)."""
    from distil_kit.modeling import model_folder, save_random_distilbert

    if spec != "random-distilbert":
        model_folder(spec)
        return spec
    return str(save_random_distilbert(tmp / "model", tokenizer, tiny=tiny))


def load_model(folder: str, device: torch.device):
    from distil_kit.modeling import load_classifier

    torch.manual_seed(SEED)  # the same classifier head for every variant
    return load_classifier(folder).to(device)


def non_embedding_parameters(folder: str) -> int:
    """The parameters a token's forward and backward multiply through (the 6 N of 6 N FLOPs per token): all but
    the embedding tables, which are looked up."""
    model = load_model(folder, torch.device("cpu"))
    return sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)


def warm_up(model_dir: str, device: torch.device, steps: int) -> None:
    """Untimed forward/backward/AdamW steps on a throw-away model: CUDA context, cuBLAS handles, the allocator and
    oneDNN primitives are ready before the first timed variant, whichever it is."""
    if steps <= 0:
        return
    model = load_model(model_dir, device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    vocab = model.get_input_embeddings().num_embeddings
    widths = (MAX_LEN, 64) if device.type == "cuda" else (64,)
    for width in widths:
        for _ in range(steps):
            ids = torch.randint(1000, vocab, (BATCH, width), device=device)
            out = model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                labels=torch.zeros(BATCH, dtype=torch.long, device=device),
            )
            out.loss.backward()
            opt.step()
            opt.zero_grad()
    sync(device)
    del model, opt


TIMED_FIELDS = (  # timed_row's keys, in its order
    "rows_timed",
    "steps",
    "precision",
    "micro_batch",
    "seconds",
    "samples_per_s",
    "real_tokens",
    "tokens_per_s",
    "padded_tokens",
    "padded_tokens_per_s",
    "peak_mem_gib",
    "mem_kind",
    "compile_s",
)


def timed_row(precision: str, micro: int, steps: int, rows: int, real: int, padded: int, seconds: float, mem) -> dict:
    """A variant's CSV fields from what it trained and how long it took."""
    return {
        "rows_timed": rows,
        "steps": steps,
        "precision": precision,
        "micro_batch": micro,
        "seconds": seconds,
        "samples_per_s": rows / seconds,
        "real_tokens": real,
        "tokens_per_s": real / seconds,
        "padded_tokens": padded,
        "padded_tokens_per_s": padded / seconds,
        "peak_mem_gib": mem.gib,
        "mem_kind": mem.kind,
        "compile_s": 0.0,
    }


# --- a: FlagPerf as it ran -------------------------------------------------------------------------------------


def has_tf32(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


@contextmanager
def tf32_matmuls(allowed: bool):
    """TF32 in matmuls and convolutions on or off for the block (as NVIDIA's container had it on), then as before."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def run_flagperf(ctx: Context, rows: int, tf32: bool, name: str) -> dict:
    """Variant a: the kit's ``flagperf_exact`` mode (FlagPerf's own computation, docs/recipe.md) on the slice's first
    ``rows`` rows padded to 512 as FlagPerf's files are (``preprocess --padding max_length``)."""
    from distil_kit.preprocess import preprocess

    folder = ctx.tmp / "flagperf-512"
    if not (folder / "dataset").is_dir():  # a-fp32 trains the same files
        preprocess(ctx.data, ctx.model, folder, padding="max_length", max_length=MAX_LEN)
    row, _ = run_kit(
        ctx,
        fast=False,
        rows=rows,
        name=name,
        flagperf_exact=True,
        data_dir=str(folder),
        precision="tf32" if tf32 else "fp32",
        eval_batch_size=4,
    )
    # timed_row's fields in its order, as the other variants timed here (the CSV's columns follow the first row's)
    return {key: row[key] for key in TIMED_FIELDS}


# --- b: a plain Hugging Face Trainer script ----------------------------------------------------------------------


class _Encoded(torch.utils.data.Dataset):
    def __init__(self, enc, labels):
        self.enc, self.labels = enc, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {
            "input_ids": self.enc["input_ids"][i],
            "attention_mask": self.enc["attention_mask"][i],
            "labels": int(self.labels[i]),
        }


def run_hf_trainer(ctx: Context, train, bf16: bool) -> dict:
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    from distil_kit.modeling import load_tokenizer

    device = ctx.device
    tokenizer = load_tokenizer(ctx.model)
    enc = tokenizer(list(train.sentence), truncation=True, max_length=MAX_LEN)  # unpadded lists, as run_glue
    dataset = _Encoded(enc, train.label)
    collator = DataCollatorWithPadding(tokenizer)

    class Clock(TrainerCallback):
        t0 = t1 = None
        padded = 0

        def on_train_begin(self, args, state, control, **kw):
            sync(device)
            Clock.t0 = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kw):
            sync(device)
            Clock.t1 = time.perf_counter()

    def counting_collator(features):
        batch = collator(features)
        Clock.padded += batch["input_ids"].numel()
        return batch

    args = TrainingArguments(
        output_dir=str(ctx.tmp / "hf-trainer"),
        num_train_epochs=1,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUMULATION,
        max_grad_norm=0.0,  # FlagPerf does not clip gradients
        learning_rate=LR,
        weight_decay=0.0,
        lr_scheduler_type="linear",
        warmup_steps=0,
        seed=SEED,
        bf16=bf16,
        use_cpu=device.type == "cpu",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    with PeakMemory(device) as mem:
        model = load_model(ctx.model, device)
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=counting_collator,
            processing_class=tokenizer,
            callbacks=[Clock()],
        )
        result = trainer.train()
    if Clock.t0 is None or Clock.t1 is None:
        raise BenchError("variant b: the Trainer never called the timing callback")
    if not math.isfinite(result.training_loss):
        raise BenchError(f"variant b: training loss {result.training_loss}")
    del trainer, model
    real = int(sum(map(len, enc["input_ids"])))
    precision = "bf16" if bf16 else "fp32"
    seconds = Clock.t1 - Clock.t0
    return timed_row(precision, BATCH, result.global_step, len(train), real, Clock.padded, seconds, mem)


# --- c, d: the kit; e: a bare loop over d's batches ------------------------------------------------------------


def kit_batches(folder: Path, device: torch.device | None = None) -> tuple[object, list[list]]:
    """The resolved config of the kit run in ``folder`` and its first epoch's batches, step by step, exactly as its
    engine drew them (same sampler, same collate); on ``device`` if given."""
    from distil_kit.batching import tensors, train_loader
    from distil_kit.config import RunConfig, micro_batches_per_step
    from distil_kit.inputs import load_splits
    from distil_kit.modeling import load_tokenizer

    cfg = RunConfig.from_dict(json.loads((folder / "config.json").read_text()))
    split = load_splits(cfg, load_tokenizer(cfg.model))["train"]
    sampler, loader = train_loader(split, cfg.replace(num_workers=0))
    sampler.set_epoch(0)
    batches = list(loader)
    if device is not None:
        batches = [b._replace(**{k: t.to(device) for k, t in tensors(b).items()}) for b in batches]
    per_step = micro_batches_per_step(cfg)
    return cfg, [batches[i : i + per_step] for i in range(0, len(batches), per_step)]


def run_bare(ctx: Context, kit_folder: Path) -> dict:
    """A forward, backward and optimizer step per step of a kit run's batches (d's, or p's packed ones), nothing
    else: what the kit's engine adds to that run's time is what it lacks against this."""
    from distil_kit.batching import tensors
    from distil_kit.packing import PackedClassifier
    from distil_kit.recipe import make_optimizer, make_scheduler
    from distil_kit.step import autocast, batch_loss

    device = ctx.device
    cfg, steps = kit_batches(kit_folder, device)
    amp = partial(autocast, device, cfg.precision)
    with PeakMemory(device) as mem, tf32_matmuls(cfg.precision == "tf32"):
        model = load_model(ctx.model, device)
        model.train()
        scored = PackedClassifier(model) if cfg.packing else model
        optimizer = make_optimizer(model, LR, weight_decay=0.0, fused=cfg.fused_adamw)
        scheduler = make_scheduler(optimizer, len(steps))
        scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None  # as d's step has
        loss = torch.zeros((), device=device)
        sync(device)
        t0 = time.perf_counter()
        for step in steps:
            for b in step:
                loss = batch_loss(scored, amp, **tensors(b))
                (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        sync(device)
        seconds = time.perf_counter() - t0
    if not math.isfinite(loss.item()):
        raise BenchError(f"the bare loop over {kit_folder.name}'s batches: loss became {loss.item()}")
    del model, optimizer
    rows = sum(b.n_rows for step in steps for b in step)
    real = sum(b.n_tokens for step in steps for b in step)
    padded = sum(b.input_ids.numel() for step in steps for b in step)
    return timed_row(cfg.precision, cfg.micro_batch_size, len(steps), rows, real, padded, seconds, mem)


# --- the benchmark ------------------------------------------------------------------------------------------------


def parse_variants(spec: str) -> list[str]:
    variants = [v.strip() for v in spec.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants or len(set(variants)) != len(variants):
        raise BenchError(f"--variants {spec!r}: expected a comma-separated subset of {','.join(VARIANTS)}")
    for bare, kit in BARE.items():
        if bare in variants and kit not in variants:
            raise BenchError(f"--variants {spec!r}: {bare} trains {kit}'s batches, so it needs {kit} too")
    return [v for v in VARIANTS if v in variants]  # d before e and p before q, whatever order was given


def add_ratios(frame: pd.DataFrame) -> None:
    """samples/s over each reference's (a: the faster of a and a-fp32), and real tokens/s over the faster a's."""
    speed = frame.set_index("variant")["samples_per_s"]
    flagperf = speed[speed.index.isin(["a", STRICT_FP32])]
    refs = {"x_vs_flagperf": flagperf.max() if len(flagperf) else math.nan}
    refs["x_vs_hf_trainer"] = speed.get("b", math.nan)
    refs["x_vs_fast"] = speed.get("d", math.nan)
    for col, ref in refs.items():
        frame[col] = frame["samples_per_s"] / ref
    # each kit variant, and its bare loop, over that bare loop over the same batches (d: e; p: q)
    bare_of = {kit: bare for bare, kit in BARE.items()} | dict(zip(BARE, BARE, strict=True))
    frame["x_vs_bare"] = [
        row.samples_per_s / speed.get(bare_of.get(row.variant, "e"), math.nan) for row in frame.itertuples()
    ]
    tokens = frame.set_index("variant")["tokens_per_s"]
    frame["tokens_x_vs_flagperf"] = frame["tokens_per_s"] / (tokens[flagperf.idxmax()] if len(flagperf) else math.nan)


def benchmark(args) -> pd.DataFrame:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = device.type == "cpu"
    rows = args.rows or (64 if args.tiny else 2048 if cpu else 16384)
    flagperf_rows = min(args.flagperf_rows or (rows if not cpu or args.tiny else min(rows, 64)), rows)
    dev_rows = args.dev_rows or (32 if args.tiny else None)
    variants = parse_variants(args.variants)
    fast_set, fast_cfg = fast_settings(args.fast_set)
    if "packing" in fast_set:
        raise BenchError("--fast-set packing: the benchmark sets it, d padded and p packed; run both variants")
    # b in bf16 exactly where d runs in bf16 (the kit's own resolution), so no ratio rests on precision alone
    fast_bf16 = resolve_config(fast_cfg.replace(packing=False), device).precision == "bf16"  # reads no model
    tokenizer = args.tokenizer or minilm_folder()
    tmp = Path(tempfile.mkdtemp(prefix="distil-bench-"))
    try:
        data_dir, train = write_slice(Path(args.data), rows, dev_rows, tmp / "data")
        if len(train) < rows:
            raise BenchError(f"--rows {rows}: {args.data} has only {len(train)} training rows")
        model = build_model(args.model, tokenizer, args.tiny, tmp)
        ctx = Context(device, model, data_dir, tmp)
        env = environment(device)
        tflops = matmul_tflops(device)
        flops_per_token = 6 * non_embedding_parameters(model)
        print(
            f"{env['device_name']} | torch {env['torch']} | transformers {env['transformers']} | model "
            f"{args.model}{' (tiny)' if args.tiny else ''} | rows {rows} (a: {flagperf_rows}) | global batch "
            f"{STEP_ROWS} ({BATCH} x {ACCUMULATION}) | bf16 matmuls {tflops:.3g} TFLOP/s",
            flush=True,
        )
        warm_up(model, device, args.warmup_steps)
        runs = [("a", "a", True), (STRICT_FP32, "a", False)] if has_tf32(device) else [("a", "a", False)]
        runs = [r for r in runs if r[1] in variants] + [(v, v, None) for v in variants if v != "a"]
        results = {}
        for key, v, tf32 in runs:
            print(f"--- variant {key}: {VARIANTS[v]}{' (strict fp32)' if key == STRICT_FP32 else ''}", flush=True)
            contention = Contention()
            t0 = time.perf_counter()
            if v == "a":
                results[key] = run_flagperf(ctx, flagperf_rows, tf32=tf32, name=key)
            elif v == "b":
                results[key] = run_hf_trainer(ctx, train, bf16=fast_bf16)
            elif v in BARE:
                results[key] = run_bare(ctx, tmp / f"kit-{BARE[v]}")
            else:
                settings = {**fast_set, "packing": v == "p"} if v in ("d", "p") else {}
                results[key], _ = run_kit(ctx, fast=v in ("d", "p"), rows=rows, name=v, **settings)
            r = results[key]
            r["wall_s"] = time.perf_counter() - t0
            r["others_cpu_share"] = share = contention.others_share()
            r["mfu"] = flops_per_token * r["tokens_per_s"] / (tflops * 1e12)
            spare = 1 - min(torch.get_num_threads(), os.cpu_count() or 1) / (os.cpu_count() or 1)
            if cpu and share > spare + 0.1:  # they took cores this process's threads wanted
                print(
                    f"    warning: other processes used {share:.0%} of the CPUs during this variant: its timing "
                    f"is slowed by them",
                    flush=True,
                )
            print(
                f"    {r['samples_per_s']:.2f} samples/s, {r['tokens_per_s']:.0f} real tokens/s, "
                f"{r['padded_tokens_per_s']:.0f} padded tokens/s ({r['wall_s']:.0f} s wall)",
                flush=True,
            )
            trim_heap()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    labels = {
        **VARIANTS,
        STRICT_FP32: VARIANTS["a"] + ", strict fp32",
        "d": VARIANTS["d"] + fast_label(fast_set),
        "p": VARIANTS["p"] + fast_label(fast_set),
    }
    frame = pd.DataFrame([{"variant": k, "label": labels[k], **r} for k, r in results.items()])
    add_ratios(frame)
    model_name = "random-distilbert-tiny" if args.model == "random-distilbert" and args.tiny else args.model
    meta = {
        **env,
        "rows": rows,
        "flagperf_rows": flagperf_rows,
        "model": model_name,
        "global_batch": STEP_ROWS,
        "matmul_tflops": tflops,
        "flops_per_token": flops_per_token,
        "timing": TIMING,
    }
    lead_columns(frame, meta)
    return frame


def targets(frame: pd.DataFrame) -> list[tuple[str, bool]]:
    """This CPU's targets as sentences, each with whether the table meets it (none on a GPU: its issue's)."""
    if not frame["device"].iloc[0].startswith("cpu"):
        return []
    by = frame.set_index("variant")
    out = []
    for v, column, at_least in CPU_TARGETS:
        if v in by.index and not math.isnan(by.loc[v, column]):
            ratio = by.loc[v, column]
            out.append(
                (
                    f"{v} >= {at_least:g}x {column[5:]}: {ratio:.3g}x, {'met' if ratio >= at_least else 'NOT met'}",
                    ratio >= at_least,
                )
            )
    if {"b", "d"} <= set(by.index):  # a CPU's time follows the padded tokens: what d saves of b's padding
        advantage = (by.loc["b", "padded_tokens"] / by.loc["b", "real_tokens"]) / (
            by.loc["d", "padded_tokens"] / by.loc["d", "real_tokens"]
        )
        need, ratio = PADDING_SHARE * advantage, by.loc["d", "x_vs_hf_trainer"]
        out.append(
            (
                f"d >= {PADDING_SHARE:g} x its padding advantage over b ({advantage:.3g}x) = {need:.3g}x b: "
                f"{ratio:.3g}x, {'met' if ratio >= need else 'NOT met'}",
                ratio >= need,
            )
        )
    return out


def print_table(frame: pd.DataFrame) -> None:
    cols = [
        "variant",
        "label",
        "precision",
        "rows_timed",
        "steps",
        "seconds",
        "samples_per_s",
        "tokens_per_s",
        "padded_tokens_per_s",
        "peak_mem_gib",
        "mfu",
        "compile_s",
        "x_vs_flagperf",
        "x_vs_hf_trainer",
        "x_vs_fast",
        "x_vs_bare",
    ]
    first = frame.iloc[0]
    print(
        f"\n{first['device_name']} | torch {first['torch']} | transformers {first['transformers']} | "
        f"{first['date']}\nmodel {first['model']} | rows {first['rows']} (variant a: {first['flagperf_rows']}) | "
        f"global batch {first['global_batch']} | bf16 matmuls {first['matmul_tflops']:.3g} TFLOP/s"
    )
    print(frame[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"memory: {first['mem_kind']}; timing: {first['timing']}")
    for sentence, _ in targets(frame):
        print(f"target {sentence}")


# --- CLI ----------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument(
        "--rows",
        type=int,
        default=None,
        help="first N training rows (default: 16384 on GPU, 2048 on CPU, 64 with --tiny)",
    )
    p.add_argument(
        "--flagperf-rows",
        type=int,
        default=None,
        help="rows for variant a (default: --rows on GPU, min(rows, 64) on CPU)",
    )
    p.add_argument(
        "--model",
        default="random-distilbert",
        help="random-distilbert (a random-initialized DistilBERT-base built with --tokenizer) or a model folder",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer folder (default: the packaged MiniLM's, which is distilbert-base-uncased's vocabulary)",
    )
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    add_run_options(p, dev_rows_default="all 872; 32 with --tiny")
    p.add_argument("--tiny", action="store_true", help="tiny random model and a few rows: seconds, for CI")
    p.add_argument(
        "--warmup-steps", type=int, default=3, help="untimed warm-up steps per width before the variants (0: none)"
    )
    args = p.parse_args(argv)
    check_positive(p, args, ("rows", "flagperf_rows", "dev_rows", "threads"))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        frame = benchmark(args)
    except (BenchError, KitError) as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        return 2
    path = write_csv(frame, Path(args.out), "bench")
    print_table(frame)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
