"""The run folder (see docs/run-folder.md): preparing it, writing its files atomically, and ``Run``, the one
reader of it (``find_runs`` resolves folders and glob patterns into runs)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import write_csv_atomic
from .errors import KitError

STEP_COLUMNS = ["step", "epoch", "loss", "lr", "samples_per_s", "tokens_per_s", "elapsed_s"]
EVAL_COLUMNS = ["epoch", "step", "accuracy", "correct", "total", "acc_low", "acc_high", "eval_s", "train_s"]
PREDICTION_COLUMNS = ["idx", "sentence", "label", "pred", "prob_pos"]
LOCK_FILE = ".lock"
REPLACED = ".replaced"  # the run an overwrite replaces, kept until the new run has a checkpoint (settle_replaced)
NOT_CONTENT = (LOCK_FILE, REPLACED)
RUN_FILES = ("config.json", "steps.csv", "evals.csv", "summary.json", "manifest.json", "predictions.csv")
CSV_COLUMNS = {"steps.csv": STEP_COLUMNS, "evals.csv": EVAL_COLUMNS, "predictions.csv": PREDICTION_COLUMNS}
THROUGHPUTS = ("throughput(ips)_raw", "throughput(ips)_no_eval", "throughput(ips)_pure_compute")
JSON_KEYS = {  # the keys the analysis reads, checked as each file is read; the engine writes more
    "config.json": ("model", "precision", "seed", "target_acc"),
    "summary.json": (
        "acc",
        "acc_correct",
        "dev_rows",
        "acc_interval",
        "target_correct",
        "best_acc",
        "converged",
        "epochs_run",
        "time_to_target",
        "e2e_time",
        *THROUGHPUTS,
        "peak_memory_gib",
        "global_batch_size",
        "world_size",
    ),
    "manifest.json": ("device_name",),
}


def default_output_dir() -> str:
    return os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))


def run_state(folder: Path) -> str:
    """'empty' (absent or no files), 'finished', 'unfinished' (a run without summary.json) or 'other'."""
    if not folder.exists() or all(p.name in NOT_CONTENT for p in folder.iterdir()):
        return "empty"
    if (folder / "summary.json").exists():
        return "finished"
    if (folder / "config.json").exists():
        return "unfinished"
    return "other"


def check_folder_path(folder: Path, parameter: str) -> None:
    """A folder to write into: not a file, not under a file, and (where it or its nearest existing parent exists)
    writable; checked before any work, so a run does not fail at its first write."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise KitError(f"{parameter} {folder} is a file; expected a folder (new or empty)")
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise KitError(f"{parameter} {folder} cannot be created: {parent.name} is a file; expected a folder path")
    try:  # a probe, not os.access: root passes access checks on read-only storage
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as e:
        where = "" if parent == folder else f" (in {parent.name}, its nearest existing folder)"
        raise KitError(f"{parameter} {folder} cannot be written{where}: {e.strerror or e}") from e


def check_unfinished(folder: Path, state: str | None = None) -> None:
    """A resume needs an unfinished run."""
    state = state or run_state(folder)
    if state != "unfinished":
        raise KitError(
            f"output_dir {folder}: nothing to resume (it is {state}: resume needs an unfinished run with checkpoints)"
        )


