"""Checkpoints, resuming, clean stops on SIGINT/SIGTERM, and a killed run continued exactly.

Every run here is the tiny random DistilBERT (with its dropout: the RNG states must come back too) on the first
300 SST-2 rows, batch 4: 75 optimizer steps an epoch, 2 epochs, a checkpoint every 5 steps and a steps.csv row
every step, so that losses compare step by step.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from distil_kit import RunConfig, checkpoint, engine, resuming
from distil_kit.callbacks import Callback
from distil_kit.errors import KitError
from distil_kit.records import Run

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest

STEPS_PER_EPOCH = 75


@pytest.fixture(scope="module")
def run_config(tiny_model, sst2_dir) -> dict:
    return dict(
        model=str(tiny_model),
        data_dir=str(sst2_dir),
        epochs=2,
        max_train_samples=300,
        train_batch_size=4,
        eval_batch_size=256,
        log_every=1,
        checkpoint_every=5,
        target_acc=None,
        device="cpu",
    )


@pytest.fixture(scope="module")
def reference(run_config, tmp_path_factory) -> Run:
    """The uninterrupted run every resumed run must reproduce."""
    return engine.finetune(run_config, output_dir=str(tmp_path_factory.mktemp("reference") / "run"))


def assert_same_run(run: Run, reference: Run) -> None:
    """Same losses and learning rates at every step, same accuracies, bit-identical final weights."""
    from safetensors.torch import load_file

    assert run.finished
    columns = ["step", "epoch", "loss", "lr"]
    assert run.steps[columns].equals(reference.steps[columns])
    assert run.evals[["epoch", "step", "accuracy"]].equals(reference.evals[["epoch", "step", "accuracy"]])
    assert run.predictions.equals(reference.predictions)
    ours, theirs = (load_file(r.folder / "model" / "model.safetensors") for r in (run, reference))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


# --- a run in another process, stopped from outside ---------------------------------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "distil_kit", "finetune", *args]


def _sets(config: dict) -> list[str]:
    return [a for key, value in config.items() for a in ("--set", f"{key}={'null' if value is None else value}")]


def _env() -> dict:
    # The same thread count as this process: float sums, and so the weights, depend on it.
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}


def _start_and_wait_for_checkpoint(config: dict, out: Path, log: Path) -> subprocess.Popen:
    """Start a CLI run and return once its first checkpoint is on disk (still early in epoch 1)."""
    with log.open("w") as err:
        proc = subprocess.Popen(
            _cli(*_sets({**config, "output_dir": out})),
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=_env(),
            cwd=Path(__file__).parents[1],
        )
    deadline = time.monotonic() + 120
    while not checkpoint.checkpoints(out / "checkpoints"):
        if proc.poll() is not None:
            pytest.fail(
                f"the run ended (exit {proc.returncode}) before its first checkpoint:\n{log.read_text()[-2000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint after 120 s")
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be stopped; give it more steps"
    return proc


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(run_config, reference, tmp_path):
    out = tmp_path / "run"
    proc = _start_and_wait_for_checkpoint(run_config, out, tmp_path / "log.txt")
    proc.kill()  # SIGKILL: no handler runs, whatever was being written is left as it was
    proc.wait()
    latest = checkpoint.checkpoints(out / "checkpoints")[-1]
    step = int(re.search(r"step-(\d+)", latest.name).group(1))
    assert step < STEPS_PER_EPOCH, "killed in epoch 1"
    assert not Run(out).finished
    Run(out).steps, Run(out).evals  # the records on disk parse: every file is written whole or not at all

    assert_same_run(engine.finetune(output_dir=str(out), resume=True), reference)


def _start_and_kill_once(config: dict, out: Path, log: Path, ready) -> list[int]:
    """Start a CLI run, SIGKILL it once ``ready(steps, checkpointed)`` holds for the steps steps.csv holds and the
    steps of the checkpoints on disk; returns the steps steps.csv held then."""
    import pandas as pd

    with log.open("w") as err:
        proc = subprocess.Popen(
            _cli(*_sets({**config, "output_dir": out})),
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=_env(),
            cwd=Path(__file__).parents[1],
        )
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}):\n{log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "not ready to kill after 120 s"
        steps = pd.read_csv(out / "steps.csv").step.tolist() if (out / "steps.csv").is_file() else []
        checkpointed = [int(p.name[5:-3]) for p in checkpoint.checkpoints(out / "checkpoints")]
        if ready(steps, checkpointed):
            proc.kill()  # SIGKILL: no handler runs
            proc.wait()
            return steps
        time.sleep(0.005)


@pytest.mark.slow
def test_sigkill_before_any_checkpoint_leaves_the_records_so_far(run_config, tmp_path):
    """steps.csv and evals.csv are written as their rows are made: a run killed outright keeps the evaluation before
    training and every step logged up to its last write."""
    out = tmp_path / "run"
    config = {**run_config, "checkpoint_every": 0}  # no checkpoint until the epoch ends
    seen = _start_and_kill_once(config, out, tmp_path / "log.txt", lambda steps, checkpointed: len(steps) >= 3)
    assert not checkpoint.checkpoints(out / "checkpoints") and len(seen) < STEPS_PER_EPOCH
    killed = Run(out)
    assert not killed.finished
    assert killed.evals[["epoch", "step"]].values.tolist() == [[0, 0]]  # the evaluation before training
    logged = killed.steps.step.tolist()
    assert logged[: len(seen)] == seen == list(range(1, len(seen) + 1))  # rows are only added, in order


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_resume_cuts_the_records_to_the_checkpoint(run_config, reference, tmp_path):
    """Killed with rows on disk past its last checkpoint: the resume trains those steps again, and its records
    hold each step once, equal to the uninterrupted run's."""
    out = tmp_path / "run"
    seen = _start_and_kill_once(
        run_config,
        out,
        tmp_path / "log.txt",
        lambda steps, checkpointed: bool(checkpointed) and len(steps) >= max(checkpointed) + 2,
    )
    last = max(int(p.name[5:-3]) for p in checkpoint.checkpoints(out / "checkpoints"))
    assert Run(out).steps.step.max() >= len(seen) > last, "rows past the checkpoint were on disk"

    class OnDiskAtStart(Callback):
        steps = None

        def on_run_start(self, trainer):
            OnDiskAtStart.steps = Run(trainer.out).steps.step.tolist()

    resumed = engine.finetune(output_dir=str(out), resume=True, callbacks=[OnDiskAtStart()])
    assert OnDiskAtStart.steps == list(range(1, last + 1)), "cut to the checkpoint before training again"
    assert resumed.steps.step.tolist() == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert_same_run(resumed, reference)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_130_naming_resume(run_config, reference, tmp_path):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    proc = _start_and_wait_for_checkpoint(run_config, out, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130
    errors = [line for line in re.split(r"[\r\n]", log.read_text()) if line.startswith("error:")]
    assert len(errors) == 1, log.read_text()[-2000:]
    message = errors[0]
    assert message.startswith("error: SIGTERM received: stopped after step ")
    assert "resume: true" in message and f"--resume --set output_dir={out}" in message
    step = int(re.search(r"after step (\d+)", message).group(1))
    assert (out / "checkpoints" / f"step-{step}.pt").is_file()
    stopped = Run(out)
    assert not stopped.finished
    assert stopped.steps["step"].iloc[-1] == step  # the records were written with the checkpoint
    assert stopped.evals["step"].max() <= step

    resumed = subprocess.run(
        _cli("--resume", "--set", f"output_dir={out}"),
        capture_output=True,
        text=True,
        env=_env(),
        cwd=Path(__file__).parents[1],
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {out / 'checkpoints' / f'step-{step}.pt'}" in resumed.stdout
    assert_same_run(Run(out), reference)


# --- a run stopped in this process, at a known step ---------------------------------------------------------

STOP_AT = 13  # checkpoints at steps 5 and 10, then the SIGINT one at 13: steps 10 and 13 are kept


class SignalAtStep(Callback):
    """Sends the run SIGINT itself once ``step`` has been logged: the signal arrives during the next step, as a
    Ctrl-C would, and that step is exact."""

    def __init__(self, step: int):
        self.step = step

    def on_log(self, trainer, row):
        if row["step"] == self.step:
            signal.raise_signal(signal.SIGINT)


@pytest.fixture(scope="module")
def stopped(run_config, tmp_path_factory) -> Path:
    """A run that received SIGINT (Ctrl-C) during step STOP_AT."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.raises(engine.RunInterrupted, match=f"SIGINT received: stopped after step {STOP_AT} "):
        engine.finetune(run_config, output_dir=str(out), callbacks=[SignalAtStep(STOP_AT - 1)])
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_checkpoint_holds_all_state_and_only_the_last_two_are_kept(stopped):
    folder = stopped / "checkpoints"
    assert [p.name for p in checkpoint.checkpoints(folder)] == ["step-10.pt", f"step-{STOP_AT}.pt"]
    assert sorted(p.name for p in folder.iterdir()) == ["step-10.pt", f"step-{STOP_AT}.pt"]  # no temporary files
    state = torch.load(folder / f"step-{STOP_AT}.pt", weights_only=False)
    assert {
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "rng",
        "epoch",
        "batches_done",
        "step",
        "samples",
        "tokens",
        "timers",
        "steps_rows",
        "evals_rows",
    } <= state.keys()
    assert state["rng"][0].keys() == {"python", "numpy", "torch", "cuda"}  # one entry per rank
    assert (state["epoch"], state["batches_done"], state["step"]) == (0, STOP_AT, STOP_AT)
    assert [row["step"] for row in state["steps_rows"]] == list(range(1, STOP_AT + 1))
    assert state["timers"]["train"] > 0


def test_unfinished_run_is_not_overwritten(run_config, stopped):
    before = sorted(p.name for p in stopped.rglob("*"))
    with pytest.raises(
        KitError, match="holds an unfinished run; pass resume: true to continue it, or overwrite: true to start over"
    ):
        engine.finetune(run_config, output_dir=str(stopped))
    assert sorted(p.name for p in stopped.rglob("*")) == before


def test_truncated_checkpoint_falls_back_to_the_previous_one(stopped, reference, tmp_path, capsys):
    out = _copy(stopped, tmp_path)
    newest = out / "checkpoints" / f"step-{STOP_AT}.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    run = engine.finetune(output_dir=str(out), resume=True)
    assert f"resuming from {out / 'checkpoints' / 'step-10.pt'}" in capsys.readouterr().out
    assert_same_run(run, reference)


def test_all_checkpoints_truncated_is_a_one_line_error(stopped, tmp_path):
    out = _copy(stopped, tmp_path)
    for path in checkpoint.checkpoints(out / "checkpoints"):
        path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(KitError) as error:
        engine.finetune(output_dir=str(out), resume=True)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{out / 'checkpoints'}: no readable checkpoint (tried step-{STOP_AT}.pt (")
    assert "step-10.pt (" in message and message.endswith("start over with overwrite: true")


# --- the checkpoint writer's thread -------------------------------------------------------------------------


def test_background_writer_writes_the_state_as_it_was_when_saved(tmp_path, monkeypatch):
    go = threading.Event()
    real_save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda *args: go.wait(10) and real_save(*args))
    state = {
        "weights": torch.arange(4.0),
        "rows": [{"step": 1}],
        "rng": (torch.ones(2, dtype=torch.uint8), 7),
        "model": torch.nn.Linear(2, 2).state_dict(),
    }
    writer = checkpoint.BackgroundWriter()
    writer.save(state, tmp_path / "checkpoints", 1)
    state["weights"].add_(100)  # the run goes on while the write waits
    state["rows"].append({"step": 2})
    state["rng"][0].zero_()
    go.set()
    writer.wait()
    saved = torch.load(tmp_path / "checkpoints" / "step-1.pt", weights_only=False)
    assert torch.equal(saved["weights"], torch.arange(4.0))
    assert saved["rows"] == [{"step": 1}] and saved["rng"][1] == 7
    assert torch.equal(saved["rng"][0], torch.ones(2, dtype=torch.uint8))
    assert saved["model"]._metadata == state["model"]._metadata  # module versions, which load_state_dict reads


def test_background_writer_reports_a_failed_write_once(tmp_path):
    blocked = tmp_path / "checkpoints"
    blocked.write_text("a file where the checkpoint folder should be")
    writer = checkpoint.BackgroundWriter()
    writer.save({"weights": torch.zeros(2)}, blocked, 3)
    with pytest.raises(KitError) as error:
        writer.wait()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint {blocked / 'step-3.pt'} could not be written: FileExistsError")
    writer.wait()  # reported once


def test_a_finished_run_has_its_last_checkpoint_on_disk(run_config, tmp_path, monkeypatch):
    real_save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda *args: time.sleep(0.5) or real_save(*args))  # a slow disk
    run = engine.finetune(
        {**run_config, "epochs": 1, "max_train_samples": 40, "checkpoint_every": 0, "keep_checkpoints": True},
        output_dir=str(tmp_path / "run"),
    )
    assert run.finished
    assert [p.name for p in checkpoint.checkpoints(run.folder / "checkpoints")] == ["step-10.pt"]


class CountCheckpoints(Callback):
    def __init__(self):
        self.steps = []

    def on_checkpoint(self, trainer, step):
        self.steps.append(step)


def test_a_finished_run_drops_its_checkpoints_by_default(run_config, tmp_path):
    written = CountCheckpoints()
    run = engine.finetune(
        {**run_config, "epochs": 1, "max_train_samples": 40}, output_dir=str(tmp_path / "run"), callbacks=[written]
    )
    assert run.finished and not run.config["keep_checkpoints"]
    # every 5 steps, the epoch's last step excepted: its checkpoint comes after its evaluation
    assert written.steps == [5, 10], "the run wrote checkpoints (every 5 steps and at the epoch end)"
    assert not (run.folder / "checkpoints").exists()
    assert {p.name for p in run.folder.iterdir()} >= {"summary.json", "model", "predictions.csv"}


def test_a_failed_checkpoint_write_fails_the_run_in_one_line(run_config, tmp_path, monkeypatch):
    def full_disk(state, folder, step):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save", full_disk)
    out = tmp_path / "run"
    with pytest.raises(KitError) as error:
        engine.finetune(
            {**run_config, "epochs": 1, "max_train_samples": 40, "checkpoint_every": 0}, output_dir=str(out)
        )
    assert str(error.value) == (
        f"checkpoint {out / 'checkpoints' / 'step-10.pt'} could not be written: OSError: "
        f"[Errno 28] No space left on device"
    )
    assert not Run(out).finished


# --- what a resume continues: the saved run's parameters, its safe changes, the same data -------------------

# Every parameter a resume may change (they only record, checkpoint or say how many cores compute), each set to a
# value that is neither the default nor the stopped run's.
SAFE_CHANGES = dict(
    log_every=3,
    checkpoint_every=7,
    checkpoint_minutes=2.5,
    keep_checkpoints=True,
    save_model=False,
    num_workers=1,
    collective_timeout_s=60.0,
    report_to=["tensorboard"],
)


def test_resume_continues_the_saved_parameters_with_the_safe_changes(stopped):
    saved = Run(stopped).config
    changes = {**SAFE_CHANGES, "threads": (saved["threads"] or 1) + 1}
    # epochs, max_train_samples, ... left at their defaults: not asked for, so the saved run's values stay
    resumed = resuming.resumed_config(RunConfig(output_dir=str(stopped), resume=True, **changes))
    assert resumed.to_dict() == {**saved, **changes, "output_dir": str(stopped), "resume": True, "overwrite": False}
    assert (resumed.epochs, resumed.max_train_samples, resumed.train_batch_size) == (2, 300, 4)


def test_a_run_saved_before_a_parameter_existed_resumes_it_as_its_default(stopped, tmp_path):
    """A config.json without threads or packing (written by an older kit): the run had their defaults, so a
    safe change is taken and a refused one still refused."""
    old = _copy(stopped, tmp_path)
    config = json.loads((old / "config.json").read_text())
    del config["threads"], config["packing"]
    (old / "config.json").write_text(json.dumps(config))
    assert resuming.resumed_config(RunConfig(output_dir=str(old), resume=True, threads=2)).threads == 2
    assert resuming.resumed_config(RunConfig(output_dir=str(old), resume=True)).packing is False  # not today's null
    with pytest.raises(KitError, match=r"other parameters \(packing False -> True\)"):
        resuming.resumed_config(RunConfig(output_dir=str(old), resume=True, packing=True))


def test_resume_of_a_moved_run_writes_where_it_now_is(stopped, tmp_path):
    moved = _copy(stopped, tmp_path)
    resumed = resuming.resumed_config(RunConfig(output_dir=str(moved), resume=True))
    assert resumed.output_dir == str(moved) and Run(moved).config["output_dir"] == str(stopped)


REFUSED_CHANGES = {  # asked: the parameters' part of the message (saved -> asked)
    "seed": ({"seed": 3}, "seed 0 -> 3"),
    "max_train_samples": ({"max_train_samples": 200}, "max_train_samples 300 -> 200"),
    "packing": ({"packing": True}, "packing False -> True"),
    "two, and a safe one": (
        {"train_batch_size": 8, "lr": 1e-4, "save_model": False},
        "train_batch_size 4 -> 8, lr 5e-05 -> 0.0001",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_CHANGES))
def test_resume_refuses_other_parameters_naming_saved_and_asked_values(case, stopped):
    asked, listed = REFUSED_CHANGES[case]
    with pytest.raises(KitError) as error:
        resuming.resumed_config(RunConfig(output_dir=str(stopped), resume=True, **asked))
    message = str(error.value)
    assert message.startswith(f"resume: {stopped / 'config.json'} was started with other parameters ({listed}); ")
    assert "only log_every, checkpoint_every," in message and "drop the change(s), or start a new run" in message


def test_resume_of_a_run_with_a_parameter_unknown_here_names_its_config(stopped, tmp_path):
    moved = _copy(stopped, tmp_path)
    saved = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**saved, "warmup_steps": 10}))  # say, from a later version
    with pytest.raises(KitError) as error:
        resuming.resumed_config(RunConfig(output_dir=str(moved), resume=True))
    assert str(error.value).startswith(f"{moved / 'config.json'}: unknown parameter 'warmup_steps'")


def test_resume_needs_an_unfinished_run_in_output_dir(reference, tmp_path):
    for folder in ("", str(tmp_path), str(tmp_path / "absent")):  # none given, an empty folder, no folder
        with pytest.raises(KitError) as error:
            resuming.resumed_config(RunConfig(output_dir=folder, resume=True))
        assert str(error.value) == (
            f"resume: output_dir {folder or '(empty)'} holds no run to resume; name the interrupted run's folder"
        )
    with pytest.raises(KitError, match=r"nothing to resume \(it is finished"):
        resuming.resumed_config(RunConfig(output_dir=str(reference.folder), resume=True))


def test_resume_refuses_data_changed_since_the_run_started(stopped, sst2_dir, tmp_path):
    moved = Path(shutil.copytree(sst2_dir, tmp_path / "data"))
    resuming.check_data_unchanged(stopped, str(moved))  # the same files in another folder: matched by name
    with (moved / "dev.tsv").open("a") as f:
        f.write("an added sentence\t1\n")
    with pytest.raises(KitError) as error:
        resuming.check_data_unchanged(stopped, str(moved))
    assert str(error.value) == (
        f"resume: {moved / 'dev.tsv'} changed since the run started (sha256 differs from "
        f"{stopped / 'manifest.json'}); a resume must train on the same data: restore the file, or start a new run"
    )
