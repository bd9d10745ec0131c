"""The run folder's writers and how a run says where it came from (distil_kit/records.py): the default folder,
an overwrite's old run set aside and settled, steps.csv and evals.csv rewritten whole, the manifest's environment
and launch command. Reading run folders back is tested in ``tests/test_analysis.py``."""

from __future__ import annotations

import os
import platform
import re
import sys
import tempfile
import time
import types
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import torch
import transformers

from distil_kit import records
from distil_kit.errors import KitError

# --- the default run folder -------------------------------------------------------------------------------------


def test_default_output_dir_is_a_timestamped_folder_under_runs():
    before = datetime.now().replace(microsecond=0)
    folder = records.default_output_dir()
    after = datetime.now()
    match = re.fullmatch(r"runs/(\d{8}-\d{6})", folder)
    assert match, folder
    assert before <= datetime.strptime(match[1], "%Y%m%d-%H%M%S") <= after


# --- which folders a run may use -------------------------------------------------------------------------------


def _new(tmp_path: Path) -> Path:
    return tmp_path / "a" / "b" / "run"


def _lock_only(tmp_path: Path) -> Path:
    (tmp_path / "run" / records.REPLACED).mkdir(parents=True)  # left by a killed overwrite: settled at the start
    (tmp_path / "run" / ".lock").write_text("")
    return tmp_path / "run"


def _other(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    return tmp_path / "run"


def _a_file(tmp_path: Path) -> Path:
    (tmp_path / "run").write_text("x")
    return tmp_path / "run"


def _under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "file").write_text("x")
    return tmp_path / "file" / "run"


def _started_with_two(tmp_path: Path) -> Path:
    run = _unfinished_run(tmp_path / "run")
    (run / "manifest.json").write_text('{"world_size": 2}')
    return run


OUTPUT_DIRS = {  # folder, resume, overwrite, world_size: the folder's state, or pieces of the one-line error
    "new": (_new, False, False, None, "empty"),
    "only a lock and an old run aside": (_lock_only, False, False, None, "empty"),
    "finished, overwrite": (lambda t: _finished_run(t / "run"), False, True, None, "finished"),
    "finished": (
        lambda t: _finished_run(t / "run"),
        False,
        False,
        None,
        ["{run} already holds a finished run; pass overwrite: true to replace it, or choose another output_dir"],
    ),
    "unfinished, overwrite": (lambda t: _unfinished_run(t / "run"), False, True, None, "unfinished"),
    "unfinished": (
        lambda t: _unfinished_run(t / "run"),
        False,
        False,
        None,
        ["{run} holds an unfinished run; pass resume: true to continue it, or overwrite: true to start over"],
    ),
    "something else, overwrite": (
        _other,
        False,
        True,
        None,
        ["{run} is not empty and holds no run; choose an empty or new folder"],
    ),
    "unfinished, resume (no manifest)": (lambda t: _unfinished_run(t / "run"), True, False, 1, "unfinished"),
    "started with 2, resume by a caller that does not count": (_started_with_two, True, False, None, "unfinished"),
    "finished, resume": (
        lambda t: _finished_run(t / "run"),
        True,
        False,
        None,
        ["{run}: nothing to resume (it is finished: resume needs an unfinished run with checkpoints)"],
    ),
    "new, resume": (_new, True, False, None, ["nothing to resume (it is empty:"]),
    "something else, resume": (_other, True, True, None, ["nothing to resume (it is other:"]),
    "a file": (_a_file, False, True, None, ["output_dir {run} is a file; expected a folder (new or empty)"]),
    "under a file": (
        _under_a_file,
        False,
        False,
        None,
        ["output_dir {run} cannot be created: file is a file; expected a folder path"],
    ),
}


