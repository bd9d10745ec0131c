"""Side-by-side training throughput on one SST-2 slice, in one process: FlagPerf's recipe, a plain HF Trainer
script, the kit at FlagPerf's settings and the kit's fast mode.

Variants, all on the first ``--rows`` training rows of SST-2, one epoch, batch 32, lr 5e-5, wd 0, linear decay,
no warm-up, seed 0:

  a  FlagPerf's recipe as published, re-implemented here (not through the kit's engine): fp32, every row padded to
     512, RandomSampler with a seeded generator, plain ``torch.optim.AdamW`` on FlagPerf's no-decay groups
     (``distil_kit.recipe``), a linear schedule, the loss read with ``.item()`` every step.
  b  a plain Hugging Face ``Trainer`` script: ``TrainingArguments`` + ``DataCollatorWithPadding`` (pad to the
     longest row of each batch), its defaults otherwise (fused AdamW), in bf16 wherever d runs in bf16 (GPUs, CPUs
     with native bf16), no evaluation, logging and saving off.
  c  the kit (``distil_kit.engine.finetune``) at FlagPerf's settings (fast=False).
  d  the kit's fast mode (fast=True).

Timing: one whole epoch over the slice for every variant (first step included), after one untimed process-wide
warm-up (a few forward/backward/AdamW steps of the model, which are then thrown away). For a and b the clock runs
from the first batch to the end of the last optimizer step (model loading, tokenizing and the Trainer's set-up
excluded); for c and d it is the kit's own ``throughput(ips)_no_eval`` and ``tokens_per_s`` from summary.json
(evaluation excluded; on a GPU with compile or CUDA graphs, the steps that compile or capture are excluded and
shown as compile_s). Tokens are real (unpadded) tokens of the trained rows. Peak memory: on a GPU
``torch.cuda.max_memory_allocated`` during the variant (stats reset before it); on CPU the peak process RSS during
the variant minus the RSS just before it, model loading included (see measure.PeakMemory).

On CPU FlagPerf's 512-padded recipe is slow: ``--flagperf-rows`` gives variant a fewer rows (every one of its
batches has the same [32, 512] shape, so its samples/s does not depend on which rows it gets).

The CSV goes to bench_out/ (ignored by git); ``--out benchmarks/results`` records a result. Fast vs plain dev
accuracy is benchmarks/guard.py.

Examples:
  python benchmarks/bench.py --tiny                                  # seconds: the CI smoke run
  python benchmarks/bench.py --rows 512 --flagperf-rows 32 --threads 1   # CPU
  python benchmarks/bench.py --rows 16384 --flagperf-rows 2048      # GPU
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout: import the kit from it
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    BATCH,
    LR,
    MAX_LEN,
    SEED,
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
from measure import Contention, PeakMemory, environment, sync, trim_heap  # noqa: E402

from distil_kit.errors import KitError  # noqa: E402
from distil_kit.resolve import resolve_config, resolve_device  # noqa: E402

VARIANTS = {
    "a": "FlagPerf recipe (fp32, pad 512)",
    "b": "HF Trainer (dynamic padding)",
    "c": "kit, FlagPerf settings",
    "d": "kit, fast",
}
TIMING = (
    "whole epoch per variant after an untimed process-wide warm-up; a/b timed here from first batch to last "
    "optimizer step, c/d summary.json throughput(ips)_no_eval (eval and compile steps excluded)"
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


# --- a: FlagPerf's recipe --------------------------------------------------------------------------------------


class _FlagPerfDataset(torch.utils.data.Dataset):
    """FlagPerf's DistilBertDataset: rows of the 512-padded npz arrays as a dict of numpy values."""

    def __init__(self, split):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        s = self.split
        return {
            "sentence": s.sentence[i],
            "label": s.label[i],
            "input_ids": s.input_ids[i],
            "attention_mask": s.attention_mask[i],
        }


def _flagperf_collate(features):
    """FlagPerf's default_data_collator (transformers 4.31's): labels from 'label', numpy rows stacked, strings
    dropped."""
    batch = {"labels": torch.tensor([f["label"] for f in features], dtype=torch.long)}
    for k, v in features[0].items():
        if k != "label" and not isinstance(v, str):
            batch[k] = torch.tensor(np.stack([f[k] for f in features]))
    return batch


def run_flagperf(ctx: Context, train) -> dict:
    from distil_kit.modeling import load_tokenizer
    from distil_kit.preprocess import tokenize
    from distil_kit.recipe import make_optimizer, make_scheduler

    device = ctx.device
    split = tokenize(train, load_tokenizer(ctx.model), padding="max_length", max_length=MAX_LEN)
    generator = torch.Generator()
    generator.manual_seed(SEED)
    dataset = _FlagPerfDataset(split)
    sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
    loader = torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=BATCH, collate_fn=_flagperf_collate, drop_last=False, num_workers=0
    )
    with PeakMemory(device) as mem:
        model = load_model(ctx.model, device)
        # FlagPerf's optimizer and schedule are the kit's recipe: plain (not fused) AdamW on its two parameter
        # groups, linear decay over the epoch's steps, no warm-up
        optimizer = make_optimizer(model, LR, weight_decay=0.0)
        scheduler = make_scheduler(optimizer, len(loader))
        steps, losses = 0, []
        sync(device)
        t0 = time.perf_counter()
        for batch in loader:  # FlagPerf's train_one_epoch / train_one_step / adapter.backward
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            model.train()
            outputs = model(**batch)
            losses.append(outputs["loss"].item())
            outputs["loss"].backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            steps += 1
        sync(device)
        seconds = time.perf_counter() - t0
    if not all(math.isfinite(x) for x in losses):
        raise BenchError(f"variant a: loss became {losses[-1]}")
    del model, optimizer
    rows, tokens = len(split), int(split.lengths.sum())
    return {
        "rows_timed": rows,
        "steps": steps,
        "precision": "fp32",
        "seconds": seconds,
        "samples_per_s": rows / seconds,
        "real_tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "padded_tokens": rows * MAX_LEN,
        "peak_mem_gib": mem.gib,
        "mem_kind": mem.kind,
        "compile_s": 0.0,
    }


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
    seconds = Clock.t1 - Clock.t0
    del trainer, model
    rows, tokens = len(train), int(sum(map(len, enc["input_ids"])))
    return {
        "rows_timed": rows,
        "steps": result.global_step,
        "precision": "bf16" if bf16 else "fp32",
        "seconds": seconds,
        "samples_per_s": rows / seconds,
        "real_tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "padded_tokens": Clock.padded,
        "peak_mem_gib": mem.gib,
        "mem_kind": mem.kind,
        "compile_s": 0.0,
    }


