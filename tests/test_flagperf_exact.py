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

import random
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


def flagperf_run(model_dir, data_dir, *, batch_size, accumulation, epochs, lr, seed) -> dict:
    """FlagPerf's computation as its reference documents it, on one process; its final weights."""

    def tensors(name):
        f = np.load(data_dir / "dataset" / f"{name}_dataset.npz")
        return TensorDataset(*(torch.as_tensor(f[k]) for k in ("input_ids", "attention_mask", "label")))

    generator = torch.Generator()
    generator.manual_seed(seed)
    train = DataLoader(
        tensors("train"), sampler=RandomSampler(tensors("train"), generator=generator), batch_size=batch_size
    )
    dev = DataLoader(tensors("eval"), batch_size=4)
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    model = load_classifier(str(model_dir))
    optimizer = torch.optim.AdamW(optimizer_groups(model, 0.0), lr=lr)
    from transformers import get_scheduler

    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=len(train) * epochs)

    def evaluate():
        model.eval()
        with torch.no_grad():
            for ids, mask, labels in dev:
                model(input_ids=ids, attention_mask=mask, labels=labels)

    evaluate()
    micro_batches = 0
    for _ in range(epochs):
        for ids, mask, labels in train:
            model.train()
            micro_batches += 1
            loss = model(input_ids=ids, attention_mask=mask, labels=labels.long()).loss
            (loss / accumulation).backward()
            if micro_batches % accumulation == 0:
                optimizer.step()
                optimizer.zero_grad()
            scheduler.step()
        evaluate()
    return model.state_dict()


def test_a_run_ends_with_the_weights_flagperfs_computation_ends_with(tiny_model, npz_dir, tmp_path):
    cfg = _config(tiny_model, npz_dir, tmp_path / "run", max_train_samples=None)
    run = engine.finetune(cfg)
    theirs = flagperf_run(tiny_model, npz_dir, batch_size=8, accumulation=3, epochs=2, lr=5e-5, seed=0)
    ours = load_file(run.folder / "model" / "model.safetensors")
    assert ours.keys() <= theirs.keys()
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == []
    assert run.summary["steps"] == (2 * 38) // 3  # ceil(300 / 8) micro-batches an epoch, counted over the run


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
