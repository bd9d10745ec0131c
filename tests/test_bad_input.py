"""Bad input to a fine-tuning run (and preprocessing) fails with one line naming the file or parameter.

Each case builds its bad input under ``tmp_path``, then the test snapshots the tree, runs the call and checks:
a ``KitError`` whose message is one line holding the expected pieces, and (where the error comes before any work)
a tree left exactly as it was: no run folder, no npz, no file touched. The NaN case is the one that fails after
work started; it must keep the records so far instead.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from distil_kit import cli, data
from distil_kit.config import RunConfig, load_config
from distil_kit.engine import finetune
from distil_kit.errors import KitError
from distil_kit.preprocess import preprocess

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest
SMOKE = str(Path(__file__).resolve().parents[1] / "params" / "smoke.yaml")

TRAIN = [
    "a gripping , funny film",
    "dull and far too long",
    "the cast is wonderful",
    "i wanted my money back",
    "a small gem",
    "flat , lifeless and forgettable",
    "smart and moving",
    "nothing works here",
] * 2


def _tsv(folder: Path, train: list[str] | None = None, dev: list[str] | None = None) -> Path:
    folder.mkdir(parents=True)
    lines = lambda rows: "".join(f"{r}\n" for r in rows)  # noqa: E731
    good = ["sentence\tlabel"] + [f"{s}\t{i % 2}" for i, s in enumerate(TRAIN)]
    (folder / "train.tsv").write_text(lines(train if train is not None else good))
    (folder / "dev.tsv").write_text(lines(dev if dev is not None else good[:9]))
    return folder


class Kit:
    """The good inputs (a small TSV folder, its npz twin, the tiny model) and bad variants of them."""

    def __init__(self, tmp: Path, good: Path, tiny_model: Path):
        self.tmp, self.good, self.model = tmp, good, tiny_model
        self.out = tmp / "run"

    @property
    def tsv(self) -> Path:
        return self.good / "tsv"

    def config(self, **changes) -> dict:
        return {
            "model": str(self.model),
            "data_dir": str(self.tsv),
            "output_dir": str(self.out),
            "epochs": 1,
            "max_train_samples": 16,
            "train_batch_size": 4,
            "target_acc": None,
            "device": "cpu",
            **changes,
        }

    def finetune(self, **changes):
        return lambda: finetune(self.config(**changes))

    def bad_tsv(self, **files) -> Path:
        return _tsv(self.tmp / "bad-tsv", **files)

    def bad_npz(self, split: str, **changes) -> Path:
        """The good npz folder with ``changes`` to one split's arrays (None drops a key)."""
        folder = self.tmp / "bad-npz" / "dataset"
        shutil.copytree(self.good / "npz" / "dataset", folder)
        path = folder / data.NPZ_FILES[split]
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays.update(changes)
        with open(path, "wb") as f:
            np.savez(f, **{k: v for k, v in arrays.items() if v is not None})
        return folder.parent

    def ids(self, split: str, sep: int | None = None):
        """The good npz's input_ids, with every [SEP] (id 102) replaced by ``sep`` when given."""
        with np.load(self.good / "npz" / "dataset" / data.NPZ_FILES[split]) as z:
            ids = z["input_ids"]
        return ids if sep is None else np.where(ids == 102, sep, ids)

    def model_without(self, name: str) -> Path:
        folder = Path(shutil.copytree(self.model, self.tmp / "model"))
        (folder / name).unlink()
        return folder

    def model_with(self, name: str = "model", drop: tuple[str, ...] = (), **config) -> Path:
        """A copy of the tiny model without the files ``drop``, its config.json updated with ``config``."""
        folder = Path(shutil.copytree(self.model, self.tmp / name))
        for file in drop:
            (folder / file).unlink()
        values = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**values, **config}))
        return folder

    def truncated_weights(self) -> Path:
        folder = self.model_with()
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return folder

    def gpt2(self) -> Path:
        """A tiny GPT-2 (a causal LM, no sequence classifier of the kind the kit trains) with the tiny tokenizer."""
        from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

        folder = self.tmp / "gpt2"
        GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=30522)).save_pretrained(folder)
        AutoTokenizer.from_pretrained(self.model).save_pretrained(folder)
        return folder

    def not_utf8(self, name: str) -> Path:
        """The good TSV folder with a Latin-1 byte (not UTF-8) in line 3 of ``name``."""
        folder = Path(shutil.copytree(self.tsv, self.tmp / "latin1"))
        lines = (folder / name).read_bytes().split(b"\n")
        lines[2] = b"caf\xe9 " + lines[2]
        (folder / name).write_bytes(b"\n".join(lines))
        return folder

    def params(self, text: bytes) -> Path:
        (self.tmp / "params.yaml").write_bytes(text)
        return self.tmp / "params.yaml"

    def run_folder(self, *files: str, config: dict | None = None) -> Path:
        """An output folder holding a (finished or unfinished) run: ``files`` plus a config.json."""
        self.out.mkdir()
        (self.out / "config.json").write_text(json.dumps(RunConfig.from_dict(config or self.config()).to_dict()))
        for name in files:
            (self.out / name).parent.mkdir(parents=True, exist_ok=True)
            (self.out / name).write_text("{}")
        return self.out


