"""Data pipeline: every SST-2 source, both paddings, FlagPerf npz compatibility, trimming, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distil_kit import KitError, data, hub
from distil_kit.batching import EpochBatches, SplitDataset, TrimCollate
from distil_kit.modeling import file_sha256, load_tokenizer, vocab_sha256
from distil_kit.preprocess import preprocess, read_metadata, tokenize

BERT_UNCASED_VOCAB_MD5 = "64800d5d8528ce344256daf115d4965e"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return load_tokenizer(str(minilm_dir))


@pytest.fixture(scope="module")
def small_tsv(tmp_path_factory, sst2_dir):
    """The first 300 train and 100 dev rows of the real SST-2, as a GLUE TSV folder."""
    folder = tmp_path_factory.mktemp("tsv")
    for name, rows in (("train.tsv", 300), ("dev.tsv", 100)):
        lines = (sst2_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)[: rows + 1]
        (folder / name).write_text("".join(lines), encoding="utf-8")
    return folder


def test_real_tsv_row_counts_and_labels(sst2_dir):
    splits = data.load_sst2(sst2_dir)
    assert len(splits["train"]) == 67_349 and len(splits["dev"]) == 872
    assert splits["dev"].label.sum() == 444  # the dev majority baseline is 444/872 = 0.509
    assert splits["train"].sentence.dtype.kind == "U"
    assert any("'" in s for s in splits["train"].sentence)  # quotes are text, never quoting (QUOTE_NONE)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
def test_tsv_text_is_read_as_written(tmp_path, newline):
    """GLUE TSVs have no quoting (a '"' is text), columns after sentence and label are ignored, and a file saved
    with Windows (CRLF) or old Mac (CR) line endings reads like one with LF."""
    lines = ["sentence\tlabel\tsource", '"great" , he said \t1\tweb', "dull \t0\tweb"]
    (tmp_path / "train.tsv").write_bytes("".join(line + newline for line in lines).encode())
    split = data.read_tsv(tmp_path / "train.tsv")
    assert split.sentence.tolist() == ['"great" , he said ', "dull "]
    assert split.label.tolist() == [1, 0] and split.idx.tolist() == [0, 1]


@pytest.mark.parametrize("kind", ["dict", "datasets.Dataset"])
def test_columns_become_a_checked_split(kind):
    """A mapping of columns (what the hub's splits are) keeps its own idx, or numbers its rows from 0 without one;
    any integer type comes back int64; a bad row is named by the given name and its row number (from 0)."""
    import datasets

    make = (lambda c: c) if kind == "dict" else datasets.Dataset.from_dict
    columns = {
        "idx": np.array([7, 3], dtype=np.int32),
        "sentence": ["good ", "bad "],
        "label": np.array([1, 0], dtype=np.int32),
    }
    split = data.split_from_columns(make(columns), "x")
    assert split.idx.tolist() == [7, 3] and split.sentence.tolist() == ["good ", "bad "]
    assert split.idx.dtype == split.label.dtype == np.int64
    numbered = data.split_from_columns(make({k: v for k, v in columns.items() if k != "idx"}), "x")
    assert numbered.idx.tolist() == [0, 1] and numbered.idx.dtype == np.int64
    with pytest.raises(KitError, match=r"^sst2\[train\]: row 1: label 2 is not 0 or 1$"):
        data.split_from_columns(make({**columns, "label": np.array([1, 2])}), "sst2[train]")
    with pytest.raises(KitError, match=r"^sst2\[train\]: row 1: sentence None is not text$"):  # a null
        data.split_from_columns(make({**columns, "sentence": ["good ", None]}), "sst2[train]")
    with pytest.raises(KitError, match=r"^sst2\[train\]: no rows; expected at least one$"):
        data.split_from_columns({"sentence": [], "label": []}, "sst2[train]")


def test_rows_must_fit_the_models_positions():
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]])  # rows of 3 and 4 real tokens
    split = data.Split(np.arange(2), np.array(["a ", "b "]), np.array([0, 1]), mask * 7, mask)
    data.check_positions({"train": split}, 4)  # 4 tokens fit 4 positions
    data.check_positions({"train": split}, None)  # a model without max_position_embeddings: nothing to check
    with pytest.raises(KitError) as error:
        data.check_positions({"dev": split.head(1), "train": split}, 3)
    assert str(error.value) == (
        "train split, row 1: 4 tokens, more than the 3 positions of the model (max_position_embeddings); "
        "preprocess with a smaller max_length"
    )


def test_minilm_vocab_is_bert_base_uncased(minilm_dir):
    import hashlib

    assert hashlib.md5((minilm_dir / "vocab.txt").read_bytes()).hexdigest() == BERT_UNCASED_VOCAB_MD5


def test_preprocess_longest_matches_tokenizer(small_tsv, minilm_dir, tokenizer, tmp_path):
    result = preprocess(small_tsv, str(minilm_dir), tmp_path)
    train = data.read_npz(tmp_path / "dataset" / "train_dataset.npz", vocab_size=len(tokenizer))
    assert train.input_ids.shape == (300, int(train.lengths.max()))
    # Written ids are exactly the tokenizer's own output on the same sentences, row by row.
    for i in (0, 7, 299):
        ids = tokenizer(str(train.sentence[i]))["input_ids"]
        assert train.input_ids[i, : len(ids)].tolist() == ids
        assert train.attention_mask[i].sum() == len(ids)
    meta = read_metadata(tmp_path / "dataset")
    assert meta["splits"]["train"]["rows"] == 300 and meta["splits"]["dev"]["rows"] == 100
    assert meta["splits"]["dev"]["sha256"] == file_sha256(result.files["dev"])
    assert meta["vocab_sha256"] == vocab_sha256(tokenizer)
    # np.load without allow_pickle must work (FlagPerf's users load it that way) and dtypes match the schema.
    with np.load(result.files["train"]) as z:
        assert {k: z[k].dtype.kind for k in data.NPZ_KEYS} == {
            "idx": "i",
            "sentence": "U",
            "label": "i",
            "input_ids": "i",
            "attention_mask": "i",
        }
        assert z["input_ids"].dtype == np.int64


def test_preprocess_max_length_is_flagperf_width(small_tsv, minilm_dir, tmp_path):
    result = preprocess(small_tsv, str(minilm_dir), tmp_path, padding="max_length")
    assert result.splits["train"].input_ids.shape == (300, 512)
    assert result.splits["dev"].attention_mask.shape == (100, 512)


def _flagperf_style_folder(folder, splits, tokenizer):
    """A FlagPerf data folder made the way FlagPerf does: `datasets` + tokenizer(max_length) + np.savez."""
    import datasets

    (folder / "dataset").mkdir(parents=True)
    for name, split in splits.items():
        ds = datasets.Dataset.from_dict(
            {"sentence": list(split.sentence), "label": split.label.tolist(), "idx": split.idx.tolist()}
        )
        ds = ds.map(lambda b: tokenizer(b["sentence"], padding="max_length", truncation=True), batched=True)
        ds = ds.with_format("numpy")
        np.savez(
            folder / "dataset" / data.NPZ_FILES[name],
            idx=ds["idx"],
            sentence=ds["sentence"],
            label=ds["label"],
            input_ids=ds["input_ids"],
            attention_mask=ds["attention_mask"],
        )
    return folder


def test_flagperf_folder_loads_and_batches_without_conversion(small_tsv, tokenizer, tmp_path):
    raw = data.load_sst2(small_tsv)
    folder = _flagperf_style_folder(tmp_path / "flagperf", raw, tokenizer)
    assert data.source_kind(folder) == "npz"
    splits = data.load_sst2(folder, vocab_size=len(tokenizer))
    assert splits["train"].input_ids.shape == (300, 512)
    ours = tokenize(raw["train"], tokenizer, padding="max_length")
    assert np.array_equal(splits["train"].input_ids, ours.input_ids)  # our max_length rows == FlagPerf's
    batch = TrimCollate()([SplitDataset(splits["train"])[i] for i in range(32)])
    assert batch.input_ids.shape == (32, int(splits["train"].lengths[:32].max()))


def test_trim_collate_cuts_to_longest_real_row(small_tsv, tokenizer):
    split = tokenize(data.load_sst2(small_tsv)["train"], tokenizer, padding="max_length")
    rows = [SplitDataset(split)[i] for i in (3, 4, 5)]
    longest = int(split.lengths[[3, 4, 5]].max())
    batch = TrimCollate()(rows)
    assert batch.input_ids.shape == (3, longest)
    assert batch.n_tokens == int(split.lengths[[3, 4, 5]].sum())
    assert torch.equal(batch.attention_mask.sum(1), torch.as_tensor(split.lengths[[3, 4, 5]]))
    assert TrimCollate(8)(rows).input_ids.shape[1] == -(-longest // 8) * 8


@pytest.mark.parametrize("bucketed", [False, True])
def test_epoch_batches_cover_every_row_once_in_seeded_order(bucketed):
    lengths = np.random.default_rng(0).integers(2, 60, size=1000)
    sampler = EpochBatches(lengths, 32, seed=0, accumulation=4, bucketed=bucketed)
    first = [r for b in sampler for r, _ in b]
    assert sorted(first) == list(range(1000)) and len(list(sampler)) == len(sampler) == 32
    assert first == [r for b in sampler for r, _ in b]  # same seed and epoch: same order
    sampler.set_epoch(1)
    assert first != [r for b in sampler for r, _ in b]


def test_bucketing_sorts_within_steps_and_keeps_every_steps_rows():
    """Bucketing must cut the micro-batches' padding without changing which rows train together in a step, nor
    the rows' weights (their share of the step: the last step is short): its gradients are the random order's."""
    lengths = np.random.default_rng(0).integers(2, 60, size=1000)
    plain, bucketed = (EpochBatches(lengths, 32, seed=0, accumulation=8, bucketed=b) for b in (False, True))

    def steps(sampler):
        batches = list(sampler)
        return [sorted(key for batch in batches[i : i + 8] for key in batch) for i in range(0, len(batches), 8)]

    assert steps(bucketed) == steps(plain)
    assert {w for step in steps(plain) for _, w in step} == {1 / 256, 1 / (1000 - 3 * 256)}
    width = lambda s: np.mean([lengths[[r for r, _ in b]].max() for b in s])  # noqa: E731
    assert width(bucketed) < 0.8 * width(plain)


def test_hub_source_through_datasets(monkeypatch):
    import datasets

    fake = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"idx": [0, 1], "sentence": ["good ", "bad "], "label": [1, 0]}),
            "validation": datasets.Dataset.from_dict({"idx": [0], "sentence": ["fine "], "label": [1]}),
        }
    )
    monkeypatch.setattr(hub, "reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", lambda name: fake if name == data.HUB_DATASET else None)
    splits = data.load_sst2("hub")
    assert list(splits["train"].sentence) == ["good ", "bad "] and splits["dev"].label.tolist() == [1]


def test_hub_offline_fails_at_once_naming_local_options(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(KitError, match=r"data source 'hub' \(data_dir, or --source\): .*HF_HUB_OFFLINE is set"):
        data.load_sst2("")
    with pytest.raises(KitError, match="GLUE TSV folder .* FlagPerf data folder"):
        data.load_sst2("")


def test_cli_preprocess_downloads_sst2_from_the_hub_once(monkeypatch, minilm_dir, tmp_path, capsys):
    """README step 1 without DISTIL_KIT_SST2: the hub's SST-2 into a local npz folder the runs then read."""
    import datasets

    from distil_kit import cli

    def rows(n):
        return {
            "idx": list(range(n)),
            "sentence": [f"a fine film {i} " for i in range(n)],
            "label": [1, 0] * (n // 2),
        }

    fake = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows(6)), "validation": datasets.Dataset.from_dict(rows(4))}
    )
    asked = []
    monkeypatch.setattr(hub, "reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", lambda name: asked.append(name) or fake)
    out = tmp_path / "data" / "sst2"
    assert cli.main(["preprocess", "--source", "hub", "--tokenizer", str(minilm_dir), "--out", str(out)]) == 0
    assert asked == [data.HUB_DATASET]
    meta = read_metadata(out / "dataset")
    assert meta["source"] == data.HUB_DATASET and meta["splits"]["train"]["rows"] == 6
    monkeypatch.setattr(hub, "reachable", lambda: False)  # the runs read the folder: no hub needed any more
    splits = data.load_sst2(out, vocab_size=30522)
    assert len(splits["train"]) == 6 and len(splits["dev"]) == 4 and splits["train"].input_ids is not None
    assert str(out / "dataset" / "train_dataset.npz") in capsys.readouterr().out


