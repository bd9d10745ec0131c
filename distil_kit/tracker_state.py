"""What the trackers (``trackers.py``, ``mllog.py``) share: their state in the run folder, which a resume reads, and
the check that a tracker's package imports."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from .atomic import write_json_atomic
from .errors import KitError

STATE_FILE = "trackers.json"  # in the run folder: what a resume continues (the MLflow run, mllog's offsets)


def read_state(folder: Path) -> dict:
    path = Path(folder) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def update_state(folder: Path, **values) -> None:
    """Merge ``values`` into ``<folder>/trackers.json``, the trackers' state a resume reads."""
    write_json_atomic(Path(folder) / STATE_FILE, {**read_state(folder), **values})


def require(package: str, name: str) -> None:
    """``package`` imports, or a one-line error naming the tracker ``name`` that needs it."""
    try:
        importlib.import_module(package)
    except ImportError as e:
        raise KitError(
            f"parameter 'report_to' names {name}, but {package} cannot be imported ({e}); install the tracking "
            f'extra: pip install -e ".[tracking]"'
        ) from None
