"""``RunConfig``: every parameter of a fine-tuning run, its default, type and help; loading and validation.

Built from a dict (papermill parameters, ``notebook_config`` in the finetune notebook), a YAML file, or CLI
``--set key=value`` strings. Unknown keys (with the nearest known name) and wrong types are rejected with a
one-line error naming the parameter. ``None`` on a switch means "decided at run time" (by ``fast`` and the
device); the run's ``config.json`` records the resolved values.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import glob
import json
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import KitError

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
REPORT_TO = ("tensorboard", "mlflow", "mllog")  # report_to's trackers (distil_kit/trackers.py, mllog.py)


def _p(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class RunConfig:
    model: str | None = _p(None, "hub id or folder; default <data_dir>/model if any, else distilbert-base-uncased")
    data_dir: str = _p("", "npz folder (FlagPerf layout) or GLUE TSV folder; empty: the hub")
    output_dir: str = _p("", "run folder; empty: runs/<timestamp>")
    epochs: int = _p(10, "maximum epochs (FlagPerf: 10)")
    train_batch_size: int = _p(32, "training rows per device per micro-batch")
    eval_batch_size: int = _p(128, "dev rows per evaluation batch")
    lr: float = _p(5e-5, "AdamW learning rate, decayed linearly to 0 with no warm-up")
    weight_decay: float = _p(0.0, "AdamW weight decay (never on biases and LayerNorm weights)")
    gradient_accumulation_steps: int = _p(1, "micro-batches per optimizer step")
    micro_batch_size: int | None = _p(
        None,
        "rows per forward/backward, dividing a step's; null (auto): fast on a GPU, or fast and packed on any device, "
        "the whole step (on a GPU the largest half, quarter, ... of it that fits in memory; on a CPU set it if a "
        "step's rows do not fit); else train_batch_size",
    )
    target_acc: float | None = _p(0.91, "stop once dev accuracy reaches this; null: never stop early")
    seed: int = _p(0, "seed for initialisation, data order and dropout")
    precision: str | None = _p(None, "fp32, tf32, bf16 or fp16; default fp32, or if fast bf16/fp16 where native")
    device: str = _p("auto", "auto, cpu, cuda or cuda:N")
    max_train_samples: int | None = _p(None, "train on the first N rows only; null: all")
    num_workers: int = _p(0, "DataLoader worker processes")
    threads: int | None = _p(
        None, "CPU threads torch computes with (torch.set_num_threads) during the run; null: torch's own choice"
    )
    collective_timeout_s: float = _p(300.0, "under torchrun: seconds a rank waits for the others before stopping")
    save_model: bool = _p(True, "save the fine-tuned model and tokenizer into <output_dir>/model")
    log_every: int = _p(10, "optimizer steps per steps.csv row (the only host sync of the loss)")
    checkpoint_every: int = _p(0, "optimizer steps between checkpoints; 0: at epoch ends only")
    checkpoint_minutes: float = _p(
        10.0, "also checkpoint at the first steps.csv row N minutes after the last one; 0: off"
    )
    keep_checkpoints: bool = _p(False, "keep <output_dir>/checkpoints once the run has finished; false: remove them")
    resume: bool = _p(False, "continue the unfinished run in output_dir from its last checkpoint")
    overwrite: bool = _p(False, "replace a run already in output_dir")
    fast: bool = _p(
        False, "turn on packing (else batches bucketed and padded to 8), fused AdamW, native bf16, CUDA graphs"
    )
    flagperf_exact: bool = _p(
        False, "FlagPerf's own computation, bit for bit (docs/recipe.md); false: the kit's recipe"
    )
    bucket_batches: bool | None = _p(None, "group rows of similar length into batches; default: fast, unless packing")
    packing: bool | None = _p(
        None, "whole sentences end to end in rows of one width: no padding; default: fast, for DistilBERT and BERT"
    )
    pad_to_multiple_of: int | None = _p(None, "round each batch's width up to a multiple; default 8 if fast, else 1")
    fused_adamw: bool | None = _p(None, "fused AdamW kernel (CPU or GPU); default: fast")
    compile: bool = _p(
        False, "torch.compile the model (timed as compile_time); off by default: slow to compile, small gain"
    )
    cuda_graphs: bool | None = _p(None, "each step one CUDA graph per batch shape; default: fast where graphs fit")
    report_to: list | None = _p(
        None, "also log the run to: a list of tensorboard (<output_dir>/tensorboard), mlflow, mllog; null: none"
    )

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}

    @classmethod
    def parameter_lines(cls) -> list[str]:
        """The finetune notebook's parameters cell, one ``name: type = default  # help`` line per field. Optional
        fields carry ``# type: Optional[X]`` instead: papermill (2.7) skips ``X | None`` annotations when it lists
        a notebook's parameters, and ``Optional[X]`` would need an import the cell cannot have."""
        hints, lines = typing.get_type_hints(cls), []
        for f in dataclasses.fields(cls):
            (base, optional), help = _base_type(hints[f.name]), f.metadata["help"]
            default = json.dumps(f.default) if isinstance(f.default, str) else repr(f.default)  # ruff's quotes
            lines.append(
                f"{f.name} = {default}  # type: Optional[{base.__name__}]  {help}"
                if optional
                else f"{f.name}: {base.__name__} = {default}  # {help}"
            )
        return lines

    @classmethod
    def from_dict(cls, values: dict, source: str = "parameters") -> RunConfig:
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise KitError(f"{source}: {unknown_parameter(unknown[0], cls.field_names())}")
        hints = typing.get_type_hints(cls)
        checked = {k: _coerce(k, v, hints[k]) for k, v in values.items()}
        config = cls(**checked)
        config.validate()
        return config

    @classmethod
    def from_yaml(cls, path) -> RunConfig:
        return cls.from_dict(read_yaml(path), source=str(path))

    def replace(self, **changes) -> RunConfig:
        return type(self).from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        def need(ok: bool, name: str, expected: str):
            if not ok:
                raise KitError(f"parameter {name!r}={getattr(self, name)!r}: expected {expected}")

        for name in ("epochs", "train_batch_size", "eval_batch_size", "gradient_accumulation_steps", "log_every"):
            need(getattr(self, name) > 0, name, "a whole number > 0")
        need(self.lr > 0, "lr", "a number > 0")
        need(self.weight_decay >= 0, "weight_decay", "a number >= 0")
        need(self.target_acc is None or 0 < self.target_acc <= 1, "target_acc", "a number in (0, 1] or null")
        need(self.precision is None or self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
        need(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:") and self.device[5:].isdigit(),
            "device",
            "auto, cpu, cuda or cuda:N",
        )
        need(
            self.max_train_samples is None or self.max_train_samples > 0,
            "max_train_samples",
            "a whole number > 0 or null",
        )
        need(0 <= self.seed < 2**32, "seed", "a whole number >= 0 and < 2**32")
        need(self.num_workers >= 0, "num_workers", "a whole number >= 0")
        need(self.threads is None or self.threads > 0, "threads", "a whole number > 0 or null")
        need(self.collective_timeout_s > 0, "collective_timeout_s", "a number of seconds > 0")
        need(self.checkpoint_every >= 0, "checkpoint_every", "a whole number >= 0")
        need(self.checkpoint_minutes >= 0, "checkpoint_minutes", "a number >= 0")
        need(
            self.pad_to_multiple_of is None or self.pad_to_multiple_of > 0, "pad_to_multiple_of", "a whole number > 0"
        )
        need(not (self.resume and self.overwrite), "resume", "resume and overwrite not both true")
        # FlagPerf's computation is one plain step per micro-batch of train_batch_size rows, in its order
        exact = "false with flagperf_exact: true (FlagPerf's computation runs on the plain path)"
        need(not (self.flagperf_exact and self.fast), "fast", exact)
        need(not (self.flagperf_exact and self.bucket_batches), "bucket_batches", exact)
        need(not (self.flagperf_exact and self.cuda_graphs), "cuda_graphs", exact)
        need(not (self.flagperf_exact and self.packing), "packing", exact)
        need(
            not self.flagperf_exact or self.micro_batch_size in (None, self.train_batch_size),
            "micro_batch_size",
            "null or train_batch_size with flagperf_exact: true (FlagPerf's micro-batch)",
        )
        need(
            self.report_to is None or all(t in REPORT_TO for t in self.report_to),
            "report_to",
            f"null or a list of {', '.join(REPORT_TO)}",
        )
        step_rows = self.train_batch_size * self.gradient_accumulation_steps
        need(
            self.micro_batch_size is None or self.micro_batch_size > 0 and step_rows % self.micro_batch_size == 0,
            "micro_batch_size",
            f"null or a divisor of train_batch_size x gradient_accumulation_steps ({step_rows})",
        )


def _base_type(hint) -> tuple[type, bool]:
    """``(X, optional)`` for a field's type ``X`` or ``X | None``."""
    args = typing.get_args(hint)
    optional = type(None) in args
    return (next(a for a in args if a is not type(None)) if optional else hint), optional


def unknown_parameter(name: str, known) -> str:
    """The error for an unknown parameter: "unknown parameter 'epoch'; did you mean 'epochs'?", or the known names
    when none is close."""
    # a near miss (epoch for epochs), else a shortened name (nproc for nproc_per_node)
    shortened = [k for k in known if len(name) >= 3 and k.startswith(name)]
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6) or shortened[:1]
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
    return f"unknown parameter {name!r}; {hint}"


