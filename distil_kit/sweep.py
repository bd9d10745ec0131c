"""Seed sweeps: one run per seed into ``<output_dir>/seed-<s>/``, and the sweep's record beside them.

A single run's pass or fail at 0.91 is close to a coin toss (a point of sampling error over 872 sentences, half a
point of seed-to-seed spread), so the sweep reports what repeated runs say: the accuracy's mean and spread, the
pass rate with its interval, the spread of epochs to target and MLPerf's time to target (the fastest and slowest
dropped). A sweep started again continues: finished seeds are kept, an interrupted seed resumes from its checkpoint.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd

from . import records, stats, trackers
from .atomic import write_csv_atomic, write_json_atomic
from .config import RunConfig, check_concurrent
from .errors import KitError
from .progress import epochs_to_target

SEED_COLUMNS = [  # time to target leads
    "seed",
    "time_to_target",
    "epochs_to_target",
    "converged",
    "accuracy",
    "correct",
    "total",
    "acc_low",
    "acc_high",
    "run",
]


def seed_folder(output_dir: str | Path, seed: int) -> Path:
    return Path(output_dir) / f"seed-{seed}"


def run_sweep(
    config: RunConfig, seeds: list[int], callbacks=(), concurrent: int = 1, make_progress=None
) -> pd.DataFrame:
    """Train ``config`` once per seed (each a whole run, under torchrun a DDP run) and write ``sweep.csv`` and
    ``sweep.json`` into ``config.output_dir``; returns the per-seed table.

    ``concurrent`` > 1 trains that many seeds at the same time, each in a process of its own sharing the device
    (``concurrent_seeds``); one at a time otherwise, in this process, with ``callbacks`` and each seed's progress
    display from ``make_progress()`` (default: the engine's terminal bars)."""
    from .engine import finetune

    if not seeds or len(set(seeds)) != len(seeds):
        raise KitError(f"parameter 'seeds'={seeds!r}: expected distinct whole numbers, at least one")
    check_concurrent(concurrent)
    if not config.output_dir:
        raise KitError("parameter 'output_dir': a sweep needs a folder to hold its seed-<s>/ runs")
    todo = {}  # seed: its run's config, for the seeds not finished yet
    for seed in seeds:
        folder = seed_folder(config.output_dir, seed)
        state = records.run_state(folder)
        if state != "finished" or config.overwrite:
            resume = state == "unfinished" and not config.overwrite
            todo[seed] = config.replace(seed=seed, output_dir=str(folder), resume=resume)
    if concurrent > 1 and len(todo) > 1 and callbacks:
        raise KitError(f"parameter 'concurrent'={concurrent}: seeds trained at once take no callbacks")
    # with mlflow in report_to, the sweep is one MLflow run (rank 0's, under torchrun) and each seed's run its child
    tracked = "mlflow" in (config.report_to or ()) and os.environ.get("RANK", "0") == "0"
    with trackers.sweep_parent(config, seeds) if tracked else nullcontext() as parent:
        if concurrent > 1 and len(todo) > 1:
            concurrent_seeds(list(todo.values()), concurrent)
        else:
            for seed_config in todo.values():
                finetune(seed_config, callbacks=callbacks, progress=make_progress() if make_progress else None)
        runs = [records.Run.read(seed_folder(config.output_dir, seed)) for seed in seeds]
        table = seed_table(runs, config.target_acc)
        record = sweep_record(table, config.target_acc)
        out = Path(config.output_dir)
        write_csv_atomic(out / "sweep.csv", table)
        write_json_atomic(out / "sweep.json", record)
        if parent is not None:
            parent(record, [out / "sweep.csv", out / "sweep.json"])
    return table


def seed_log(run_folder: str | Path) -> Path:
    """Where a seed trained beside others writes its output: ``<output_dir>/logs/seed-<s>.log`` (beside the run
    folders, not in them: a run folder holds what docs/run-folder.md lists)."""
    run_folder = Path(run_folder)
    return run_folder.parent / "logs" / f"{run_folder.name}.log"


def concurrent_seeds(configs: list[RunConfig], concurrent: int) -> None:
    """Train ``configs`` (one seed's run each) ``concurrent`` at a time, each in a spawned process of its own (a
    CUDA context each; on a CPU the threads shared out), its output in ``seed_log``; a line per finished seed. The
    first error is raised once every started seed has ended (the others' runs are whole, or resumable)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch

    threads = max(1, torch.get_num_threads() // concurrent)
    print(
        f"training {len(configs)} seeds, {concurrent} at a time; each seed's output goes to "
        f"{seed_log(configs[0].output_dir).parent}/"
    )
    errors = []
    spawn = multiprocessing.get_context("spawn")  # fork would copy this process's CUDA and thread state
    with ProcessPoolExecutor(max_workers=concurrent, mp_context=spawn) as pool:
        jobs = {pool.submit(_train_seed, c.to_dict(), threads): c for c in configs}
        for job in as_completed(jobs):
            cfg = jobs[job]
            try:
                print(f"seed {cfg.seed}: {job.result()}")
            except Exception as e:  # the seed's own error (KitError, RunInterrupted) as the engine raised it
                print(f"seed {cfg.seed}: {e}")
                errors.append(e)
    if errors:
        raise errors[0]


def _train_seed(values: dict, threads: int) -> str:
    """One seed's run in a process of its own, output to its log; its outcome in one line."""
    import sys

    import torch

    from .engine import finetune
    from .progress import outcome

    cfg = RunConfig.from_dict(values)
    path = seed_log(cfg.output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "a")  # the process's output until it ends
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log.fileno(), 1)  # C-level output (torch's warnings, NCCL) too
    os.dup2(log.fileno(), 2)
    torch.set_num_threads(threads)
    run = finetune(cfg)
    return f"{outcome(run.summary, cfg.target_acc)} ({run.folder})"