def check_output_dir(folder: Path, resume: bool, overwrite: bool, world_size: int | None = None) -> str:
    """Refuse to mix runs, touching nothing: a finished or unfinished run is only replaced with ``overwrite`` (or
    continued with ``resume``), and a folder that holds something else is never used. A resume needs a readable
    checkpoint and (given ``world_size``) the process count the run was started with. Returns the folder's state."""
    folder = Path(folder)
    check_folder_path(folder, "output_dir")
    state = run_state(folder)
    if resume:
        check_unfinished(folder, state)
        from .checkpoint import check_readable  # imported here: it imports torch

        check_readable(folder / "checkpoints")
        manifest = folder / "manifest.json"
        started = json.loads(manifest.read_text()).get("world_size") if manifest.is_file() else None
        if world_size is not None and isinstance(started, int) and started != world_size:
            raise KitError(
                f"output_dir {folder}: the run was started with {started} process(es), this is {world_size}; "
                f"resume with the same number of processes (torchrun --nproc_per_node)"
            )
        return state
    if state == "finished" and not overwrite:
        raise KitError(
            f"output_dir {folder} already holds a finished run; pass overwrite: true to replace it, "
            f"or choose another output_dir"
        )
    if state == "unfinished" and not overwrite:
        raise KitError(
            f"output_dir {folder} holds an unfinished run; pass resume: true to continue it, or "
            f"overwrite: true to start over"
        )
    if state == "other":
        raise KitError(f"output_dir {folder} is not empty and holds no run; choose an empty or new folder")
    return state


