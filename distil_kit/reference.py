"""FlagPerf's published DistilBERT / SST-2 results, as data. None of these figures was measured by this kit."""

from __future__ import annotations

import pandas as pd

# Source: FlagPerf, training/nvidia/distilbert-pytorch/README.md, table of results on NVIDIA A100-SXM4-40GB in
# fp32 (transcribed in shared/reference/flagperf.md). Their p_whole / p_train / p_core are the three
# throughputs below; memory is the peak of 40 GiB per GPU.
SOURCE = "FlagPerf training/nvidia/distilbert-pytorch/README.md"
MODEL = "distilbert-base-uncased"
DEVICE = "NVIDIA A100-SXM4-40GB"
PRECISION = "fp32"
# The workload every published row ran: all of SST-2's training and dev rows, at most 10 epochs (stopping at 0.91).
TRAIN_ROWS = 67_349
DEV_ROWS = 872
MAX_EPOCHS = 10

# Columns carry summary.json's names so published and measured rows line up key for key.
COLUMNS = (
    "configuration",
    "fix_hp",
    "world_size",
    "e2e_time",
    "throughput(ips)_raw",
    "throughput(ips)_no_eval",
    "throughput(ips)_pure_compute",
    "acc",
    "peak_memory_gib",
)
ROWS = (
    ("1 node x 8 GPUs", "", 8, 361.0, 1764.0, 1861.9, 1942.6, 0.915, 13.9),
    ("1 node x 8 GPUs", "bs=96", 8, 334.7, 2019.1, 2135.8, 2181.0, 0.908, 33.4),
    ("1 node x 1 GPU", "bs=96, lr=0.00015", 1, 720.8, 283.7, 286.1, 287.9, 0.912, 32.7),
    ("2 nodes x 8 GPUs", "bs=96", 16, 58.9, 3531.1, 3892.3, 4058.3, 0.911, 32.9),
)


def published() -> pd.DataFrame:
    """FlagPerf's published A100 rows, one per configuration (``fix_hp``: hyper-parameters they changed)."""
    return pd.DataFrame(ROWS, columns=COLUMNS)