def seed_table(runs: list[records.Run], target: float | None) -> pd.DataFrame:
    rows = []
    for run in runs:
        s = run.summary
        rows.append(
            {
                "seed": run.config["seed"],
                "accuracy": s["acc"],
                "correct": s["acc_correct"],
                "total": s["dev_rows"],
                "acc_low": s["acc_interval"][0],
                "acc_high": s["acc_interval"][1],
                "converged": s["converged"],
                "epochs_to_target": epochs_to_target(run.evals.to_dict("records"), target),
                "time_to_target": s["time_to_target"],
                "run": str(run.folder),
            }
        )
    return pd.DataFrame(rows, columns=SEED_COLUMNS).astype({"epochs_to_target": "Int64"})


def sweep_record(table: pd.DataFrame, target: float | None) -> dict:
    """sweep.json: what the seeds say together."""
    mean, interval = stats.mean_interval(table.accuracy)
    passed = stats.proportion(int(table.converged.sum()), len(table))
    epochs = table.epochs_to_target.dropna()
    times = table.time_to_target.dropna()
    return {  # time to target leads
        "seeds": [int(s) for s in table.seed],
        "target_acc": target,
        "target_correct": stats.correct_needed(target, int(table.total.iloc[0])) if target is not None else None,
        "time_to_target_mlperf": round(stats.mlperf_mean(times), 3) if len(times) else None,
        "epochs_to_target": {"min": int(epochs.min()), "median": float(epochs.median()), "max": int(epochs.max())}
        if len(epochs)
        else None,
        "pass_rate": f"{passed.k}/{passed.n}",
        "pass_rate_interval": [round(passed.interval.low, 4), round(passed.interval.high, 4)],
        "accuracy_mean": round(mean, 6),
        "accuracy_mean_interval": [round(interval.low, 6), round(interval.high, 6)] if interval else None,
        "accuracy_sd": round(float(np.std(table.accuracy, ddof=1)), 6) if len(table) > 1 else None,
    }