@contextlib.contextmanager
def lock_run(folder):
    """Hold an advisory lock on a run folder (``fcntl.flock`` on ``<folder>/.lock``, which holds the holder's pid)
    for the ``with`` block; a second holder, in this or another process, is refused naming the pid. The lock goes
    with its process, so a lock file left by a killed run never blocks. The lock file is removed on leaving, and the
    folder too when the block created it and left nothing else in it (a run that failed before writing)."""
    import fcntl

    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise KitError(
                f"run folder {folder} is in use by process {holder} (it holds {LOCK_FILE}); wait for it to end "
                f"or stop it, or choose another output_dir"
            ) from None
        # A holder that was leaving may have removed the file after we opened it: lock the file at the path.
        if path.exists() and os.fstat(fd).st_ino == path.stat().st_ino:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        path.unlink(missing_ok=True)  # while still holding the lock: a newcomer then locks a new file
        os.close(fd)
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def prepare_output_dir(folder: Path, resume: bool, overwrite: bool) -> None:
    """``check_output_dir``, then set an old run being overwritten aside (``settle_replaced`` drops or restores
    it) and create the folder."""
    state = check_output_dir(folder, resume, overwrite)
    if resume:
        return
    if state in ("finished", "unfinished"):
        aside = folder / REPLACED
        aside.mkdir()
        for path in folder.iterdir():
            if path.name not in NOT_CONTENT:  # the lock file stays: a holder may be locking it
                os.replace(path, aside / path.name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KitError(f"output_dir {folder} cannot be created: {e.strerror or e}") from e
    if not os.access(folder, os.W_OK):
        raise KitError(f"output_dir {folder} cannot be written")


def settle_replaced(folder: Path) -> str | None:
    """The run an overwrite set aside: dropped once the new run has a checkpoint or has finished, put back in
    place of the new run's files when it has neither (it failed, or was killed, before its first checkpoint).
    Call with the folder locked, at a run's start and end. Returns "dropped", "restored" or None (nothing aside)."""
    folder = Path(folder)
    aside = folder / REPLACED
    if not aside.is_dir():
        return None
    if (folder / "summary.json").is_file() or any((folder / "checkpoints").glob("step-*.pt")):
        shutil.rmtree(aside)
        return "dropped"
    for path in folder.iterdir():
        if path.name not in NOT_CONTENT:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    for path in aside.iterdir():
        os.replace(path, folder / path.name)
    aside.rmdir()
    return "restored"


def write_records(
    folder: Path, steps: list[dict] | None = None, evals: list[dict] | None = None, fsync: bool = True
) -> None:
    """steps.csv and evals.csv, each rewritten whole from its rows (the run's so far), those given; ``fsync`` as
    ``atomic.write_atomic``'s."""
    if steps is not None:
        write_csv_atomic(folder / "steps.csv", pd.DataFrame(steps, columns=STEP_COLUMNS), fsync)
    if evals is not None:
        write_csv_atomic(folder / "evals.csv", pd.DataFrame(evals, columns=EVAL_COLUMNS), fsync)


def write_predictions(folder: Path, frame: pd.DataFrame) -> None:
    write_csv_atomic(folder / "predictions.csv", frame[PREDICTION_COLUMNS])


@cache
def git_commit() -> str | None:
    """The kit's git commit, when it runs from a checkout: read once, as the kit is imported (below), so a run's
    manifest names the code this process loaded even when the checkout moves on under a long sweep."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


git_commit()

_notebook_launch: dict | None = None  # set by config.notebook_config: the notebook and parameters of the next run


def record_notebook_launch(notebook: str, parameters: dict) -> None:
    """Remember that runs in this process are started by ``notebook`` with ``parameters`` (those that differ from
    the defaults), for their manifests: in a kernel ``sys.argv`` says only ``ipykernel_launcher.py -f ...``."""
    global _notebook_launch
    _notebook_launch = {"notebook": notebook, "parameters": dict(parameters)}


def _in_kernel() -> bool:
    return "ipykernel" in sys.modules and "ipykernel" in Path(sys.argv[0] if sys.argv else "").name


def launch() -> tuple[str | None, dict]:
    """How this process was started: a command to repeat it (None where there is none) and the facts behind it:
    ``{"argv": [...]}`` for a command line, ``{"notebook": path, "parameters": {...}}`` for a notebook."""
    if _notebook_launch is not None or _in_kernel():
        record = _notebook_launch or {"notebook": os.environ.get("JPY_SESSION_NAME"), "parameters": None}
        if record["parameters"] is None:
            return None, record
        yaml_parameters = json.dumps(record["parameters"])  # JSON is YAML: papermill -y reads it back
        return shlex.join(["papermill", record["notebook"], "out.ipynb", "-y", yaml_parameters]), record
    argv = list(sys.argv)
    if argv and Path(argv[0]).parts[-2:] == ("distil_kit", "__main__.py"):
        # under torchrun, every rank's argv is the module's: repeat the run through torchrun
        torchrun = ["torchrun", f"--nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', '1')}"]
        argv[:1] = [*(torchrun if os.environ.get("TORCHELASTIC_RUN_ID") else ["python"]), "-m", "distil_kit"]
    return shlex.join(argv), {"argv": list(sys.argv)}


def environment_manifest() -> dict:
    """Versions and hardware: what a reader needs to judge or repeat the numbers; and how the run was started."""
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    command, launched_by = launch()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "device_name": (
            torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})"
        ),
        "device_count": torch.cuda.device_count() if cuda else 1,
        "cpu": f"{platform.machine()}, {os.cpu_count()} cores",
        "git_commit": git_commit(),
        "command": command,
        "launched_by": launched_by,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --- reading --------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    """A JSON object holding at least the keys readers rely on (``JSON_KEYS``)."""
    if not path.is_file():
        raise KitError(f"{path}: file not found; the run folder is incomplete")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise KitError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise KitError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    missing = [k for k in JSON_KEYS[path.name] if k not in obj]
    if missing:
        raise KitError(f"{path}: missing key(s) {', '.join(missing)}")
    return obj


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV file with the contract's columns (``CSV_COLUMNS``), numbers where numbers belong: a stray string
    would otherwise plot as a category."""
    if not path.is_file():
        raise KitError(f"{path}: file not found; the run folder is incomplete")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise KitError(f"{path}: malformed CSV ({str(e).splitlines()[0]})") from e
    columns = CSV_COLUMNS[path.name]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KitError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(columns)}")
    for column in columns:
        if column == "sentence":
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = np.flatnonzero(values.isna() & frame[column].notna())
        if bad.size:
            raise KitError(f"{path}: line {bad[0] + 2}: {column} {frame[column].iloc[bad[0]]!r} is not a number")
        frame[column] = values
    return frame


