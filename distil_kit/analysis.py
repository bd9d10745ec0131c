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
    "run",
)
# Config keys that may differ between repeats of one configuration: the seed, and how a run was launched.
SEED_IGNORED = ("seed", "output_dir", "resume", "overwrite")
LENGTH_EDGES = (0, 5, 10, 15, 20, 30, 40, np.inf)  # sentence length buckets, in words


# --- labels ---------------------------------------------------------------------------------------------------


def run_label(run: Run) -> str:
    """The short label that names a run in legends: "model, precision, batch N, device"."""
    path = Path(str(run.config["model"]))
    # A folder named "model" (a run's saved model, a FlagPerf data folder's model/) says nothing: name its parent.
    model = f"{path.parent.name}/{path.name}" if path.name == "model" else path.name
    return (
        f"{model}, {run.config['precision']}, batch {run.summary['global_batch_size']}, {run.manifest['device_name']}"
    )


def run_labels(runs: list[Run]) -> list[str]:
    """Each run's label, with its folder name added where two runs would otherwise share one."""
    labels = [run_label(r) for r in runs]
    return [
        f"{label} [{r.folder.name}]" if labels.count(label) > 1 else label
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


def _config_key(config: dict) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in SEED_IGNORED}, sort_keys=True, default=str)


def seed_groups(runs: list[Run]) -> pd.DataFrame:
    """One row per configuration, grouping runs whose configs differ only in ``SEED_IGNORED`` keys.

    The final accuracy's mean with its t interval and sample standard deviation over seeds (NaN for a single run);
    the pass rate (runs that reached the target) with its Wilson interval; time to target over the runs that
    reached it, with MLPerf's mean (the fastest and slowest of five or more dropped).
    """
    rows = []
    for members in seed_group_runs(runs):
        acc = pd.Series([r.summary["acc"] for r in members], dtype=float)
        ttt = pd.Series([r.summary["time_to_target"] for r in members], dtype=float)  # None: not reached
        mean, interval = stats.mean_interval(acc)
        passed = stats.proportion(int(ttt.notna().sum()), len(members))
        rows.append(
            {
                "label": run_label(members[0]),
                "runs": len(members),
                "seeds": ", ".join(str(r.config["seed"]) for r in members),
                "folders": ", ".join(r.folder.name for r in members),
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


def seed_group_runs(runs: list[Run]) -> list[list[Run]]:
    """``runs`` grouped as ``seed_groups`` groups them, in the same order."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(_config_key(run.config), []).append(run)
    return list(groups.values())


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
        "confidently_wrong": confidently_wrong(runs, k),
        "accuracy_by_length": accuracy_by_length(runs),
    }


# --- writing --------------------------------------------------------------------------------------------------


def save_tables(frames: dict[str, pd.DataFrame], out_dir) -> list[Path]:
    """Each frame as ``<out_dir>/<name>.csv``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [write_csv_atomic(out / f"{name}.csv", frame) for name, frame in frames.items()]
