"""``python -m distil_kit``: preprocess, finetune, report — thin wrappers over the package's functions."""

from __future__ import annotations

import argparse
import os
import sys

from .errors import KitError


def _preprocess(args) -> None:
    from .preprocess import describe, preprocess

    result = preprocess(args.source, args.tokenizer, args.out, padding=args.padding, max_length=args.max_length)
    print(describe(result.splits).round(3).to_string())
    for name, path in result.files.items():
        print(f"{name}: {path}")


def _finetune(args) -> None:
    from .config import load_config
    from .engine import finetune

    overrides = {"resume": True} if args.resume else {}
    run = finetune(load_config(args.params, args.set, **overrides))
    if run.finished and os.environ.get("RANK", "0") == "0":  # under torchrun, one summary (rank 0's)
        s = run.summary
        print(
            f"run folder: {run.folder}\nacc {s['acc']:.4f} (best {s['best_acc']:.4f}), converged {s['converged']}, "
            f"{s['epochs_run']} epochs, train_time {s['train_time']:.1f}s, "
            f"throughput(ips)_no_eval {s['throughput(ips)_no_eval']}"
        )


def _report(args) -> None:
    from .analysis import report
    from .records import find_runs

    for path in report(find_runs(args.runs), args.out).values():
        print(path)


def _random_model(args) -> None:
    from .modeling import save_random_distilbert

    print(save_random_distilbert(args.out, args.tokenizer, tiny=not args.base))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m distil_kit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("preprocess", help="tokenize SST-2 into FlagPerf's npz schema")
    s.add_argument("--source", required=True, help="GLUE TSV folder, FlagPerf data folder, or 'hub'")
    s.add_argument("--tokenizer", required=True, help="hub id or local folder of the model's tokenizer")
    s.add_argument("--out", required=True, help="output folder; files go to <out>/dataset/")
    s.add_argument("--padding", choices=("longest", "max_length"), default="longest")
    s.add_argument("--max-length", type=int, default=512)
    s.set_defaults(func=_preprocess)

    s = sub.add_parser("finetune", help="fine-tune with FlagPerf's recipe; writes a run folder")
    s.add_argument("--params", help="YAML parameter file (see params/)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one parameter")
    s.add_argument("--resume", action="store_true", help="continue the unfinished run in output_dir")
    s.set_defaults(func=_finetune)

    s = sub.add_parser("report", help="figures and comparison table of run folders")
    s.add_argument("runs", nargs="+", help="run folders or globs")
    s.add_argument("--out", required=True, help="folder for the PNGs and CSV")
    s.set_defaults(func=_report)

    s = sub.add_parser("random-model", help="save a random-initialized DistilBERT (for tests and throughput)")
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--base", action="store_true", help="the full distilbert-base architecture, not a tiny one")
    s.set_defaults(func=_random_model)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except KitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 130 if type(e).__name__ == "RunInterrupted" else 2
    return 0