# --- offline: every hub source fails at once, in one line ---------------------------------------------------

# Runs the CLI in a fresh process: imports first (not the failure being timed), then the command, timed.
# "no-network" gives every client what a machine without network gives it: no name resolves (socket.getaddrinfo
# is what huggingface_hub's HTTP client and hub.reachable both call), with HF_HUB_OFFLINE unset.
OFFLINE_HARNESS = """
import json, socket, sys, time
mode, warm, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
if mode == "no-network":
    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    socket.getaddrinfo = no_network
import datasets, transformers  # noqa
from distil_kit import cli, engine, modeling, preprocess  # noqa
if warm:  # a local tokenizer the command loads before it meets the hub source: its first load is imports
    modeling.load_tokenizer(warm)
started = time.perf_counter()
code = cli.main(argv)
print(json.dumps({"code": code, "seconds": time.perf_counter() - started}))
"""

HUB_SOURCES = {  # name: (command, whether it loads a local tokenizer first, pieces of its one line)
    "model": (
        "finetune --set model=distilbert-base-uncased --set data_dir={sst2} --set output_dir={out}/run",
        False,
        ["error: parameter 'model'='distilbert-base-uncased' is a hub id", "set model to a local folder", "data_dir"],
    ),
    "tokenizer": (
        "preprocess --source {sst2} --tokenizer distilbert-base-uncased --out {out}/pre",
        False,
        ["error: tokenizer 'distilbert-base-uncased' (--tokenizer) is a hub id", "pass a local folder"],
    ),
    "data (preprocess)": (
        "preprocess --source hub --tokenizer {minilm} --out {out}/pre",
        False,
        ["error: data source 'hub' (data_dir, or --source)", "GLUE TSV folder", "FlagPerf data folder"],
    ),
    "data (finetune)": (
        "finetune --set model={minilm} --set output_dir={out}/run",
        True,
        ["error: data source 'hub' (data_dir, or --source)", "GLUE TSV folder"],
    ),
}


