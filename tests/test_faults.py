"""Faults around a run folder (issue 19): a full disk, leftovers of killed writes, a second process on the folder,
checks that must come before the model is loaded. Table-driven like ``tests/test_bad_input.py``."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from distil_kit import atomic, checkpoint, cli, records
from distil_kit.config import RunConfig
from distil_kit.errors import KitError

ROOT = Path(__file__).resolve().parents[1]
TORCH_SAVE = torch.save


# --- a full disk during a checkpoint write ----------------------------------------------------------------------


def _torch_full_disk(state, f):
    """What torch.save does on a full disk when handed a file object: the OSError, the writer's error as context."""
    try:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    except RuntimeError:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None


def _torch_full_disk_wrapped(state, f):
    """The same with the OSError as the cause of the writer's RuntimeError (the order some versions use)."""
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as e:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from e


def _dev_full(state, f):
    """A real ENOSPC: the checkpoint written to /dev/full through a Python file object, as checkpoint.save does."""
    with open("/dev/full", "wb") as full:
        TORCH_SAVE(state, full)


@pytest.mark.parametrize("save", [_torch_full_disk, _torch_full_disk_wrapped, _dev_full])
def test_full_disk_during_a_checkpoint_names_no_space(save, tmp_path, monkeypatch):
    if save is _dev_full and not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    monkeypatch.setattr(checkpoint.torch, "save", save)
    writer = checkpoint.BackgroundWriter()
    writer.save({"w": torch.zeros(100_000)}, tmp_path / "checkpoints", 5)
    with pytest.raises(KitError) as error:
        writer.wait()
    message = str(error.value)
    assert "\n" not in message
    assert "step-5.pt could not be written: OSError: [Errno 28] No space left on device" in message
    assert "unexpected pos" not in message
    assert list((tmp_path / "checkpoints").iterdir()) == [], "the temporary file is removed"


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_during_a_records_write_keeps_the_last_whole_files(tmp_path, monkeypatch):
    step = {"step": 1, "epoch": 0.5, "loss": 0.7, "lr": 5e-5, "samples_per_s": 20.0, "tokens_per_s": 500.0}
    evals = [{"epoch": 1, "step": 2, "accuracy": 0.75, "correct": 3, "total": 4}]
    records.write_records(tmp_path, [{**step, "elapsed_s": 1.0}], evals)
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}

    def half_then_full(frame, path, **kwargs):
        Path(path).write_text("step,epoch,loss\n2,1.0,")
        _no_space()

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_full)
    with pytest.raises(OSError, match="No space left on device"):
        records.write_records(tmp_path, [{**step, "elapsed_s": 1.0}, {**step, "step": 2, "elapsed_s": 2.0}], evals)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before, "no half file, no temporary file"


def test_full_disk_when_creating_the_output_dir_names_no_space(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "mkdir", _no_space)
    with pytest.raises(KitError) as error:
        records.prepare_output_dir(tmp_path / "run", resume=False, overwrite=False)
    assert str(error.value) == f"output_dir {tmp_path / 'run'} cannot be created: No space left on device"


# --- leftovers of killed writes ----------------------------------------------------------------------------------

KILLED_WRITE = """
import os, signal, sys
from pathlib import Path
from distil_kit import atomic

def die(tmp):
    Path(tmp).write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)

target = Path(sys.argv[1])
if sys.argv[2] == "file":
    atomic.write_atomic(target, die)
else:
    atomic.replace_dir(target, lambda tmp: die(Path(tmp) / "model.safetensors"))
"""


def _killed_write(target: Path, kind: str) -> None:
    done = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(target), kind], cwd=ROOT)
    assert done.returncode == -signal.SIGKILL


