"""``report_to: [mllog]``: ``<run>/mllog.txt``, MLPerf's event log (``:::MLLOG {...}`` lines) written through
``mlperf_logging.mllog``, so that MLPerf's tooling (its log parser, result summarizer) reads a kit run.

The log maps the kit's run onto MLPerf's phases: ``init_start`` at set-up; the evaluation before training, then
``init_stop`` and ``run_start`` where the kit's training clock starts (time to target counts from there); an
``epoch_start``/``epoch_stop`` pair per epoch, then its ``eval_start``/``eval_stop`` and ``eval_accuracy``
(``epoch_num`` in the metadata); ``run_stop`` with ``status`` ``success`` (the target reached, or none set) or
``aborted`` (every epoch run without reaching it). The recipe's values come once: ``seed``, ``global_batch_size``,
``gradient_accumulation_steps``, ``train_samples``, ``eval_samples``, ``opt_*``. A stopped run's log has no
``run_stop``; a resume cuts it back to its checkpoint (the offsets are in ``<run>/trackers.json``) and goes on, so
the finished log reads as one run.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from .callbacks import Callback
from .tracker_state import read_state, require, update_state

FILE = "mllog.txt"


class MLLog(Callback):
    def __init__(self, cfg):
        require("mlperf_logging.mllog", "mllog")
        self.path = Path(cfg.output_dir) / FILE
        self.log = self.handler = None
        self.init_ms = int(time.time() * 1000)  # set-up starts now; the file is opened once the run folder is

    def _open(self) -> None:
        from mlperf_logging.mllog import mllog

        # a logger of this file's own, not the library's shared one (it prints to stdout); a run that ended in an
        # error left its handler behind
        logger = logging.getLogger(f"distil_kit.mllog.{self.path.resolve()}")
        logger.propagate, logger.level = False, logging.INFO
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        self.handler = logging.FileHandler(self.path)
        logger.addHandler(self.handler)
        self.log = mllog.MLLogger(logger=logger, root_dir=str(Path(__file__).parents[1]))  # "distil_kit/mllog.py"

    def _close(self) -> None:
        if self.handler is not None:
            self.handler.close()
            self.log.logger.removeHandler(self.handler)
            self.handler = None

    def on_run_start(self, trainer) -> None:
        cfg, p = trainer.cfg, trainer.progress
        if cfg.resume:  # back to the checkpoint's place in the log: what followed it is trained again
            offset = read_state(trainer.out).get("mllog_offsets", {}).get(str(p.step))
            if offset is not None and self.path.is_file():
                os.truncate(self.path, offset)
            self._open()
            return
        self._open()
        self.log.start("init_start", time_ms=self.init_ms)
        recipe = {
            "submission_benchmark": "distilbert-sst2",
            "seed": cfg.seed,
            "global_batch_size": trainer.global_batch_size,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "train_samples": trainer.train_rows,
            "eval_samples": len(trainer.splits["dev"]),
            "opt_name": "adamw",
            "opt_base_learning_rate": cfg.lr,
            "opt_adamw_weight_decay": cfg.weight_decay,
            "opt_learning_rate_warmup_steps": 0,
            "opt_learning_rate_decay_schedule": "linear",
            "opt_learning_rate_training_steps": trainer.total_steps,
            "opt_end_learning_rate": 0.0,
            "target_accuracy": cfg.target_acc,
        }
        for key, value in recipe.items():
            self.log.event(key, value)

    def on_evaluate(self, trainer, row: dict) -> None:
        cfg, p, epoch = trainer.cfg, trainer.progress, row["epoch"]
        now = int(time.time() * 1000)
        evaluated = now - int(row["eval_s"] * 1000)  # the evaluation's start, and its epoch's end
        if epoch > 0:
            self.log.end("epoch_stop", metadata={"epoch_num": epoch}, time_ms=evaluated)
        self.log.start("eval_start", metadata={"epoch_num": epoch}, time_ms=evaluated)
        self.log.end("eval_stop", metadata={"epoch_num": epoch}, time_ms=now)
        self.log.event("eval_accuracy", row["accuracy"], metadata={"epoch_num": epoch})
        if epoch == 0:
            self.log.end("init_stop")
            self.log.start("run_start")
        if p.converged or epoch == cfg.epochs:
            status = "success" if p.converged or cfg.target_acc is None else "aborted"
            self.log.end("run_stop", metadata={"status": status, "epoch_num": epoch})
        else:
            self.log.start("epoch_start", metadata={"epoch_num": epoch + 1})

    def on_checkpoint(self, trainer, step: int) -> None:
        offsets = read_state(trainer.out).get("mllog_offsets", {})
        keep = sorted(offsets, key=int)[-2:]  # the run keeps two checkpoints, and this one may not reach the disk
        kept = {k: offsets[k] for k in keep}
        update_state(trainer.out, mllog_offsets={**kept, str(step): self.path.stat().st_size})

    def on_stop(self, trainer, reason: str) -> None:
        self._close()

    def on_run_end(self, trainer, summary: dict) -> None:
        self._close()