OFFLINE_CASES = [  # a fresh process each (about 6 s): the model source in the quick suite, the rest slow
    pytest.param(source, mode, marks=() if source == "model" else pytest.mark.slow, id=f"{source}, {mode}")
    for source in HUB_SOURCES
    for mode in ("HF_HUB_OFFLINE=1", "no-network")
]


@pytest.mark.parametrize("source, mode", OFFLINE_CASES)
def test_offline_hub_source_fails_within_3_s_in_one_line(source, mode, sst2_dir, minilm_dir, tmp_path):
    command, warm, pieces = HUB_SOURCES[source]
    env = {k: v for k, v in os.environ.items() if k not in hub.OFFLINE_VARIABLES}
    env |= {"HF_HOME": str(tmp_path / "hf-home"), "PYTHONPATH": str(ROOT)}  # an empty hub cache; this checkout
    if mode == "HF_HUB_OFFLINE=1":
        env["HF_HUB_OFFLINE"] = "1"
    out = tmp_path / "out"
    out.mkdir()
    argv = command.format(out=out, sst2=sst2_dir, minilm=minilm_dir).split()
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_HARNESS, mode, str(minilm_dir) if warm else "", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{source}, {mode}: {result['seconds']:.2f} s: {proc.stderr.strip()}")
    assert result["code"] == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "Retry" not in proc.stdout + proc.stderr, proc.stderr[-2000:]
    for piece in pieces:
        assert piece in proc.stderr
    assert ("HF_HUB_OFFLINE is set" if mode == "HF_HUB_OFFLINE=1" else "(no network)") in proc.stderr
    assert result["seconds"] < 3, f"the hub source took {result['seconds']:.1f} s to fail"
    assert not any(out.iterdir()), "the failed command wrote files"


