"""The tables built from runs: runs side by side with FlagPerf's published rows, repeated seeds, and the errors
of the final model.

Every table takes a list of ``records.Run`` (``records.find_runs`` turns folders and globs into one); the figures
are in ``distil_kit.plots``, which builds on this module (never the reverse); ``distil_kit.report`` writes both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import reference, stats
from .atomic import write_csv_atomic
from .progress import epochs_to_target
from .records import THROUGHPUTS, Run

# Comparison-table column: summary.json key (published rows use the same keys, see reference.COLUMNS).
SUMMARY_COLUMNS = {
    "time_to_target_s": "time_to_target",
    "batch": "global_batch_size",
    "world_size": "world_size",
    "epochs_run": "epochs_run",
    "converged": "converged",
    "final_acc": "acc",
    "final_correct": "acc_correct",
    "dev_rows": "dev_rows",
    "target_correct": "target_correct",
    "best_acc": "best_acc",
    **{name: name for name in THROUGHPUTS},
    "e2e_time_s": "e2e_time",
    "peak_memory_gib": "peak_memory_gib",
}
# summary.json's energy fields (distil_kit/energy.py), shown where some run measured its power
ENERGY_COLUMNS = ("energy_j", "energy_to_target_j", "power_avg_w", "power_max_w", "energy_source")
INTERVAL_COLUMNS = ("final_acc_low", "final_acc_high")  # the final accuracy's 95% Wilson interval
# Time to target leads: training seconds and epochs until dev accuracy first reached the target (empty: never).
LEAD_COLUMNS = ("source", "label", "time_to_target_s", "epochs_to_target")
COMPARISON_COLUMNS = (
    *LEAD_COLUMNS,
    "model",
    "device",
    "precision",
    *(c for c in SUMMARY_COLUMNS if c not in LEAD_COLUMNS),
    *INTERVAL_COLUMNS,
    *ENERGY_COLUMNS,
    "not_flagperf_workload",  # empty: FlagPerf's workload; else why the published rows do not compare
    "run",
)
# Config keys that may differ between repeats of one configuration: the seed, and how a run was launched.
SEED_IGNORED = ("seed", "output_dir", "resume", "overwrite")
# Config keys run_facts names already (batch: the global batch, from the summary).
CONFIG_FACTS = ("model", "precision", "train_batch_size", "max_train_samples", "epochs", "fast", "packing")
LENGTH_EDGES = (0, 5, 10, 15, 20, 30, 40, np.inf)  # sentence length buckets, in words


# --- labels ---------------------------------------------------------------------------------------------------


def _model_name(run: Run) -> str:
    path = Path(str(run.config["model"]))
    # A folder named "model" (a run's saved model, a FlagPerf data folder's model/) says nothing: name its parent.
    return f"{path.parent.name}/{path.name}" if path.name == "model" else path.name


def run_label(run: Run) -> str:
    """The short label that names a run in tables: "model, precision, batch N, device"."""
    return (
        f"{_model_name(run)}, {run.config['precision']}, batch {run.summary['global_batch_size']}, "
        f"{run.manifest['device_name']}"
    )


def run_labels(runs: list[Run]) -> list[str]:
    """Each run's label, with its folder name added where two runs would otherwise share one."""
    labels = [run_label(r) for r in runs]
    return [
        f"{label} [{folder_name(r)}]" if labels.count(label) > 1 else label
        for r, label in zip(runs, labels, strict=True)
    ]


def folder_name(run: Run) -> str:
    """The run's folder name; a sweep's seed-<s> folder with its sweep's name, which tells it apart."""
    folder = run.folder
    return f"{folder.parent.name}/{folder.name}" if folder.name.startswith("seed-") else folder.name


def train_rows(run: Run) -> int | None:
    """Training rows per epoch: the samples trained over the epochs run (every epoch runs whole; the target is
    checked at epoch ends), else ``max_train_samples``; None where neither tells."""
    samples, epochs = run.summary.get("train_samples"), run.summary["epochs_run"]
    return samples // epochs if samples and epochs else run.config.get("max_train_samples")


