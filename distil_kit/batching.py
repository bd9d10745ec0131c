"""From a tokenized split to batches: the Dataset, the trimming collate and the seeded epoch samplers.

A sampler yields *keys*: ``(row, weight)``. ``weight`` is the row's share of its optimizer step's loss times the
world size (DDP averages gradients over ranks), so the summed weighted loss of a step's micro-batches on every
rank averages to the mean loss over the step's rows, however unevenly the last step splits into micro-batches
and across ranks. A rank left without a row gets a filler row of weight 0, so that every rank runs the same
number of steps.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .config import micro_batches_per_step
from .data import Split
from .packing import bins, pack_width


class Batch(NamedTuple):
    input_ids: torch.Tensor  # [B, L'] with L' the longest real row, rounded up to a multiple
    attention_mask: torch.Tensor
    labels: torch.Tensor
    idx: torch.Tensor  # dev/train row ids, for predictions and sample accounting
    weight: torch.Tensor  # per-row loss weight (see module docstring)
    n_rows: int  # real rows (filler rows excluded)
    n_tokens: int  # real tokens of the real rows
    # packed batches (``packing.PackCollate``) only: then input_ids holds whole sentences end to end, attention_mask
    # each token's sentence within its row, and labels, idx and weight are per sentence
    position_ids: torch.Tensor | None = None
    starts: torch.Tensor | None = None  # each sentence's first token, a flat index into input_ids


class SplitDataset(Dataset):
    """Rows of a tokenized split, whatever its padded width L."""

    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key):
        row, weight = key if isinstance(key, tuple) else (key, 1.0)
        s = self.split
        return s.input_ids[row], s.attention_mask[row], s.label[row], s.idx[row], weight


class TrimCollate:
    """Stack rows and cut the padding every row of the batch shares: a 512-padded FlagPerf file then costs no
    more than a compact one. ``pad_to_multiple_of`` rounds the width up (8 suits tensor cores)."""

    def __init__(self, pad_to_multiple_of: int = 1):
        self.multiple = max(1, int(pad_to_multiple_of))

    def width(self, longest: int, padded_width: int) -> int:
        """A batch's width: its longest row rounded up to the multiple, never wider than the split's rows."""
        return min(padded_width, math.ceil(longest / self.multiple) * self.multiple)

    def shape(self, lengths, padded_width: int) -> tuple:
        """``shape`` of the batch of rows of these lengths."""
        return (len(lengths), self.width(int(max(lengths)), padded_width)), (len(lengths),)

    def __call__(self, rows) -> Batch:
        ids, mask, label, idx, weight = zip(*rows, strict=True)
        ids, mask = np.stack(ids), np.stack(mask)
        lengths = mask.sum(axis=1)
        width = self.width(int(lengths.max()), ids.shape[1])
        weight = np.asarray(weight, dtype=np.float32)
        real = weight > 0
        return Batch(
            input_ids=torch.from_numpy(np.ascontiguousarray(ids[:, :width])),
            attention_mask=torch.from_numpy(np.ascontiguousarray(mask[:, :width])),
            labels=torch.as_tensor(np.asarray(label, dtype=np.int64)),
            idx=torch.as_tensor(np.asarray(idx, dtype=np.int64)),
            weight=torch.from_numpy(weight),
            n_rows=int(real.sum()),
            n_tokens=int(lengths[real].sum()),
        )


class PackCollate:
    """Rows of a split (``batching.SplitDataset`` items) into one packed ``Batch``: ``input_ids`` [R, width] with
    the sentences end to end, ``attention_mask`` the segment of each token (1, 2, ... within its row; 0 for
    padding), ``position_ids`` from 0 in each sentence, ``starts`` each sentence's first token as a flat index
    into [R * width]; ``labels``, ``idx`` and ``weight`` per sentence, in the rows' order.

    With ``rows`` and ``sentences`` every batch has that one shape: empty rows after the packed ones, and
    filler sentences after the real ones (weight 0, idx -1, reading the first token), so one CUDA graph serves
    every step of a run, its short last step included."""

    def __init__(self, width: int, rows: int | None = None, sentences: int | None = None):
        self.width, self.rows, self.sentences = width, rows, sentences

    def shape(self, lengths, padded_width: int) -> tuple:
        """``shape`` of the batch of sentences of these lengths (``padded_width`` unused: the width is the run's)."""
        rows = self.rows or len(bins(lengths, self.width))
        return (rows, self.width), (self.sentences or len(lengths),)

    def __call__(self, rows) -> Batch:
        if self.sentences is not None and len(rows) > self.sentences:
            raise ValueError(f"{len(rows)} sentences for a packed batch of {self.sentences}")
        ids, mask, label, idx, weight = zip(*rows, strict=True)
        lengths = [int(m.sum()) for m in mask]
        groups = bins(lengths, self.width)
        if self.rows is not None and len(groups) > self.rows:
            raise ValueError(f"the sentences pack into {len(groups)} rows, more than the batch's {self.rows}")
        shape = (self.rows or len(groups), self.width)
        filler = (self.sentences or len(rows)) - len(rows)
        input_ids = np.zeros(shape, dtype=np.int64)
        segments = np.zeros(shape, dtype=np.int64)
        positions = np.zeros(shape, dtype=np.int64)
        starts = np.zeros(len(rows) + filler, dtype=np.int64)
        for r, members in enumerate(groups):
            at = 0
            for segment, i in enumerate(members, start=1):
                n = lengths[i]
                input_ids[r, at : at + n] = ids[i][:n]
                segments[r, at : at + n] = segment
                positions[r, at : at + n] = np.arange(n)
                starts[i] = r * self.width + at
                at += n
        weight = np.asarray(weight + (0.0,) * filler, dtype=np.float32)
        real = weight > 0
        return Batch(
            input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(segments),
            labels=torch.as_tensor(np.asarray(label + (0,) * filler, dtype=np.int64)),
            idx=torch.as_tensor(np.asarray(idx + (-1,) * filler, dtype=np.int64)),
            weight=torch.from_numpy(weight),
            n_rows=int(real.sum()),
            n_tokens=int(np.asarray(lengths + [0] * filler)[real].sum()),
            position_ids=torch.from_numpy(positions),
            starts=torch.from_numpy(starts),
        )


class EpochBatches:
    """Seeded training micro-batches for one rank: every row exactly once per epoch across all ranks.

    A random permutation of the rows (seeded by ``seed`` and the epoch) is cut into optimizer steps of
    ``batch_size * accumulation * world_size`` rows, so a step holds the same rows whether it trains as one
    micro-batch or as ``accumulation`` of them. Each step is cut into global micro-batches of
    ``batch_size * world_size`` rows; bucketed, the step's rows are sorted by length first, so its micro-batches
    hold rows of similar length (little padding) while the steps, and so the gradients, stay those of the random
    order. Each global micro-batch is split into ``world_size`` contiguous parts; this rank takes part ``rank``.
    A row's weight is ``world_size`` over its step's rows: a step's weighted losses sum to its mean loss.

    ``set_epoch(epoch, skip)`` selects the epoch and skips its first ``skip`` micro-batches (to resume mid-epoch).
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int,
        *,
        accumulation: int = 1,
        bucketed: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed, self.bucketed = batch_size, seed, bucketed
        self.accumulation, self.rank, self.world_size = accumulation, rank, world_size
        self.epoch, self.skip = 0, 0

    @property
    def global_batch_size(self) -> int:
        """Rows per global micro-batch (all ranks)."""
        return self.batch_size * self.world_size

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.global_batch_size)

    def global_batches(self, epoch: int) -> list[tuple[np.ndarray, int]]:
        """Every rank's rows of each micro-batch of ``epoch``, in order, each with its step's row count."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.lengths))
        gbs, step_rows = self.global_batch_size, self.global_batch_size * self.accumulation
        batches = []
        for start in range(0, len(order), step_rows):
            rows = order[start : start + step_rows]
            if self.bucketed:
                rows = rows[np.argsort(self.lengths[rows], kind="stable")]
            batches += [(rows[i : i + gbs], len(rows)) for i in range(0, len(rows), gbs)]
        return batches

    def __iter__(self):
        for rows, step_rows in self.global_batches(self.epoch)[self.skip :]:
            part = np.array_split(rows, self.world_size)[self.rank]
            if len(part) == 0:  # fewer rows than ranks in the last batch: a filler row that adds nothing
                yield [(int(rows[0]), 0.0)]
            else:
                weight = self.world_size / step_rows
                yield [(int(r), weight) for r in part]


TENSORS = ("input_ids", "attention_mask", "labels", "weight", "position_ids", "starts")  # what a step's model reads


def tensors(batch: Batch) -> dict[str, torch.Tensor]:
    """The batch's tensors a training step reads (a packed batch has two more)."""
    return {name: getattr(batch, name) for name in TENSORS if getattr(batch, name) is not None}


def shape(batch: Batch) -> tuple:
    """What a compiled or graphed step depends on: the shape of ``input_ids`` and the number of rows (sentences,
    when packed: a short last step may pack into as many rows as a whole one)."""
    return tuple(batch.input_ids.shape), tuple(batch.labels.shape)


def batches_of_each_shape(loader, epochs: range, skip: int = 0) -> list[Batch]:
    """One batch of each ``shape`` ``loader`` (``train_loader``'s) will give over ``epochs`` (the first skipping
    ``skip`` micro-batches, as a resumed epoch does), in the order they first come: the seeded order knows every
    step's rows, so the shapes are known before training (CUDA graphs capture them then). Only the first batch of
    each shape is collated; the sampler is left at the first of ``epochs``."""
    sampler, dataset, collate = loader.batch_sampler, loader.dataset, loader.collate_fn
    lengths, padded_width = dataset.split.lengths, dataset.split.input_ids.shape[1]
    found: dict[tuple, Batch] = {}
    for epoch in epochs:
        sampler.set_epoch(epoch, skip=skip if epoch == epochs.start else 0)
        for keys in sampler:
            shape = collate.shape(lengths[[row for row, _ in keys]], padded_width)
            if shape not in found:
                found[shape] = collate([dataset[key] for key in keys])
    if epochs:
        sampler.set_epoch(epochs.start, skip=skip)
    return list(found.values())


def most_packed_rows(sampler: EpochBatches, width: int, epochs: range) -> int:
    """The most rows of ``width`` any of ``sampler``'s micro-batches over ``epochs`` packs into; the sampler is
    left at the first of ``epochs``."""
    most = 0
    for epoch in epochs:
        sampler.set_epoch(epoch)
        most = max([most, *(len(bins(sampler.lengths[[row for row, _ in keys]], width)) for keys in sampler)])
    sampler.set_epoch(epochs.start)
    return most


def eval_batches(lengths: np.ndarray, batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """Dev rows sorted by length (little padding) and dealt to ranks: each row scored exactly once."""
    order = np.argsort(np.asarray(lengths), kind="stable")[rank::world_size]
    return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def collate_for(split: Split, cfg) -> TrimCollate | PackCollate:
    """How rows of ``split`` become a batch in a run of ``cfg``: packed into rows as wide as the split's longest
    row (rounded up to 8) where ``cfg.packing``, else trimmed to each batch's longest row."""
    return PackCollate(pack_width(int(split.lengths.max()))) if cfg.packing else TrimCollate(cfg.pad_to_multiple_of)


def train_loader(split: Split, cfg, rank: int = 0, world_size: int = 1, pin_memory: bool = False):
    """The run's training micro-batches (``cfg.micro_batch_size`` rows per device): its ``EpochBatches`` sampler
    (``set_epoch`` selects the epoch) and the DataLoader over it. ``cfg``: the run's resolved ``RunConfig``."""
    sampler = EpochBatches(
        split.lengths,
        cfg.micro_batch_size,
        cfg.seed,
        accumulation=micro_batches_per_step(cfg),
        bucketed=cfg.bucket_batches,
        rank=rank,
        world_size=world_size,
    )
    collate = collate_for(split, cfg)
    if cfg.packing and cfg.cuda_graphs:
        # One shape for the whole run (every epoch's, so a resumed run has the same), known from the seeded order
        # before training: one CUDA graph serves every step, the short last step included.
        rows = most_packed_rows(sampler, collate.width, range(cfg.epochs))
        collate = PackCollate(collate.width, rows, cfg.micro_batch_size)
    loader = torch.utils.data.DataLoader(
        SplitDataset(split),
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.num_workers,
        pin_memory=pin_memory,
        persistent_workers=cfg.num_workers > 0,
        # Its own generator: each iter() draws a worker seed, which from the global generator would shift the
        # dropout draws of a run resumed mid-epoch away from those of the uninterrupted run.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return sampler, loader
