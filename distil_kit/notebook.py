"""The kit in a Jupyter kernel: one progress display per run, clean stops, one-line errors, one base for paths.

The notebooks call ``setup()`` once, then ``finetune(config)``:

- ``NotebookProgress``, the progress display ``finetune`` and ``sweep`` hand the engine: one HTML output
  updated in place through an IPython display handle (no widget library, so a saved or papermill-executed notebook
  keeps the final state as plain HTML and text), and with ``plot`` a loss and accuracy figure redrawn at every
  evaluation.
- ``finetune``: ``engine.finetune`` (or torchrun) with transformers' own progress bars and warnings held back; a
  kernel interrupt ends in one message saying how to continue in the notebook's terms, and the partial run is
  returned so the cells after it show the curves so far.
- ``setup``: a kernel started in the kit's ``notebooks/`` folder (JupyterLab starts it in the notebook's folder)
  moves to the project root above it, so relative paths mean the same as with papermill run from the repository
  root; a ``KitError`` shows as its one line; tqdm's "IProgress not found" warning stays out.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .callbacks import Callback
from .errors import KitError
from .progress import outcome

KIT_NOTEBOOK = "finetune.ipynb"  # a folder named notebooks holding this is the kit's notebooks folder


def in_kernel() -> bool:
    """Whether this code runs in a Jupyter kernel (ipykernel's shell; not a terminal IPython, not a script)."""
    if "IPython" not in sys.modules:
        return False
    shell = sys.modules["IPython"].get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


# --- set-up -----------------------------------------------------------------------------------------------------


def project_root(cwd: Path) -> Path:
    """The base relative paths start from: the folder above the kit's ``notebooks/`` folder when ``cwd`` is it,
    else ``cwd`` itself."""
    if cwd.name == "notebooks" and (cwd / KIT_NOTEBOOK).is_file():
        return cwd.parent
    return cwd


def setup() -> Path:
    """Prepare this kernel for the kit's notebooks; returns the working directory relative paths start from.

    A kernel started in the kit's ``notebooks/`` folder moves to the project root; a ``KitError`` raised by a cell
    shows as its one line (other exceptions keep their tracebacks); tqdm's IProgress warning is filtered out.
    """
    hide_iprogress_warning()
    here = Path.cwd()
    root = project_root(here)
    if root != here:
        os.chdir(root)
        print(f"working directory: {root} (relative paths start here, as from the repository root)")
    if in_kernel():
        sys.modules["IPython"].get_ipython().set_custom_exc((KitError,), _show_kit_error)
        # trio (imported by the hub's HTTP client where it is installed) would warn that it keeps out of IPython's
        # exception handling now that a handler is set: true, and nothing to act on.
        warnings.filterwarnings("ignore", message="IPython detected, but you already have a custom exception")
    return root


def hide_iprogress_warning() -> None:
    """transformers imports ``tqdm.auto``, which in a kernel without ipywidgets warns "IProgress not found"; the
    kit shows its own progress (NotebookProgress) and never uses tqdm's notebook bars."""
    from tqdm import TqdmWarning

    warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)


def _show_kit_error(shell, etype, value, tb, tb_offset=None) -> list[str]:
    """IPython's handler for KitError: the error's line (and any notes), no traceback: the message says what was
    wrong and what was expected, and the engine source above it would only hide it."""
    lines = [f"\x1b[0;31m{etype.__name__}\x1b[0m: {value}", *getattr(value, "__notes__", ())]
    shell._showtraceback(etype, value, lines)
    return lines


# --- the progress display ---------------------------------------------------------------------------------------


def clock(seconds: float | None) -> str:
    """``h:mm:ss`` (``m:ss`` under an hour); '?' when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta_seconds(
    step: int, total_steps: int, step_seconds: float, evals_left: int, eval_seconds: float | None
) -> float | None:
    """Seconds left: the remaining steps at the mean rate so far (``step_seconds``: training seconds without
    evaluation, over ``step`` steps), plus the evaluations left at the last one's duration. None before a step."""
    if step <= 0 or step_seconds <= 0:
        return None
    return (total_steps - step) * step_seconds / step + evals_left * (eval_seconds or 0.0)