def run_facts(run: Run) -> dict[str, str]:
    """What tells runs apart in a legend, each as its text, in the order legends name them."""
    rows = train_rows(run)
    return {
        "model": _model_name(run),
        "device": run.manifest["device_name"],
        "precision": str(run.config["precision"]),
        "batch": f"batch {run.summary['global_batch_size']}",
        "rows": f"{rows:,} training rows" if rows else "training rows unknown",
        "epochs": f"{run.config.get('epochs')} epochs max",
        "fast": "fast" if run.config.get("fast") else "not fast",
        "packing": "packed" if run.config.get("packing") else "not packed",
        "seed": f"seed {run.config['seed']}",
    }


def legend_labels(runs: list[Run], leave_out=()) -> tuple[str, list[str]]:
    """What ``runs`` share, as one line for a title, and per run what tells it apart: the ``run_facts`` that
    differ between the runs (``leave_out``: facts named elsewhere); where runs still share a label, the other config
    keys that differ between them, then the folder name (a repeat of the same configuration and seed)."""
    facts = [{k: v for k, v in run_facts(r).items() if k not in leave_out} for r in runs]
    differ = [k for k in facts[0] if len({f[k] for f in facts}) > 1] if facts else []
    # "not fast" and "not packed" are FlagPerf's way: a title that says so for every run only adds words.
    common = ", ".join(v for k, v in facts[0].items() if k not in differ and v not in ("not fast", "not packed"))
    base = [", ".join(f[k] for k in differ) for f in facts]
    labels = list(base)
    for label in set(base):
        shared = [i for i, other in enumerate(base) if other == label]
        configs = [runs[i].config for i in shared]
        keys = sorted({k for c in configs for k in c if k not in (*SEED_IGNORED, *CONFIG_FACTS)})
        keys = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs}) > 1]
        for i in shared:
            labels[i] = ", ".join(filter(None, [labels[i], *(f"{k} {runs[i].config.get(k)}" for k in keys)]))
    return common if facts else "", [
        ", ".join(filter(None, [label, folder_name(r)])) if not label or labels.count(label) > 1 else label
        for r, label in zip(runs, labels, strict=True)
    ]


# --- tables ---------------------------------------------------------------------------------------------------


def comparison_table(runs: list[Run], published: bool = True) -> pd.DataFrame:
    """Runs side by side, then (``published``) FlagPerf's published rows (every vendor's); ``source`` tells
    measured from published."""
    rows = [
        {
            "source": "measured",
            "label": label,
            "model": Path(str(r.config["model"])).name,
            "device": r.manifest["device_name"],
            "precision": r.config["precision"],
            **{col: r.summary[key] for col, key in SUMMARY_COLUMNS.items()},
            "epochs_to_target": epochs_to_target(r.evals.to_dict("records"), r.config["target_acc"]),
            **dict(zip(INTERVAL_COLUMNS, r.summary["acc_interval"], strict=True)),
            **{col: r.summary.get(col) for col in ENERGY_COLUMNS},  # runs before energy was measured have none
            "not_flagperf_workload": flagperf_workload(r),
            "run": str(r.folder),
        }
        for r, label in zip(runs, run_labels(runs), strict=True)
    ]
    if published:
        for row in reference.published().to_dict("records"):
            hp = f", {row['fix_hp']}" if row["fix_hp"] else ""
            rows.append(
                {
                    "source": "published",
                    "label": f"FlagPerf {row['device']}, {row['configuration']}{hp}",
                    "model": reference.MODEL,
                    "device": row["device"],
                    "precision": reference.PRECISION,
                    **{col: row[key] for col, key in SUMMARY_COLUMNS.items() if key in row},
                    "run": row["source"],
                }
            )
    measured = any(row.get("energy_source") for row in rows)
    columns = [c for c in COMPARISON_COLUMNS if measured or c not in ENERGY_COLUMNS]
    # Whole numbers stay whole beside the published rows' gaps.
    return pd.DataFrame(rows, columns=columns).astype(
        dict.fromkeys(
            ("epochs_to_target", "batch", "world_size", "epochs_run", "final_correct", "dev_rows", "target_correct"),
            "Int64",
        )
    )


def _config_key(run: Run) -> str:
    config = {k: v for k, v in run.config.items() if k not in SEED_IGNORED}
    # One config on another machine is another configuration: its times are not repeats of the first's.
    return json.dumps([config, run.manifest["device_name"]], sort_keys=True, default=str)