_TYPE_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string", list: "a list"}
# A decimal number as people write one (5e-5, 3e-5, 1.0e-4, .5, 2): YAML 1.1, which PyYAML and papermill's -f/-y
# speak, reads exponents without a dot ("1e-3") as strings. No nan, inf, hex or underscores.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(name: str, value, hint):
    """``value`` checked against ``hint`` (int, float, bool, str, or X | None); ints are accepted as floats, and so
    are strings that are decimal numbers (YAML 1.1's ``1e-3``), converted exactly as Python reads them."""
    base, optional = _base_type(hint)
    if value is None and optional:
        return None
    if base is float and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    ok = (isinstance(value, base) and not (base is int and isinstance(value, bool))) or (
        base is float and isinstance(value, int) and not isinstance(value, bool)
    )
    if not ok:
        expected = _TYPE_WORDS[base] + (" or null" if optional else "")
        raise KitError(f"parameter {name!r}: expected {expected}, got {value!r} ({type(value).__name__})")
    return float(value) if base is float else value


def read_utf8(path: Path) -> str:
    """A text file's contents; bytes that are not UTF-8 are a one-line error naming the file, line and column."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise KitError(
            f"{path}: line {line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {column}); "
            f"expected UTF-8 text"
        ) from None


def read_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: parameter file not found")
    text = read_utf8(path)
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise KitError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(values, dict):
        raise KitError(f"{path}: expected a mapping of parameter: value, got {type(values).__name__}")
    return values


SWEEP_PARAMETERS = ("seeds", "concurrent")  # a sweep's own, beside RunConfig's fields


def parse_sets(items: list[str]) -> dict:
    """``key=value`` strings, each value read as YAML (so ``epochs=3`` is an int and ``target_acc=null`` None),
    except that a string parameter keeps its text as typed (``output_dir=2024`` is the folder "2024"). Each is
    checked here, a known name (or one of ``SWEEP_PARAMETERS``) with a value of its type, so that an error names
    the ``--set`` it came from rather than the parameter file it overrides."""
    hints, values = typing.get_type_hints(RunConfig), {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise KitError(f"--set {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if key in hints and _base_type(hints[key])[0] is str and value is not None:
            value = raw
        try:
            if key == "seeds":
                check_seeds(value)
            elif key == "concurrent":
                check_concurrent(value)
            elif key in hints:
                value = _coerce(key, value, hints[key])
            else:
                raise KitError(unknown_parameter(key, [*hints, *SWEEP_PARAMETERS]))
        except KitError as e:
            raise KitError(f"--set {item!r}: {e}") from None
        values[key] = value
    return values


def load_config(params_file=None, sets: list[str] | None = None, **overrides) -> RunConfig:
    """A config from an optional YAML file, then ``--set`` strings, then keyword overrides (last wins)."""
    return load_sweep_config(params_file, sets, **overrides)[0]


def load_sweep_config(
    params_file=None, sets: list[str] | None = None, **overrides
) -> tuple[RunConfig, list | None, int]:
    """``load_config``, and the sweep's own parameters where the file or a ``--set`` names them (a sweep's, not one
    run's): ``seeds`` (``seeds: [0, 1, 2]``, distinct whole numbers >= 0; else None) and ``concurrent`` (how many
    seeds train at once; 1 unless given)."""
    values = read_yaml(params_file) if params_file else {}
    source = str(params_file) if params_file else "parameters"
    values.update(parse_sets(sets or []))  # each checked there, so that its errors name the --set
    values.update(overrides)
    seeds, concurrent = values.pop("seeds", None), values.pop("concurrent", 1)
    try:
        if seeds is not None:
            check_seeds(seeds)
        check_concurrent(concurrent)
    except KitError as e:
        raise KitError(f"{source}: {e}") from None
    return RunConfig.from_dict(values, source=source), seeds, concurrent


def check_concurrent(concurrent) -> None:
    """A sweep's ``concurrent``: how many seeds train at once, a whole number >= 1."""
    if type(concurrent) is not int or concurrent < 1:
        raise KitError(f"parameter 'concurrent'={concurrent!r}: expected a whole number >= 1")