def _fake_hub_cache(home, repo: str, model) -> None:
    """``model``'s files as the hub cache holds a download of ``repo`` (refs/main naming a snapshot)."""
    import shutil

    cache = home / "hub" / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    shutil.copytree(model, cache / "snapshots" / revision)
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(revision)


def test_offline_a_cached_hub_id_still_loads(tiny_model, tmp_path):
    _fake_hub_cache(tmp_path / "hf-home", "distilbert-base-uncased", tiny_model)
    env = {k: v for k, v in os.environ.items() if k not in hub.OFFLINE_VARIABLES}
    env |= {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    code = (
        "from distil_kit import modeling\n"
        "assert modeling.model_folder('distilbert-base-uncased') is None\n"
        "tok = modeling.load_tokenizer('distilbert-base-uncased')\n"
        "model = modeling.load_classifier('distilbert-base-uncased')\n"
        "print(len(tok), model.config.dim, modeling.max_positions('distilbert-base-uncased'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["30522", "32", "512"]  # the tiny model's vocabulary, width, positions: the cache


# --- bad input: one line, naming the file/row/parameter, nothing left in out ---------------------------------


def _write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder


def _tsv_folder(tmp_path, train):
    folder = _write(tmp_path / "src", "train.tsv", train)
    return _write(folder, "dev.tsv", "sentence\tlabel\nfine film \t1\n")


def _npz_folder(tmp_path, **changes):
    arrays = dict(
        idx=np.arange(2),
        sentence=np.array(["a ", "b "]),
        label=np.array([0, 1]),
        input_ids=np.array([[101, 102, 0], [101, 7592, 102]]),
        attention_mask=np.array([[1, 1, 0], [1, 1, 1]]),
    )
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    folder = tmp_path / "src" / "dataset"
    folder.mkdir(parents=True)
    for name in data.NPZ_FILES.values():
        np.savez(folder / name, **arrays)
    return folder.parent


def test_npz_with_narrower_integer_or_bool_arrays_loads_as_int64(tmp_path):
    """Token arrays written as int32 (or a bool attention_mask) load as the int64 the batches and models use."""
    folder = _npz_folder(
        tmp_path,
        input_ids=np.array([[101, 102, 0], [101, 7592, 102]], dtype=np.int32),
        attention_mask=np.array([[1, 1, 0], [1, 1, 1]], dtype=bool),
    )
    dev = data.load_sst2(folder, vocab_size=30522)["dev"]
    assert dev.input_ids.dtype == dev.attention_mask.dtype == np.int64
    assert dev.input_ids.tolist() == [[101, 102, 0], [101, 7592, 102]] and dev.lengths.tolist() == [2, 3]


def _without(folder, name):
    """``folder`` after deleting its file ``name``."""
    (folder / name).unlink()
    return folder


def _npz_rows(input_ids, attention_mask):
    """The 2-row npz folder with other token rows (tokens: [CLS]=101, [SEP]=102, [PAD]=0)."""
    return lambda t: _npz_folder(t, input_ids=np.array(input_ids), attention_mask=np.array(attention_mask))


def _corrupt(path: Path) -> Path:
    """Flip a byte inside the first stored array of an npz written uncompressed (np.savez)."""
    raw = bytearray(path.read_bytes())
    start = raw.index(b"\x93NUMPY")  # the first array: magic, version, header length, header, data
    raw[start + 10 + int.from_bytes(raw[start + 8 : start + 10], "little")] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


BAD_SOURCES = {
    "missing folder": (lambda t: t / "nope", r"data folder .*nope does not exist"),
    "folder without files": (lambda t: _write(t / "src", "other.txt", ""), r"holds neither train.tsv"),
    "missing dev.tsv": (
        lambda t: _write(t / "src", "train.tsv", "sentence\tlabel\nok \t1\n"),
        r"dev.tsv: file not found",
    ),
    "no header": (  # the first line is shown as read
        lambda t: _tsv_folder(t, "nice film \t1\n"),
        r"train.tsv: line 1: header is \['nice film ', '1'\], expected 'sentence<TAB>label'",
    ),
    "empty train.tsv": (lambda t: _tsv_folder(t, ""), r"train.tsv: line 1: header is missing, expected 'sentence"),
    "row without a tab": (
        lambda t: _tsv_folder(t, "sentence\tlabel\nok \t1\nno tab here\n"),
        r"train.tsv: line 3: expected 2 tab-separated fields, found 1",
    ),
    "label 2": (
        lambda t: _tsv_folder(t, "sentence\tlabel\nok \t1\nbad \t2\n"),
        r"train.tsv: line 3: label 2 is not 0 or 1",
    ),
    "label text": (
        lambda t: _tsv_folder(t, "sentence\tlabel\nok \tpos\n"),
        r"train.tsv: line 2: label 'pos' is not 0 or 1",
    ),
    "empty sentence": (
        lambda t: _tsv_folder(t, "sentence\tlabel\nok \t1\n  \t0\n"),
        r"train.tsv: line 3: empty sentence",
    ),
    "npz missing keys": (
        lambda t: _npz_folder(t, input_ids=None, attention_mask=None),
        r"train_dataset.npz: missing key\(s\) input_ids, attention_mask; expected idx, sentence, label, input_ids, "
        r"attention_mask",
    ),
    "npz missing eval file": (
        lambda t: _without(_npz_folder(t) / "dataset", "eval_dataset.npz").parent,
        r"eval_dataset.npz: file not found; a FlagPerf data folder holds dataset/train_dataset.npz and "
        r"dataset/eval_dataset.npz",
    ),
    "npz empty file": (
        lambda t: _write(_npz_folder(t) / "dataset", "train_dataset.npz", "").parent,
        r"train_dataset.npz: not a readable npz file",
    ),
    "npz no rows": (
        lambda t: _npz_folder(
            t,
            idx=np.arange(0),
            sentence=np.array([], dtype=str),
            label=np.arange(0),
            input_ids=np.zeros((0, 3), int),
            attention_mask=np.zeros((0, 3), int),
        ),
        r"train_dataset.npz: no rows; expected at least one",
    ),
    "npz label rows": (
        lambda t: _npz_folder(t, label=np.array([0, 1, 1])),
        r"train_dataset.npz: 'label' has shape \(3,\), expected \(2,\) like 'idx'",
    ),
    "npz shapes": (
        lambda t: _npz_folder(t, attention_mask=np.ones((2, 4), int)),
        r"train_dataset.npz: 'input_ids' \(2, 3\) and 'attention_mask' \(2, 4\)",
    ),
    "npz fewer token rows than idx": (
        _npz_rows([[101, 102, 0]], [[1, 1, 0]]),
        r"train_dataset.npz: 'input_ids' \(1, 3\) and 'attention_mask' \(1, 3\) must both be \[2, L\]",
    ),
    "npz label": (lambda t: _npz_folder(t, label=np.array([0, 5])), r"train_dataset.npz: row 1: label 5"),
    "npz id beyond vocab": (
        _npz_rows([[101, 102, 0], [101, 99999, 102]], [[1, 1, 0], [1, 1, 1]]),
        r"train_dataset.npz: row 1: token id 99999 is outside the tokenizer's vocabulary",
    ),
    "npz id equal to the vocab size": (  # ids run from 0 to 30521 in MiniLM's 30522-token vocabulary
        _npz_rows([[101, 102, 0], [101, 30522, 102]], [[1, 1, 0], [1, 1, 1]]),
        r"train_dataset.npz: row 1: token id 30522 is outside the tokenizer's vocabulary of 30522",
    ),
    "npz negative id": (  # the id named is the bad one, not the row's largest
        _npz_rows([[101, 102, 0], [101, -1, 102]], [[1, 1, 0], [1, 1, 1]]),
        r"train_dataset.npz: row 1: token id -1 is outside the tokenizer's vocabulary",
    ),
    "npz corrupted inside": (  # a whole zip archive whose stored bytes changed: its CRC check fails on reading
        lambda t: _corrupt(_npz_folder(t) / "dataset" / "train_dataset.npz").parent.parent,
        r"train_dataset.npz: not a readable npz file \(Bad CRC-32",
    ),
    "npz that is not an npz": (  # not a zip archive: numpy would read it as a pickle and blame pickling
        lambda t: _write(_npz_folder(t) / "dataset", "train_dataset.npz", "<html>not found</html>").parent,
        r"train_dataset.npz: not a readable npz file \(not a zip archive as np.savez writes\)",
    ),
    "npz mask value 2": (
        _npz_rows([[101, 102, 0], [101, 7592, 102]], [[1, 1, 0], [1, 2, 1]]),
        r"train_dataset.npz: row 1: attention_mask holds values other than 0 and 1",
    ),
    "npz left padding": (
        _npz_rows([[101, 102, 0], [0, 101, 102]], [[1, 1, 0], [0, 1, 1]]),
        r"train_dataset.npz: row 1: attention_mask is not a block of 1s followed by 0s",
    ),
    "npz row without tokens": (
        _npz_rows([[101, 102, 0], [0, 0, 0]], [[1, 1, 0], [0, 0, 0]]),
        r"train_dataset.npz: row 1: attention_mask is not a block of 1s .*and at least one token\)",
    ),
    "npz object sentences": (  # numpy's reason, then what the file must hold
        lambda t: _npz_folder(t, sentence=np.array(["a ", "b "], dtype=object)),
        r"train_dataset.npz: Object arrays cannot be loaded when allow_pickle=False; 'sentence' must be a numpy "
        r"unicode array",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SOURCES))
def test_bad_source_one_line_error_and_nothing_written(case, tmp_path, minilm_dir):
    make, pattern = BAD_SOURCES[case]
    source = make(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(KitError, match=pattern) as err:
        preprocess(source, str(minilm_dir), out)
    assert "\n" not in str(err.value)
    assert not list(out.rglob("*.npz")) and not list(out.rglob("*.json"))


def test_bad_tokenizer_path(tmp_path, sst2_dir):
    with pytest.raises(KitError, match=r"tokenizer folder .*no-such-tokenizer does not exist"):
        preprocess(sst2_dir, str(tmp_path / "no-such-tokenizer"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unwritable_output(tmp_path, small_tsv, minilm_dir):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(KitError, match=r"output folder .*file/dataset cannot be written"):
        preprocess(small_tsv, str(minilm_dir), blocker)


@pytest.mark.parametrize(
    "padding, max_length, pattern", [("short", 512, "padding='short'"), ("longest", 0, "max_length=0")]
)
def test_bad_padding_parameters(small_tsv, minilm_dir, tmp_path, padding, max_length, pattern):
    with pytest.raises(KitError, match=pattern):
        preprocess(small_tsv, str(minilm_dir), tmp_path / "out", padding=padding, max_length=max_length)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_preprocess_full_sst2(sst2_dir, minilm_dir, tmp_path):
    """The issue's command: all 67,349 + 872 rows in FlagPerf's schema."""
    out = tmp_path / "x"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "distil_kit",
            "preprocess",
            "--source",
            str(sst2_dir),
            "--tokenizer",
            str(minilm_dir),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "dataset" / "preprocess.json").read_text())
    assert meta["splits"]["train"]["rows"] == 67_349 and meta["splits"]["dev"]["rows"] == 872
    assert meta["splits"]["train"]["L"] == 66  # the longest training sentence, in tokens
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "distil_kit",
            "preprocess",
            "--source",
            str(tmp_path / "nope"),
            "--tokenizer",
            str(minilm_dir),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr


def test_a_hub_ids_config_is_checked_before_its_weights(tiny_model, tmp_path):
    """The checks a local folder's config gets (an encoder, 2 labels, positions) run on a hub id's config too."""
    _fake_hub_cache(tmp_path / "hf-home", "someone/decoder", tiny_model)
    snapshot = next((tmp_path / "hf-home" / "hub" / "models--someone--decoder" / "snapshots").iterdir())
    config = json.loads((snapshot / "config.json").read_text())
    (snapshot / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    env = {k: v for k, v in os.environ.items() if k not in hub.OFFLINE_VARIABLES}
    env |= {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    code = "from distil_kit import modeling\nmodeling.model_folder('someone/decoder')\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert f"{snapshot / 'config.json'}: model_type 'gpt2'" in proc.stderr, proc.stderr[-2000:]