def seed_group_runs(runs: list[Run]) -> list[list[Run]]:
    """``runs`` grouped by configuration (every config key but ``SEED_IGNORED``, and the device), in order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(_config_key(run), []).append(run)
    return list(groups.values())


def distinct_seeds(members: list[Run]) -> tuple[list[Run], dict[int, int]]:
    """A group's first run of each seed, and each repeated seed with its number of runs: a seed run twice is one
    draw of the seed's randomness, not two (counting it twice narrows the interval over seeds toward zero)."""
    first: dict[int, Run] = {}
    counts: dict[int, int] = {}
    for run in members:
        seed = run.config["seed"]
        first.setdefault(seed, run)
        counts[seed] = counts.get(seed, 0) + 1
    return list(first.values()), {seed: n for seed, n in counts.items() if n > 1}


def repeats_text(repeated: dict[int, int]) -> str:
    """``distinct_seeds``'s repeats in words ("seed 0 ran 3 times"), empty where none."""
    return "; ".join(f"seed {seed} ran {n} times" for seed, n in repeated.items())


def seed_groups(runs: list[Run]) -> pd.DataFrame:
    """One row per configuration (``seed_group_runs``), labelled by what differs between the configurations.

    Over the group's distinct seeds (a repeated seed counted once, flagged in ``repeated_seeds``): the final
    accuracy's mean with its t interval and sample standard deviation (NaN for a single seed); the pass rate (seeds
    that reached the target) with its Wilson interval; time to target over the seeds that reached it, with MLPerf's
    mean (the fastest and slowest of five or more dropped).
    """
    groups = seed_group_runs(runs)
    common, labels = legend_labels([g[0] for g in groups], leave_out=("seed",))
    rows = []
    for members, label in zip(groups, labels, strict=True):
        kept, repeated = distinct_seeds(members)
        acc = pd.Series([r.summary["acc"] for r in kept], dtype=float)
        ttt = pd.Series([r.summary["time_to_target"] for r in kept], dtype=float)  # None: not reached
        mean, interval = stats.mean_interval(acc)
        passed = stats.proportion(int(ttt.notna().sum()), len(kept))
        rows.append(
            {
                "label": common if len(groups) == 1 else label,
                "shared_by_all": common,
                "runs": len(members),
                "seeds": ", ".join(str(r.config["seed"]) for r in kept),
                "repeated_seeds": repeats_text(repeated),
                "folders": ", ".join(folder_name(r) for r in members),
                "final_acc_mean": mean,
                "final_acc_mean_low": interval.low if interval else np.nan,
                "final_acc_mean_high": interval.high if interval else np.nan,
                "final_acc_std": acc.std(),
                "reached_target": passed.k,
                "pass_rate_low": passed.interval.low,
                "pass_rate_high": passed.interval.high,
                "time_to_target_s_mean": ttt.mean(),
                "time_to_target_s_mlperf": stats.mlperf_mean(ttt.dropna()),
                "time_to_target_s_std": ttt.std(),
            }
        )
    return pd.DataFrame(rows)


def flagperf_workload(run: Run) -> str | None:
    """None where ``run`` ran FlagPerf's workload (every training and dev row of SST-2, at most 10 epochs), else
    why not: FlagPerf's published rows compare with such runs only."""
    rows, reasons = train_rows(run), []
    if rows != reference.TRAIN_ROWS:
        reasons.append(f"{rows:,} of {reference.TRAIN_ROWS:,} training rows" if rows else "training rows unknown")
    if run.summary["dev_rows"] != reference.DEV_ROWS:
        reasons.append(f"{run.summary['dev_rows']} of {reference.DEV_ROWS} dev rows")
    epochs = run.config.get("epochs")
    if epochs is None or epochs > reference.MAX_EPOCHS:
        reasons.append(f"{epochs} epochs, FlagPerf at most {reference.MAX_EPOCHS}")
    return ", ".join(reasons) or None


def configs_table(runs: list[Run]) -> pd.DataFrame:
    """Every run's configuration side by side: one row per config key (the keys that differ between runs first,
    ``differs`` true), one column per run, named by its folder; with the device each ran on."""
    columns = {}
    for run in runs:
        name = folder_name(run)
        columns[name if name not in columns else str(run.folder)] = {
            **{k: json.dumps(v, default=str) if isinstance(v, (list, dict)) else v for k, v in run.config.items()},
            "device_name": run.manifest["device_name"],
        }
    table = pd.DataFrame(columns).astype(object).where(lambda t: t.notna(), None)
    differs = table.apply(lambda row: len({json.dumps(v, default=str) for v in row}) > 1, axis=1)
    table.insert(0, "differs", differs)
    return table.sort_values("differs", ascending=False, kind="stable").rename_axis("parameter").reset_index()


