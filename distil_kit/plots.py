"""One function per figure, each returning a matplotlib Figure that nobody has shown: a notebook displays
it, ``save_figures`` writes it. Figures are built without pyplot, so no global state or GUI backend is
involved and nothing needs closing.

Every run figure takes a list of ``records.Run`` (``records.find_runs`` turns folders and globs into one),
colours a run the same way (by its position in the list) and names it by its short label.
"""

from __future__ import annotations

import glob
import io
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from . import analysis, reference, stats
from .atomic import write_atomic
from .data import Split
from .records import THROUGHPUTS, Run

DPI = 120
PALETTE = matplotlib.colormaps["tab10"].colors
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
BAND_RUNS = 3  # more interval bands than this, drawn over each other, merge into one block: error bars instead
METRIC_NAMES = {  # FlagPerf's throughput names, with what each divides the trained samples by
    "throughput(ips)_raw": "raw: training loop, evaluation included",
    "throughput(ips)_no_eval": "no_eval: training loop without evaluation",
    "throughput(ips)_pure_compute": "pure_compute: forward + backward + step only",
}


class _Figure(Figure):
    """A Figure that renders itself as the PNG of a notebook cell: Jupyter registers a display hook only for
    figures made through pyplot."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
        return buffer.getvalue()


def _colors(n: int) -> list:
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


def _looks(n: int) -> list[dict]:
    """Per run a colour, a line style and a hollow marker, the markers shrinking down the list: runs that draw the
    same values (a repeated seed) still show each line, and their markers nest one inside the other."""
    return [
        {
            "color": PALETTE[i % len(PALETTE)],
            "ls": LINESTYLES[i % len(LINESTYLES)],
            "marker": MARKERS[i % len(MARKERS)],
            "mfc": "none",
            "ms": 11 - 6 * i / max(n - 1, 1),
        }
        for i in range(n)
    ]


def _every(points: int) -> int:
    """Marker spacing: about a dozen markers a line, so long runs stay lines rather than rows of symbols."""
    return max(1, points // 12)


def _legend(fig: Figure, labels, looks, extra=()) -> None:
    """A legend under the axes: one line per run, then ``extra`` (handle, text) pairs for styles."""
    handles = [Line2D([], [], lw=2, **look) for look in looks] + [h for h, _ in extra]
    texts = list(labels) + [t for _, t in extra]
    ncols = 2 if len(texts) > 3 and max(map(len, texts)) < 75 else 1
    fig.legend(handles, texts, loc="outside lower center", ncols=ncols, fontsize="small")


def _title(fig: Figure, title: str, common: str) -> None:
    """The figure's title, then what every run shown shares (the legend names only what differs)."""
    fig.suptitle(f"{title}\n{_wrap(common, 110)}" if common else title)


def _style(text: str, **line) -> tuple[Line2D, str]:
    return Line2D([], [], **{"color": "0.3", **line}), text


def smoothed(loss: pd.Series, weight: float = 0.9) -> pd.Series:
    """TensorBoard's smoothing: an exponential moving average, bias-corrected (pandas' ``adjust=True``: the first
    rows are not pulled toward 0), its weight lowered on a short run so that its window (about 1 / (1 - weight)
    rows) spans at most a twentieth of them: at 0.9 a 16-row run's average trails its loss by half the run."""
    weight = min(weight, max(0.0, 1 - 20 / len(loss)))
    return loss.ewm(alpha=1 - weight, adjust=True).mean()