@dataclass
class View:
    """What the display shows, read off the trainer at an event; rendered by ``html`` and ``text``."""

    folder: str
    plan: str  # rows, batch and steps; the device and CPU threads
    step: int
    total_steps: int
    epoch: int  # the epoch being trained (1-based), or the epochs run once the run is over
    epochs: int
    trained_s: float
    eta_s: float | None
    loss: float | None = None
    samples_per_s: float | None = None
    evals: list[dict] = field(default_factory=list)
    status: str = ""  # empty while running; then how the run ended
    ok: bool = True  # False: stopped or failed

    def line(self) -> str:
        percent = 100 * self.step / self.total_steps if self.total_steps else 100.0
        parts = [f"step {self.step}/{self.total_steps} ({percent:.0f}%)", f"epoch {self.epoch}/{self.epochs}"]
        if self.status:
            parts.append(f"trained {clock(self.trained_s)}")
        else:
            parts.append(f"trained {clock(self.trained_s)}, ETA {clock(self.eta_s)}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.samples_per_s is not None:
            parts.append(f"{self.samples_per_s:,.1f} samples/s")
        return " · ".join(parts)

    def eval_cells(self, row: dict) -> list[str]:
        interval = f"{row['acc_low']:.3f}–{row['acc_high']:.3f}" if "acc_low" in row else ""
        correct = f"{row['correct']}/{row['total']}" if "correct" in row else ""
        epoch = f"{row['epoch']} (before training)" if row["epoch"] == 0 else str(row["epoch"])
        return [epoch, str(row["step"]), f"{row['accuracy']:.4f}", correct, interval, f"{row['train_s']:.1f}"]

    HEADERS = ("epoch", "step", "dev accuracy", "correct", "95% interval", "training s")

    def text(self) -> str:
        """The plain-text form: what a papermill output notebook shows where HTML is not rendered."""
        lines = [f"{self.folder}: {self.plan}", self.line()]
        if self.evals:
            rows = [list(self.HEADERS), *(self.eval_cells(r) for r in self.evals)]
            widths = [max(len(r[i]) for r in rows) for i in range(len(self.HEADERS))]
            lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        if self.status:
            lines.append(self.status)
        return "\n".join(lines)

    def html(self) -> str:
        e = html.escape
        bar = (
            f'<progress value="{self.step}" max="{max(self.total_steps, 1)}" '
            f'style="width:18em;height:1em;vertical-align:middle"></progress>'
        )
        parts = [
            '<div class="distil-kit-progress" style="font-size:13px;line-height:1.5">',
            f"<div><b>{e(self.folder)}</b>: {e(self.plan)}</div>",
            f"<div>{bar} {e(self.line())}</div>",
        ]
        if self.evals:
            head = "".join(f"<th>{e(h)}</th>" for h in self.HEADERS)
            body = "".join(
                "<tr>" + "".join(f"<td>{e(c)}</td>" for c in self.eval_cells(r)) + "</tr>" for r in self.evals
            )
            parts.append(
                f'<table style="margin:4px 0;font-size:12px"><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table>"
            )
        if self.status:
            color = "inherit" if self.ok else "#b35900"
            parts.append(f'<div style="color:{color}">{e(self.status)}</div>')
        parts.append("</div>")
        return "".join(parts)


@dataclass
class Stop:
    """How a run stopped on a signal (``finetune`` words its message from this)."""

    reason: str
    step: int
    total_steps: int
    folder: Path


class _StopProbe(Callback):
    def __init__(self):
        self.stop: Stop | None = None

    def on_stop(self, trainer, reason: str) -> None:
        self.stop = Stop(reason, trainer.progress.step, trainer.total_steps, trainer.out)


class NotebookProgress(Callback):
    """A run's progress in a notebook: one output holding the progress of the whole run (step, epoch, ETA, loss,
    samples/s) and a table that gains a row per evaluation, updated in place; with ``plot``, a second output
    holding loss and dev accuracy so far, redrawn at each evaluation (and every ``plot_every_s`` seconds of
    logging in between).

    Updates go out at most every ``min_interval_s`` seconds while training, and always at evaluations and at the
    end, so the saved notebook holds the final state. Shown on the main rank only. An update of the text costs well
    under a millisecond; a figure about 0.1 s of the training clock (``live_figure_png``): leave ``plot`` off where
    a run's timings are the point.
    """

    def __init__(self, plot: bool = False, min_interval_s: float = 0.5, plot_every_s: float = 60.0):
        hide_iprogress_warning()  # transformers is imported after this, while the run loads its model
        self.plot, self.min_interval_s, self.plot_every_s = plot, min_interval_s, plot_every_s
        self.view: View | None = None
        self._handle = self._figure_handle = self._trainer = None
        self._shown_at = self._plotted_at = 0.0

    # -- events --

    def on_run_start(self, trainer) -> None:
        if not trainer.world.main:
            return
        from IPython.display import display

        self._trainer = trainer
        self._handle = display(self._bundle(self._read(trainer)), raw=True, display_id=True)
        self._shown_at = time.monotonic()
        if self.plot and trainer.progress.evals_rows:  # a resumed run: its curves so far
            self._draw(trainer)

    def on_log(self, trainer, row: dict) -> None:
        if self._handle is None:
            return
        now = time.monotonic()
        if now - self._shown_at >= self.min_interval_s:
            self._show(trainer)
        if self.plot and self._figure_handle is not None and now - self._plotted_at >= self.plot_every_s:
            self._draw(trainer)

    def on_evaluate(self, trainer, row: dict) -> None:
        if self._handle is None:
            return
        self._show(trainer)
        if self.plot:
            self._draw(trainer)

    def on_stop(self, trainer, reason: str) -> None:
        if self._handle is None:
            return
        self._show(
            trainer,
            f"stopped by {reason} after step {trainer.progress.step}; checkpoint in {trainer.out / 'checkpoints'}",
            ok=False,
        )
        if self.plot:
            self._draw(trainer)

    def on_run_end(self, trainer, summary: dict) -> None:
        if self._handle is None:
            return
        self._show(trainer, f"finished: {outcome(summary, trainer.cfg.target_acc)}")
        if self.plot:
            self._draw(trainer)

    def failed(self, error: BaseException) -> None:
        """Mark the display stopped by ``error`` (the run raised past the engine's events)."""
        if self._handle is None or self.view.status:
            return
        what = "interrupted" if isinstance(error, KeyboardInterrupt) else f"stopped by {type(error).__name__}"
        self._show(self._trainer, f"{what} at step {self._trainer.progress.step}", ok=False)

    # -- rendering --

    def _read(self, trainer, status: str = "", ok: bool = True) -> View:
        p, cfg, world = trainer.progress, trainer.cfg, trainer.world
        last = p.steps_rows[-1] if p.steps_rows else {}
        training_evals = [r["eval_s"] for r in p.evals_rows if r["epoch"] > 0] or [r["eval_s"] for r in p.evals_rows]
        plan = (
            f"{trainer.train_rows:,} training rows, global batch {trainer.global_batch_size} "
            f"({cfg.train_batch_size} x {world.size} process(es) x {cfg.gradient_accumulation_steps}), "
            f"{trainer.total_steps:,} optimizer steps; on {trainer.hardware}"
        )
        # the epoch being trained, or once the run is over (every epoch's batches done) the epochs run
        in_epoch = p.batches_done > 0 or (p.epoch < cfg.epochs and not p.converged)
        self.view = View(
            folder=str(trainer.out),
            plan=plan,
            step=p.step,
            total_steps=trainer.total_steps,
            epoch=p.epoch + 1 if in_epoch else p.epoch,
            epochs=cfg.epochs,
            trained_s=trainer.clock.train_seconds(),
            eta_s=eta_seconds(
                p.step,
                trainer.total_steps,
                trainer.clock.no_eval_seconds(),
                cfg.epochs - p.epoch,
                training_evals[-1] if training_evals else None,
            ),
            loss=last.get("loss"),
            samples_per_s=last.get("samples_per_s"),
            evals=list(p.evals_rows),
            status=status,
            ok=ok,
        )
        return self.view

    @staticmethod
    def _bundle(view: View) -> dict:
        return {"text/html": view.html(), "text/plain": view.text()}

    def _show(self, trainer, status: str = "", ok: bool = True) -> None:
        self._handle.update(self._bundle(self._read(trainer, status, ok)), raw=True)
        self._shown_at = time.monotonic()

    def _draw(self, trainer) -> None:
        from IPython.display import display

        p, cfg = trainer.progress, trainer.cfg
        png = live_figure_png(p.steps_rows, p.evals_rows, cfg.target_acc, str(trainer.out), trainer.total_steps)
        figure = {
            "image/png": base64.b64encode(png).decode("ascii"),
            "text/plain": f"[figure: training loss and dev accuracy of {trainer.out} at step {p.step}]",
        }
        if self._figure_handle is None:
            self._figure_handle = display(figure, raw=True, display_id=True)
        else:
            self._figure_handle.update(figure, raw=True)
        self._plotted_at = time.monotonic()


def live_figure_png(
    steps: list[dict], evals: list[dict], target_acc: float | None, title: str, total_steps: int | None = None
) -> bytes:
    """Training loss per logged window and dev accuracy per evaluation against optimizer steps, as PNG; ``steps``
    and ``evals`` are steps.csv and evals.csv rows; ``total_steps``, when known, spans the x axes over the whole run.

    About 0.1 s on a CPU core (a fixed layout: matplotlib's constrained layout would double it), spent inside the
    run's training clock when drawn at an evaluation.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.085, right=0.98, bottom=0.15, top=0.82, wspace=0.3)
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], color="tab:blue", lw=1.5)
    if not steps:
        loss_ax.text(0.5, 0.5, "no loss logged yet", transform=loss_ax.transAxes, ha="center", color="0.4")
    loss_ax.set(title="Training loss (mean over each log window)", xlabel="optimizer step", ylabel="cross-entropy")
    acc_ax.plot(
        [r["step"] for r in evals], [r["accuracy"] for r in evals], color="tab:green", marker="o", label="dev"
    )
    if evals and "acc_low" in evals[0]:
        acc_ax.fill_between(
            [r["step"] for r in evals],
            [r["acc_low"] for r in evals],
            [r["acc_high"] for r in evals],
            color="tab:green",
            alpha=0.15,
            label="95% interval",
        )
    if target_acc is not None:
        acc_ax.axhline(target_acc, color="black", ls=":", lw=1, label=f"target {target_acc:g}")
    acc_ax.set(title="Dev accuracy (step 0: before training)", xlabel="optimizer step", ylabel="accuracy (fraction)")
    acc_ax.legend(loc="lower right", fontsize="small")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        if total_steps:
            ax.set_xlim(-0.02 * total_steps, 1.02 * total_steps)
    fig.suptitle(f"{title}, so far", fontsize="medium")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def figure_so_far(run):
    """The progress display's figure drawn from a run folder's records: for an unfinished run, which the figures of
    ``plots`` cannot label yet (they name runs by what summary.json holds)."""
    from IPython.display import Image

    steps, evals = run.steps.to_dict("records"), run.evals.to_dict("records")
    return Image(data=live_figure_png(steps, evals, run.config["target_acc"], str(run.folder)))


# --- running ----------------------------------------------------------------------------------------------------


class _Displays:
    """The progress displays of one ``finetune`` or ``sweep`` call: calling it makes the next run's (a sweep's
    seeds each get their own); ``last`` is the one a failure marks."""

    def __init__(self, plot: bool):
        self.plot = plot
        self.last: NotebookProgress | None = None

    def __call__(self) -> NotebookProgress:
        self.last = NotebookProgress(plot=self.plot)
        return self.last


@contextlib.contextmanager
def quiet_libraries():
    """transformers' own progress bars ("Loading weights") and warnings held back (its errors still show) while
    inside; the hub's download bars are left on: a download's progress matters."""
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as hf_logging

    verbosity, bars, hub_bars = (
        hf_logging.get_verbosity(),
        hf_logging.is_progress_bar_enabled(),
        not hub_utils.are_progress_bars_disabled(),
    )
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # also turns the hub's off: turned back on below
    if hub_bars:
        hub_utils.enable_progress_bars()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _notebook_run(plot: bool):
    """Around a run (or a sweep's runs): yields the displays to hand the engine and the stop probe; a failure other
    than a clean stop marks the live display stopped."""
    from . import engine

    displays, probe = _Displays(plot), _StopProbe()
    try:
        with quiet_libraries():
            yield displays, probe
    except engine.RunInterrupted:
        raise
    except BaseException as error:
        if displays.last is not None:
            displays.last.failed(error)
        raise


def finetune(config, nproc_per_node: int = 1, plot: bool = True, callbacks=()):
    """``engine.finetune(config)`` for a notebook (torchrun when ``nproc_per_node`` > 1), returning its
    ``records.Run``; ``plot``: the live loss and accuracy figure under the progress display.

    A kernel interrupt stops the run after its current step with a checkpoint (the engine's clean stop); this then
    prints one message, in the notebook's terms, saying how to continue, and returns the partial run, so the cells
    below still show its curves so far (``Run.finished`` is False: there is no summary yet).
    """
    from . import engine, launch, records

    if nproc_per_node != 1:
        return launch.finetune_torchrun(config, nproc_per_node)
    try:
        with _notebook_run(plot) as (displays, probe):
            return engine.finetune(config, callbacks=[probe, *callbacks], progress=displays())
    except engine.RunInterrupted:
        print(stop_message(probe.stop))
        return records.Run(probe.stop.folder)


def sweep(config, seeds: list[int], nproc_per_node: int = 1, concurrent: int = 1, plot: bool = True, callbacks=()):
    """``sweep.run_sweep(config, seeds)`` for a notebook: each seed's run under its own live display (torchrun
    when ``nproc_per_node`` > 1), then the sweep record beside them; returns the seeds' ``records.Run``s. An
    interrupt stops the seed under way as ``finetune`` does; running the notebook again continues the sweep.
    ``concurrent`` > 1 trains that many seeds at once in processes of their own: no live display then, a line per
    finished seed (each seed's output is in ``<output_dir>/logs/``)."""
    from . import engine, launch, records
    from .sweep import run_sweep, seed_folder

    if nproc_per_node != 1:
        return launch.sweep_torchrun(config, nproc_per_node, seeds)
    if concurrent > 1:
        try:
            run_sweep(config, seeds, concurrent=concurrent, callbacks=callbacks)
        except engine.RunInterrupted as e:
            print(f"Stopped: {e}\nTo continue: run the notebook again with the same seeds and output_dir.")
        return [records.Run(seed_folder(config.output_dir, seed)) for seed in seeds]
    try:
        with _notebook_run(plot) as (displays, probe):
            run_sweep(config, seeds, callbacks=[probe, *callbacks], make_progress=displays)
    except engine.RunInterrupted:
        print(stop_message(probe.stop, sweep=True))
    return [records.Run(seed_folder(config.output_dir, seed)) for seed in seeds]


def stop_message(stop: Stop, sweep: bool = False) -> str:
    """What to do after a stop, in the notebook's terms (the engine's own message speaks YAML and the CLI)."""
    folder = json.dumps(str(stop.folder))
    again = (
        "run the notebook again with the same seeds and output_dir: finished seeds are kept, this one resumes"
        if sweep
        else f"set resume = True and output_dir = {folder} in the parameters cell, then run the notebook again"
    )
    return (
        f"Stopped ({stop.reason}) after step {stop.step} of {stop.total_steps}; checkpoint saved in "
        f"{stop.folder / 'checkpoints'}.\n"
        f"To continue: {again}. Below, `run` is this partial run (its curves so far; no summary until it finishes)."
    )