def _check_predictions(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Catch an engine that wrote logits or class ids the analysis would silently misread."""
    for column, ok in (
        ("label", frame.label.isin((0, 1))),
        ("pred", frame.pred.isin((0, 1))),
        ("prob_pos", frame.prob_pos.between(0, 1)),
    ):
        bad = np.flatnonzero(~ok)
        if bad.size:
            expected = "a probability in [0, 1]" if column == "prob_pos" else "0 or 1"
            raise KitError(f"{path}: line {bad[0] + 2}: {column} {frame[column].iloc[bad[0]]:g} is not {expected}")
    return frame


@dataclass(frozen=True)
class Run:
    """A run folder and its records: the JSON files as dicts, the CSV files as frames.

    The one reader of the run folder. ``Run(folder)`` (what ``finetune`` returns, finished or not) reads each
    file on first use; ``Run.read(folder)`` reads a finished run's every file at once. Either way a file is
    checked as it is read, and a missing or malformed one is a one-line KitError naming it.
    """

    folder: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))

    @classmethod
    def read(cls, folder) -> Run:
        """A finished run folder, every file read and checked now."""
        return cls(folder).check()

    def check(self) -> Run:
        """Read and check every file now (the run must be finished); returns the run."""
        if not self.folder.is_dir():
            raise KitError(f"run folder {self.folder} does not exist")
        for name in ("summary", "config", "manifest", "steps", "evals", "predictions"):
            getattr(self, name)
        return self

    @property
    def finished(self) -> bool:
        return (self.folder / "summary.json").exists()

    @cached_property
    def config(self) -> dict:
        return _read_json(self.folder / "config.json")

    @cached_property
    def summary(self) -> dict:
        if run_state(self.folder) == "unfinished":
            raise KitError(
                f"{self.folder / 'summary.json'}: file not found; the run is unfinished (resume it, or leave it out)"
            )
        return _read_json(self.folder / "summary.json")

    @cached_property
    def manifest(self) -> dict:
        return _read_json(self.folder / "manifest.json")

    @cached_property
    def steps(self) -> pd.DataFrame:
        return _read_csv(self.folder / "steps.csv")

    @cached_property
    def evals(self) -> pd.DataFrame:
        return _read_csv(self.folder / "evals.csv")

    @cached_property
    def predictions(self) -> pd.DataFrame:
        return _check_predictions(self.folder / "predictions.csv", _read_csv(self.folder / "predictions.csv"))

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r})"


def find_runs(patterns, base=None) -> list[Run]:
    """The finished runs that ``patterns`` (a list of run folders and glob patterns) name, read and checked, in
    the order given and each once; relative patterns start from ``base`` (default: the working directory).

    A folder named as is must hold a finished run; a pattern keeps the finished run folders it matches (those
    holding summary.json, by name) and must match one. Globs are resolved here, at the notebook's and the CLI's
    boundary: every table and figure takes the list of runs this returns.
    """
    if isinstance(patterns, (str, os.PathLike)):
        raise TypeError(f"find_runs takes a list of run folders or glob patterns, e.g. [{str(patterns)!r}]")
    runs: dict[Path, Run] = {}
    for pattern in patterns:
        for folder in _run_folders(str(pattern), None if base is None else Path(base)):
            if folder.resolve() not in runs:
                runs[folder.resolve()] = Run.read(folder)
    if not runs:
        raise KitError("no runs given; pass run folders or glob patterns such as runs/*")
    return list(runs.values())


def _run_folders(pattern: str, base: Path | None) -> list[Path]:
    here = Path() if base is None else base
    if not glob.has_magic(pattern):
        return [here / pattern]
    matches = [here / m for m in sorted(glob.glob(pattern, root_dir=base))]
    matches = [m for m in matches if (m / "summary.json").is_file()]
    if not matches:
        where = "" if Path(pattern).is_absolute() else f" under {here.resolve()}"
        raise KitError(f"{pattern}: matches no finished run folder (one holding summary.json){where}")
    return matches