def loss_figure(runs: list[Run], smoothing: float = 0.9) -> Figure:
    """Training loss against step (logged values faint, smoothed solid), the learning rate in a panel below."""
    common, labels = analysis.legend_labels(runs)
    looks = _looks(len(runs))
    fig = _Figure(figsize=(10, 7.5), layout="constrained")
    ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    for run, look in zip(runs, looks, strict=True):
        s = run.steps
        ax.plot(s.step, s.loss, color=look["color"], alpha=0.25, lw=1)
        ax.plot(s.step, smoothed(s.loss, smoothing), lw=2, markevery=_every(len(s)), **look)
        lr_ax.plot(s.step, s.lr, lw=1.5, markevery=_every(len(s)), **look)
    ax.set(title="Training loss", ylabel="training loss (cross-entropy,\nmean over the log window)")
    lr_ax.set(title="Learning rate", xlabel="training step (optimizer updates)", ylabel="learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    lr_ax.set_ylim(bottom=0)
    for a in (ax, lr_ax):
        a.grid(alpha=0.3)
    _title(fig, "Training loss and learning rate", common)
    _legend(
        fig,
        labels,
        looks,
        [
            _style("loss as logged", alpha=0.25, lw=1),
            _style(
                f"loss smoothed: bias-corrected moving average, weight {smoothing}"
                f" (less under {20 / (1 - smoothing):.0f} logged rows)",
                lw=2,
            ),
        ],
    )
    return fig


def _intervals(ax, x, e: pd.DataFrame, look: dict, bands: bool) -> None:
    """Dev accuracy's 95% interval: for a few runs a faint band with thin outlines (three stacked stay light, and
    the outlines tell them apart); for more, error bars, as bands would merge into one block."""
    if bands:
        ax.fill_between(x, e.acc_low, e.acc_high, color=look["color"], alpha=0.06, lw=0)
        for edge in (e.acc_low, e.acc_high):
            ax.plot(x, edge, color=look["color"], ls=look["ls"], lw=0.7, alpha=0.7)
    else:
        error = [e.accuracy - e.acc_low, e.acc_high - e.accuracy]
        ax.errorbar(x, e.accuracy, yerr=error, fmt="none", ecolor=look["color"], elinewidth=0.8, capsize=2, alpha=0.7)


def accuracy_figure(runs: list[Run]) -> Figure:
    """Dev accuracy against epoch and against training seconds (time to accuracy), with the target line."""
    common, labels = analysis.legend_labels(runs)
    looks = _looks(len(runs))
    bands = len(runs) <= BAND_RUNS
    fig = _Figure(figsize=(12, 5.5), layout="constrained")
    by_epoch, by_time = fig.subplots(1, 2, sharey=True)
    for run, label, look in zip(runs, labels, looks, strict=True):
        e = run.evals
        for ax, x in ((by_epoch, e.epoch), (by_time, e.train_s)):
            ax.plot(x, e.accuracy, label=label, **look)
            _intervals(ax, x, e, look, bands)
    targets = sorted({float(r.config["target_acc"]) for r in runs if r.config["target_acc"] is not None})
    for ax in (by_epoch, by_time):
        for target in targets:
            ax.axhline(target, color="black", ls=":", lw=1)
        ax.grid(alpha=0.3)
    by_epoch.set(
        title="Dev accuracy per epoch (epoch 0: before training)",
        xlabel="epoch",
        ylabel="dev accuracy (fraction correct)",
    )
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_time.set(title="Time to accuracy", xlabel="training time, evaluation included (seconds)")
    by_time.tick_params(labelleft=True)
    _title(fig, "Dev accuracy while training", common)
    target = _style(f"target accuracy {', '.join(f'{t:g}' for t in targets)}", color="black", ls=":", lw=1)
    what = "95% interval of the dev accuracy (Wilson, 872 sentences)"
    if bands:
        interval = (Patch(facecolor="0.3", alpha=0.1, edgecolor="0.3", lw=0.7), f"{what}: outlined band")
    else:
        interval = (Line2D([], [], color="0.3", marker="_", ms=8, ls="none"), f"{what}: error bars")
    _legend(fig, labels, looks, [interval, target] if targets else [interval])
    return fig


def throughput_figure(runs: list[Run]) -> Figure:
    """Training throughput in samples/s and (real, unpadded) tokens/s against step."""
    common, labels = analysis.legend_labels(runs)
    looks = _looks(len(runs))
    fig = _Figure(figsize=(10, 7), layout="constrained")
    samples_ax, tokens_ax = fig.subplots(2, 1, sharex=True)
    for run, label, look in zip(runs, labels, looks, strict=True):
        s = run.steps
        samples_ax.plot(s.step, s.samples_per_s, markevery=_every(len(s)), label=label, **look)
        tokens_ax.plot(s.step, s.tokens_per_s, markevery=_every(len(s)), label=label, **look)
    samples_ax.set(title="Samples per second", ylabel="samples/s")
    tokens_ax.set(
        title="Real (unpadded) tokens per second", xlabel="training step (optimizer updates)", ylabel="tokens/s"
    )
    for ax in (samples_ax, tokens_ax):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    _title(fig, "Training throughput over each log window (all devices together)", common)
    _legend(fig, labels, looks)
    return fig


def benchmark_figure(table) -> Figure:
    """The benchmark script's table (a CSV path or its DataFrame): samples/s per variant, with the ratios to
    FlagPerf's recipe and to the HF Trainer script written on the bars (and to the bare loop, where it ran)."""
    frame = pd.read_csv(table) if not isinstance(table, pd.DataFrame) else table
    fig = _Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(frame))[::-1]
    bars = ax.barh(y, frame.samples_per_s, color=_colors(len(frame)))
    bare = frame["x_vs_bare"] if "x_vs_bare" in frame else pd.Series(np.nan, index=frame.index)
    ax.bar_label(
        bars,
        labels=[
            f"{v:,.0f}/s  ({a:.1f}x FlagPerf, {b:.1f}x HF Trainer{'' if np.isnan(e) else f', {e:.2f}x bare'})"
            for v, a, b, e in zip(frame.samples_per_s, frame.x_vs_flagperf, frame.x_vs_hf_trainer, bare, strict=True)
        ],
        fontsize=8,
        padding=3,
    )
    ax.set_yticks(
        y, [f"{v}: {label}\n{p}" for v, label, p in zip(frame.variant, frame.label, frame.precision, strict=True)]
    )
    ax.set_xlim(0, frame.samples_per_s.max() * 1.7)
    first = frame.iloc[0]
    # CSVs written before the benchmark ran FlagPerf's global batch have no global_batch column: they ran 32
    batch = f", global batch {int(first.global_batch)}" if "global_batch" in frame else ", batch 32"
    ax.set(
        title=f"Training throughput per variant, {first.device_name}, {first.date[:19]}\n{first.model}, "
        f"first {int(first.rows)} SST-2 training rows{batch}",
        xlabel="training samples/s (one epoch, evaluation and compile time excluded)",
    )
    ax.grid(axis="x", alpha=0.3)
    return fig


