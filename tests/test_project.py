"""The project's own promises: one dependency list, clean notebooks, the notebooks run headless."""
import json
import re
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_environment_installs_from_pyproject_only():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    # conda brings only Python and pip; every package comes from pyproject.toml through the editable install.
    assert sorted(re.split(r"[=<>]", d)[0] for d in conda) == ["pip", "python"]
    assert pip == ["-e .[dev]"] and "dev" in project["optional-dependencies"]
    python = next(d for d in conda if d.startswith("python"))
    minimum = project["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, minimum.split(".")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_stored_clean_with_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} is stored with outputs"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    # papermill does not recompute values derived in the parameters cell: literals only.
    for line in params[0].source.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            eval(value.split("  #")[0], {"__builtins__": {}})  # raises on anything but a literal


def test_notebooks_exist():
    assert {p.name for p in NOTEBOOKS} >= {"preprocess.ipynb", "finetune.ipynb", "analysis.ipynb"}


def _papermill(notebook: str, tmp_path: Path, **parameters) -> nbformat.NotebookNode:
    import papermill

    out = tmp_path / f"out-{notebook}"
    papermill.execute_notebook(str(ROOT / "notebooks" / notebook), str(out), parameters=parameters,
                               cwd=str(tmp_path), kernel_name="python3", progress_bar=False)
    return nbformat.read(out, as_version=4)


@pytest.mark.slow
def test_preprocess_notebook_runs_headless(tmp_path, sst2_dir, minilm_dir):
    nb = _papermill("preprocess.ipynb", tmp_path, source=str(sst2_dir), tokenizer=str(minilm_dir),
                    out_dir=str(tmp_path / "data"), padding="longest")
    meta = json.loads((tmp_path / "data" / "dataset" / "preprocess.json").read_text())
    assert meta["splits"]["train"]["rows"] == 67_349
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the token-length histogram is missing"
