"""``flagperf_exact: true``: the kit computes what FlagPerf's training code computes.

Each of FlagPerf's six behaviours (docs/recipe.md) is pinned against torch's own classes or FlagPerf's documented
arithmetic, and a whole run against a FlagPerf-shaped loop written here from its documented behaviour
(../shared/reference/flagperf.md): seed, load, a DataLoader on a seeded RandomSampler without a generator of its
own, full-width batches, each micro-batch's mean loss over gradient_accumulation_steps, the optimizer every
gradient_accumulation_steps-th micro-batch counted over the run, the linear schedule stepped per micro-batch,
evaluation before training and after each epoch through a DataLoader of 4 rows. The tiny random DistilBERT keeps
its dropout, so every random draw must land where FlagPerf's does.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, TensorDataset

from distil_kit import KitError, RunConfig, engine, flagperf
from distil_kit.callbacks import Callback
from distil_kit.modeling import load_classifier
from distil_kit.preprocess import preprocess
from distil_kit.recipe import optimizer_groups
from distil_kit.records import Run

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest

WIDTH = 128  # the FlagPerf-layout folder's padded width (FlagPerf's is 512: the same code, four times the work)


@pytest.fixture(scope="module")
def npz_dir(tmp_path_factory, sst2_dir, tiny_model):
    """A FlagPerf-layout folder (preprocess --padding max_length): the first 300 train rows, 61 dev rows."""
    tsv = tmp_path_factory.mktemp("tsv")
    for name, rows in (("train.tsv", 300), ("dev.tsv", 61)):
        lines = (sst2_dir / name).read_text().splitlines(keepends=True)
        (tsv / name).write_text("".join(lines[: rows + 1]))
    out = tmp_path_factory.mktemp("flagperf-layout")
    preprocess(tsv, str(tiny_model), out, padding="max_length", max_length=WIDTH)
    return out


def _config(model, data_dir, out, **changes) -> dict:
    values = dict(
        model=str(model),
        data_dir=str(data_dir),
        output_dir=str(out),
        flagperf_exact=True,
        train_batch_size=8,
        gradient_accumulation_steps=3,
        eval_batch_size=4,
        epochs=2,
        target_acc=None,
        log_every=1,
        device="cpu",
    )
    return {**values, **changes}


class StepLrs(Callback):
    """The learning rate each optimizer step used, and the shapes the model was fed in training."""

    def __init__(self):
        self.lrs, self.shapes = [], set()

    def on_run_start(self, trainer):
        trainer.optimizer.register_step_pre_hook(lambda opt, *_: self.lrs.append(opt.param_groups[0]["lr"]))
        trainer.model.register_forward_pre_hook(
            lambda module, args, kwargs: (
                self.shapes.add(tuple(kwargs["input_ids"].shape)) if module.training else None
            ),
            with_kwargs=True,
        )


# --- 1. order -----------------------------------------------------------------------------------------------


def test_order_is_one_seeded_random_sampler_epoch_after_epoch():
    generator = torch.Generator().manual_seed(5)
    reference = BatchSampler(RandomSampler(range(101), generator=generator), 8, drop_last=False)
    ours = flagperf.FlagPerfBatches(101, 8, seed=5)
    epochs = []
    for epoch in range(3):
        ours.set_epoch(epoch)
        batches = [[row for row, _ in batch] for batch in ours]
        assert batches == list(reference)
        epochs.append(batches)
        ours.set_epoch(epoch, skip=4)  # a resumed epoch: the rest of the same order
        assert [[row for row, _ in batch] for batch in ours] == batches[4:]
    assert epochs[0] != epochs[1]
    assert len(ours) == 13


def test_ddp_order_is_a_distributed_sampler_whose_epoch_is_never_set():
    for rank in range(3):
        reference = list(DistributedSampler(range(100), 3, rank, seed=5))  # padded to 102 with duplicates
        ours = flagperf.FlagPerfBatches(100, 8, seed=5, rank=rank, world_size=3)
        for epoch in range(3):
            ours.set_epoch(epoch)
            assert [row for batch in ours for row, _ in batch] == reference
        assert len(ours) == 5


# --- 2. the global RNG draws of FlagPerf's DataLoaders ---------------------------------------------------------


def test_loader_seed_draw_is_what_a_dataloader_iter_takes():
    torch.manual_seed(3)
    iter(DataLoader(range(10), batch_size=4))
    after_loader = torch.rand(4)
    torch.manual_seed(3)
    flagperf.draw_loader_seed()
    assert torch.equal(torch.rand(4), after_loader)


# --- 4. the loss of a short micro-batch --------------------------------------------------------------------------


def test_a_short_micro_batch_loss_is_its_mean_over_gradient_accumulation_steps(tiny_model):
    model = load_classifier(str(tiny_model)).eval()
    ids, mask = torch.randint(1000, 2000, (3, 7)), torch.ones(3, 7, dtype=torch.long)
    labels = torch.tensor([0, 1, 1])
    loss = flagperf.flagperf_loss(model, torch.no_grad, 8, ids, mask, labels, torch.ones(3))
    logits = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(loss, torch.nn.functional.cross_entropy(logits, labels) / 8)


# --- 3, 5, 6: width, accumulation across epochs, schedule --------------------------------------------------------


def test_900_rows_at_32_x_8_for_2_epochs_take_7_steps_each_at_the_per_micro_batch_lr(tiny_model, sst2_dir, tmp_path):
    probe = StepLrs()
    cfg = _config(
        tiny_model,
        sst2_dir,
        tmp_path / "run",
        max_train_samples=900,
        train_batch_size=32,
        gradient_accumulation_steps=8,
    )
    run = engine.finetune({**cfg, "eval_batch_size": 128, "save_model": False}, callbacks=[probe])
    micro_batches = 2 * 29  # ceil(900 / 32) an epoch
    assert run.summary["steps"] == len(probe.lrs) == 7  # the kit's recipe: 8
    # transformers' linear schedule: lr0 x (N - micro-batches stepped) / N
    assert probe.lrs == [5e-5 * ((micro_batches - (8 * k - 1)) / micro_batches) for k in range(1, 8)]
    assert probe.lrs[0] < 0.88 * 5e-5  # the kit's recipe: 5e-5
    # FlagPerf's sample count: every micro-batch counted as full
    assert run.summary["flagperf_num_trained_samples"] == micro_batches * 32


def test_batches_keep_the_files_full_width(tiny_model, npz_dir, tmp_path):
    probe = StepLrs()
    engine.finetune(_config(tiny_model, npz_dir, tmp_path / "run", epochs=1), callbacks=[probe])
    assert {width for _, width in probe.shapes} == {WIDTH}


def test_fast_is_refused_in_one_line():
    with pytest.raises(KitError, match=r"^parameter 'fast'=True: expected false with flagperf_exact: true"):
        RunConfig.from_dict({"flagperf_exact": True, "fast": True})


# --- the six together: a whole run equals FlagPerf's computation ------------------------------------------------


def flagperf_run(model_dir, data_dir, *, batch_size, accumulation, epochs, lr, seed) -> tuple[dict, float]:
    """FlagPerf's computation as its reference documents it, on one process or under torchrun (its samplers, DDP
    without no_sync, evaluation counts summed over ranks, duplicates included); its final weights and last acc."""
    from transformers import get_scheduler

    def tensors(name):
        f = np.load(data_dir / "dataset" / f"{name}_dataset.npz")
        return TensorDataset(*(torch.as_tensor(f[k]) for k in ("input_ids", "attention_mask", "label")))

    train_set, dev_set = tensors("train"), tensors("eval")
    ddp = torch.distributed.is_initialized()
    if ddp:
        sampler, dev_sampler = DistributedSampler(train_set, seed=seed), DistributedSampler(dev_set)
    else:
        generator = torch.Generator()
        generator.manual_seed(seed)
        sampler, dev_sampler = RandomSampler(train_set, generator=generator), None
    train = DataLoader(train_set, sampler=sampler, batch_size=batch_size)
    dev = DataLoader(dev_set, sampler=dev_sampler, batch_size=4)
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    model = load_classifier(str(model_dir))
    trained = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    optimizer = torch.optim.AdamW(optimizer_groups(trained, 0.0), lr=lr)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=len(train) * epochs)

    def evaluate() -> float:
        trained.eval()
        correct = torch.zeros(())
        with torch.no_grad():
            for ids, mask, labels in dev:
                logits = trained(input_ids=ids, attention_mask=mask).logits
                correct += (logits.argmax(-1) == labels).sum()
        if ddp:
            torch.distributed.all_reduce(correct)
        return correct.item() / len(dev_set)

    acc = evaluate()
    micro_batches = 0
    with warnings.catch_warnings():  # torch's warning of a schedule stepped before the first update: FlagPerf's
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(epochs):
            for ids, mask, labels in train:
                trained.train()
                micro_batches += 1
                loss = trained(input_ids=ids, attention_mask=mask, labels=labels.long()).loss
                (loss / accumulation).backward()
                if micro_batches % accumulation == 0:
                    optimizer.step()
                    optimizer.zero_grad()
                scheduler.step()
            acc = evaluate()
    return model.state_dict(), acc


def test_a_run_ends_with_the_weights_flagperfs_computation_ends_with(tiny_model, npz_dir, tmp_path):
    cfg = _config(tiny_model, npz_dir, tmp_path / "run", max_train_samples=None)
    run = engine.finetune(cfg)
    theirs, acc = flagperf_run(tiny_model, npz_dir, batch_size=8, accumulation=3, epochs=2, lr=5e-5, seed=0)
    ours = load_file(run.folder / "model" / "model.safetensors")
    assert ours.keys() <= theirs.keys()
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []
    assert run.summary["steps"] == (2 * 38) // 3  # ceil(300 / 8) micro-batches an epoch, counted over the run
    assert run.summary["flagperf_acc"] == run.summary["acc"] == acc  # one process: no duplicates


def test_resumed_after_an_epoch_with_a_partial_group_equals_the_whole_run(tiny_model, npz_dir, tmp_path):
    """38 micro-batches an epoch in groups of 3: epoch 1 ends with 2 accumulated, their gradients in its
    checkpoint."""
    whole = engine.finetune(_config(tiny_model, npz_dir, tmp_path / "whole"))

    class StopAfterFirstEpoch(Callback):
        def on_checkpoint(self, trainer, step):
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        engine.finetune(_config(tiny_model, npz_dir, out, keep_checkpoints=True), callbacks=[StopAfterFirstEpoch()])
    state = torch.load(sorted((out / "checkpoints").glob("step-*.pt"))[-1], weights_only=False)
    assert state["epoch"] == 1 and any(g is not None for g in state["grads"])
    resumed = engine.finetune(output_dir=str(out), resume=True)
    ours, theirs = (load_file(r.folder / "model" / "model.safetensors") for r in (resumed, whole))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert resumed.steps[["step", "loss", "lr"]].equals(whole.steps[["step", "loss", "lr"]])


def test_params_of_flagperfs_configurations_set_flagperf_exact():
    from distil_kit.config import load_config

    params = Path(__file__).parents[1] / "params"
    assert all(load_config(p).flagperf_exact for p in params.glob("flagperf_*.yaml"))
    assert not load_config(params / "fast.yaml").flagperf_exact


# --- under torchrun -------------------------------------------------------------------------------------------


def _torchrun(mode: str, out: Path, config: dict, nproc: int = 2) -> None:
    """This file as the harness of ``nproc`` processes (gloo on CPU): ``kit`` runs finetune, ``flagperf`` the
    FlagPerf-shaped loop (its weights and acc saved by rank 0)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    proc = subprocess.run(
        [*cmd, __file__, mode, str(out), json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_under_torchrun_a_run_ends_with_flagperfs_weights_and_reports_its_duplicates(tiny_model, npz_dir, tmp_path):
    """Two ranks: FlagPerf's DistributedSampler without set_epoch (300 rows: 150 each, 19 micro-batches of 8), its
    evaluation over 61 dev rows padded to 62 (one duplicate, counted in its acc, not in the kit's)."""
    config = _config(tiny_model, npz_dir, tmp_path / "run")
    _torchrun("kit", tmp_path / "run", config)
    _torchrun("flagperf", tmp_path / "flagperf", config)
    run = Run(tmp_path / "run")
    theirs = torch.load(tmp_path / "flagperf" / "weights.pt")
    ours = load_file(run.folder / "model" / "model.safetensors")
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []
    assert run.summary["steps"] == (2 * 19) // 3
    assert run.summary["flagperf_acc"] == json.loads((tmp_path / "flagperf" / "acc.json").read_text())
    predictions = run.predictions
    assert len(predictions) == 61 and run.summary["acc_correct"] == int((predictions.pred == predictions.label).sum())
    duplicate = int(predictions.pred[_first_dev_duplicate(61)] == predictions.label[_first_dev_duplicate(61)])
    assert round(run.summary["flagperf_acc"] * 61) == run.summary["acc_correct"] + duplicate
    assert run.summary["flagperf_num_trained_samples"] == 2 * 19 * 8 * 2


def _first_dev_duplicate(rows: int) -> int:
    """The dev row an evaluation DistributedSampler of two ranks scores twice (its padding repeats the first)."""
    return list(DistributedSampler(range(rows), 2, 0))[0]


if __name__ == "__main__":
    mode, out, config = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    if mode == "kit":
        engine.finetune(config)
    else:
        torch.distributed.init_process_group("gloo")
        weights, acc = flagperf_run(
            Path(config["model"]),
            Path(config["data_dir"]),
            batch_size=config["train_batch_size"],
            accumulation=config["gradient_accumulation_steps"],
            epochs=config["epochs"],
            lr=5e-5,
            seed=0,
        )
        if torch.distributed.get_rank() == 0:
            out.mkdir(parents=True)
            torch.save(weights, out / "weights.pt")
            (out / "acc.json").write_text(json.dumps(acc))
        # every rank here before any tears its group down: a rank leaving while rank 0 still writes aborted at exit
        # (gloo's threads: "terminate called without an active exception"), as the kit's own runs never do
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
