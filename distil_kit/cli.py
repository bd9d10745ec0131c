"""python -m distil_kit: preprocess, finetune, report, random-model: thin wrappers over the package's functions."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

from .errors import KitError

BENCHMARKS = ("benchmarks/results/bench-*.csv",)  # the analysis notebook's default `benchmarks`


def _preprocess(args) -> None:
    from .preprocess import describe, preprocess

    result = preprocess(
        args.source,
        args.tokenizer,
        args.out,
        padding=args.padding,
        max_length=args.max_length,
        overwrite=args.overwrite,
    )
    print(describe(result.splits).round(3).to_string())
    for name, path in result.files.items():
        print(f"{name}: {path}")


def _finetune(args) -> None:
    from .config import load_sweep_config
    from .engine import finetune
    from .progress import outcome

    overrides = {"resume": True} if args.resume else {}
    config, seeds, concurrent = load_sweep_config(args.params, args.set, **overrides)
    if args.seeds or seeds:  # --seeds and --concurrent win over the file's
        return _sweep(config, args.seeds or seeds, args.concurrent or concurrent)
    run = finetune(config)
    if run.finished and os.environ.get("RANK", "0") == "0":  # under torchrun, one summary (rank 0's)
        s = run.summary
        print(
            f"run folder: {run.folder}\n{outcome(s, run.config['target_acc'])}\n"
            f"train_time {s['train_time']:.1f}s, throughput(ips)_no_eval {s['throughput(ips)_no_eval']}"
        )


def _sweep(config, seeds: list[int], concurrent: int) -> None:
    from .sweep import run_sweep

    table = run_sweep(config, seeds, concurrent=concurrent)
    if os.environ.get("RANK", "0") == "0":
        print(table.drop(columns="run").to_string(index=False))
        print(f"sweep record: {os.path.join(config.output_dir, 'sweep.json')}")


def seed_list(text: str) -> list[int]:
    """``--seeds 0,1,2``: distinct whole numbers (the sweep's CLI and the accuracy guard's)."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds repeat in {text!r}")
    return seeds


def _report(args) -> None:
    from .records import check_folder_path, find_runs
    from .report import write_html, write_report

    check_folder_path(args.out, "report --out")  # a file there, or no way to write, fails before any reading
    runs = find_runs(args.runs)
    if args.html:
        print(write_html(runs, args.out, benchmarks=args.benchmarks))
        return
    for path in write_report(runs, args.out, benchmarks=args.benchmarks).values():
        print(path)


def _random_model(args) -> None:
    from .modeling import save_random_distilbert

    print(save_random_distilbert(args.out, args.tokenizer, tiny=not args.base))


def parameters_help() -> str:
    """Every ``RunConfig`` parameter with its type, default and help: the finetune command's epilog."""
    import dataclasses
    import typing

    from .config import RunConfig, _base_type

    hints, lines = typing.get_type_hints(RunConfig), ["parameters (--set NAME=VALUE, or NAME: VALUE in --params):"]
    for f in dataclasses.fields(RunConfig):
        base, optional = _base_type(hints[f.name])
        kind = f"{base.__name__} or null" if optional else base.__name__
        default = "null" if f.default is None else json.dumps(f.default)
        entry = f"{f.name} ({kind}, default {default}): {f.metadata['help']}"
        lines.append(textwrap.fill(entry, width=100, initial_indent="  ", subsequent_indent="      "))
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m distil_kit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("preprocess", help="tokenize SST-2 into FlagPerf's npz schema")
    s.add_argument(
        "--source", required=True, help="GLUE TSV folder (train.tsv, dev.tsv), FlagPerf data folder, or 'hub'"
    )
    s.add_argument("--tokenizer", required=True, help="hub id or local folder of the model's tokenizer")
    s.add_argument("--out", required=True, help="output folder; files go to <out>/dataset/")
    s.add_argument(
        "--padding",
        choices=("longest", "max_length"),
        default="longest",
        help="longest: each split padded to its longest row (compact); max_length: FlagPerf's fixed width "
        "(default: %(default)s)",
    )
    s.add_argument(
        "--max-length",
        type=int,
        default=512,
        help="width of max_length padding; longer rows are truncated (default: %(default)s, FlagPerf's)",
    )
    s.add_argument("--overwrite", action="store_true", help="replace a dataset already in <out>/dataset/")
    s.set_defaults(func=_preprocess)

    s = sub.add_parser(
        "finetune",
        help="fine-tune with FlagPerf's hyperparameters; writes a run folder",
        description="Fine-tune with FlagPerf's hyperparameters (the kit's recipe, or FlagPerf's own computation\n"
        "with flagperf_exact: docs/recipe.md) and write a run folder (docs/run-folder.md).\n"
        "Parameters come from --params, then each --set in order (the last wins); values read as YAML\n"
        "(null, true, 3, 5e-5), text parameters as typed.",
        epilog=parameters_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--params", help="YAML parameter file (see params/)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one parameter")
    s.add_argument("--resume", action="store_true", help="continue the unfinished run in output_dir")
    s.add_argument(
        "--seeds",
        type=seed_list,
        metavar="S,S,...",
        help="a seed sweep: one run per seed into <output_dir>/seed-<s>/ and the sweep's record (sweep.json, "
        "sweep.csv) beside them; the same command continues a stopped sweep",
    )
    s.add_argument(
        "--concurrent",
        type=int,
        metavar="N",
        help="with --seeds: train N seeds at the same time, each in a process of its own sharing the device "
        "(default: the params file's concurrent, else 1)",
    )
    s.set_defaults(func=_finetune)

    s = sub.add_parser("report", help="figures and tables of run folders (what the analysis notebook writes)")
    s.add_argument("runs", nargs="+", help="run folders or glob patterns (a pattern keeps the finished runs)")
    s.add_argument(
        "--out", default="report_out", help="folder for the PNG figures and CSV tables (default: %(default)s)"
    )
    s.add_argument(
        "--benchmarks",
        nargs="*",
        default=list(BENCHMARKS),
        metavar="CSV",
        help="benchmark CSVs (benchmarks/bench.py) or glob patterns to plot; none: no benchmark figures "
        "(default: %(default)s)",
    )
    s.add_argument(
        "--html",
        action="store_true",
        help="also write <out>/report.html, one file to share: the analysis notebook executed over the runs and "
        "converted without its code (figures embedded, tables, configurations, the FlagPerf comparison)",
    )
    s.set_defaults(func=_report)

    s = sub.add_parser("random-model", help="save a random-initialized DistilBERT (for tests and throughput)")
    s.add_argument(
        "--tokenizer", required=True, help="hub id or local folder whose tokenizer (and vocabulary) to use"
    )
    s.add_argument("--out", required=True, help="folder to save the model and tokenizer into")
    s.add_argument("--base", action="store_true", help="the full distilbert-base architecture, not a tiny one")
    s.set_defaults(func=_random_model)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except KitError as e:
        print(f"error: {e}", file=sys.stderr)
        for note in getattr(e, "__notes__", ()):
            print(f"note: {note}", file=sys.stderr)
        return 130 if type(e).__name__ == "RunInterrupted" else 2
    return 0
