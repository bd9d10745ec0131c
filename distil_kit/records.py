"""The run folder (see docs/run-folder.md): preparing it, writing its files atomically, reading them back."""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from .atomic import write_csv_atomic, write_json_atomic
from .errors import KitError

STEP_COLUMNS = ["step", "epoch", "loss", "lr", "samples_per_s", "tokens_per_s", "elapsed_s"]
EVAL_COLUMNS = ["epoch", "step", "accuracy", "eval_s", "train_s"]
PREDICTION_COLUMNS = ["idx", "sentence", "label", "pred", "prob_pos"]
RUN_FILES = ("config.json", "steps.csv", "evals.csv", "summary.json", "manifest.json", "predictions.csv")


def default_output_dir() -> str:
    return os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))


def run_state(folder: Path) -> str:
    """'empty' (absent or no files), 'finished', 'unfinished' (a run without summary.json) or 'other'."""
    if not folder.exists() or not any(folder.iterdir()):
        return "empty"
    if (folder / "summary.json").exists():
        return "finished"
    if (folder / "config.json").exists():
        return "unfinished"
    return "other"


def check_output_dir(folder: Path, resume: bool, overwrite: bool) -> str:
    """Refuse to mix runs, touching nothing: a finished or unfinished run is only replaced with ``overwrite`` (or
    continued with ``resume``), and a folder that holds something else is never used. Returns the folder's state."""
    state = run_state(folder)
    if resume:
        if state != "unfinished":
            raise KitError(f"output_dir {folder}: nothing to resume (it is {state}: resume needs an unfinished run "
                           f"with checkpoints)")
        return state
    if state == "finished" and not overwrite:
        raise KitError(f"output_dir {folder} already holds a finished run; pass overwrite: true to replace it, "
                       f"or choose another output_dir")
    if state == "unfinished" and not overwrite:
        raise KitError(f"output_dir {folder} holds an unfinished run; pass resume: true to continue it, or "
                       f"overwrite: true to start over")
    if state == "other":
        raise KitError(f"output_dir {folder} is not empty and holds no run; choose an empty or new folder")
    return state


def prepare_output_dir(folder: Path, resume: bool, overwrite: bool) -> None:
    """``check_output_dir``, then clear an old run being overwritten and create the folder."""
    state = check_output_dir(folder, resume, overwrite)
    if resume:
        return
    if state in ("finished", "unfinished"):
        shutil.rmtree(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KitError(f"output_dir {folder} cannot be created: {e.strerror or e}") from e
    if not os.access(folder, os.W_OK):
        raise KitError(f"output_dir {folder} cannot be written")


def write_records(folder: Path, steps: list[dict], evals: list[dict]) -> None:
    write_csv_atomic(folder / "steps.csv", pd.DataFrame(steps, columns=STEP_COLUMNS))
    write_csv_atomic(folder / "evals.csv", pd.DataFrame(evals, columns=EVAL_COLUMNS))


def write_predictions(folder: Path, frame: pd.DataFrame) -> None:
    write_csv_atomic(folder / "predictions.csv", frame[PREDICTION_COLUMNS])


def git_commit() -> str | None:
    """The kit's git commit, when it runs from a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def environment_manifest() -> dict:
    """Versions and hardware: what a reader needs to judge or repeat the numbers."""
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "device_name": torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "device_count": torch.cuda.device_count() if cuda else 1,
        "cpu": f"{platform.machine()}, {os.cpu_count()} cores", "git_commit": git_commit(),
        "command": sys.argv, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise KitError(f"{path}: file not found; the run folder is incomplete")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise KitError(f"{path}: not valid JSON ({e})") from e


def _read_csv(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise KitError(f"{path}: file not found; the run folder is incomplete")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise KitError(f"{path}: malformed CSV ({str(e).splitlines()[0]})") from e
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KitError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(columns)}")
    return frame


@dataclass(frozen=True)
class Run:
    """A run folder and its records, read on first use."""

    folder: Path

    @cached_property
    def config(self) -> dict:
        return _read_json(self.folder / "config.json")

    @cached_property
    def summary(self) -> dict:
        return _read_json(self.folder / "summary.json")

    @cached_property
    def manifest(self) -> dict:
        return _read_json(self.folder / "manifest.json")

    @cached_property
    def steps(self) -> pd.DataFrame:
        return _read_csv(self.folder / "steps.csv", STEP_COLUMNS)

    @cached_property
    def evals(self) -> pd.DataFrame:
        return _read_csv(self.folder / "evals.csv", EVAL_COLUMNS)

    @cached_property
    def predictions(self) -> pd.DataFrame:
        return _read_csv(self.folder / "predictions.csv", PREDICTION_COLUMNS)

    @property
    def finished(self) -> bool:
        return (self.folder / "summary.json").exists()

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r})"
