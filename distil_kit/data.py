"""SST-2 sources (the hub, GLUE TSVs, FlagPerf npz folders) and FlagPerf's npz schema.

Every source yields the same thing: a ``Split`` per split name ("train", "dev"). Splits read from npz also
carry ``input_ids`` and ``attention_mask``; the others are tokenized by ``distil_kit.preprocess``.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import hub
from .config import read_utf8
from .errors import KitError

SPLITS = ("train", "dev")
TSV_FILES = {"train": "train.tsv", "dev": "dev.tsv"}
NPZ_FILES = {"train": "train_dataset.npz", "dev": "eval_dataset.npz"}
NPZ_KEYS = ("idx", "sentence", "label", "input_ids", "attention_mask")
HUB_DATASET = "stanfordnlp/sst2"
HUB_SPLITS = {"train": "train", "dev": "validation"}
HUB_NAMES = ("", "hub", "sst2", HUB_DATASET)


@dataclass(frozen=True)
class Split:
    """One split of SST-2: rows in file order, optionally tokenized (right-padded to a common width L)."""

    idx: np.ndarray  # int64 [N]
    sentence: np.ndarray  # numpy unicode [N]
    label: np.ndarray  # int64 [N]
    input_ids: np.ndarray | None = None  # int64 [N, L]
    attention_mask: np.ndarray | None = None  # int64 [N, L]

    def __len__(self) -> int:
        return len(self.label)

    @property
    def lengths(self) -> np.ndarray:
        """Real (unpadded) tokens per row."""
        if self.attention_mask is None:
            raise KitError("this split is not tokenized yet; run distil_kit.preprocess first")
        return self.attention_mask.sum(axis=1)

    def head(self, n: int | None) -> Split:
        """The first ``n`` rows (all of them when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        cut = lambda a: None if a is None else a[:n]  # noqa: E731
        return replace(self, **{k: cut(getattr(self, k)) for k in NPZ_KEYS})


# --- locating a source ----------------------------------------------------------------------------------------


def source_kind(source: str | os.PathLike | None) -> str:
    """'hub', 'tsv' or 'npz' for a source string; a one-line error when a local folder is unusable."""
    if source is None or str(source) in HUB_NAMES:
        return "hub"
    folder = Path(source)
    if not folder.is_dir():
        raise KitError(
            f"data folder {folder} does not exist; expected a GLUE TSV folder (train.tsv, dev.tsv) "
            f"or a FlagPerf data folder (dataset/train_dataset.npz, dataset/eval_dataset.npz)"
        )
    if npz_folder(folder) is not None:
        return "npz"
    if any((folder / name).exists() for name in TSV_FILES.values()):
        return "tsv"
    raise KitError(
        f"data folder {folder} holds neither train.tsv/dev.tsv nor dataset/train_dataset.npz/eval_dataset.npz"
    )


def npz_folder(folder: Path) -> Path | None:
    """Where the npz files of a FlagPerf data folder are: ``<folder>/dataset`` or ``<folder>`` itself."""
    for candidate in (folder / "dataset", folder):
        if any((candidate / name).exists() for name in NPZ_FILES.values()):
            return candidate
    return None


def source_files(source) -> list[Path]:
    """The local files a source reads (for hashing into a run's manifest); empty for the hub."""
    kind = source_kind(source)
    if kind == "hub":
        return []
    if kind == "npz":
        return [npz_folder(Path(source)) / NPZ_FILES[s] for s in SPLITS]
    return [Path(source) / TSV_FILES[s] for s in SPLITS]


def load_sst2(source: str | os.PathLike | None = "hub", vocab_size: int | None = None) -> dict[str, Split]:
    """SST-2 train and dev from the hub, a GLUE TSV folder or a FlagPerf data folder.

    npz splits come back tokenized and checked (ids below ``vocab_size`` when given); the others untokenized.
    """
    kind = source_kind(source)
    if kind == "hub":
        return load_hub()
    if kind == "tsv":
        return {s: read_tsv(Path(source) / TSV_FILES[s]) for s in SPLITS}
    folder = npz_folder(Path(source))
    return {s: read_npz(folder / NPZ_FILES[s], vocab_size) for s in SPLITS}


# --- the hub --------------------------------------------------------------------------------------------------


def check_source(source: str | os.PathLike | None) -> str:
    """``source_kind``, and for the hub whether it can be reached: a source checked before any work."""
    kind = source_kind(source)
    if kind == "hub" and not hub.reachable():
        from .modeling import offline_reason

        raise KitError(
            f"data source 'hub' (data_dir, or --source): the Hugging Face hub is out of reach ({offline_reason()}); "
            f"pass a GLUE TSV folder (train.tsv, dev.tsv) or a FlagPerf data folder (dataset/*.npz) instead"
        )
    return kind


def load_hub() -> dict[str, Split]:
    """SST-2 through ``datasets.load_dataset``; fails at once, naming the local options, when offline."""
    check_source("hub")
    import datasets  # imported here: the GPU machines and most runs never need it

    try:
        raw = datasets.load_dataset(HUB_DATASET)
    except Exception as e:  # network and hub errors come in many types; one line is what the user needs
        raise KitError(f"loading {HUB_DATASET} from the hub failed: {str(e).splitlines()[0]}") from e
    return {s: split_from_columns(raw[h], f"{HUB_DATASET}[{h}]") for s, h in HUB_SPLITS.items()}


def split_from_columns(columns, name: str) -> Split:
    """A Split from a mapping of columns (a ``datasets`` split or a dict), validated like a file would be."""
    sentences, labels = list(columns["sentence"]), np.asarray(columns["label"], dtype=np.int64)
    idx = (
        np.asarray(columns["idx"], dtype=np.int64)
        if "idx" in getattr(columns, "column_names", columns)
        else np.arange(len(labels), dtype=np.int64)
    )
    if not len(labels):
        raise KitError(f"{name}: no rows; expected at least one")
    _check_rows(sentences, labels, name, first_row=0)
    return Split(idx=idx, sentence=np.array(sentences, dtype=str), label=labels)


def _check_rows(sentences, labels, name: str, first_row: int, unit: str = "row") -> None:
    """Labels must be 0/1 and sentences non-empty; the error names the first bad row (or file line)."""
    bad = np.flatnonzero(~np.isin(labels, (0, 1)))
    if bad.size:
        raise KitError(f"{name}: {unit} {bad[0] + first_row}: label {labels[bad[0]].item()!r} is not 0 or 1")
    for i, s in enumerate(sentences):
        if not isinstance(s, str):  # a null in a hub or pandas column would train as the text "None" or "nan"
            raise KitError(f"{name}: {unit} {i + first_row}: sentence {s!r} is not text")
        if not s.strip():
            raise KitError(f"{name}: {unit} {i + first_row}: empty sentence")


# --- GLUE TSV -------------------------------------------------------------------------------------------------


def read_tsv(path: Path) -> Split:
    """A GLUE SST-2 TSV: header ``sentence<TAB>label``, no quoting. Rows are numbered as file lines."""
    if not path.is_file():
        raise KitError(f"{path}: file not found; a GLUE TSV folder holds train.tsv and dev.tsv")
    text = read_utf8(path)  # bytes that are not UTF-8: an error naming the line
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or rows[0][:2] != ["sentence", "label"]:
        raise KitError(f"{path}: line 1: header is {rows[0] if rows else 'missing'}, expected 'sentence<TAB>label'")
    body = rows[1:]
    if not body:
        raise KitError(f"{path}: no rows after the header 'sentence<TAB>label'; expected at least one")
    for line, row in enumerate(body, start=2):
        if len(row) < 2:
            raise KitError(f"{path}: line {line}: expected 2 tab-separated fields, found {len(row)}")
    labels = []
    for line, row in enumerate(body, start=2):
        try:
            labels.append(int(row[1]))
        except ValueError:
            raise KitError(f"{path}: line {line}: label {row[1]!r} is not 0 or 1") from None
    sentences = [row[0] for row in body]
    _check_rows(sentences, np.array(labels, dtype=np.int64), str(path), first_row=2, unit="line")
    return Split(
        idx=np.arange(len(body), dtype=np.int64),
        sentence=np.array(sentences, dtype=str),
        label=np.array(labels, dtype=np.int64),
    )


# --- FlagPerf npz ---------------------------------------------------------------------------------------------


def read_npz(path: Path, vocab_size: int | None = None) -> Split:
    """A FlagPerf npz file, checked: keys, shapes, labels in {0, 1}, right padding, ids below ``vocab_size``."""
    if not path.is_file():
        raise KitError(
            f"{path}: file not found; a FlagPerf data folder holds dataset/{NPZ_FILES['train']} "
            f"and dataset/{NPZ_FILES['dev']}"
        )
    if not zipfile.is_zipfile(path):  # np.load would read other bytes as a pickle and blame pickling
        raise KitError(f"{path}: not a readable npz file (not a zip archive as np.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise KitError(f"{path}: missing key(s) {', '.join(missing)}; expected {', '.join(NPZ_KEYS)}")
            arrays = {k: z[k] for k in NPZ_KEYS}
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise KitError(f"{path}: not a readable npz file ({e})") from e
    except KitError:  # the missing-key error above: a ValueError too, already worded
        raise
    except ValueError as e:  # object arrays need pickle, which we never enable for data files
        raise KitError(f"{path}: {str(e).splitlines()[0]}; 'sentence' must be a numpy unicode array") from e
    for key in ("idx", "label", "input_ids", "attention_mask"):  # a cast would silently round or wrap
        if not (np.issubdtype(arrays[key].dtype, np.integer) or arrays[key].dtype == np.bool_):
            raise KitError(f"{path}: {key!r} holds {arrays[key].dtype}; expected integers (FlagPerf writes int64)")
    if len(arrays["idx"]) == 0:
        raise KitError(f"{path}: no rows; expected at least one")
    split = Split(
        **{k: arrays[k] for k in ("idx", "sentence", "label")},
        input_ids=arrays["input_ids"].astype(np.int64, copy=False),
        attention_mask=arrays["attention_mask"].astype(np.int64, copy=False),
    )
    check_encoded(split, str(path), vocab_size)
    return split


def check_encoded(split: Split, name: str, vocab_size: int | None = None) -> None:
    """One-line errors naming ``name`` and the first bad row for any inconsistency in a tokenized split."""
    n = len(split.idx)
    for key in ("sentence", "label"):
        if getattr(split, key).shape != (n,):
            raise KitError(f"{name}: '{key}' has shape {getattr(split, key).shape}, expected ({n},) like 'idx'")
    ids, mask = split.input_ids, split.attention_mask
    if ids.ndim != 2 or ids.shape[0] != n or mask.shape != ids.shape:
        raise KitError(
            f"{name}: 'input_ids' {ids.shape} and 'attention_mask' {mask.shape} must both be "
            f"[{n}, L] (one row per 'idx')"
        )
    _check_rows(split.sentence, split.label, name, first_row=0)
    bad = np.flatnonzero(~np.isin(mask, (0, 1)).all(axis=1))
    if bad.size:
        raise KitError(f"{name}: row {bad[0]}: attention_mask holds values other than 0 and 1")
    lengths = mask.sum(axis=1)
    # Trimming a batch to its longest row is only right when every row is padded on the right.
    right_padded = (mask == (np.arange(mask.shape[1]) < lengths[:, None])).all(axis=1)
    bad = np.flatnonzero(~right_padded | (lengths == 0))
    if bad.size:
        raise KitError(
            f"{name}: row {bad[0]}: attention_mask is not a block of 1s followed by 0s "
            f"(expected right padding and at least one token)"
        )
    if vocab_size is not None:
        outside = (ids >= vocab_size) | (ids < 0)
        bad = np.flatnonzero(outside.any(axis=1))
        if bad.size:
            raise KitError(
                f"{name}: row {bad[0]}: token id {int(ids[bad[0]][outside[bad[0]]][0])} is outside the tokenizer's "
                f"vocabulary of {vocab_size}; was this file made with another tokenizer?"
            )


def check_positions(splits: dict[str, Split], max_positions: int | None, model: str = "the model") -> None:
    """Every row's real tokens fit the model's position embeddings (``max_position_embeddings``); a longer row
    would fail inside the first training step."""
    if max_positions is None:
        return
    for name, split in splits.items():
        lengths = split.lengths
        bad = np.flatnonzero(lengths > max_positions)
        if bad.size:
            raise KitError(
                f"{name} split, row {bad[0]}: {int(lengths[bad[0]])} tokens, more than the {max_positions} "
                f"positions of {model} (max_position_embeddings); preprocess with a smaller max_length"
            )


def write_npz(split: Split, path: Path) -> None:
    """FlagPerf's layout: ``np.savez`` of the five keys, int64 arrays and a numpy unicode ``sentence``."""
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a temporary file's name
        np.savez(
            f,
            idx=split.idx.astype(np.int64),
            sentence=np.asarray(split.sentence, dtype=str),
            label=split.label.astype(np.int64),
            input_ids=split.input_ids.astype(np.int64),
            attention_mask=split.attention_mask.astype(np.int64),
        )
