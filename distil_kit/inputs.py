"""A run's inputs: the tokenized splits and the model, checked against each other before any training."""

from __future__ import annotations

import random

import numpy as np
import torch

from . import data
from .config import RunConfig
from .errors import KitError
from .preprocess import tokenize


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_splits(cfg: RunConfig, tokenizer) -> dict[str, data.Split]:
    """Tokenized train (first ``max_train_samples`` rows) and dev splits; ids checked against the vocabulary."""
    splits = data.load_sst2(cfg.data_dir, vocab_size=len(tokenizer))
    splits["train"] = splits["train"].head(cfg.max_train_samples)
    if data.source_kind(cfg.data_dir) != "npz":
        splits = {name: tokenize(s, tokenizer) for name, s in splits.items()}
    return splits


def check_ids_fit(splits: dict[str, data.Split], model: torch.nn.Module) -> None:
    """Every token id has a row in the model's embedding table."""
    size = model.get_input_embeddings().num_embeddings
    for name, split in splits.items():
        if int(split.input_ids.max()) >= size:
            row = int(np.flatnonzero((split.input_ids >= size).any(axis=1))[0])
            raise KitError(
                f"{name} split, row {row}: token id {int(split.input_ids[row].max())} is outside the "
                f"model's embedding table of {size}; data and model come from different vocabularies"
            )