def confidence(predictions: pd.DataFrame) -> pd.Series:
    """The probability the model gave its own prediction."""
    return predictions.prob_pos.where(predictions.pred == 1, 1 - predictions.prob_pos)


def confidently_wrong(runs: list[Run], k: int = 10) -> pd.DataFrame:
    """Per run, the ``k`` wrong dev predictions with the highest confidence in the wrong class, most first."""
    frames = []
    for run, label in zip(runs, run_labels(runs), strict=True):
        p = run.predictions.assign(confidence=confidence(run.predictions))
        wrong = p[p.label != p.pred].sort_values("confidence", ascending=False, kind="stable").head(k)
        frames.append(wrong.assign(run=label))
    return pd.concat(frames, ignore_index=True)[["run", "idx", "sentence", "label", "pred", "confidence"]]


def _bucket_names(edges) -> list[str]:
    return [f"{lo + 1}+" if np.isinf(hi) else f"{lo + 1}-{hi}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def accuracy_by_length(runs: list[Run], edges=LENGTH_EDGES) -> pd.DataFrame:
    """Dev accuracy per sentence-length bucket (whitespace-separated words), one row per run and bucket, with the
    bucket's correct count and 95% Wilson interval; empty buckets are kept (accuracy NaN) so every run has the same
    rows."""
    names = _bucket_names(edges)
    frames = []
    for run, label in zip(runs, run_labels(runs), strict=True):
        p = run.predictions
        words = p.sentence.astype(str).str.split().str.len()
        bucket = pd.cut(words, edges, labels=names)
        counts = (p.label == p.pred).groupby(bucket, observed=False).agg(["size", "sum"])
        intervals = [
            stats.proportion(k, n).interval if n else None for k, n in zip(counts["sum"], counts["size"], strict=True)
        ]
        frames.append(
            pd.DataFrame(
                {
                    "run": label,
                    "length_words": names,
                    "sentences": counts["size"].to_numpy(),
                    "correct": counts["sum"].to_numpy(),
                    "accuracy": (counts["sum"] / counts["size"].where(counts["size"] > 0)).to_numpy(),
                    "acc_low": [i.low if i else np.nan for i in intervals],
                    "acc_high": [i.high if i else np.nan for i in intervals],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def calibration(run: Run, bins: int = 10) -> pd.DataFrame:
    """Reliability table: dev sentences binned by P(positive), with the share of them actually positive."""
    p = run.predictions
    bin_of = np.minimum((p.prob_pos * bins).astype(int), bins - 1)  # prob 1.0 belongs to the top bin
    table = p.groupby(bin_of).agg(
        p_mean=("prob_pos", "mean"), frac_pos=("label", "mean"), sentences=("label", "size")
    )
    return table.rename_axis("bin").reset_index()


def expected_calibration_error(table: pd.DataFrame) -> float:
    """Sentence-weighted mean gap between predicted and observed P(positive) over a ``calibration`` table."""
    return float((table.sentences * (table.frac_pos - table.p_mean).abs()).sum() / table.sentences.sum())


def confusion(run: Run) -> np.ndarray:
    """2x2 counts, rows the true label (0 negative, 1 positive), columns the prediction."""
    p = run.predictions
    return np.array([[int(((p.label == t) & (p.pred == q)).sum()) for q in (0, 1)] for t in (0, 1)])


def tables(runs: list[Run], published: bool = True, k: int = 10) -> dict[str, pd.DataFrame]:
    """Every table of the report, by file stem."""
    return {
        "comparison": comparison_table(runs, published),
        "seeds": seed_groups(runs),
        "configs": configs_table(runs),
        "confidently_wrong": confidently_wrong(runs, k),
        "accuracy_by_length": accuracy_by_length(runs),
    }


# --- writing --------------------------------------------------------------------------------------------------


def save_tables(frames: dict[str, pd.DataFrame], out_dir) -> list[Path]:
    """Each frame as ``<out_dir>/<name>.csv``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [write_csv_atomic(out / f"{name}.csv", frame) for name, frame in frames.items()]
