"""Packed batches compute what padded ones do: per-sentence logits, a step's loss and gradients, whole runs and
their evaluations, for DistilBERT, BERT and the real pretrained MiniLM (dropout off: packing only moves where
dropout's random numbers fall)."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from distil_kit import RunConfig, finetune
from distil_kit.batching import PackCollate, SplitDataset, TrimCollate, tensors
from distil_kit.data import load_sst2
from distil_kit.errors import KitError
from distil_kit.packing import PackedClassifier, bins, pack_width
from distil_kit.preprocess import tokenize
from distil_kit.resolve import resolve_config, resolve_packing

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dev(sst2_dir, minilm_dir):
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    return tokenize(load_sst2(sst2_dir)["dev"], tokenizer, padding="longest")


@pytest.fixture(scope="module")
def still_bert(tmp_path_factory, tiny_model):
    """A tiny random BERT classifier without dropout, on the same vocabulary."""
    config = BertConfig(
        vocab_size=AutoTokenizer.from_pretrained(tiny_model).vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("still-bert")
    BertForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


def _batches(split, rows, width, fixed=False):
    """The rows trimmed and packed; ``fixed``: packed to a run's fixed shape (3 empty rows, 5 filler sentences)."""
    items = [SplitDataset(split)[i] for i in rows]
    packed = PackCollate(width)(items)
    if fixed:
        packed = PackCollate(width, packed.input_ids.shape[0] + 3, len(items) + 5)(items)
    return TrimCollate()(items), packed


def _logits(model, batch, packed):
    inputs = {k: t for k, t in tensors(batch).items() if k not in ("labels", "weight")}
    return (PackedClassifier(model) if packed else model)(**inputs).logits


def test_first_fit_decreasing_keeps_every_sentence_whole_and_once():
    lengths = np.random.default_rng(0).integers(3, 67, size=500)
    rows = bins(lengths, 72)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[row]) <= 72 for row in rows)
    assert len(rows) <= 1.15 * lengths.sum() / 72  # near the fewest rows whole sentences allow
    assert pack_width(66) == 72 and pack_width(64) == 64


def test_a_packed_batch_lays_sentences_end_to_end(dev):
    padded, packed = _batches(dev, range(40), 72)
    assert packed.input_ids.shape[1] == 72 and packed.n_tokens == padded.n_tokens
    flat_ids, flat_pos = packed.input_ids.flatten(), packed.position_ids.flatten()
    for s in range(40):
        n = int(padded.attention_mask[s].sum())
        at = int(packed.starts[s])
        assert torch.equal(flat_ids[at : at + n], padded.input_ids[s, :n])  # the sentence, whole, [CLS] first
        assert torch.equal(flat_pos[at : at + n], torch.arange(n))
        assert len(set(packed.attention_mask.flatten()[at : at + n].tolist())) == 1  # one segment
    assert torch.equal(packed.labels, padded.labels) and torch.equal(packed.idx, padded.idx)


@pytest.mark.parametrize("family", ["distilbert", "bert"])
def test_packed_logits_are_the_padded_logits(family, dev, still_model, still_bert):
    model = AutoModelForSequenceClassification.from_pretrained(still_model if family == "distilbert" else still_bert)
    model.eval()
    padded, packed = _batches(dev, range(100, 164), 72)
    with torch.no_grad():
        want, got = _logits(model, padded, False), _logits(model, packed, True)
    assert packed.input_ids.numel() < 0.5 * padded.input_ids.numel()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got16 = _logits(model, packed, True)
    torch.testing.assert_close(got16.float(), want, rtol=0, atol=3e-2)  # bf16: 8 bits of mantissa


