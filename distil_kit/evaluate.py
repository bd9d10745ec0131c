"""Dev accuracy and predictions: the model and the dev split in, the correct count and predictions out. Under
torchrun each rank scores its share of the rows (each row exactly once) and the counts are summed."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import pandas as pd
import torch

from . import distributed
from .batching import PackCollate, SplitDataset, TrimCollate, eval_batches, tensors
from .data import Split
from .packing import PackedClassifier, pack_width


@dataclass(frozen=True)
class Evaluation:
    correct: int
    total: int
    predictions: pd.DataFrame | None  # one row per dev sentence, in dev order; on rank 0 only
    counted: int | None = None  # FlagPerf's count where it differs: its evaluation's duplicates included (flagperf)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    dev: Split,
    *,
    batch_size: int,
    device: torch.device,
    world: distributed.World | None = None,
    amp=nullcontext,
    pad_to_multiple_of: int = 1,
    packing: bool = False,
) -> Evaluation:
    """Score every dev row once; ``amp`` makes the autocast context the run trains in; ``packing``: in packed
    batches (``packing``)."""
    world = world or distributed.World()
    dataset = SplitDataset(dev)
    collate = PackCollate(pack_width(int(dev.lengths.max()))) if packing else TrimCollate(pad_to_multiple_of)
    scored = PackedClassifier(model) if packing else model
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    idx, pred, prob = [], [], []
    for rows in eval_batches(dev.lengths, batch_size, world.rank, world.size):
        batch = collate([dataset[r] for r in rows])
        inputs = {k: t.to(device) for k, t in tensors(batch).items() if k not in ("labels", "weight")}
        with amp():
            logits = scored(**inputs).logits
        y = logits.argmax(dim=-1)
        correct += (y.cpu() == batch.labels).sum().to(device)
        idx.append(batch.idx)
        pred.append(y.cpu())
        prob.append(torch.softmax(logits.float(), dim=-1)[:, 1].cpu())
    model.train(was_training)
    correct = int(distributed.all_reduce_sum(correct, world).item())
    local = (torch.cat(idx).tolist(), torch.cat(pred).tolist(), torch.cat(prob).tolist()) if idx else ([], [], [])
    parts = distributed.gather_objects(local, world)
    return Evaluation(correct, len(dev), _predictions(dev, parts) if world.main else None)


def _predictions(dev: Split, parts: list[tuple[list, list, list]]) -> pd.DataFrame:
    """Every rank's (row, pred, prob_pos) lists as one frame in dev order."""
    frame = pd.DataFrame(
        {
            "row": sum((p[0] for p in parts), []),
            "pred": sum((p[1] for p in parts), []),
            "prob_pos": sum((p[2] for p in parts), []),
        }
    ).sort_values("row")
    return predictions_frame(dev, frame)


def predictions_frame(dev: Split, scored: pd.DataFrame) -> pd.DataFrame:
    """predictions.csv's frame from ``scored`` (columns ``row``, ``pred``, ``prob_pos``; each dev row once, in dev
    order)."""
    rows = scored["row"].to_numpy()
    return pd.DataFrame(
        {
            "idx": dev.idx[rows],
            "sentence": dev.sentence[rows],
            "label": dev.label[rows],
            "pred": scored["pred"].to_numpy(),
            "prob_pos": scored["prob_pos"].round(6).to_numpy(),
        }
    )
