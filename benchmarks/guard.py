"""Accuracy guard: the kit's fast mode against its plain mode, same data, same seed, one pair of runs per seed.

Each pair trains one epoch on SST-2 (or its first ``--rows`` rows) from the pretrained MiniLM (or ``--model``) and
is scored on the same dev rows. The rule (``distil_kit.compare``): fast passes when the 95% interval of fast - plain
(accuracy points) lies above -``--margin``, i.e. a loss of more than the margin is excluded; exit status 1
otherwise. Over several seeds the interval is the t interval of the per-seed paired differences (one epoch's
accuracy moves with the seed, and the two modes batch and pad differently, so dropout draws other masks); at one
seed it is the paired bootstrap over the dev rows, which leaves the seed's own spread out.

The CSV (one row per run, with the paired differences and the verdict) goes to bench_out/, which git ignores;
``--out benchmarks/results`` records a result.

Examples:
  python benchmarks/guard.py --seeds 0,1,2                        # full SST-2, MiniLM, three seeds
  python benchmarks/guard.py --rows 4000 --fast-set packing=false
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

from distil_kit import compare, stats  # noqa: E402
from distil_kit.cli import seed_list  # noqa: E402
from distil_kit.errors import KitError  # noqa: E402
from distil_kit.resolve import resolve_device  # noqa: E402


def accuracy_guard(args) -> tuple[pd.DataFrame, bool]:
    """Plain and fast runs per seed, compared row by row on the dev split; the verdict by ``compare.judged``."""
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
        rows, correct, paired = [], {}, {}
        for seed in args.seeds:
            for name, fast in (("plain", False), ("fast", True)):
                extra = fast_set if fast else {}
                r, correct[name] = common.run_kit(ctx, fast=fast, rows=len(train), name=name, seed=seed, **extra)
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
            paired[seed] = stats.paired_comparison(correct["plain"], correct["fast"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    interval, ok, sentence = compare.judged(paired, "plain", "fast", args.margin)
    frame = pd.DataFrame(rows)
    frame["diff_points_fast_minus_plain"] = frame["seed"].map({s: p.difference for s, p in paired.items()})
    frame["mcnemar_p"] = frame["seed"].map({s: p.p_value for s, p in paired.items()})
    frame["interval_low_points"], frame["interval_high_points"] = interval.low, interval.high
    frame["margin_points"] = args.margin
    frame["passed"] = ok
    frame["verdict"] = sentence
    common.lead_columns(frame, {**env, "rows": len(train), "model": model, "epochs": 1})
    return frame, ok


# --- CLI ----------------------------------------------------------------------------------------------------------


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
    p.add_argument(
        "--margin",
        type=float,
        default=compare.MARGIN_POINTS,
        help=f"the loss of accuracy (points) the interval must exclude (default: {compare.MARGIN_POINTS:g})",
    )
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
    print(f"{frame['verdict'].iloc[0]}\n{path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
