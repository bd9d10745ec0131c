"""The GPU check's figures in one place: what each part of ``benchmarks/gpu_check.sh`` measured, read from the files
it left in its results folder, set against the kit's GPU goals.

  python benchmarks/gpu_summary.py <results folder> --out summary.json

Goals (one H100/H200, bf16): FlagPerf's 10 epochs of the fast recipe in under 10 s of training time (FlagPerf's
train_time: evaluations in, captures out); at least 30% model FLOP utilisation on real tokens (6 x non-embedding
parameters x real tokens/s over the bf16 matmul rate bench.py measured on the same device); 5 seeds at once in
under twice the time of one. A target whose part did not run or left no figure is reported as unmeasured (null).
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd

TEN_EPOCHS_S = 10.0
MFU = 0.30
SEEDS_AT_ONCE_X = 2.0
TEN_FIELDS = (
    "train_time",
    "train_no_eval_time",
    "pure_training_computing_time",
    "data_time",
    "compile_time",
    "checkpoint_time",
    "throughput(ips)_no_eval",
    "tokens_per_s",
    "padded_tokens_per_s",
    "peak_memory_gib",
    "energy_j",
    "power_avg_w",
    "power_max_w",
    "energy_source",
    "energy_note",
    "epochs_run",
    "steps",
    "acc",
)


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def parts(folder: Path) -> list[dict]:
    path = folder / "parts.csv"
    return pd.read_csv(path).to_dict("records") if path.is_file() else []


def pytest_counts(folder: Path) -> dict | None:
    path = folder / "pytest.xml"
    if not path.is_file():
        return None
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [
        case.get("name")
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return {**counts, "failed": failed}


def reports(folder: Path) -> list[dict]:
    path = folder / "gpu-report.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def bench(folder: Path) -> pd.DataFrame | None:
    csvs = sorted((folder / "bench").glob("bench-*.csv"))
    return pd.read_csv(csvs[-1]) if csvs else None


def ten_epochs(folder: Path, frame: pd.DataFrame | None, name: str = "ten-epochs") -> dict | None:
    summary = _json(folder / name / "summary.json")
    if summary is None:
        return None
    config = _json(folder / name / "config.json") or {}
    out = {k: summary.get(k) for k in TEN_FIELDS}
    keys = ("precision", "micro_batch_size", "cuda_graphs", "fused_adamw", "packing")
    out.update({k: config.get(k) for k in keys})
    if summary.get("train_padded_tokens"):
        out["padded_per_real_token"] = round(summary["train_padded_tokens"] / summary["train_tokens"], 3)
    if frame is not None and summary.get("tokens_per_s"):
        rate = float(frame["matmul_tflops"].iloc[0]) * 1e12
        out["mfu_real_tokens"] = round(float(frame["flops_per_token"].iloc[0]) * summary["tokens_per_s"] / rate, 4)
        out["matmul_tflops"] = round(rate / 1e12, 1)
    return out


def seeds(folder: Path) -> dict | None:
    path = folder / "seeds-wall.csv"
    if not path.is_file():
        return None
    wall = pd.read_csv(path).set_index("what")
    if "seeds at once" not in wall.index:
        return None
    one = _json(folder / "seeds" / "one-seed-0" / "summary.json")
    many = [_json(p) for p in sorted((folder / "seeds").glob("at-once-seed-*/summary.json"))]
    out = {
        "seeds_at_once": int(wall.loc["seeds at once", "seeds"]),
        "wall_s_one": float(wall.loc["one seed alone", "wall_s"]),
        "wall_s_at_once": float(wall.loc["seeds at once", "wall_s"]),
        "finished_at_once": len([m for m in many if m]),
    }
    out["wall_ratio"] = round(out["wall_s_at_once"] / out["wall_s_one"], 3)
    if one and many:
        out["train_time_one"] = one["train_time"]
        out["train_time_at_once_max"] = max(m["train_time"] for m in many)
        out["train_time_ratio"] = round(out["train_time_at_once_max"] / one["train_time"], 3)
    return out


def targets(ten: dict | None, seed: dict | None, packed: dict | None = None) -> list[dict]:
    """The goals against the faster of the padded and packed ten-epoch runs."""

    def row(name, value, bound, met):
        return {"target": name, "measured": value, "bound": bound, "met": None if value is None else met(value)}

    runs = [r for r in (ten, packed) if r and r.get("train_time") is not None]
    ten = min(runs, key=lambda r: r["train_time"]) if runs else {}
    seed = seed or {}
    return [
        row("10 epochs, training time s (bf16)", ten.get("train_time"), TEN_EPOCHS_S, lambda v: v < TEN_EPOCHS_S),
        row("MFU on real tokens", ten.get("mfu_real_tokens"), MFU, lambda v: v >= MFU),
        row("5 seeds at once / one seed, wall", seed.get("wall_ratio"), SEEDS_AT_ONCE_X, lambda v: v < 2.0),
    ]


def gather(folder: Path) -> dict:
    frame = bench(folder)
    ten, seed = ten_epochs(folder, frame), seeds(folder)
    packed = ten_epochs(folder, frame, "ten-epochs-packed")
    bench_rows = None
    if frame is not None:
        keep = [
            c
            for c in (
                "variant",
                "label",
                "precision",
                "samples_per_s",
                "tokens_per_s",
                "padded_tokens_per_s",
                "peak_mem_gib",
                "mfu",
                "x_vs_flagperf",
                "x_vs_hf_trainer",
                "x_vs_fast",
                "x_vs_bare",
            )
            if c in frame
        ]
        bench_rows = frame[keep].round(4).to_dict("records")
    env = folder / "env.txt"
    return {
        "environment": env.read_text().strip().splitlines() if env.is_file() else None,
        "parts": parts(folder),
        "pytest": pytest_counts(folder),
        "gpu_tests": reports(folder),
        "ten_epochs": ten,
        "ten_epochs_packed": packed,
        "bench": bench_rows,
        "seeds": seed,
        "targets": targets(ten, seed, packed),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="the check's results folder")
    p.add_argument("--out", type=Path, required=True, help="summary JSON to write")
    args = p.parse_args(argv)
    if not args.folder.is_dir():
        p.error(f"{args.folder} is not a folder")
    result = gather(args.folder)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for t in result["targets"]:
        verdict = {True: "met", False: "NOT met", None: "unmeasured"}[t["met"]]
        print(f"{t['target']}: {t['measured']} (bound {t['bound']}): {verdict}")
    shown = ("parts", "pytest", "ten_epochs", "ten_epochs_packed", "seeds")
    print(json.dumps({k: result[k] for k in shown}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
