"""The model card of a run's saved model: ``<run>/model/README.md``, what the Hugging Face hub shows for a model.

Its YAML front matter is the hub's metadata (``huggingface_hub.ModelCardData``): the task, the base model, and a
``model-index`` entry holding the dev accuracy as GLUE SST-2's validation accuracy, so the hub (and
``huggingface_hub.ModelCard.load``) reads the result without reading the text. The text says what a reader needs
to judge or repeat it: the correct count with its 95% interval, the time to target, every parameter of the run,
and the versions and the kit's commit it ran with. Everything comes from the run folder (``config.json``,
``manifest.json``) and the run's summary, written just after the model.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .config import RunConfig
from .modeling import ID2LABEL, looks_like_path

CARD = "README.md"
# GLUE's SST-2 on the hub: its dev sentences are the "validation" split.
DATASET = {"dataset_type": "glue", "dataset_name": "GLUE SST-2", "dataset_config": "sst2"}


def write_model_card(model_folder: Path, run_folder: Path, summary: dict) -> Path:
    """``README.md`` in ``model_folder``: the card of the model ``run_folder``'s run trained, with ``summary`` (its
    summary.json, which is written after the model)."""
    config = json.loads((Path(run_folder) / "config.json").read_text())
    manifest = json.loads((Path(run_folder) / "manifest.json").read_text())
    path = Path(model_folder) / CARD
    path.write_text(model_card(config, manifest, summary, name=Path(run_folder).name))
    return path


def metadata(config: dict, summary: dict, name: str) -> str:
    """The front matter's YAML: the hub's metadata, with the final dev accuracy in ``model-index``."""
    from huggingface_hub import EvalResult, ModelCardData

    base = str(config["model"])
    accuracy = EvalResult(
        task_type="text-classification",
        task_name="Sentiment classification",
        **DATASET,
        dataset_split="validation",
        metric_type="accuracy",
        metric_name="Accuracy",
        metric_value=summary["acc"],
    )
    return ModelCardData(
        model_name=name,
        # a local folder is no hub id: the hub would refuse it as base_model (the text names it)
        base_model=None if looks_like_path(base) else base,
        datasets=["glue"],
        language="en",
        library_name="transformers",
        pipeline_tag="text-classification",
        metrics=["accuracy"],
        tags=["sst2", "distil-kit"],
        eval_results=[accuracy],
    ).to_yaml()


def model_card(config: dict, manifest: dict, summary: dict, name: str) -> str:
    """The card's text: front matter, then what was trained, how well, how fast, with what."""
    low, high = summary["acc_interval"]
    labels = ", ".join(f"{i} {label}" for i, label in ID2LABEL.items())
    helps = {key: _cell(text) for key, text in RunConfig.help().items()}
    recipe = "\n".join(f"| `{key}` | `{json.dumps(value)}` | {helps.get(key, '')} |" for key, value in config.items())
    versions = "\n".join(
        f"| {what} | {value} |"
        for what, value in (
            ("kit commit (git)", manifest.get("git_commit") or "unknown (not run from a git checkout)"),
            ("Python", manifest.get("python")),
            ("PyTorch", manifest.get("torch")),
            ("Transformers", manifest.get("transformers")),
            ("CUDA", manifest.get("cuda") or "none"),
            ("device", manifest.get("device_name")),
        )
    )
    weights = ", ".join(f"`{f}` sha256 `{h}`" for f, h in (manifest.get("model_weights") or {}).items())
    return f"""---
{metadata(config, summary, name).strip()}
---

# {name}: `{config["model"]}` fine-tuned on SST-2

`{config["model"]}`{f" ({weights})" if weights else ""} fine-tuned on SST-2 (GLUE's binary sentiment task) by
distil-kit with {_recipe(config)}: AdamW (no weight decay on biases and LayerNorm weights), the learning rate
decayed linearly to zero with no warm-up. Labels: {labels}.

## Dev accuracy

{_accuracy(summary, low, high)}

{_time_to_target(config, summary, manifest)}

## Recipe

Every parameter of the run (its `config.json`), resolved: {summary["epochs_run"]} epoch(s) run, {summary["steps"]}
optimizer steps of a global batch of {summary["global_batch_size"]} over {summary["world_size"]} process(es).

| parameter | value | what it is |
| --- | --- | --- |
{recipe}

## Framework versions

| | |
| --- | --- |
{versions}

Run as: `{manifest.get("command") or "unknown"}`

## Use

```python
from transformers import pipeline

classify = pipeline("text-classification", model="path/to/this/folder")
classify("a gripping, funny film")  # [{{'label': 'positive', 'score': ...}}]
```
"""


def _cell(text: str) -> str:
    """Text for a Markdown table cell: ``<output_dir>`` shown, not taken for an HTML tag; no column break."""
    return html.escape(text, quote=False).replace("|", "\\|")


def _accuracy(summary: dict, low: float, high: float) -> str:
    return (
        f"The final model classifies **{summary['acc_correct']} of {summary['dev_rows']}** dev sentences (GLUE's "
        f"validation split) correctly: accuracy {summary['acc']:.4f}, 95% Wilson interval [{low:.4f}, {high:.4f}]. "
        f"Best accuracy at an evaluation during the run: {summary['best_acc']:.4f}."
    )


def _time_to_target(config: dict, summary: dict, manifest: dict) -> str:
    target = config.get("target_acc")
    if target is None:
        return "No target accuracy was set: the run trained every epoch."
    needs = f"{target} ({summary['target_correct']} of {summary['dev_rows']} correct)"
    if summary["time_to_target"] is None:
        return f"Time to target: the target {needs} was not reached in {summary['epochs_run']} epoch(s)."
    return (
        f"Time to target: the target {needs} was reached after {summary['time_to_target']:.1f} s of training "
        f"(evaluations included), at epoch {summary['epochs_to_target']}, on {manifest.get('device_name')}."
    )


def _recipe(config: dict) -> str:
    if config.get("flagperf_exact"):
        return "FlagPerf's own computation (`flagperf_exact`)"
    return "FlagPerf's hyperparameters in the kit's recipe (its departures from FlagPerf's code: docs/recipe.md)"