def test_packed_logits_of_the_real_pretrained_minilm(dev, minilm_dir):
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2)
    model.eval()
    padded, packed = _batches(dev, range(0, 872, 7), 72)
    with torch.no_grad():
        torch.testing.assert_close(_logits(model, packed, True), _logits(model, padded, False), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fixed", [False, True], ids=["packed", "packed-to-a-fixed-shape"])
@pytest.mark.parametrize("family", ["distilbert", "bert"])
def test_a_packed_step_has_the_padded_steps_loss_and_gradients(family, fixed, dev, still_model, still_bert):
    from distil_kit.step import batch_loss, nullcontext

    model = AutoModelForSequenceClassification.from_pretrained(still_model if family == "distilbert" else still_bert)
    model.train()  # dropout 0: training mode computes what eval mode does
    padded, packed = _batches(dev, range(200, 232), 72, fixed)
    grads, losses = [], []
    for batch, scored in ((padded, model), (packed, PackedClassifier(model))):
        model.zero_grad()
        loss = batch_loss(scored, nullcontext, **tensors(batch))
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_packed_run_trains_and_scores_as_the_padded_run(still_model, sst2_dir, tmp_path):
    """Whole runs, dropout off: the same rows per step (200 rows: a short last micro-batch and step), the same
    losses, learning rates and dev predictions; packing computes far fewer tokens."""
    common = dict(
        model=str(still_model),
        data_dir=str(sst2_dir),
        epochs=1,
        max_train_samples=200,
        train_batch_size=32,
        gradient_accumulation_steps=2,
        log_every=1,
        target_acc=None,
        save_model=False,
        device="cpu",
        fast=True,
        precision="fp32",
    )
    padded = finetune(RunConfig.from_dict({**common, "output_dir": str(tmp_path / "padded"), "packing": False}))
    packed = finetune(RunConfig.from_dict({**common, "output_dir": str(tmp_path / "packed"), "packing": True}))
    assert packed.config["packing"] and not packed.config["bucket_batches"]
    # on a CPU the packed step is one micro-batch, the padded one its rows sorted into micro-batches of 32
    assert (packed.config["micro_batch_size"], padded.config["micro_batch_size"]) == (64, 32)
    assert packed.steps.lr.tolist() == padded.steps.lr.tolist()
    assert packed.steps.loss.tolist() == pytest.approx(padded.steps.loss.tolist(), rel=1e-5)
    assert packed.predictions.pred.tolist() == padded.predictions.pred.tolist()
    assert packed.predictions.prob_pos.to_numpy() == pytest.approx(padded.predictions.prob_pos.to_numpy(), abs=1e-5)
    s, p = packed.summary, padded.summary
    assert s["train_samples"] == p["train_samples"] == 200 and s["train_tokens"] == p["train_tokens"]
    assert s["packing_efficiency"] > 0.85 > p["packing_efficiency"]


@pytest.fixture(scope="module")
def roberta(tmp_path_factory, tiny_model):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    folder = tmp_path_factory.mktemp("roberta")
    config = RobertaConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_labels=2)
    RobertaForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


def test_packing_is_the_fast_default_for_the_families_it_knows(tiny_model, still_bert, roberta):
    said = []
    for model, fast, packing, packed in [
        (tiny_model, True, None, True),  # DistilBERT
        (still_bert, True, None, True),
        (roberta, True, None, False),
        (tiny_model, False, None, False),  # the plain path pads
        (tiny_model, True, False, False),
        (tiny_model, False, True, True),
    ]:
        cfg = RunConfig.from_dict({"fast": fast, "packing": packing})
        assert resolve_packing(cfg, str(model), said.append) is packed, (model, fast, packing)
    known = "packing knows distilbert and bert"
    assert said == [f"packing: off ({roberta} is a roberta model; {known}): it trains padded"]
    # on a CPU the default packed step is one micro-batch; padded (another family) its micro-batches of 32
    step = {"fast": True, "gradient_accumulation_steps": 2, "output_dir": "unused"}

    def micro(model, **extra):
        cfg = RunConfig.from_dict({**step, "model": str(model), **extra})
        return resolve_config(cfg, torch.device("cpu"), say=said.append).micro_batch_size

    assert micro(tiny_model) == micro(still_bert) == 64 and micro(roberta) == 32
    assert micro(tiny_model, micro_batch_size=16) == 16 and micro(tiny_model, fast=False, packing=True) == 32


def test_packing_refuses_a_model_family_it_does_not_know(tmp_path, roberta, sst2_dir, capsys):
    cfg = dict(model=str(roberta), data_dir=str(sst2_dir), device="cpu", max_train_samples=64, save_model=False)
    with pytest.raises(
        KitError, match=r"^parameter 'packing'=true: packs distilbert and bert models; .* is a roberta"
    ):
        finetune(RunConfig.from_dict({**cfg, "output_dir": str(tmp_path / "asked"), "packing": True}))
    run = finetune(RunConfig.from_dict({**cfg, "output_dir": str(tmp_path / "default"), "fast": True}))
    assert run.config["packing"] is False and run.config["bucket_batches"] and run.summary["packing_efficiency"] < 0.9
    assert "packing: off (" in capsys.readouterr().out