def find_benchmarks(patterns, base=None) -> list[Path]:
    """The benchmark CSVs that ``patterns`` (a list of paths and glob patterns, relative ones starting from
    ``base``, default the working directory) match, by name, each once; none is no error (no figures)."""
    if isinstance(patterns, (str, Path)):
        raise TypeError(f"find_benchmarks takes a list of paths or glob patterns, e.g. [{str(patterns)!r}]")
    here = Path() if base is None else Path(base)
    return [here / p for p in sorted({p for pattern in patterns for p in glob.glob(str(pattern), root_dir=base)})]


def benchmark_figures(paths: list[Path]) -> dict[str, Figure]:
    """One ``benchmark_figure`` per benchmark CSV in ``paths`` (``find_benchmarks`` resolves globs), named by
    file."""
    return {Path(p).stem: benchmark_figure(p) for p in paths}


def _wrap(text: str, width: int = 40) -> str:
    return "\n".join(textwrap.wrap(text, width))


def _bars(ax, y, values, height, color, hatch, label=None) -> None:
    values = values.astype(float)
    bars = ax.barh(y, values, height, color=color, hatch=hatch, edgecolor="white", label=label)
    ax.bar_label(bars, labels=_value_labels(values), fontsize=7, padding=2)


def _scale(ax, values, unit: str) -> str:
    """A log axis where values span more than 20x (CPU runs beside A100s); returns the axis label."""
    values = values.to_numpy(dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size and values.max() > 20 * values.min():
        ax.set_xscale("log")
        return f"{unit} (log scale)"
    return unit


def _value_labels(values) -> list[str]:
    return [f"{v:,.1f}" if np.isfinite(v) else "n/a" for v in values]


def _left_off_note(runs: list[Run]) -> str:
    """The runs ``flagperf_figure`` leaves off, grouped by why, in words ("" where none)."""
    why: dict[str, list[str]] = {}
    for run in runs:
        reason = analysis.flagperf_workload(run)
        if reason:
            why.setdefault(reason, []).append(analysis.folder_name(run))
    return "; ".join(
        f"{len(names)} run(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}): {reason}"
        for reason, names in why.items()
    )


def flagperf_figure(runs: list[Run], published: bool = True) -> Figure:
    """FlagPerf's metrics per run: the three throughputs and e2e_time, with FlagPerf's published rows (hatched;
    n/a where a vendor published none) when ``published``. Only runs of FlagPerf's workload
    (``analysis.flagperf_workload``) are drawn: a smoke run's e2e_time beside a full run's says nothing; the others
    are named in the title, with why."""
    table = analysis.comparison_table([r for r in runs if analysis.flagperf_workload(r) is None], published)
    hatch = ["//" if src == "published" else "" for src in table.source]
    y = np.arange(len(table))
    fig = _Figure(figsize=(13, 3 + 0.75 * len(table)), layout="constrained")
    rates, e2e = fig.subplots(1, 2, sharey=True, width_ratios=(2, 1))
    height = 0.8 / len(THROUGHPUTS)
    for i, (metric, color) in enumerate(zip(THROUGHPUTS, _colors(len(THROUGHPUTS)), strict=True)):
        _bars(rates, y + (i - 1) * height, table[metric], height, color, hatch, label=METRIC_NAMES[metric])
    _bars(e2e, y, table["e2e_time_s"], 0.5, "0.6", hatch)
    rates.set(
        yticks=y,
        yticklabels=[_wrap(label) for label in table.label],
        ylabel="run",
        title="Training throughput (FlagPerf's ips)",
        xlabel=_scale(rates, table[list(THROUGHPUTS)], "samples/s"),
    )
    e2e.set(title="End-to-end time (e2e_time)", xlabel=_scale(e2e, table[["e2e_time_s"]], "seconds"))
    rates.invert_yaxis()  # first run on top
    for ax in (rates, e2e):
        ax.margins(x=0.15)
        ax.grid(axis="x", alpha=0.3)
    note = _left_off_note(runs)
    workload = (
        f"FlagPerf's workload: all {reference.TRAIN_ROWS:,} training and {reference.DEV_ROWS} dev rows of SST-2, "
        f"at most {reference.MAX_EPOCHS} epochs"
    )
    fig.suptitle(
        "FlagPerf metrics: measured runs"
        + (", and FlagPerf's published results (hatched, not measured here; single runs)" if published else "")
        + f"\n{workload}"
        + (f"\n{_wrap(f'Left off, not that workload: {note}', 150)}" if note else "")
    )
    fig.legend(*rates.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize="small")
    return fig


def confusion_figure(runs: list[Run]) -> Figure:
    """A 2x2 confusion matrix on dev per run: counts, and each cell's share of its true class."""
    common, labels = analysis.legend_labels(runs)
    cols = min(len(runs), 3)
    rows = -(-len(runs) // cols)
    fig = _Figure(figsize=(4.2 * cols, 4.2 * rows + 1), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    classes = ["negative (0)", "positive (1)"]
    for ax, run, label in zip(axes, runs, labels, strict=False):
        counts = analysis.confusion(run)
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (t, p), n in np.ndenumerate(counts):
            ax.text(
                p,
                t,
                f"{n}\n{share[t, p]:.1%} of true",
                ha="center",
                va="center",
                color="white" if share[t, p] > 0.6 else "black",
            )
        title = f"{_wrap(label)}\naccuracy {np.trace(counts) / counts.sum():.3f} on {counts.sum()} sentences"
        ax.set(
            xticks=[0, 1],
            xticklabels=classes,
            yticks=[0, 1],
            yticklabels=classes,
            xlabel="predicted label",
            ylabel="true label",
            title=title,
        )
        ax.title.set_fontsize("small")
    for ax in axes[len(runs) :]:
        ax.remove()
    _title(fig, "Confusion matrix on dev", common)
    return fig


def calibration_figure(runs: list[Run], bins: int = 10) -> Figure:
    """Reliability curve: predicted P(positive) against the share actually positive, with the sentences per bin."""
    common, labels = analysis.legend_labels(runs)
    looks = _looks(len(runs))
    fig = _Figure(figsize=(10, 8.5), layout="constrained")
    curve, counts = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    curve.plot([0, 1], [0, 1], color="black", ls=":", lw=1)
    texts = []
    for run, label, look in zip(runs, labels, looks, strict=True):
        table = analysis.calibration(run, bins)
        curve.plot(table.p_mean, table.frac_pos, label=label, **look)
        counts.plot(table.p_mean, table.sentences, **look)
        texts.append(f"{label} (ECE {analysis.expected_calibration_error(table):.3f})")
    curve.set(
        title=f"{bins} bins of predicted P(positive); ECE: expected calibration error",
        ylabel="share of the bin's sentences that are positive",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    counts.set(xlabel="mean predicted P(positive) in the bin", ylabel="sentences in the bin", yscale="log")
    for ax in (curve, counts):
        ax.grid(alpha=0.3)
    _title(fig, "Calibration on dev", common)
    _legend(fig, texts, looks, [_style("perfect calibration", color="black", ls=":", lw=1)])
    return fig


def accuracy_by_length_figure(runs: list[Run]) -> Figure:
    """Dev accuracy per sentence-length bucket (words), one line per run, with 95% Wilson intervals (short and
    long buckets hold few sentences: their intervals are wide)."""
    common, labels = analysis.legend_labels(runs)
    looks = _looks(len(runs))
    tables = [analysis.accuracy_by_length([run]) for run in runs]  # one a run: table labels may repeat
    offsets = np.linspace(-0.2, 0.2, len(runs)) if len(runs) > 1 else [0.0]  # intervals side by side
    fig = _Figure(figsize=(10, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for rows, label, look, offset in zip(tables, labels, looks, offsets, strict=True):
        error = [rows.accuracy - rows.acc_low, rows.acc_high - rows.accuracy]
        ax.errorbar(np.arange(len(rows)) + offset, rows.accuracy, yerr=error, capsize=3, label=label, **look)
    first = tables[0]
    # Counts under the buckets only when every run saw the same dev sentences.
    shared = all(t.sentences.equals(first.sentences) for t in tables)
    ax.set_xticks(
        np.arange(len(first)),
        [f"{b}\n({n} sentences)" if shared else b for b, n in zip(first.length_words, first.sentences, strict=True)],
    )
    ax.set(
        title="95% Wilson intervals, side by side per bucket",
        xlabel="sentence length (words)",
        ylabel="dev accuracy (fraction correct)",
    )
    ax.grid(alpha=0.3)
    _title(fig, "Dev accuracy by sentence length", common)
    _legend(fig, labels, looks)
    return fig


def seeds_figure(runs: list[Run]) -> Figure:
    """Runs repeated over seeds, grouped by configuration as ``analysis.seed_groups`` groups them (a repeated seed
    counted once): dev accuracy per epoch, each seed thin and the mean with its 95% t interval over seeds as an
    outlined band; time to target per seed, with the pass rate."""
    groups = analysis.seed_group_runs(runs)
    common, labels = analysis.legend_labels([g[0] for g in groups], leave_out=("seed",))
    if len(groups) == 1:
        labels = ["one configuration"]  # what it is, the title says
    looks = _looks(len(groups))
    fig = _Figure(figsize=(12, 5.5 + 0.3 * len(groups)), layout="constrained")
    curves, times = fig.subplots(1, 2, width_ratios=(3, 2))
    names, lines, reached_s = [], [], []
    for i, (members, label, look) in enumerate(zip(groups, labels, looks, strict=True)):
        kept, repeated = analysis.distinct_seeds(members)
        frame = pd.concat([r.evals.assign(seed=r.config["seed"]) for r in kept])
        for _, e in frame.groupby("seed"):
            curves.plot(e.epoch, e.accuracy, color=look["color"], lw=0.8, alpha=0.5)
        by_epoch = frame.groupby("epoch").accuracy
        mean = by_epoch.mean()
        lines.append(frame.accuracy)
        curves.plot(mean.index, mean, lw=2.5, **look)
        if len(kept) > 1:  # one seed has no interval
            bands = [stats.mean_interval(values)[1] for _, values in by_epoch]
            low = np.clip([b.low if b else np.nan for b in bands], 0, 1)  # a t interval of 2 seeds spans past 0-1
            high = np.clip([b.high if b else np.nan for b in bands], 0, 1)
            curves.fill_between(mean.index, low, high, color=look["color"], alpha=0.1, lw=0)
            for edge in (low, high):  # outlines tell overlapping bands apart where their fills blend
                curves.plot(mean.index, edge, color=look["color"], lw=0.8, ls=look["ls"], alpha=0.7)
        reached = [r.summary["time_to_target"] for r in kept if r.summary["time_to_target"] is not None]
        reached_s += reached
        times.scatter(reached, [i] * len(reached), color=look["color"], marker=look["marker"], zorder=3)
        if not reached:  # an empty row would read as missing data
            times.text(
                0.5,
                i,
                f"none of the {len(kept)} seeds reached the target" if len(kept) > 1 else "not reached (one seed)",
                transform=times.get_yaxis_transform(),
                ha="center",
                va="center",
                color=look["color"],
            )
        passed = stats.proportion(len(reached), len(kept))
        repeats = analysis.repeats_text(repeated)
        names.append(
            f"{label}: {len(kept)} seed{'s' if len(kept) > 1 else ''}"
            + (f" ({repeats}, counted once)" if repeats else "")
            + f", reached the target {passed.k}/{passed.n} "
            f"(95% interval {passed.interval.low:.0%}-{passed.interval.high:.0%})"
        )
    targets = sorted({float(r.config["target_acc"]) for r in runs if r.config["target_acc"] is not None})
    for target in targets:
        curves.axhline(target, color="black", ls=":", lw=1)
    # The curves set the scale: a wide band (few seeds) is cut at the axes rather than squashing every curve.
    values = pd.concat([*lines, pd.Series(targets, dtype=float)])
    span = max(float(values.max() - values.min()), 0.02)
    curves.set_ylim(max(0.0, values.min() - 0.15 * span), min(1.0, values.max() + 0.15 * span))
    curves.set(title="Dev accuracy per epoch over seeds", xlabel="epoch", ylabel="dev accuracy (fraction correct)")
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    times.set(
        title="Time to target, each seed that reached it",
        xlabel=_scale(times, pd.Series(reached_s, dtype=float), "training seconds to the target accuracy"),
        ylabel="configuration",
        yticks=range(len(groups)),
        yticklabels=[_wrap(label, 28) for label in labels],
        ylim=(-0.5, len(groups) - 0.5),
    )
    times.invert_yaxis()
    times.margins(x=0.1)
    if not reached_s:
        times.set_xticks([])  # no time to show: no made-up scale
    for ax in (curves, times):
        ax.grid(alpha=0.3)
    extra = [
        _style("one seed", lw=0.8, alpha=0.5),
        _style("mean over seeds", lw=2.5),
        (Patch(facecolor="0.3", alpha=0.15, edgecolor="0.3"), "95% interval of the mean (t, over seeds)"),
    ]
    _title(fig, "Repeated seeds", common)
    _legend(fig, names, looks, extra)
    return fig


def token_length_histogram(splits: dict[str, Split], max_length: int = 512) -> Figure:
    """Real (unpadded) token lengths per split, as shares of the split's rows, against the stored width L
    (dashed, the split's colour) and ``max_length`` (FlagPerf pads every row to 512)."""
    fig = _Figure(figsize=(10, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for (name, split), color in zip(splits.items(), _colors(len(splits)), strict=True):
        lengths, width = split.lengths, int(split.input_ids.shape[1])
        ax.hist(
            lengths,
            bins=np.arange(lengths.min() - 0.5, lengths.max() + 1.5),
            weights=np.full(len(lengths), 1 / len(lengths)),
            histtype="step",
            lw=1.5,
            color=color,
            label=f"{name}: {len(split):,} rows, mean {lengths.mean():.1f} tokens "
            f"({lengths.mean() / max_length:.0%} of {max_length}), max {lengths.max()}",
        )
        ax.axvline(width, color=color, ls="--", lw=1, label=f"{name}: stored width L = {width}")
    ax.axvline(max_length, color="black", ls=":", lw=1, label=f"FlagPerf's padded width {max_length}")
    # A log axis: real lengths (tens of tokens) stay readable beside the 512-token padded width.
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200) if t < max_length] + [max_length]
    ax.set_xscale("log")
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlim(0.9, max_length * 1.2)
    ax.set(
        title="Token lengths per split: real tokens against the padded width",
        xlabel="real tokens per sentence, special tokens included (log scale)",
        ylabel="share of the split's rows",
    )
    fig.legend(loc="outside lower center", ncols=2, fontsize="small")
    return fig


def figures(runs: list[Run], published: bool = True) -> dict[str, Figure]:
    """Every figure of the report, by file stem."""
    return {
        "loss": loss_figure(runs),
        "accuracy": accuracy_figure(runs),
        "throughput": throughput_figure(runs),
        "flagperf": flagperf_figure(runs, published),
        "confusion": confusion_figure(runs),
        "calibration": calibration_figure(runs),
        "accuracy_by_length": accuracy_by_length_figure(runs),
        "seeds": seeds_figure(runs),
    }


def save_figures(figs: dict[str, Figure], out_dir, dpi: int = DPI) -> list[Path]:
    """Each figure as ``<out_dir>/<name>.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        write_atomic(out / f"{name}.png", lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=dpi))
        for name, fig in figs.items()
    ]
