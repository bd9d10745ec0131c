"""What a resume continues: the interrupted run's own parameters and data, checked against what is asked now.

A resumed run continues exactly what was started, so a parameter asked for now that differs from the saved run's
is refused, naming both values, unless it only changes how the run is recorded or checkpointed
(``SAFE_TO_CHANGE``: those take the new value). A parameter left at its default counts as not asked for: the
CLI's ``--resume --set output_dir=...`` and a notebook's untouched parameters keep the saved values. The data
files must still hash to the manifest's checksums: a changed file would mix two datasets in one run.
"""

from __future__ import annotations

from pathlib import Path

from . import data, records
from .config import RunConfig
from .errors import KitError
from .modeling import file_sha256

# Parameters that change neither the batches nor the arithmetic, only records, checkpoints and the saved model; and
# threads, which changes only how many cores compute (the order of a CPU's float sums, not what is summed), so that
# a run can continue on another machine.
SAFE_TO_CHANGE = (
    "log_every",
    "checkpoint_every",
    "checkpoint_minutes",
    "keep_checkpoints",
    "save_model",
    "num_workers",
    "collective_timeout_s",
    "threads",
    "report_to",
)


# Parameters whose default changed since they were added: a saved run without them ran with these.
BEFORE_IT_EXISTED = {"packing": False}


def resumed_config(given: RunConfig) -> RunConfig:
    """The saved run's config (``<output_dir>/config.json``) with the safe changes of ``given``; a KitError for
    any other change, or for a folder with no run to resume."""
    saved_path = Path(given.output_dir or ".") / "config.json"
    if not given.output_dir or not saved_path.is_file():
        raise KitError(
            f"resume: output_dir {given.output_dir or '(empty)'} holds no run to resume; name the "
            f"interrupted run's folder"
        )
    records.check_unfinished(saved_path.parent)
    default, asked = RunConfig().to_dict(), given.to_dict()
    # a parameter newer than the saved run: the run had its default, the one of its time where that has changed
    saved = {**default, **BEFORE_IT_EXISTED, **records.Run(saved_path.parent).config}
    changed = [
        name
        for name, value in asked.items()
        if name not in ("output_dir", "resume") and value not in (default[name], saved[name])
    ]
    refused = [name for name in changed if name not in SAFE_TO_CHANGE]
    if refused:
        listed = ", ".join(f"{name} {saved[name]!r} -> {asked[name]!r}" for name in refused)
        raise KitError(
            f"resume: {saved_path} was started with other parameters ({listed}); a resume continues the saved "
            f"run unchanged (only {', '.join(SAFE_TO_CHANGE)} may change): drop the change(s), or start a "
            f"new run (another output_dir, or overwrite: true)"
        )
    # output_dir as given: the folder may have been moved or copied since config.json was written
    values = {**saved, **{name: asked[name] for name in changed}, "output_dir": given.output_dir}
    return RunConfig.from_dict({**values, "resume": True, "overwrite": False}, source=str(saved_path))


def check_data_unchanged(folder: Path, data_dir: str) -> None:
    """The data files hash to the checksums the run's manifest recorded at its start (matched by file name: the
    folder may have moved)."""
    manifest = records.Run(folder).manifest
    recorded = {Path(path).name: digest for path, digest in manifest.get("data_files", {}).items()}
    for path in data.source_files(data_dir):
        if path.name in recorded and file_sha256(path) != recorded[path.name]:
            raise KitError(
                f"resume: {path} changed since the run started (sha256 differs from {folder / 'manifest.json'}); "
                f"a resume must train on the same data: restore the file, or start a new run"
            )
