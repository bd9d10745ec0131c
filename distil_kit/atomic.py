"""Atomic file writes: a reader (or a killed process) never sees half a file."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: str | Path, write: Callable[[Path], None], fsync: bool = True) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    Without ``fsync`` the file is still whole or absent for readers and after a killed process (its data is the
    kernel's once written); only a crash of the machine may lose it: for files rebuilt after one anyway."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give them the usual permissions
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: str | Path, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_csv_atomic(path: str | Path, frame, fsync: bool = True) -> Path:
    return write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False), fsync)


def replace_dir(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Fill a temporary folder beside ``path`` with ``write(tmp)``, then put it in place of ``path``."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# The temporary names above: ".<name>.<8 random characters>.tmp" files and ".<name>.<8 random characters>" folders
# (tempfile's alphabet). Nothing else in a run folder is named so.
_TEMP_FILE = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
_TEMP_DIR = re.compile(r"\..+\.[a-z0-9_]{8}")


def remove_leftovers(folder: str | Path, subfolders: tuple[str, ...] = ("checkpoints",)) -> list[Path]:
    """Remove what killed ``write_atomic``/``replace_dir`` calls left in ``folder`` and its ``subfolders``
    (checkpoint writes, the final model folder): call at the start or resume of a run, before anything writes.
    Returns what was removed."""
    removed = []
    for where in (Path(folder), *(Path(folder) / s for s in subfolders)):
        if not where.is_dir():
            continue
        for path in sorted(where.iterdir()):
            if path.is_file() and _TEMP_FILE.fullmatch(path.name):
                path.unlink(missing_ok=True)
            elif path.is_dir() and not path.is_symlink() and _TEMP_DIR.fullmatch(path.name):
                shutil.rmtree(path, ignore_errors=True)
            else:
                continue
            removed.append(path)
    return removed