@pytest.mark.parametrize("case", list(OUTPUT_DIRS))
def test_output_dir_is_checked_before_a_run_touches_it(case, tmp_path):
    make, resume, overwrite, world_size, expected = OUTPUT_DIRS[case]
    run = make(tmp_path)
    before = _tree(tmp_path)
    if isinstance(expected, str):
        assert records.check_output_dir(str(run), resume, overwrite, world_size) == expected
    else:
        with pytest.raises(KitError) as error:
            records.check_output_dir(run, resume, overwrite, world_size)
        message = str(error.value)
        assert "\n" not in message
        for piece in expected:
            assert piece.format(run=run) in message
    assert _tree(tmp_path) == before  # touching nothing


@pytest.mark.parametrize(
    "folder, where", [("/sys", ""), ("/sys/distil-kit/run", " (in sys, its nearest existing folder)")]
)
def test_output_dir_that_cannot_be_written_is_refused(folder, where):
    """sysfs refuses new files, even root's: storage the run could not write to."""
    try:
        tempfile.TemporaryFile(dir="/sys").close()
        pytest.skip("/sys takes files here")
    except FileNotFoundError:
        pytest.skip("no /sys")
    except OSError as e:
        reason = e.strerror
    with pytest.raises(KitError) as error:
        records.check_output_dir(Path(folder), resume=False, overwrite=False)
    assert str(error.value) == f"output_dir {folder} cannot be written{where}: {reason}"


# --- overwriting a run: the old one set aside, then dropped or restored -----------------------------------------


def _finished_run(folder: Path) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.json").write_text('{"seed": 0}')
    (folder / "summary.json").write_text('{"acc": 0.5}')
    (folder / "checkpoints" / "step-4.pt").write_text("old")
    (folder / ".lock").write_text("")  # left by a killed run; another holder may be locking it
    return folder


def _unfinished_run(folder: Path) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.json").write_text('{"seed": 1}')
    torch.save({"step": 2}, folder / "checkpoints" / "step-2.pt")
    return folder


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("old", [_finished_run, _unfinished_run])
def test_overwrite_sets_the_old_run_aside_and_restores_it_when_the_new_run_fails_early(old, tmp_path):
    run = old(tmp_path / "run")
    before = _tree(run)
    records.prepare_output_dir(run, resume=False, overwrite=True)
    kept = {".lock"} & set(before)  # the lock file stays in place
    assert {p.name for p in run.iterdir()} == {records.REPLACED, *kept}
    assert _tree(run / records.REPLACED) == {k: v for k, v in before.items() if k not in kept}
    # the new run writes files and folders, then fails before its first checkpoint
    (run / "config.json").write_text('{"seed": 7}')
    (run / "checkpoints").mkdir()
    (run / "model").mkdir()
    (run / "model" / "config.json").write_text("{}")
    (run / "steps.csv").write_text("step\n1\n")
    assert records.settle_replaced(str(run)) == "restored"
    assert _tree(run) == before
    assert records.settle_replaced(run) is None  # nothing aside any more


@pytest.mark.parametrize("new", ["summary.json", "checkpoints/step-8.pt"])
def test_overwrite_drops_the_old_run_once_the_new_one_has_a_checkpoint_or_finished(new, tmp_path):
    run = _finished_run(tmp_path / "run")
    records.prepare_output_dir(run, resume=False, overwrite=True)
    (run / "checkpoints").mkdir()
    (run / new).write_text("new")
    assert records.settle_replaced(run) == "dropped"
    assert _tree(run) == {".lock": b"", new: b"new"}


def test_prepare_output_dir_creates_a_new_folder_and_leaves_a_resumed_run_alone(tmp_path):
    new = tmp_path / "a" / "b" / "run"
    records.prepare_output_dir(new, resume=False, overwrite=False)
    assert new.is_dir() and not any(new.iterdir())
    records.prepare_output_dir(new, resume=False, overwrite=True)  # an empty folder is used as it is
    assert new.is_dir() and not any(new.iterdir())
    unfinished = _unfinished_run(tmp_path / "unfinished")
    before = _tree(unfinished)
    records.prepare_output_dir(unfinished, resume=True, overwrite=False)
    assert _tree(unfinished) == before
    with pytest.raises(KitError, match="holds an unfinished run; pass resume: true"):
        records.prepare_output_dir(unfinished, resume=False, overwrite=False)
    with pytest.raises(KitError, match="already holds a finished run; pass overwrite: true"):
        records.prepare_output_dir(_finished_run(tmp_path / "finished"), resume=False, overwrite=False)