# --- the benchmark ------------------------------------------------------------------------------------------------


def benchmark(args) -> pd.DataFrame:
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = device.type == "cpu"
    rows = args.rows or (32 if args.tiny else 512 if cpu else 8192)
    flagperf_rows = min(args.flagperf_rows or (rows if not cpu or args.tiny else min(rows, 64)), rows)
    dev_rows = args.dev_rows or (32 if args.tiny else None)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants or len(set(variants)) != len(variants):
        raise BenchError(f"--variants {args.variants!r}: expected a comma-separated subset of {','.join(VARIANTS)}")
    fast_set, fast_cfg = fast_settings(args.fast_set)
    # b in bf16 exactly where d runs in bf16 (the kit's own resolution), so no ratio rests on precision alone
    fast_bf16 = resolve_config(fast_cfg, device).precision == "bf16"
    tokenizer = args.tokenizer or minilm_folder()
    tmp = Path(tempfile.mkdtemp(prefix="distil-bench-"))
    try:
        data_dir, train = write_slice(Path(args.data), rows, dev_rows, tmp / "data")
        if len(train) < rows:
            raise BenchError(f"--rows {rows}: {args.data} has only {len(train)} training rows")
        model = build_model(args.model, tokenizer, args.tiny, tmp)
        ctx = Context(device, model, data_dir, tmp)
        env = environment(device)
        print(
            f"{env['device_name']} | torch {env['torch']} | transformers {env['transformers']} | model "
            f"{args.model}{' (tiny)' if args.tiny else ''} | rows {rows} (a: {flagperf_rows})",
            flush=True,
        )
        warm_up(model, device, args.warmup_steps)
        results = {}
        for v in variants:
            print(f"--- variant {v}: {VARIANTS[v]}", flush=True)
            contention = Contention()
            t0 = time.perf_counter()
            if v == "a":
                results[v] = run_flagperf(ctx, train.head(flagperf_rows))
            elif v == "b":
                results[v] = run_hf_trainer(ctx, train, bf16=fast_bf16)
            else:
                results[v], _ = run_kit(ctx, fast=v == "d", rows=rows, name=v, **(fast_set if v == "d" else {}))
            results[v]["wall_s"] = time.perf_counter() - t0
            results[v]["others_cpu_share"] = share = contention.others_share()
            spare = 1 - min(torch.get_num_threads(), os.cpu_count() or 1) / (os.cpu_count() or 1)
            if cpu and share > spare + 0.1:  # they took cores this process's threads wanted
                print(
                    f"    warning: other processes used {share:.0%} of the CPUs during this variant: its timing "
                    f"is slowed by them",
                    flush=True,
                )
            print(
                f"    {results[v]['samples_per_s']:.2f} samples/s, {results[v]['tokens_per_s']:.0f} tokens/s "
                f"({results[v]['wall_s']:.0f} s wall)",
                flush=True,
            )
            trim_heap()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    labels = {**VARIANTS, "d": VARIANTS["d"] + fast_label(fast_set)}
    frame = pd.DataFrame([{"variant": v, "label": labels[v], **r} for v, r in results.items()])
    for ref, col in (("a", "x_vs_flagperf"), ("b", "x_vs_hf_trainer")):
        frame[col] = frame["samples_per_s"] / results[ref]["samples_per_s"] if ref in results else float("nan")
    frame["tokens_x_vs_flagperf"] = (
        frame["tokens_per_s"] / results["a"]["tokens_per_s"] if "a" in results else float("nan")
    )
    model_name = "random-distilbert-tiny" if args.model == "random-distilbert" and args.tiny else args.model
    lead_columns(frame, {**env, "rows": rows, "flagperf_rows": flagperf_rows, "model": model_name, "timing": TIMING})
    return frame


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
        "peak_mem_gib",
        "compile_s",
        "x_vs_flagperf",
        "x_vs_hf_trainer",
    ]
    first = frame.iloc[0]
    print(
        f"\n{first['device_name']} | torch {first['torch']} | transformers {first['transformers']} | "
        f"{first['date']}\nmodel {first['model']} | rows {first['rows']} (variant a: {first['flagperf_rows']})"
    )
    print(frame[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"memory: {first['mem_kind']}; timing: {first['timing']}")


# --- CLI ----------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument(
        "--rows",
        type=int,
        default=None,
        help="first N training rows (default: 8192 on GPU, 512 on CPU, 32 with --tiny)",
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
    p.add_argument("--variants", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
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
