"""Accuracy guard: the kit's fast mode against its plain mode, same data, same seed, one pair of runs per seed.

Each pair trains one epoch on SST-2 (or its first ``--rows`` rows) from the pretrained MiniLM (or ``--model``) and
evaluates on the dev set. The guard passes when the mean over the seeds of the paired differences (fast - plain,
in accuracy points) is within ``--tolerance``; exit status 1 otherwise. The mean is printed with its standard error
over the seeds: one epoch's accuracy moves with the seed, and one seed does not pair the two modes closely (they
batch and pad differently, so dropout draws other masks), so several seeds are needed to tell a systematic loss
from that spread.

The CSV (one row per run, with the paired difference, the mean and its standard error) goes to bench_out/, which git
ignores; ``--out benchmarks/results`` records a result.

Examples:
  python benchmarks/guard.py --seeds 0,1,2                        # full SST-2, MiniLM, three seeds
  python benchmarks/guard.py --rows 4000 --fast-set bucket_batches=false
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout: import the kit from it
    sys.path.insert(0, str(REPO))

import common  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from measure import environment  # noqa: E402

from distil_kit.errors import KitError  # noqa: E402
from distil_kit.resolve import resolve_device  # noqa: E402


def paired_differences(acc: dict, seeds: list[int]) -> pd.Series:
    """fast - plain dev accuracy in points, per seed."""
    return pd.Series({seed: 100 * (acc[seed, "fast"] - acc[seed, "plain"]) for seed in seeds})


def standard_error(values: pd.Series) -> float | None:
    """How far the mean of ``values`` moves with the draw of seeds; None for one seed."""
    return values.std(ddof=1) / len(values) ** 0.5 if len(values) > 1 else None


def accuracy_guard(args) -> tuple[pd.DataFrame, bool]:
    """Plain and fast runs per seed; passes when the mean of the paired (same-seed) differences is in tolerance."""
    device = resolve_device(args.device)
    fast_set, _ = common.fast_settings(args.fast_set)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or common.minilm_folder()
    tmp = Path(tempfile.mkdtemp(prefix="distil-guard-"))
    try:
        data_dir, train = common.write_slice(Path(args.data), args.rows, args.dev_rows, tmp / "data")
        ctx = common.Context(device, model, data_dir, tmp)
        env = environment(device)
        print(
            f"accuracy guard: {model}, {len(train)} training rows, 1 epoch, plain vs fast, seeds {args.seeds}",
            flush=True,
        )
        rows, acc = [], {}
        for seed in args.seeds:
            for name, fast in (("plain", False), ("fast", True)):
                extra = fast_set if fast else {}
                r = common.run_kit(ctx, fast=fast, rows=len(train), name=name, seed=seed, **extra)
                acc[seed, name] = r["dev_acc"]
                rows.append(
                    {
                        "seed": seed,
                        "mode": name + (common.fast_label(fast_set) if fast else ""),
                        "dev_acc": r["dev_acc"],
                        "precision": r["precision"],
                        "samples_per_s": r["samples_per_s"],
                        "seconds": r["seconds"],
                        "compile_s": r["compile_s"],
                    }
                )
                print(
                    f"    seed {seed} {name}: dev acc {r['dev_acc']:.4f}, {r['samples_per_s']:.1f} samples/s",
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    frame = pd.DataFrame(rows)
    paired = paired_differences(acc, args.seeds)
    frame["diff_points_fast_minus_plain"] = frame["seed"].map(paired)
    frame["mean_diff_points"] = paired.mean()
    frame["sem_diff_points"] = standard_error(paired)
    frame["tolerance_points"] = args.tolerance
    ok = abs(paired.mean()) <= args.tolerance
    frame["passed"] = ok
    common.lead_columns(frame, {**env, "rows": len(train), "model": model, "epochs": 1})
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
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument(
        "--seeds",
        type=seed_list,
        default=[common.SEED],
        help="comma-separated seeds, one plain and one fast run each (default: 0)",
    )
    p.add_argument("--tolerance", type=float, default=0.5, help="allowed |mean difference| in points (default: 0.5)")
    p.add_argument("--model", default=None, help="model folder (default: the packaged pretrained all-MiniLM-L6-v2)")
    p.add_argument("--rows", type=int, default=None, help="first N training rows (default: all 67,349)")
    common.add_run_options(p)
    args = p.parse_args(argv)
    common.check_positive(p, args, ("rows", "dev_rows", "threads"))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        frame, ok = accuracy_guard(args)
    except (common.BenchError, KitError) as e:
        print(f"guard.py: error: {e}", file=sys.stderr)
        return 2
    path = common.write_csv(frame, Path(args.out), "accuracy-guard")
    print(frame[["seed", "mode", "precision", "dev_acc", "samples_per_s", "seconds"]].to_string(index=False))
    diff, sem = frame["mean_diff_points"].iloc[0], frame["sem_diff_points"].iloc[0]
    spread = f" +- {sem:.2f} (standard error)" if pd.notna(sem) else ""
    print(
        f"fast - plain, mean over seeds {args.seeds}: {diff:+.2f}{spread} points (tolerance "
        f"{args.tolerance}): {'PASS' if ok else 'FAIL'}\n{path}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
