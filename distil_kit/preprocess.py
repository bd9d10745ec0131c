"""Tokenize SST-2 with a model's own tokenizer and write FlagPerf's npz schema (plus a small metadata JSON)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import data
from .atomic import write_atomic, write_json_atomic
from .errors import KitError
from .modeling import file_sha256, load_tokenizer, vocab_sha256

PADDINGS = ("longest", "max_length")
METADATA_FILE = "preprocess.json"


@dataclass(frozen=True)
class Preprocessed:
    """What ``preprocess`` wrote: the dataset folder, its files, their metadata and the splits themselves."""

    folder: Path
    files: dict[str, Path]
    metadata: dict
    splits: dict[str, data.Split]


def check_padding(padding: str, max_length: int) -> None:
    if padding not in PADDINGS:
        raise KitError(f"padding={padding!r}: expected one of {', '.join(PADDINGS)}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise KitError(f"max_length={max_length!r}: expected a whole number >= 2 (FlagPerf uses 512)")


def tokenize(split: data.Split, tokenizer, padding: str = "longest", max_length: int = 512) -> data.Split:
    """The split with ``input_ids``/``attention_mask`` from ``tokenizer``: padded to ``max_length`` or to the
    split's longest row, truncated at ``max_length`` (as FlagPerf does)."""
    check_padding(padding, max_length)
    enc = tokenizer(
        list(split.sentence), padding=padding, truncation=True, max_length=max_length, return_tensors="np"
    )
    return replace(
        split, input_ids=enc["input_ids"].astype(np.int64), attention_mask=enc["attention_mask"].astype(np.int64)
    )


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        raise KitError(f"output folder {out_dir} cannot be written: {e.strerror or e}") from e


def preprocess(
    source, tokenizer: str, out_dir, padding: str = "longest", max_length: int = 512, overwrite: bool = False
) -> Preprocessed:
    """Read SST-2 from ``source``, tokenize it and write ``<out_dir>/dataset/{train,eval}_dataset.npz``.

    Every input is checked before tokenizing; files are written to temporary names and renamed, so an error
    leaves no partial output behind. A dataset already in the folder is only replaced with ``overwrite``.
    """
    check_padding(padding, max_length)
    kind = data.check_source(source)  # a hub source offline fails here, before the tokenizer is loaded
    folder = Path(out_dir) / "dataset"
    existing = [name for name in (*data.NPZ_FILES.values(), METADATA_FILE) if (folder / name).exists()]
    if existing and not overwrite:
        raise KitError(
            f"preprocess: {folder} already holds a dataset ({', '.join(existing)}); pass overwrite (CLI: "
            f"--overwrite) to replace it, or choose another output folder"
        )
    tok = load_tokenizer(tokenizer)
    _check_writable(folder)
    raw = data.load_sst2(source, vocab_size=len(tok))
    splits = {name: tokenize(split, tok, padding, max_length) for name, split in raw.items()}

    files = {}
    for name, split in splits.items():
        files[name] = write_atomic(folder / data.NPZ_FILES[name], lambda tmp, s=split: data.write_npz(s, tmp))
    metadata = {
        "source": str(source) if kind != "hub" else data.HUB_DATASET,
        "source_kind": kind,
        "tokenizer": str(tokenizer),
        "vocab_size": len(tok),
        "vocab_sha256": vocab_sha256(tok),
        "padding": padding,
        "max_length": max_length,
        "splits": {
            name: {
                "file": files[name].name,
                "rows": len(s),
                "L": int(s.input_ids.shape[1]),
                "sha256": file_sha256(files[name]),
            }
            for name, s in splits.items()
        },
    }
    write_json_atomic(folder / METADATA_FILE, metadata)
    return Preprocessed(folder=folder, files=files, metadata=metadata, splits=splits)


def describe(splits: dict[str, data.Split]) -> pd.DataFrame:
    """Rows, label balance and token lengths per split: the table a user checks before training."""
    rows = []
    for name, s in splits.items():
        lengths = s.lengths
        width = s.input_ids.shape[1]
        rows.append(
            {
                "split": name,
                "rows": len(s),
                "positive": int(s.label.sum()),
                "positive_share": float(s.label.mean()),
                "mean_tokens": float(lengths.mean()),
                "max_tokens": int(lengths.max()),
                "stored_L": width,
                "padding_waste_at_L": 1 - float(lengths.sum()) / (len(s) * width),
                "padding_waste_at_512": 1 - float(lengths.sum()) / (len(s) * 512),
            }
        )
    return pd.DataFrame(rows).set_index("split")


def read_metadata(folder) -> dict:
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        raise KitError(f"{path}: file not found; was this folder written by distil_kit.preprocess?")
    return json.loads(path.read_text())
