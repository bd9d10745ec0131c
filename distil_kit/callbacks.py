"""Hooks into a run: ``finetune(config, callbacks=[...], progress=...)``. The progress display is one (the front
door picks it: these terminal bars by default, ``notebook.NotebookProgress`` in the notebooks); tests observe runs
with others.

Every event gets the ``engine.Trainer`` (its ``cfg``, ``world``, ``progress``, ``clock``, ``model``, ``out``,
``total_steps``, ``batches_per_epoch``) and fires on every rank; a callback that shows or writes something checks
``trainer.world.main``. An exception raised in a callback ends the run like any other error.
"""

from __future__ import annotations

# tqdm.std, not tqdm.auto: in a kernel tqdm.auto wants ipywidgets and warns without it; the notebooks hand the
# engine notebook.NotebookProgress instead, terminals and torchrun's ranks get these text bars.
from tqdm.std import tqdm


class Callback:
    def on_run_start(self, trainer) -> None:
        """Set-up done (a resumed run's state loaded), before the evaluation that precedes training."""

    def on_log(self, trainer, row: dict) -> None:
        """A steps.csv row was made (every ``log_every`` optimizer steps, at checkpoints, stops and epoch ends)."""

    def on_evaluate(self, trainer, row: dict) -> None:
        """An evals.csv row was made: before training (epoch 0) and after every epoch."""

    def on_checkpoint(self, trainer, step: int) -> None:
        """A checkpoint of ``step`` was handed to the writer (it reaches the disk in the background)."""

    def on_stop(self, trainer, reason: str) -> None:
        """The run stops early on a signal (``reason``: its name), after its checkpoint is on disk."""

    def on_run_end(self, trainer, summary: dict) -> None:
        """The run finished and its folder is complete."""


class CallbackList:
    def __init__(self, callbacks):
        self.callbacks = list(callbacks)

    def fire(self, event: str, trainer, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(trainer, *args)


class TqdmProgress(Callback):
    """Terminal progress: a line saying what will be trained, a bar over epochs and one over the current epoch."""

    def __init__(self):
        self.epochs = self.epoch = None

    def on_run_start(self, trainer) -> None:
        if not trainer.world.main:
            return
        cfg, p = trainer.cfg, trainer.progress
        print(
            f"training on {trainer.hardware}: {trainer.train_rows} training rows; global batch "
            f"{trainer.global_batch_size} "
            f"({cfg.train_batch_size} per process x {trainer.world.size} process(es) x "
            f"{cfg.gradient_accumulation_steps} accumulated), trained {trainer.accumulation} micro-batch(es) of "
            f"{cfg.micro_batch_size} rows a step; {trainer.total_steps} optimizer steps"
        )
        self.epochs = tqdm(total=cfg.epochs, initial=p.epoch, desc="epochs")
        self._open_epoch(trainer)

    def _open_epoch(self, trainer) -> None:
        p = trainer.progress
        self.epoch = tqdm(
            total=trainer.batches_per_epoch, initial=p.batches_done, desc=f"epoch {p.epoch + 1}", leave=False
        )

    def on_log(self, trainer, row: dict) -> None:
        if self.epoch is not None:
            self.epoch.update(trainer.progress.batches_done - self.epoch.n)
            self.epoch.set_postfix(loss=row["loss"], samples_s=row["samples_per_s"])

    def on_evaluate(self, trainer, row: dict) -> None:
        if self.epochs is None or row["epoch"] == 0:  # the evaluation before training
            return
        self.epoch.close()
        self.epochs.update(1)
        self.epochs.set_postfix(dev_acc=f"{row['accuracy']:.4f}")
        p = trainer.progress
        if p.epoch < trainer.cfg.epochs and not p.converged:
            self._open_epoch(trainer)

    def _close(self) -> None:
        for bar in (self.epoch, self.epochs):
            if bar is not None:
                bar.close()
        self.epochs = self.epoch = None

    def on_stop(self, trainer, reason: str) -> None:
        self._close()

    def on_run_end(self, trainer, summary: dict) -> None:
        self._close()
