"""Tokenizer and model loading from a hub id or a local folder, with one-line errors for unusable folders.

A hub id is loaded from the hub when it can be reached (``hub.reachable``, asked once, quickly), else from the local
cache only: offline, a hub id that is not cached fails at once, naming the parameter and the local alternatives,
instead of waiting for the hub client's retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
from pathlib import Path

from . import hub
from .errors import KitError

DEFAULT_MODEL = "distilbert-base-uncased"
ID2LABEL = {0: "negative", 1: "positive"}  # SST-2's (GLUE's) labels: 0 is negative
WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else (absolute, relative, deeper) is meant as a folder.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or Path(name).exists()


def _local_folder(name: str, what: str) -> Path | None:
    """The folder ``name`` names, or None for a hub id; an error when a path does not exist."""
    name = str(name)
    if not looks_like_path(name):
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


# How errors name a hub id's parameter, and what to pass instead of it.
MODEL_PARAMETER = "parameter 'model'={name}"
LOCAL_MODEL = (
    "set model to a local folder saved with save_pretrained (config, weights, tokenizer files), or data_dir to a "
    "FlagPerf data folder holding model/ (README: Offline)"
)
MIN_VOCAB = 1000  # no real tokenizer has fewer tokens: a folder without tokenizer files yields the 5 specials
LOCAL_TOKENIZER = "pass a local folder holding the tokenizer files (vocab.txt or tokenizer.json), e.g. a model folder"


def offline_reason() -> str:
    """Why ``hub.reachable()`` said no, in a few words."""
    offline = [v for v in hub.OFFLINE_VARIABLES if os.environ.get(v, "0") not in ("0", "")]
    return f"{offline[0]} is set" if offline else "no network"


def _offline_error(name: str, parameter: str, local: str) -> KitError:
    return KitError(
        f"{parameter.format(name=repr(name))} is a hub id, but the Hugging Face hub is out of reach "
        f"({offline_reason()}) and the local cache has no copy of it; {local}"
    )


def _cached(name: str) -> bool:
    """Whether the local hub cache holds ``name``'s config (no network asked)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def _hub_kwargs(name: str, parameter: str, local: str) -> dict:
    """``from_pretrained`` keywords for a hub id: none when the hub can be reached (the client as usual), else the
    local cache only; nothing cached and no hub is an error at once."""
    if hub.reachable():
        return {}
    if not _cached(name):
        raise _offline_error(name, parameter, local)
    return {"local_files_only": True}


def load_tokenizer(name: str, parameter: str = "tokenizer {name} (--tokenizer)"):
    """``AutoTokenizer.from_pretrained`` on a hub id or a folder; ``parameter`` names ``name`` in errors."""
    from transformers import AutoTokenizer

    folder = _local_folder(name, "tokenizer")
    kwargs = {} if folder is not None else _hub_kwargs(str(name), parameter, LOCAL_TOKENIZER)
    try:
        tok = AutoTokenizer.from_pretrained(str(folder or name), **kwargs)
    except (OSError, ValueError) as e:
        if folder is not None:
            raise KitError(
                f"tokenizer folder {folder} holds no usable tokenizer files "
                f"(vocab.txt or tokenizer.json): {str(e).splitlines()[0][:160]}"
            ) from e
        raise _from_hub_error(name, "tokenizer", e) from e
    check_vocabulary(tok, folder or name)
    return tok


def check_vocabulary(tok, where) -> None:
    """A real vocabulary (at least ``MIN_VOCAB`` tokens) that, in a model folder, fits the model's embeddings."""
    if len(tok) < MIN_VOCAB:
        raise KitError(
            f"tokenizer folder {where}: a vocabulary of {len(tok)} tokens; expected at least {MIN_VOCAB} "
            f"(does the folder hold the tokenizer files, vocab.txt or tokenizer.json?)"
        )
    config = Path(where) / "config.json"
    if config.is_file():
        size = read_model_config(Path(where)).get("vocab_size")
        if isinstance(size, int) and len(tok) > size:
            raise KitError(
                f"{config}: the tokenizer of {len(tok)} tokens does not fit the model's {size} embeddings "
                f"(vocab_size); expected a tokenizer made for this model"
            )


def read_model_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_bytes())
    except (ValueError, OSError) as e:
        raise KitError(f"{path}: not a readable JSON file ({str(e).splitlines()[0][:160]})") from e
    if not isinstance(config, dict):
        raise KitError(f"{path}: expected a JSON object, found {type(config).__name__}")
    return config


def _hub_config_folder(name: str) -> Path:
    """The folder of a hub id's config.json: the hub cache's snapshot (only config.json is fetched, when online)."""
    from huggingface_hub import hf_hub_download

    kwargs = _hub_kwargs(name, MODEL_PARAMETER, LOCAL_MODEL)
    try:
        return Path(hf_hub_download(name, "config.json", **kwargs)).parent
    except Exception as e:  # the hub client's errors: not found, gated, network
        raise _from_hub_error(name, "model", e) from e


def max_positions(name: str) -> int | None:
    """The model's ``max_position_embeddings`` (None for a config without one)."""
    value = _config_of(name).get("max_position_embeddings")
    return value if isinstance(value, int) else None


def model_type(name: str) -> str | None:
    """The model's ``model_type`` (distilbert, bert, ...), read from its config before its weights load."""
    return _config_of(name).get("model_type")


