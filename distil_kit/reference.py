"""FlagPerf's published DistilBERT / SST-2 results, as data. None of these figures was measured by this kit.

How to read them (shared/reference/flagperf.md): every row is a single run (no seeds, no intervals), and a row below
the target is published all the same (MetaX C500's 1x8 0.908 never reached 0.91). FlagPerf's ``e2e_time`` ends at
the first epoch whose evaluation reaches 0.91, so it mostly says which epoch first crossed the target: e2e_time x
p_whole works out to about 3 epochs for the A100 1x1 and 2x8 rows and about 10 for the 1x8 row.
"""

from __future__ import annotations

import pandas as pd

MODEL = "distilbert-base-uncased"
PRECISION = "fp32"
NVIDIA = "FlagPerf training/nvidia/distilbert-pytorch/README.md"
KUNLUNXIN = "FlagPerf training/kunlunxin/distilbert-pytorch/README.md"
METAX = "FlagPerf training/metax/distilbert-pytorch/README.md"

# The workload every published row ran: all of SST-2's training and dev rows, at most 10 epochs (stopping at 0.91).
TRAIN_ROWS = 67_349
DEV_ROWS = 872
MAX_EPOCHS = 10

# Columns carry summary.json's names so published and measured rows line up key for key; ``device_memory_gib`` is
# the device's whole memory (FlagPerf writes "13.9/40.0"), ``source`` the README each row is transcribed from.
# p_whole / p_train / p_core are the three throughputs; a figure a vendor did not publish is None.
COLUMNS = (
    "device",
    "configuration",
    "fix_hp",
    "world_size",
    "e2e_time",
    "throughput(ips)_raw",
    "throughput(ips)_no_eval",
    "throughput(ips)_pure_compute",
    "acc",
    "peak_memory_gib",
    "device_memory_gib",
    "source",
)
A100, R300, C500 = "NVIDIA A100-SXM4-40GB", "Kunlunxin R300", "MetaX C500"
ROWS = (
    (A100, "1 node x 8 GPUs", "", 8, 361.0, 1764.0, 1861.9, 1942.6, 0.915, 13.9, 40.0, NVIDIA),
    (A100, "1 node x 8 GPUs", "bs=96", 8, 334.7, 2019.1, 2135.8, 2181.0, 0.908, 33.4, 40.0, NVIDIA),
    (A100, "1 node x 1 GPU", "bs=96, lr=0.00015", 1, 720.8, 283.7, 286.1, 287.9, 0.912, 32.7, 40.0, NVIDIA),
    (A100, "2 nodes x 8 GPUs", "bs=96", 16, 58.9, 3531.1, 3892.3, 4058.3, 0.911, 32.9, 40.0, NVIDIA),
    (R300, "1 node x 8", "bs=32", 8, None, None, None, None, 0.911, 13.5, 32.0, KUNLUNXIN),
    (C500, "1 node x 8", "", 8, None, None, None, None, 0.908, 37.0, 64.0, METAX),
    (C500, "1 node x 1", "", 1, None, None, None, None, None, 35.1, 64.0, METAX),
    (C500, "2 nodes x 8", "", 16, None, None, None, None, None, 36.7, 64.0, METAX),
)


def published() -> pd.DataFrame:
    """FlagPerf's published rows, one per vendor and configuration (``fix_hp``: hyper-parameters they changed)."""
    return pd.DataFrame(ROWS, columns=COLUMNS)