def check_seeds(seeds) -> None:
    """A sweep's ``seeds``: a list of distinct whole numbers >= 0."""
    if not (
        isinstance(seeds, list)
        and seeds
        and all(type(s) is int and s >= 0 for s in seeds)
        and len(set(seeds)) == len(seeds)
    ):
        raise KitError(f"parameter 'seeds'={seeds!r}: expected a list of distinct whole numbers >= 0")


def list_parameter(name: str, value, patterns: bool = False) -> list:
    """A notebook's list parameter as people pass it. papermill's ``-p`` hands a list over as text
    (``-p runs '["runs/a", "runs/b"]'``, ``-p seeds '[0, 1, 2]'``, or YAML's flow style ``[runs/a, runs/b]``):
    text that reads as a YAML list (JSON is YAML) is that list. With ``patterns`` (paths or glob patterns), other
    text is one pattern, kept when a file or folder matches it; any other value is a one-line error."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:  # "*.csv" (an alias to YAML), an unclosed "[": not a list
            parsed = None
        if isinstance(parsed, list):
            return parsed
        if patterns and glob.glob(value):  # a path, or a pattern, that names something
            return [value]
    where = f", and no file or folder under {Path.cwd()} matches it" if patterns and isinstance(value, str) else ""
    raise KitError(
        f"parameter {name!r}={value!r}: not a list{where}; pass a list as text written as one, "
        f"-p {name} '[x, y]', or as YAML with papermill's -y, e.g. -y '{name}: [x, y]'"
    )


# Names papermill injects with --inject-paths, beside the parameters.
_PAPERMILL_NAMES = ("PAPERMILL_INPUT_PATH", "PAPERMILL_OUTPUT_PATH")


def _parameter_names(source: str) -> list[str] | None:
    """The names a cell of parameters assigns, each statement ``name = literal`` or ``name: type = literal`` (the
    parameters cell, papermill's injected cell); None for any other cell."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    names = []
    for statement in body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, value = statement.targets[0], statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target, value = statement.target, statement.value
        else:
            return None
        try:
            ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            return None
        if not isinstance(target, ast.Name):
            return None
        names.append(target.id)
    return names or None


def declared_parameters(namespace: dict) -> list[str]:
    """The names the notebook's parameters cell (and papermill's injected cell after it) assigned, read from the
    kernel's input history (IPython's ``In``; the last entry is the cell running now): the run of parameter cells
    last executed before this one. Not the globals: a kernel keeps every earlier run's names (``run``, ``runs``),
    and JupyterLab's unsaved edits of the cell are in the history, not in the notebook's file."""
    if not isinstance(namespace.get("In"), list):
        raise KitError("notebook parameters: expected a Jupyter kernel's globals() (IPython's In, its input history)")
    names, found = [], False
    for source in reversed(namespace["In"][:-1]):
        cell = _parameter_names(source)
        if cell is None and found:  # the cell before the parameters cell
            break
        if cell is not None:
            names, found = cell + names, True
    return list(dict.fromkeys(names))


def check_notebook_parameters(namespace: dict, known: list[str]) -> None:
    """Every name the parameter cells last run assigned (``declared_parameters``) is one of ``known``, the
    notebook's parameters: else an error naming the nearest (papermill only warns of a name it injects that the
    parameters cell does not declare)."""
    for name in declared_parameters(namespace):
        if name not in known and name not in _PAPERMILL_NAMES:
            raise KitError(f"notebook parameters: {unknown_parameter(name, known)}")


def notebook_config(namespace: dict, notebook: str, **own) -> RunConfig:
    """The finetune notebook's ``RunConfig``, from its globals after the parameters cell (and papermill's injected
    one): every ``RunConfig`` field found in ``namespace`` (a kernel's ``globals()``); ``own`` names the notebook's
    other parameters with their defaults (``nproc_per_node=1``).

    A parameter papermill injected that the parameters cell does not declare, or a name added to the parameters
    cell, is an error naming the nearest known one (``check_notebook_parameters``: a name the parameter cells last
    run assigned that is neither a field nor in ``own``); the kernel's other globals are not parameters, so the
    notebook runs again in the same kernel, with any parameter edited in between.

    The notebook (``JPY_SESSION_NAME`` where JupyterLab sets it, papermill's ``PAPERMILL_INPUT_PATH`` with
    ``--inject-paths``, else ``notebook``) and the parameters that differ from their defaults are recorded for the
    run's manifest (``records.record_notebook_launch``).
    """
    from . import records  # imported here: records does not need the config

    fields = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    check_notebook_parameters(namespace, [*fields, *own])
    values = {name: namespace[name] for name in fields if name in namespace}
    if isinstance(values.get("report_to"), str):  # papermill's -p hands a list over as text
        values["report_to"] = list_parameter("report_to", values["report_to"])
    config = RunConfig.from_dict(values, source="notebook parameters")
    defaults = {**fields, **own}
    changed = {name: namespace[name] for name in defaults if name in namespace and namespace[name] != defaults[name]}
    path = os.environ.get("JPY_SESSION_NAME") or namespace.get("PAPERMILL_INPUT_PATH") or notebook
    records.record_notebook_launch(str(path), changed)
    return config


def micro_batches_per_step(cfg: RunConfig) -> int:
    """How many forward/backward passes one optimizer step takes on each device (``micro_batch_size`` resolved)."""
    return cfg.train_batch_size * cfg.gradient_accumulation_steps // cfg.micro_batch_size
