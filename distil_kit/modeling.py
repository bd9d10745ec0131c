"""Tokenizer and model loading from a hub id or a local folder, with one-line errors for unusable folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import KitError

DEFAULT_MODEL = "distilbert-base-uncased"
WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else (absolute, relative, deeper) is meant as a folder.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or Path(name).exists()


def _local_folder(name: str, what: str) -> Path | None:
    """The folder ``name`` names, or None for a hub id; an error when a path does not exist."""
    name = str(name)
    if not _looks_like_path(name):
        return None
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise KitError(f"{what} folder {folder} does not exist")
    return folder


def _from_hub_error(name: str, what: str, e: Exception) -> KitError:
    return KitError(
        f"{what} {name!r} is not a local folder and could not be loaded from the hub "
        f"({str(e).splitlines()[0][:160]}); pass a local folder instead"
    )


def load_tokenizer(name: str):
    """``AutoTokenizer.from_pretrained`` on a hub id or a folder."""
    from transformers import AutoTokenizer

    folder = _local_folder(name, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(str(folder or name))
    except (OSError, ValueError) as e:
        if folder is not None:
            raise KitError(
                f"tokenizer folder {folder} holds no usable tokenizer files "
                f"(vocab.txt or tokenizer.json): {str(e).splitlines()[0][:160]}"
            ) from e
        raise _from_hub_error(name, "tokenizer", e) from e


def check_model_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise KitError(f"model folder {folder} has no config.json")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise KitError(f"model folder {folder} has no weights (expected one of {', '.join(WEIGHT_FILES[:2])})")


def model_folder(name: str) -> Path | None:
    """The checked local folder of ``name``, or None for a hub id."""
    folder = _local_folder(name, "model")
    if folder is not None:
        check_model_folder(folder)
    return folder


def load_classifier(name: str, num_labels: int = 2):
    """``AutoModelForSequenceClassification`` with a fresh 2-label head on a hub id or a checked folder."""
    import torch
    from transformers import AutoModelForSequenceClassification

    folder = model_folder(name)
    try:  # fp32 master weights whatever the file holds (transformers 5 would keep an fp16 file's dtype)
        return AutoModelForSequenceClassification.from_pretrained(
            str(folder or name), num_labels=num_labels, dtype=torch.float32
        )
    except (OSError, ValueError) as e:
        if folder is not None:
            raise KitError(f"model folder {folder} could not be loaded: {str(e).splitlines()[0][:160]}") from e
        raise _from_hub_error(name, "model", e) from e


def vocab_sha256(tokenizer) -> str:
    """sha256 of the vocabulary, one token a line in id order: for BERT tokenizers, the sha256 of vocab.txt."""
    vocab = tokenizer.get_vocab()
    text = "".join(tok + "\n" for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1]))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(name: str) -> dict[str, str]:
    """sha256 of each weight file of a local model folder; for a hub id, of its cached snapshot if any."""
    folder = _local_folder(name, "model")
    if folder is None:
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(name, local_files_only=True))
        except Exception:  # not cached: nothing on disk to hash
            return {}
    return {f: file_sha256(folder / f) for f in WEIGHT_FILES if (folder / f).is_file()}


def save_random_distilbert(folder, tokenizer: str, tiny: bool = True) -> Path:
    """A random-initialized DistilBERT classifier (tiny, or the real base architecture) saved with ``tokenizer``.

    For tests and throughput measurements: throughput does not depend on the weights; accuracy does, so a model
    made here is never reported as DistilBERT's accuracy.
    """
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    tok = load_tokenizer(tokenizer)
    size = dict(dim=32, hidden_dim=64, n_layers=2, n_heads=2) if tiny else {}
    config = DistilBertConfig(vocab_size=len(tok), num_labels=2, **size)
    torch.manual_seed(0)
    model = DistilBertForSequenceClassification(config)
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
