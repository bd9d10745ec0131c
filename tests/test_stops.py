"""Stops at every phase of a run, timed checkpoints, and what a resume accepts.

A stop (SIGINT/SIGTERM) asked for while the model loads, during an evaluation, during training or while the
finished run is saved ends with a message and a folder that resumes into the uninterrupted run, or a finished run.
The runs: the tiny random DistilBERT (dropout on) on the first 64 SST-2 rows, batch 8, 2 epochs of 8 steps.
"""

from __future__ import annotations

import json
import signal

import pytest
from test_resume import assert_same_run

from distil_kit import checkpoint, engine, modeling
from distil_kit.callbacks import Callback
from distil_kit.errors import KitError
from distil_kit.records import Run

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest


@pytest.fixture(scope="module")
def config(tiny_model, sst2_dir) -> dict:
    return dict(
        model=str(tiny_model),
        data_dir=str(sst2_dir),
        epochs=2,
        max_train_samples=64,
        train_batch_size=8,
        eval_batch_size=256,
        log_every=1,
        target_acc=None,
        device="cpu",
    )


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory) -> Run:
    return engine.finetune(config, output_dir=str(tmp_path_factory.mktemp("reference") / "run"))


class SignalOnEvaluate(Callback):
    """SIGTERM while the evaluation that ends epoch ``epoch`` is recorded (0: the one before training)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_evaluate(self, trainer, row):
        if row["epoch"] == self.epoch:
            signal.raise_signal(signal.SIGTERM)


def _signal_while_loading(monkeypatch):
    load = modeling.load_classifier

    def loading(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        return load(*args, **kwargs)

    monkeypatch.setattr(engine, "load_classifier", loading)
    return []


# phase: (how the stop is asked for, the step the checkpoint is at)
PHASES = {
    "loading the model": (_signal_while_loading, 0),
    "the first evaluation": (lambda monkeypatch: [SignalOnEvaluate(0)], 0),
    "the evaluation after epoch 1": (lambda monkeypatch: [SignalOnEvaluate(1)], 8),
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_a_stop_in_any_phase_leaves_a_run_that_resumes_exactly(phase, config, reference, tmp_path, monkeypatch):
    ask, step = PHASES[phase]
    out = tmp_path / "run"
    callbacks = ask(monkeypatch)
    with pytest.raises(engine.RunInterrupted, match=f"^SIGTERM received: stopped after step {step} and saved"):
        engine.finetune(config, output_dir=str(out), callbacks=callbacks)
    monkeypatch.undo()
    assert checkpoint.checkpoints(out / "checkpoints")[-1].name == f"step-{step}.pt"
    assert_same_run(engine.finetune(output_dir=str(out), resume=True), reference)


def test_a_stop_while_saving_the_finished_run_lets_it_finish(config, reference, tmp_path, monkeypatch, capsys):
    from transformers import PreTrainedModel

    original = PreTrainedModel.save_pretrained

    def saving(self, *args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", saving)
    run = engine.finetune(config, output_dir=str(tmp_path / "run"))
    assert "SIGTERM received while saving the finished run: its files are complete" in capsys.readouterr().out
    monkeypatch.undo()
    assert_same_run(run, reference)


def test_timed_checkpoints_come_at_the_first_log_row_past_the_time(config, tmp_path):
    """checkpoint_minutes tiny: a checkpoint at every steps.csv row (every 3 steps), none between them."""
    seen = []

    class Steps(Callback):
        def on_checkpoint(self, trainer, step):
            seen.append(step)

    engine.finetune(
        config,
        output_dir=str(tmp_path / "run"),
        log_every=3,
        checkpoint_minutes=1e-6,
        keep_checkpoints=True,
        callbacks=[Steps()],
    )
    # log rows at steps 3, 6, 8 (the epoch's last), 9, 12, 15, 16; at an epoch's end its own checkpoint (after the
    # evaluation) is the only one
    assert seen == [3, 6, 8, 9, 12, 15, 16]


# --- resume: the saved run's parameters and data, or a refusal naming what changed ----------------------------


@pytest.fixture
def stopped(config, tmp_path) -> str:
    out = tmp_path / "run"
    with pytest.raises(engine.RunInterrupted):
        engine.finetune(config, output_dir=str(out), callbacks=[SignalOnEvaluate(1)])
    return str(out)


REFUSED = {
    "lr": ({"lr": 1e-4}, r"lr 5e-05 -> 0\.0001"),
    "epochs": ({"epochs": 3}, r"epochs 2 -> 3"),
    "two at once": ({"seed": 5, "train_batch_size": 16}, r"train_batch_size 8 -> 16, seed 0 -> 5"),
    "data_dir": ({"data_dir": "elsewhere"}, r"data_dir .* -> 'elsewhere'"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_resume_refuses_changed_parameters_naming_old_and_new(case, stopped, monkeypatch):
    changes, message = REFUSED[case]
    monkeypatch.setattr(engine, "load_classifier", lambda *a: pytest.fail("refused after loading the model"))
    with pytest.raises(KitError, match=r"^resume: .*config\.json was started with other parameters \(" + message):
        engine.finetune(output_dir=stopped, resume=True, **changes)


def test_resume_takes_the_safe_changes(stopped, reference):
    run = engine.finetune(output_dir=stopped, resume=True, save_model=False, keep_checkpoints=True)
    assert run.finished and not (run.folder / "model").exists() and checkpoint.checkpoints(run.folder / "checkpoints")
    assert run.config["save_model"] is False
    assert run.evals["accuracy"].tolist() == reference.evals["accuracy"].tolist()


def test_resume_refuses_changed_data(stopped, sst2_dir, tmp_path):
    import shutil

    moved = shutil.copytree(sst2_dir, tmp_path / "data")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["data_dir"] = str(moved)
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    with (moved / "train.tsv").open("a") as f:
        f.write("an added sentence\t1\n")
    with pytest.raises(KitError, match=r"^resume: .*train\.tsv changed since the run started \(sha256 differs"):
        engine.finetune(output_dir=stopped, resume=True)


# --- overwrite keeps the old run until the new one has a checkpoint -------------------------------------------


@pytest.fixture
def finished(config, tmp_path) -> tuple[str, dict]:
    run = engine.finetune(config, output_dir=str(tmp_path / "run"), epochs=1, save_model=False)
    return str(run.folder), {p.name: p.read_bytes() for p in run.folder.iterdir() if p.is_file()}


def test_an_overwrite_failing_before_its_first_checkpoint_leaves_the_old_run(config, finished, monkeypatch):
    folder, files = finished

    def broken(self, micro, apply=True):
        raise RuntimeError("the new run's first step failed")

    monkeypatch.setattr(engine.Trainer, "train_step", broken)
    with pytest.raises(RuntimeError, match="first step failed") as failure:
        engine.finetune(config, output_dir=folder, overwrite=True, lr=1e-4)
    assert f"the run it was to overwrite is back in {folder}" in failure.value.__notes__
    assert {p.name: p.read_bytes() for p in Run(folder).folder.iterdir() if p.is_file()} == files
    assert Run(folder).finished and Run(folder).config["lr"] == config.get("lr", 5e-5)


def test_an_overwrite_killed_before_its_first_checkpoint_is_undone_at_the_next_start(config, finished, capsys):
    from distil_kit import records

    folder, files = finished
    records.prepare_output_dir(engine.Path(folder), resume=False, overwrite=True)  # what a killed overwrite leaves:
    (engine.Path(folder) / "config.json").write_text("{}")  # the old run aside, the new one's first files
    with pytest.raises(KitError, match="already holds a finished run; pass overwrite: true"):
        engine.finetune(config, output_dir=folder)
    assert "the overwrite that stopped before its first checkpoint left the earlier run; it is back" in (
        capsys.readouterr().out
    )
    assert {p.name: p.read_bytes() for p in Run(folder).folder.iterdir() if p.is_file()} == files


def test_an_overwrite_that_gets_under_way_drops_the_old_run(config, finished):
    folder, files = finished
    run = engine.finetune(config, output_dir=folder, overwrite=True, epochs=1, seed=1, save_model=False)
    assert run.finished and run.config["seed"] == 1
    assert sorted(p.name for p in run.folder.iterdir()) == sorted(files)  # nothing set aside is left


def test_preprocess_refuses_to_replace_a_dataset_without_overwrite(tiny_model, sst2_dir, tmp_path):
    from distil_kit.preprocess import preprocess

    source = tmp_path / "tsv"
    source.mkdir()
    for name in ("train.tsv", "dev.tsv"):  # the first 50 rows: tokenizing all of SST-2 three times is slow
        lines = (sst2_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)[:51]
        (source / name).write_text("".join(lines), encoding="utf-8")
    sst2_dir = source
    first = preprocess(sst2_dir, str(tiny_model), tmp_path)
    before = first.files["train"].read_bytes()
    with pytest.raises(KitError, match=r"^preprocess: .*dataset already holds a dataset \(train_dataset\.npz, "):
        preprocess(sst2_dir, str(tiny_model), tmp_path, padding="max_length")
    assert first.files["train"].read_bytes() == before
    assert (
        preprocess(sst2_dir, str(tiny_model), tmp_path, padding="max_length", overwrite=True).metadata["padding"]
        == "max_length"
    )


def test_a_full_disk_while_saving_the_model_is_one_line_and_resumable(config, reference, tmp_path, monkeypatch):
    import errno

    from transformers import PreTrainedModel

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    out = tmp_path / "run"
    with pytest.raises(KitError, match=r"the finished run's files could not be written \(OSError: \[Errno 28\] No"):
        engine.finetune(config, output_dir=str(out))
    monkeypatch.undo()
    assert not Run(out).finished and not list(out.glob(".model.*"))  # no half-written model folder
    assert_same_run(engine.finetune(output_dir=str(out), resume=True), reference)
