"""Seed sweeps: one run per seed into ``<output_dir>/seed-<s>/``, and the sweep's record beside them.

A single run's pass or fail at 0.91 is close to a coin toss (a point of sampling error over 872 sentences, half a
point of seed-to-seed spread), so the sweep reports what repeated runs say: the accuracy's mean and spread, the
pass rate with its interval, the spread of epochs to target and MLPerf's time to target (the fastest and slowest
dropped). A sweep started again continues: finished seeds are kept, an interrupted seed resumes from its checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import records, stats
from .atomic import write_csv_atomic, write_json_atomic
from .config import RunConfig
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


def run_sweep(config: RunConfig, seeds: list[int], callbacks=()) -> pd.DataFrame:
    """Train ``config`` once per seed (in order, each a whole run, under torchrun a DDP run) and write
    ``sweep.csv`` and ``sweep.json`` into ``config.output_dir``; returns the per-seed table."""
    from .engine import finetune

    if not seeds or len(set(seeds)) != len(seeds):
        raise KitError(f"parameter 'seeds'={seeds!r}: expected distinct whole numbers, at least one")
    if not config.output_dir:
        raise KitError("parameter 'output_dir': a sweep needs a folder to hold its seed-<s>/ runs")
    runs = []
    for seed in seeds:
        folder = seed_folder(config.output_dir, seed)
        state = records.run_state(folder)
        if state != "finished" or config.overwrite:
            resume = state == "unfinished" and not config.overwrite
            finetune(config.replace(seed=seed, output_dir=str(folder), resume=resume), callbacks=callbacks)
        runs.append(records.Run.read(folder))
    table = seed_table(runs, config.target_acc)
    record = sweep_record(table, config.target_acc)
    out = Path(config.output_dir)
    write_csv_atomic(out / "sweep.csv", table)
    write_json_atomic(out / "sweep.json", record)
    return table


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