def test_leftovers_of_killed_writes_are_removed(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    keep = {"config.json": "{}", "steps.csv": "s\n", ".lock": "1", "notes.tmp": "mine", "checkpoints/step-2.pt": ""}
    for name, text in keep.items():
        (run / name).write_text(text)
    (run / "model").mkdir()
    (run / ".ipynb_checkpoints").mkdir()
    _killed_write(run / "steps.csv", "file")
    _killed_write(run / "checkpoints" / "step-4.pt", "file")
    _killed_write(run / "model", "dir")
    leftovers = sorted(str(p.relative_to(run)) for p in run.rglob(".*.*") if p.name != ".ipynb_checkpoints")
    assert len(leftovers) == 3, leftovers  # two temporary files and a temporary folder
    removed = atomic.remove_leftovers(run)
    assert sorted(str(p.relative_to(run)) for p in removed) == leftovers
    left = {str(p.relative_to(run)) for p in run.rglob("*")}
    assert left == {*keep, "checkpoints", "model", ".ipynb_checkpoints"}
    assert atomic.remove_leftovers(tmp_path / "no-such-run") == []


# --- the run folder's lock ---------------------------------------------------------------------------------------

HOLD = """
import sys, time
from distil_kit import records
with records.lock_run(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(folder: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_process_on_a_run_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = _holder(run)
    try:
        with pytest.raises(KitError) as error:
            with records.lock_run(run):
                pass
        message = str(error.value)
        assert "\n" not in message
        assert f"{run} is in use by process {holder.pid}" in message
    finally:
        holder.kill()  # SIGKILL: the lock file stays, the lock goes with the process
        holder.wait()
    assert (run / ".lock").read_text().strip() == str(holder.pid)
    with records.lock_run(run):  # a stale lock does not block
        assert (run / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(KitError, match="in use by process"):  # nor does the lock nest in one process
            with records.lock_run(run):
                pass


def test_lock_leaves_nothing_behind(tmp_path):
    with records.lock_run(tmp_path / "new" / "run") as folder:
        assert folder == tmp_path / "new" / "run" and [p.name for p in folder.iterdir()] == [".lock"]
    assert not folder.exists()  # created for the block, left empty: removed
    kept = tmp_path / "kept"
    kept.mkdir()
    with records.lock_run(kept):
        (kept / "config.json").write_text("{}")
    assert [p.name for p in kept.iterdir()] == ["config.json"]


# --- checks before the model is loaded ---------------------------------------------------------------------------


def _run_folder(folder: Path, checkpoints: dict[str, bytes], world_size: int = 1) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    config = RunConfig(output_dir=str(folder), device="cpu").to_dict()
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "manifest.json").write_text(json.dumps({"device_name": "CPU", "world_size": world_size}))
    for name, content in checkpoints.items():
        (folder / "checkpoints" / name).write_bytes(content)
    return folder


def _good_checkpoint() -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({"step": 1}, buffer)
    return buffer.getvalue()


RESUME_CASES = {
    "no checkpoint": ({}, 1, ["run/checkpoints: no checkpoint to resume from", "overwrite: true"]),
    "only a truncated checkpoint": (
        {"step-5.pt": b"PK\x03\x04 truncated"},
        1,
        ["run/checkpoints: no readable checkpoint (tried step-5.pt (", "overwrite: true"],
    ),
    "world size changed": (
        {"step-5.pt": "good"},
        2,
        ["run was started with 2 process(es), this is 1", "torchrun --nproc_per_node"],
    ),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_checks_come_before_the_model_is_loaded(case, tmp_path):
    """``check_output_dir`` (which the engine calls before loading the tokenizer and model) refuses the resume."""
    files, world_size, pieces = RESUME_CASES[case]
    files = {k: _good_checkpoint() if v == "good" else v for k, v in files.items()}
    run = _run_folder(tmp_path / "run", files, world_size)
    with pytest.raises(KitError) as error:
        records.check_output_dir(run, resume=True, overwrite=False, world_size=1)
    message = str(error.value)
    assert "\n" not in message
    for piece in pieces:
        assert piece in message


def test_resume_check_passes_a_good_checkpoint(tmp_path):
    run = _run_folder(tmp_path / "run", {"step-5.pt": _good_checkpoint()})
    assert records.check_output_dir(run, resume=True, overwrite=False, world_size=1) == "unfinished"


# --- report --out -------------------------------------------------------------------------------------------------


def test_report_out_an_existing_file(tmp_path, capsys):
    (tmp_path / "report.png").write_text("x")
    assert cli.main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report.png")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert f"report --out {tmp_path / 'report.png'} is a file; expected a folder" in err
    assert (tmp_path / "report.png").read_text() == "x"


# --- rows longer than the model's positions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "lengths, limit, pieces",
    [
        ([3, 9, 4], 8, ["dev split, row 1: 9 tokens, more than the 8 positions of m (max_position_embeddings)"]),
        ([3, 8], 8, None),
        ([600], None, None),
    ],
)
def test_rows_longer_than_the_models_positions(lengths, limit, pieces):
    import numpy as np

    from distil_kit.data import Split, check_positions

    width = max(lengths) + 2  # right padding beyond the longest row does not count
    mask = (np.arange(width) < np.array(lengths)[:, None]).astype(np.int64)
    n = len(lengths)
    split = Split(np.arange(n), np.array(["s"] * n), np.zeros(n, dtype=np.int64), mask * 5, mask)
    if pieces is None:
        check_positions({"dev": split}, limit, "m")
        return
    with pytest.raises(KitError) as error:
        check_positions({"dev": split}, limit, "m")
    assert all(piece in str(error.value) for piece in pieces)


def test_max_positions_reads_the_config(tiny_model):
    from distil_kit.modeling import max_positions

    assert max_positions(str(tiny_model)) == 512  # a hub id's: tests/test_data.py (a faked hub cache)
