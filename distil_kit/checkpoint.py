"""Resumable checkpoints: every piece of state a run needs to continue exactly, written atomically."""

from __future__ import annotations

import random
import re
import threading
import zipfile
from pathlib import Path

import numpy as np
import torch

from .atomic import write_atomic
from .errors import KitError

KEEP = 2
_NAME = re.compile(r"step-(\d+)\.pt$")


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files, oldest first."""
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.pt") if (m := _NAME.search(p.name))]
    return [p for _, p in sorted(found)]


def _torch_save(state: dict, tmp: Path) -> None:
    # Through a Python file object: a full disk is then an OSError (ENOSPC), where torch.save on a path says only
    # "unexpected pos ..." from its C++ writer.
    with open(tmp, "wb") as f:
        torch.save(state, f)


def write_error(e: BaseException) -> str:
    """A failed write in words: the OSError in its chain where there is one ("OSError: [Errno 28] No space left on
    device", not the RuntimeError "unexpected pos ..." torch raises with it), else the error itself."""
    seen, cause = set(), e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError) and cause.strerror:
            return f"{type(cause).__name__}: {cause}"
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def save(state: dict, folder: Path, step: int) -> Path:
    """Write ``step-<step>.pt`` (temporary file, then rename) and keep the newest ``KEEP`` checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    path = write_atomic(folder / f"step-{step}.pt", lambda tmp: _torch_save(state, tmp))
    for old in checkpoints(folder)[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def host_copy(obj, pinned: dict | None = None, key: tuple = ()):
    """``obj`` with every tensor and array copied to host memory and every container copied: a snapshot the run can
    go on changing (its weights, optimizer state and record lists) while a thread writes it.

    With ``pinned`` (a dict kept between snapshots), a GPU tensor is copied without blocking into a page-locked host
    buffer kept there under its place in ``obj`` (``key``), allocated at the first snapshot and reused after: the
    copy is queued on the current stream and done once the GPU reaches it (``BackgroundWriter`` waits for that in
    its thread, not the training loop)."""
    if torch.is_tensor(obj):
        if pinned is None or obj.device.type != "cuda":
            return obj.detach().to("cpu", copy=True)
        buffer = pinned.get(key)
        if buffer is None or buffer.shape != obj.shape or buffer.dtype != obj.dtype:
            buffer = pinned[key] = torch.empty(obj.shape, dtype=obj.dtype, pin_memory=True)
        return buffer.copy_(obj.detach(), non_blocking=True)
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, dict):
        copy = type(obj)((k, host_copy(v, pinned, (*key, k))) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a module state_dict's per-module versions, read by load_state_dict
            copy._metadata = obj._metadata
        return copy
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(host_copy(v, pinned, (*key, i)) for i, v in enumerate(obj)))
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v, pinned, (*key, i)) for i, v in enumerate(obj))
    return obj


class BackgroundWriter:
    """Writes checkpoints on a thread of their own: training goes on while one reaches the disk.

    A DistilBERT checkpoint is 0.8 GB (weights and AdamW moments): written inside the loop, it would cost a fast
    run a sizeable share of each epoch. ``save`` waits for the previous write, takes a host snapshot of the state
    (a GPU's tensors copied without blocking into page-locked buffers allocated once, see ``host_copy``) and starts
    writing it once those copies are done; ``wait`` returns once the last checkpoint is on disk and raises the
    error a write met.
    """

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: str | None = None
        self._pinned: dict[tuple, torch.Tensor] = {}

    def save(self, state: dict, folder: Path, step: int) -> None:
        self.wait()  # the previous write has read the pinned buffers: they can be filled again
        snapshot = host_copy(state, self._pinned)
        copied = None
        if self._pinned:  # the copies are queued on the current stream: the writer waits for this mark
            copied = torch.cuda.Event()
            copied.record()
        self._thread = threading.Thread(
            target=self._write, args=(snapshot, folder, step, copied), name="checkpoint-writer"
        )
        self._thread.start()

    def _write(self, state: dict, folder: Path, step: int, copied) -> None:
        try:
            if copied is not None:
                copied.synchronize()
            save(state, folder, step)
        except Exception as e:  # reported to the training thread by wait()
            self._error = f"checkpoint {folder / f'step-{step}.pt'} could not be written: {write_error(e)}"

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise KitError(error)


def check_readable(folder: Path) -> Path:
    """The newest checkpoint whose zip directory reads (a cheap test, no unpickling), else ``load_latest``'s error:
    for a resume refused before the model is loaded."""
    tried = []
    for path in reversed(checkpoints(folder)):
        try:
            with zipfile.ZipFile(path) as z:
                z.infolist()
            return path
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            tried.append(f"{path.name} ({type(e).__name__})")
    raise _no_checkpoint(folder, tried)


def _no_checkpoint(folder: Path, tried: list[str]) -> KitError:
    if not tried:
        return KitError(
            f"{folder}: no checkpoint to resume from (the run stopped before its first one); start "
            f"over with overwrite: true"
        )
    return KitError(f"{folder}: no readable checkpoint (tried {', '.join(tried)}); start over with overwrite: true")


def load_latest(folder: Path) -> tuple[dict, Path]:
    """The newest checkpoint that loads; an unreadable one (truncated, say) falls back to the one before."""
    tried = []
    for path in reversed(checkpoints(folder)):
        try:
            return torch.load(path, map_location="cpu", weights_only=False), path
        except Exception as e:  # a truncated zip raises RuntimeError, EOFError or pickle errors, by version
            tried.append(f"{path.name} ({type(e).__name__})")
    raise _no_checkpoint(folder, tried)