# --- steps.csv and evals.csv ---------------------------------------------------------------------------------------

STEPS = [  # keys in another order than the file's columns, and one row without a learning rate
    {"elapsed_s": 1.5, "step": 1, "epoch": 0.5, "loss": 0.69, "lr": 5e-5, "samples_per_s": 20.0, "tokens_per_s": 500},
    {"step": 2, "epoch": 1.0, "loss": 0.6, "samples_per_s": 21.0, "tokens_per_s": 520, "elapsed_s": 3.0},
]
EVALS = [
    {
        "train_s": 3.0,
        "epoch": 1,
        "step": 2,
        "accuracy": 0.75,
        "correct": 3,
        "total": 4,
        "acc_low": 0.3,
        "acc_high": 0.95,
    }
]


def test_records_are_written_with_the_contracts_columns(tmp_path):
    records.write_records(tmp_path, STEPS, EVALS)
    run = records.Run(tmp_path)
    assert list(run.steps.columns) == records.STEP_COLUMNS
    assert run.steps.step.tolist() == [1, 2] and run.steps.elapsed_s.tolist() == [1.5, 3.0]
    assert run.steps.lr.tolist()[0] == 5e-5 and pd.isna(run.steps.lr.tolist()[1])
    assert list(run.evals.columns) == records.EVAL_COLUMNS
    assert run.evals.accuracy.tolist() == [0.75] and pd.isna(run.evals.eval_s[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evals.csv", "steps.csv"]


def test_records_rewrite_only_the_files_given(tmp_path):
    records.write_records(tmp_path, steps=STEPS[:1])
    assert [p.name for p in tmp_path.iterdir()] == ["steps.csv"]
    records.write_records(tmp_path, evals=EVALS)
    records.write_records(tmp_path, steps=STEPS)
    run = records.Run(tmp_path)
    assert run.steps.step.tolist() == [1, 2] and run.evals.step.tolist() == [2]


@pytest.mark.parametrize("fsync, synced", [(None, 2), (True, 2), (False, 0)])
def test_records_reach_the_disk_unless_told_not_to(fsync, synced, tmp_path, monkeypatch):
    """Both files are fsynced by default (a machine crash keeps them); the engine's per-step rewrites skip it."""
    calls = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    args = {} if fsync is None else {"fsync": fsync}
    records.write_records(tmp_path, STEPS, EVALS, **args)
    assert len(calls) == synced
    assert records.Run(tmp_path).steps.step.tolist() == [1, 2]


def test_predictions_are_written_with_the_contracts_columns(tmp_path):
    frame = pd.DataFrame(
        {"prob_pos": [0.9, 0.2], "pred": [1, 0], "label": [1, 1], "sentence": ["good", "dull"], "idx": [0, 1]}
    )
    frame["logit"] = [2.2, -1.4]  # not in the contract: left out
    records.write_predictions(tmp_path, frame)
    written = records.Run(tmp_path).predictions
    assert list(written.columns) == records.PREDICTION_COLUMNS
    assert written.sentence.tolist() == ["good", "dull"] and written.prob_pos.tolist() == [0.9, 0.2]


# --- how the run was started (manifest.json) ---------------------------------------------------------------------

LAUNCHES = {
    "the CLI": (
        ["/usr/bin/distil-kit", "train", "--config", "my run.yaml"],
        {},
        "/usr/bin/distil-kit train --config 'my run.yaml'",
    ),
    "python -m": (
        ["/opt/kit/distil_kit/__main__.py", "train", "run.yaml"],
        {},
        "python -m distil_kit train run.yaml",
    ),
    "torchrun": (
        ["/opt/kit/distil_kit/__main__.py", "train", "run.yaml"],
        {"TORCHELASTIC_RUN_ID": "none", "LOCAL_WORLD_SIZE": "4"},
        "torchrun --nproc_per_node=4 -m distil_kit train run.yaml",
    ),
    "torchrun, no local world size": (
        ["/opt/kit/distil_kit/__main__.py", "train"],
        {"TORCHELASTIC_RUN_ID": "none"},
        "torchrun --nproc_per_node=1 -m distil_kit train",
    ),
    "a script that imports ipykernel": (["/home/u/train.py"], {}, "/home/u/train.py"),
}


@pytest.fixture
def clean_launch(monkeypatch):
    """No notebook launch recorded by an earlier test, no torchrun or Jupyter variables, and ipykernel imported (as
    in a kernel) without this process being a kernel."""
    monkeypatch.setattr(records, "_notebook_launch", None)
    for name in ("TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE", "JPY_SESSION_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    return monkeypatch


@pytest.mark.parametrize("case", list(LAUNCHES))
def test_launch_gives_a_command_that_repeats_the_run(case, clean_launch):
    argv, env, command = LAUNCHES[case]
    clean_launch.setattr(sys, "argv", list(argv))
    for name, value in env.items():
        clean_launch.setenv(name, value)
    assert records.launch() == (command, {"argv": argv})


def test_launch_without_a_command_line(clean_launch):
    clean_launch.setattr(sys, "argv", [])  # an embedded interpreter
    assert records.launch()[1] == {"argv": []}


def test_launch_from_a_notebook_gives_a_papermill_command(clean_launch):
    parameters = {"epochs": 1, "model": "my model"}
    records.record_notebook_launch("notebooks/finetune.ipynb", parameters)
    parameters["epochs"] = 5  # the record keeps the values it was given
    command, launched_by = records.launch()
    # JSON is YAML: papermill -y reads the parameters back
    assert command == """papermill notebooks/finetune.ipynb out.ipynb -y '{"epochs": 1, "model": "my model"}'"""
    assert launched_by == {"notebook": "notebooks/finetune.ipynb", "parameters": {"epochs": 1, "model": "my model"}}


def test_launch_from_a_kernel_names_the_notebook_without_a_command(clean_launch):
    clean_launch.setattr(sys, "argv", ["/venv/lib/ipykernel_launcher.py", "-f", "/run/kernel-1.json"])
    clean_launch.setenv("JPY_SESSION_NAME", "/home/u/analysis.ipynb")
    assert records.launch() == (None, {"notebook": "/home/u/analysis.ipynb", "parameters": None})


def _fake_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    return {"cuda": "12.4", "device_name": "NVIDIA H200", "device_count": 2}


def _cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.4")  # a CUDA build on a machine without a GPU
    name = f"CPU ({platform.processor() or platform.machine()})"  # processor() is often empty on Linux
    return {"cuda": None, "device_name": name, "device_count": 1}


@pytest.mark.parametrize("device", [_cpu, _fake_gpu])
def test_manifest_names_the_versions_hardware_and_launch(device, clean_launch):
    clean_launch.setattr(sys, "argv", ["/usr/bin/distil-kit", "train", "run.yaml"])
    hardware = device(clean_launch)
    manifest = records.environment_manifest()
    assert manifest == {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        **hardware,
        "cpu": f"{platform.machine()}, {os.cpu_count()} cores",
        "git_commit": records.git_commit(),
        "command": "/usr/bin/distil-kit train run.yaml",
        "launched_by": {"argv": ["/usr/bin/distil-kit", "train", "run.yaml"]},
        "created": manifest["created"],
    }
    created = datetime.strptime(manifest["created"], "%Y-%m-%dT%H:%M:%S%z")
    assert abs(created.timestamp() - time.time()) < 60


# --- reading: what a bad file's message names -------------------------------------------------------------------

PREDICTIONS = "idx,sentence,label,pred,prob_pos\n"
BAD_FILES = {  # file, text, the record read, the message after the path: the line (header = line 1) and the value
    "a class id for a label": (
        "predictions.csv",
        PREDICTIONS + "0,a,0,0,0.1\n1,b,1,1,0.9\n2,c,2,1,0.8\n",
        "predictions",
        ": line 4: label 2 is not 0 or 1",
    ),
    "a negative prediction": (
        "predictions.csv",
        PREDICTIONS + "0,a,0,0,0.1\n1,b,1,1,0.9\n2,c,1,-1,0.8\n",
        "predictions",
        ": line 4: pred -1 is not 0 or 1",
    ),
    "a probability above 1": (
        "predictions.csv",
        PREDICTIONS + "0,a,0,0,0.0\n1,b,1,1,1.0\n2,c,1,1,1.5\n",
        "predictions",
        ": line 4: prob_pos 1.5 is not a probability in [0, 1]",
    ),
    "a logit": (
        "predictions.csv",
        PREDICTIONS + "0,a,0,0,-2.5\n",
        "predictions",
        ": line 2: prob_pos -2.5 is not a probability in [0, 1]",
    ),
    "a word for a prediction": (  # a column after the sentence is still read as a number
        "predictions.csv",
        PREDICTIONS + "0,a,0,0,0.1\n1,b,1,pos,0.9\n",
        "predictions",
        ": line 3: pred 'pos' is not a number",
    ),
    "a row with extra fields": (
        "steps.csv",
        "step,epoch,loss\n1,0.1,0.7\n2,0.2,0.6,9,9\n",
        "steps",
        ": malformed CSV (Error tokenizing data. C error: Expected 3 fields in line 3, saw 5)",
    ),
    "missing columns": (
        "predictions.csv",
        "idx,sentence,label\n0,good,1\n",
        "predictions",
        ": missing column(s) pred, prob_pos; expected idx, sentence, label, pred, prob_pos",
    ),
    "a list": ("manifest.json", "[1, 2]", "manifest", ": expected a JSON object, found list"),
    "missing keys": ("config.json", '{"model": "m"}', "config", ": missing key(s) precision, seed, target_acc"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_record_is_named_with_its_line_and_value(case, tmp_path):
    name, text, record, message = BAD_FILES[case]
    (tmp_path / name).write_text(text)
    with pytest.raises(KitError) as error:
        getattr(records.Run(tmp_path), record)
    assert str(error.value) == f"{tmp_path / name}{message}"


def test_finding_runs_says_what_it_needs(tmp_path):
    assert repr(records.Run(Path("runs") / "a")) == "Run('runs/a')"
    assert records.Run("runs/a").folder / "summary.json" == Path("runs/a/summary.json")  # a str becomes a Path
    with pytest.raises(KitError) as error:
        records.Run.read(tmp_path / "nope")
    assert str(error.value) == f"run folder {tmp_path / 'nope'} does not exist"
    with pytest.raises(KitError) as error:
        records.find_runs([])
    assert str(error.value) == "no runs given; pass run folders or glob patterns such as runs/*"
    with pytest.raises(TypeError) as error:
        records.find_runs("runs/*")
    assert str(error.value) == "find_runs takes a list of run folders or glob patterns, e.g. ['runs/*']"
    with pytest.raises(KitError) as error:  # an absolute pattern says where it looked already
        records.find_runs([str(tmp_path / "*")])
    assert str(error.value) == f"{tmp_path / '*'}: matches no finished run folder (one holding summary.json)"


def test_resume_check_on_its_own_reads_the_folders_state(tmp_path):
    """``check_unfinished`` as ``resuming`` calls it, without a state at hand: it reads the folder."""
    records.check_unfinished(_unfinished_run(tmp_path / "unfinished"))
    with pytest.raises(KitError, match=r"nothing to resume \(it is finished: resume needs an unfinished run"):
        records.check_unfinished(_finished_run(tmp_path / "finished"))
