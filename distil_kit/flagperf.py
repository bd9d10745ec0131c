"""FlagPerf's own computation, for ``flagperf_exact: true``: what ``training/benchmarks/distilbert/pytorch`` does
where the kit's recipe departs from it (docs/recipe.md lists each departure and its source).

- order: ``FlagPerfBatches``, torch's ``RandomSampler`` on one generator seeded once with ``seed`` (a new
  permutation each epoch), or under torchrun torch's ``DistributedSampler(seed=seed)`` whose ``set_epoch`` FlagPerf
  never calls (the same order every epoch, the last rows padded with duplicates);
- width: ``FullWidthCollate``, the split's every column (512 in FlagPerf's files): dropout draws its masks over it;
- global RNG: ``draw_loader_seed``, the draw each ``iter()`` of a DataLoader without a generator takes;
- loss: ``flagperf_loss``, the micro-batch's mean loss divided by ``gradient_accumulation_steps``;
- evaluation: ``evaluate``, the dev rows in file order at full width, under torchrun through an evaluation
  ``DistributedSampler`` whose padded duplicates count.
The accumulation over micro-batches counted across epochs and the scheduler stepped per micro-batch are the
engine's (``Trainer.train_epoch``, ``Trainer.train_step``).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from . import distributed
from .batching import SplitDataset, TrimCollate
from .data import Split
from .evaluate import Evaluation, predictions_frame


class FlagPerfBatches:
    """FlagPerf's training micro-batches for one rank (dataloaders/dataloader.py, ``build_train_sampler``): rows
    in ``batch_size`` chunks of its sampler's order, the last chunk short, every key of weight 1 (the loss is each
    micro-batch's mean, ``flagperf_loss``).

    One process: epoch ``e``'s order is the ``e + 1``-th pass of a ``RandomSampler`` over one generator seeded once
    with ``seed``, replayed from the seed (a pass costs one ``randperm``), so that the order is a function of the
    epoch and a resumed run needs no generator state. Under torchrun: ``DistributedSampler(seed=seed)`` at epoch 0
    for every epoch, as FlagPerf never calls ``set_epoch``.
    """

    def __init__(self, n_rows: int, batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1):
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def rows_per_rank(self) -> int:
        return math.ceil(self.n_rows / self.world_size)  # DistributedSampler pads to equal shares

    def __len__(self) -> int:
        return math.ceil(self.rows_per_rank() / self.batch_size)

    def order(self, epoch: int) -> list[int]:
        """This rank's rows of ``epoch``, in training order."""
        if self.world_size > 1:
            return list(DistributedSampler(range(self.n_rows), self.world_size, self.rank, seed=self.seed))
        sampler = RandomSampler(range(self.n_rows), generator=torch.Generator().manual_seed(self.seed))
        for _ in range(epoch):
            # A whole pass: RandomSampler draws a second, empty-sliced permutation once the first is used up.
            for _ in sampler:
                pass
        return list(sampler)

    def __iter__(self):
        rows = self.order(self.epoch)
        for start in range(self.skip * self.batch_size, len(rows), self.batch_size):
            yield [(r, 1.0) for r in rows[start : start + self.batch_size]]


class FullWidthCollate(TrimCollate):
    """Rows at the split's full width, as FlagPerf's collator stacks them: the shape dropout draws its masks over."""

    def width(self, longest: int, padded_width: int) -> int:
        return padded_width


def train_loader(split: Split, cfg, rank: int = 0, world_size: int = 1, pin_memory: bool = False):
    """``batching.train_loader``'s counterpart: FlagPerf's order and width (``cfg``: the resolved RunConfig)."""
    sampler = FlagPerfBatches(len(split), cfg.train_batch_size, cfg.seed, rank=rank, world_size=world_size)
    loader = DataLoader(
        SplitDataset(split),
        batch_sampler=sampler,
        collate_fn=FullWidthCollate(),
        num_workers=cfg.num_workers,
        pin_memory=pin_memory,
        persistent_workers=cfg.num_workers > 0,
        # Its own generator: FlagPerf's global draw at each epoch's start is taken by draw_loader_seed, once per
        # epoch even when a resumed run iterates this loader mid-epoch.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return sampler, loader


def draw_loader_seed() -> None:
    """The draw from the global torch generator that ``iter()`` of a DataLoader without a generator takes for its
    workers' base seed (whatever ``num_workers``): FlagPerf's loaders take one at the first evaluation, at each
    epoch's start and at each evaluation, and every dropout mask after it shifts."""
    torch.empty((), dtype=torch.int64).random_()


def flagperf_loss(model, amp, accumulation: int, input_ids, attention_mask, labels, weight) -> torch.Tensor:
    """FlagPerf's loss (train/trainer_adapter.py, ``backward``): the model's own mean loss over the micro-batch,
    divided by ``gradient_accumulation_steps`` however many rows the micro-batch has. ``weight`` is unused: the
    shared step passes every batch field."""
    with amp():
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    return loss / accumulation


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    dev: Split,
    *,
    batch_size: int,
    device: torch.device,
    world: distributed.World | None = None,
    amp=nullcontext,
) -> Evaluation:
    """FlagPerf's evaluation (train/evaluator.py, dataloaders/dataloader.py ``build_eval_dataloader``): ``batch_size``
    rows at full width, in file order on one process; under torchrun each rank's share from a
    ``DistributedSampler`` (shuffled with seed 0, padded with duplicates). ``Evaluation.counted`` is FlagPerf's
    count, duplicates included (its acc is counted / dev rows); ``correct`` counts each row once."""
    world = world or distributed.World()
    dataset = SplitDataset(dev)
    sampler = DistributedSampler(range(len(dev)), world.size, world.rank) if world.distributed else None
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=FullWidthCollate())
    was_training = model.training
    model.eval()
    pred, prob = [], []
    for batch in loader:  # iter() takes FlagPerf's global draw (no generator)
        with amp():
            logits = model(
                input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)
            ).logits
        pred.append(logits.argmax(dim=-1).cpu())
        prob.append(torch.softmax(logits.float(), dim=-1)[:, 1].cpu())
    model.train(was_training)
    positions = list(sampler) if sampler is not None else list(range(len(dev)))  # the rows in the loader's order
    local = (positions, torch.cat(pred).tolist(), torch.cat(prob).tolist()) if pred else ([], [], [])
    scored = _scored(dev, distributed.gather_objects(local, world))  # every rank's, on every rank
    first = scored.drop_duplicates("row").sort_values("row")
    predictions = predictions_frame(dev, first) if world.main else None
    return Evaluation(int(first["hit"].sum()), len(dev), predictions, int(scored["hit"].sum()))


def _scored(dev: Split, parts: list[tuple[list, list, list]]) -> pd.DataFrame:
    """Every rank's scored positions (duplicates kept), with whether each was right."""
    rows = np.asarray(sum((p[0] for p in parts), []), dtype=np.int64)
    pred = np.asarray(sum((p[1] for p in parts), []), dtype=np.int64)
    prob = np.asarray(sum((p[2] for p in parts), []), dtype=np.float64)
    return pd.DataFrame({"row": rows, "pred": pred, "prob_pos": prob, "hit": pred == dev.label[rows]})