def _config_of(name: str) -> dict:
    return read_model_config(_local_folder(str(name), "model") or _hub_config_folder(str(name)))


def check_model_config(folder: Path) -> None:
    """The model is an encoder with (or for) a 2-label sequence-classification head."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    path, config = folder / "config.json", read_model_config(folder)
    kind = config.get("model_type")
    if kind not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise KitError(
            f"{path}: model_type {kind!r} has no sequence classifier in transformers; expected an encoder "
            f"such as distilbert or bert"
        )
    if kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise KitError(
            f"{path}: model_type {kind!r} is a decoder (causal language model); expected an encoder such as "
            f"distilbert or bert"
        )
    for key, labels in (("id2label", config.get("id2label")), ("num_labels", config.get("num_labels"))):
        count = len(labels) if isinstance(labels, dict) else labels
        if count is not None and count != 2:
            raise KitError(
                f"{path}: {count} labels ({key}); expected 2 (SST-2 is binary): use a base model or a "
                f"2-label classifier"
            )


def check_safetensors(path: Path) -> None:
    """A safetensors file as long as its header says: a truncated copy fails here, not deep in loading."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                raise ValueError(f"header of {length} bytes in a file of {size}")
            header = json.loads(f.read(length))
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    except (struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise KitError(f"{path}: truncated or corrupt ({e}); expected a safetensors file") from None
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        raise KitError(f"{path}: truncated or corrupt ({size} bytes); expected {expected} bytes as its header says")


def check_model_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise KitError(f"model folder {folder} has no config.json")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise KitError(f"model folder {folder} has no weights (expected one of {', '.join(WEIGHT_FILES[:2])})")
    check_model_config(folder)
    if (folder / "model.safetensors").is_file():
        check_safetensors(folder / "model.safetensors")


def model_folder(name: str) -> Path | None:
    """The checked local folder of ``name``, or None for a hub id (its config checked; offline it must be in the
    local cache)."""
    folder = _local_folder(name, "model")
    if folder is not None:
        check_model_folder(folder)
    else:  # the same checks on the hub id's config, before its weights are fetched
        check_model_config(_hub_config_folder(str(name)))
    return folder


class _DropLoadReport(logging.Filter):
    """transformers' LOAD REPORT table, when it only lists missing or unexpected keys (``load_classifier`` says what
    matters in one line); a report of mismatched shapes or conversion errors explains the error after it: kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return "LOAD REPORT" not in message or "MISMATCH" in message or "CONVERSION" in message


@contextlib.contextmanager
def _quiet_weight_loading():
    """No weight-loading progress bar and no LOAD REPORT table from transformers; its other warnings, and the hub's
    download bars, stay."""
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    logger = hf_logging.get_logger("transformers.modeling_utils")
    bars, hub_bars = hf_logging.is_progress_bar_enabled(), not hub_utils.are_progress_bars_disabled()
    drop = _DropLoadReport()
    hf_logging.disable_progress_bar()  # transformers' own bars ("Loading weights"); it turns the hub's off too
    if hub_bars:
        hub_utils.enable_progress_bars()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
        if bars:
            hf_logging.enable_progress_bar()


def _loading_note(name: str, model, missing: set[str]) -> str | None:
    """One line on the weights the checkpoint lacked: a new head is expected, a missing encoder weight is not."""
    prefix = f"{model.base_model_prefix}."
    encoder = sorted(k for k in missing if k.startswith(prefix))
    if encoder:
        return (
            f"warning: model {name}: {len(encoder)} encoder weight(s) missing from the checkpoint and initialised at "
            f"random (first: {encoder[0]}); is this the model you meant?"
        )
    heads = sorted({k.rsplit(".", 1)[0] for k in missing})
    return f"classifier head initialised anew ({', '.join(heads)}): expected when fine-tuning" if heads else None


def load_classifier(name: str):
    """``AutoModelForSequenceClassification`` with a fresh 2-label head on a hub id or a checked folder, its labels
    named as SST-2's (``ID2LABEL``): the saved model then speaks SST-2 (a pipeline says "positive", not "LABEL_1").

    Instead of transformers' progress bar and loading table, one line when the checkpoint lacked weights (the
    classifier head of a pretrained encoder: expected); rank 0 only under torchrun."""
    import torch
    from transformers import AutoModelForSequenceClassification

    folder = model_folder(name)
    kwargs = {} if folder is not None else _hub_kwargs(str(name), MODEL_PARAMETER, LOCAL_MODEL)
    labels = {"id2label": ID2LABEL, "label2id": {label: i for i, label in ID2LABEL.items()}}
    try:  # fp32 master weights whatever the file holds (transformers 5 would keep an fp16 file's dtype)
        with _quiet_weight_loading():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                str(folder or name), dtype=torch.float32, output_loading_info=True, **labels, **kwargs
            )
    except (OSError, ValueError) as e:
        if folder is not None:
            raise KitError(f"model folder {folder} could not be loaded: {str(e).splitlines()[0][:160]}") from e
        raise _from_hub_error(name, "model", e) from e
    note = _loading_note(str(name), model, set(info["missing_keys"]))
    if note and os.environ.get("RANK", "0") == "0":
        print(note)
    return model


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