# case: (build the call from a Kit, pieces the message must hold)
CASES = {
    "missing data folder": (
        lambda k: k.finetune(data_dir=str(k.tmp / "no-such-data")),
        ["data folder", "no-such-data does not exist"],
    ),
    "TSV without header": (
        lambda k: k.finetune(data_dir=str(k.bad_tsv(train=["a fine film\t1"]))),
        ["bad-tsv/train.tsv: line 1: header is", "expected 'sentence<TAB>label'"],
    ),
    "label not 0/1": (
        lambda k: k.finetune(data_dir=str(k.bad_tsv(dev=["sentence\tlabel", "fine\t1", "bad\t2"]))),
        ["bad-tsv/dev.tsv: line 3: label 2 is not 0 or 1"],
    ),
    "empty sentence": (
        lambda k: k.finetune(data_dir=str(k.bad_tsv(train=["sentence\tlabel", "fine\t1", " \t0"]))),
        ["bad-tsv/train.tsv: line 3: empty sentence"],
    ),
    "npz missing a key": (
        lambda k: k.finetune(data_dir=str(k.bad_npz("train", attention_mask=None))),
        [
            "train_dataset.npz: missing key(s) attention_mask; expected idx, sentence, label, "
            "input_ids, attention_mask"
        ],
    ),
    "npz mismatched shapes": (
        lambda k: k.finetune(data_dir=str(k.bad_npz("dev", input_ids=k.ids("dev")[:-1]))),
        ["eval_dataset.npz: 'input_ids' (7,", "must both be"],
    ),
    "npz id beyond the vocabulary": (
        lambda k: k.finetune(data_dir=str(k.bad_npz("train", input_ids=k.ids("train", 40000)))),
        ["train_dataset.npz: row 0: token id 40000 is outside the tokenizer's vocabulary of 30522"],
    ),
    "tokenizer path missing": (
        lambda k: lambda: preprocess(k.tsv, str(k.tmp / "no-such-tokenizer"), k.tmp / "pre"),
        ["tokenizer folder", "no-such-tokenizer does not exist"],
    ),
    "model folder missing": (
        lambda k: k.finetune(model=str(k.tmp / "no-such-model")),
        ["model folder", "no-such-model does not exist"],
    ),
    "model folder without weights": (
        lambda k: k.finetune(model=str(k.model_without("model.safetensors"))),
        ["model folder", "has no weights (expected one of model.safetensors"],
    ),
    "model folder without config": (
        lambda k: k.finetune(model=str(k.model_without("config.json"))),
        ["model folder", "has no config.json"],
    ),
    "batch size 0": (
        lambda k: k.finetune(train_batch_size=0),
        ["parameter 'train_batch_size'=0: expected a whole number > 0"],
    ),
    "lr 0": (lambda k: k.finetune(lr=0), ["parameter 'lr'=0.0: expected a number > 0"]),
    "epochs -1": (lambda k: k.finetune(epochs=-1), ["parameter 'epochs'=-1: expected a whole number > 0"]),
    "unknown precision": (
        lambda k: k.finetune(precision="fp8"),
        ["parameter 'precision'='fp8': expected one of fp32, tf32, bf16, fp16"],
    ),
    "device cuda without a GPU": (
        lambda k: k.finetune(device="cuda"),
        ["parameter 'device'='cuda': no CUDA GPU is visible"],
    ),
    "unknown parameter": (lambda k: k.finetune(learning_rate=1e-4), ["unknown parameter 'learning_rate'"]),
    "wrong type": (lambda k: k.finetune(epochs="two"), ["parameter 'epochs': expected a whole number, got 'two'"]),
    "missing parameter file": (
        lambda k: lambda: load_config(k.tmp / "no-such-params.yaml"),
        ["no-such-params.yaml: parameter file not found"],
    ),
    "output_dir with a finished run": (
        lambda k: (k.run_folder("summary.json"), k.finetune())[1],
        ["run already holds a finished run; pass overwrite: true"],
    ),
    "output_dir with an unfinished run": (
        lambda k: (k.run_folder("steps.csv"), k.finetune())[1],
        ["run holds an unfinished run; pass resume: true", "or overwrite: true"],
    ),
    "output_dir holding something else": (
        lambda k: ((k.out / "notes").mkdir(parents=True), k.finetune())[1],
        ["run is not empty and holds no run"],
    ),
    "resume with nothing to resume": (
        lambda k: k.finetune(resume=True),
        ["resume: output_dir", "run holds no run to resume"],
    ),
    "resume a finished run": (
        lambda k: (k.run_folder("summary.json"), k.finetune(resume=True))[1],
        ["run: nothing to resume (it is finished"],
    ),
    "resume without a checkpoint": (
        lambda k: (k.run_folder(), k.finetune(resume=True))[1],
        ["run/checkpoints: no checkpoint to resume from", "overwrite: true"],
    ),
    "corrupted checkpoint": (
        lambda k: (k.run_folder("checkpoints/step-5.pt"), k.finetune(resume=True))[1],
        ["run/checkpoints: no readable checkpoint (tried step-5.pt (", "overwrite: true"],
    ),
    "header-only train.tsv": (
        lambda k: k.finetune(data_dir=str(k.bad_tsv(train=["sentence\tlabel"]))),
        ["bad-tsv/train.tsv: no rows after the header 'sentence<TAB>label'; expected at least one"],
    ),
    "header-only dev.tsv": (
        lambda k: k.finetune(data_dir=str(k.bad_tsv(dev=["sentence\tlabel"]))),
        ["bad-tsv/dev.tsv: no rows after the header"],
    ),
    "TSV not UTF-8": (
        lambda k: k.finetune(data_dir=str(k.not_utf8("dev.tsv"))),
        ["latin1/dev.tsv: line 3: not valid UTF-8 (byte 0xe9 at column 4); expected UTF-8 text"],
    ),
    "parameter file not UTF-8": (
        lambda k: (lambda path: lambda: load_config(path))(k.params(b"epochs: 1\nmodel: caf\xe9\n")),
        ["params.yaml: line 2: not valid UTF-8 (byte 0xe9 at column 11)"],
    ),
    "truncated model.safetensors": (
        lambda k: k.finetune(model=str(k.truncated_weights())),
        ["model/model.safetensors: truncated or corrupt", "expected"],
    ),
    "model config with 3 labels": (
        lambda k: k.finetune(model=str(k.model_with(id2label={"0": "a", "1": "b", "2": "c"}))),
        ["model/config.json: 3 labels (id2label); expected 2"],
    ),
    "model config num_labels 3": (
        lambda k: k.finetune(model=str(k.model_with(num_labels=3))),
        ["model/config.json: 3 labels (num_labels); expected 2"],
    ),
    "model that is no sequence classifier": (
        lambda k: k.finetune(model=str(k.gpt2())),
        ["gpt2/config.json: model_type 'gpt2' is a decoder (causal language model)", "expected an encoder"],
    ),
    "model folder without tokenizer files": (
        lambda k: k.finetune(model=str(k.model_with(drop=("tokenizer.json", "tokenizer_config.json")))),
        ["tokenizer folder", "model: a vocabulary of 5 tokens; expected at least 1000"],
    ),
    "preprocess with a tokenizer without files": (
        lambda k: (lambda model: lambda: preprocess(k.tsv, str(model), k.tmp / "pre"))(
            k.model_with(drop=("tokenizer.json", "tokenizer_config.json"))
        ),
        ["tokenizer folder", "model: a vocabulary of 5 tokens; expected at least 1000"],
    ),
    "tokenizer larger than the model's embeddings": (
        lambda k: k.finetune(model=str(k.model_with(vocab_size=30000))),
        ["tokenizer of 30522 tokens does not fit the model's 30000 embeddings", "config.json"],
    ),
    "npz float input_ids": (
        lambda k: k.finetune(data_dir=str(k.bad_npz("train", input_ids=k.ids("train").astype(np.float32)))),
        ["train_dataset.npz: 'input_ids' holds float32; expected integers"],
    ),
    "seed -1": (lambda k: k.finetune(seed=-1), ["parameter 'seed'=-1: expected a whole number >= 0"]),
    "output_dir an existing file": (
        lambda k: (k.out.write_text("x"), k.finetune())[1],
        ["output_dir", "run is a file; expected a folder"],
    ),
    "output_dir under a file": (
        lambda k: ((k.tmp / "afile").write_text("x"), k.finetune(output_dir=str(k.tmp / "afile" / "run")))[1],
        ["output_dir", "afile/run cannot be created", "afile is a file"],
    ),
    "NaN loss": (
        lambda k: k.finetune(lr=1e30, log_every=1),
        ["loss became nan at step 2 (epoch 1); training stopped, records so far are in", "/run"],
    ),
}


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_model) -> Path:
    """A small TSV folder and the npz folder preprocess makes of it (with the tiny model's tokenizer)."""
    folder = tmp_path_factory.mktemp("good")
    _tsv(folder / "tsv")
    preprocess(folder / "tsv", str(tiny_model), folder / "npz")
    return folder


def _tree(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_error_and_nothing_left(case, good, tiny_model, tmp_path):
    if case == "device cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    build, pieces = CASES[case]
    call = build(Kit(tmp_path, good, tiny_model))
    before = _tree(tmp_path)
    with pytest.raises(KitError) as error:
        call()
    message = str(error.value)
    print(f"{case}: {message}")  # the table quoted in the issue: pytest -s shows it
    assert "\n" not in message and message.strip() == message
    for piece in pieces:
        assert piece in message
    assert message.count(str(tmp_path)) <= 1, "the message names the path once (not re-wrapped)"
    if case == "NaN loss":  # stopped mid-run: the records so far stay, the run stays unfinished
        steps = (tmp_path / "run" / "steps.csv").read_text().splitlines()
        assert steps[0].startswith("step,epoch,loss") and [r.split(",")[0] for r in steps[1:]] == ["1"]
        assert len((tmp_path / "run" / "evals.csv").read_text().splitlines()) == 2  # the evaluation before training
        assert not (tmp_path / "run" / "summary.json").exists()
    else:
        assert _tree(tmp_path) == before, "the failed call left or changed files"


@pytest.mark.parametrize(
    "args, pieces",
    [
        (["--set", "learning_rate=0.1"], ["unknown parameter 'learning_rate'"]),
        (["--set", "epoch=3"], ["--set 'epoch=3': unknown parameter 'epoch'; did you mean 'epochs'?"]),
        # the typo is in --set, not in the file it overrides
        (["--params", SMOKE, "--set", "epoch=2"], ["--set 'epoch=2': unknown parameter 'epoch'; did you mean "]),
        (["--params", SMOKE, "--set", "lr=1e-3x"], ["--set 'lr=1e-3x': parameter 'lr': expected a number, got "]),
        (["--set", "seeds=[0, 0]"], ["--set 'seeds=[0, 0]': parameter 'seeds'=[0, 0]: expected a list of distinct "]),
        (["--set", "data_dir=/no/such/data"], ["data folder /no/such/data does not exist"]),
        (
            ["--resume", "--set", "output_dir=/no/such/run"],
            ["resume: output_dir /no/such/run holds no run to resume"],
        ),
    ],
)
def test_cli_prints_one_error_line_and_exits_2(args, pieces, capsys):
    assert cli.main(["finetune", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: ")
    for piece in pieces:
        assert piece in err
    assert "smoke.yaml" not in err, "an error about a --set value names --set, not the parameter file"
