"""The kit in a Jupyter kernel: the progress display, clean stops, one-line errors, paths, the notebook files.

Kernels are real (ipykernel's python3, started by nbclient or papermill) and import this checkout (PYTHONPATH).
The browser's view of the same is tests/test_browser.py.
"""

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from distil_kit import KitError, notebook
from distil_kit.config import list_parameter
from distil_kit.notebook import View, clock, eta_seconds, project_root

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
STDERR = "stderr"


# --- without a kernel -------------------------------------------------------------------------------------------


def test_eta_is_the_remaining_steps_at_the_mean_rate_plus_the_evaluations_left():
    assert eta_seconds(0, 20, 0.0, 2, None) is None  # nothing trained yet: unknown
    assert eta_seconds(10, 20, 5.0, 1, 2.0) == pytest.approx(5.0 + 2.0)
    assert eta_seconds(20, 20, 9.0, 0, 2.0) == 0.0
    assert eta_seconds(0, 20, 3.0, 2, 2.0) is None  # seconds spent but no step done: no rate yet
    assert eta_seconds(5, 20, 0.0, 1, 2.0) is None  # no training time measured: no rate
    assert eta_seconds(1, 20, 0.5, 0, None) == pytest.approx(9.5)  # 19 steps left at 0.5 s a step
    assert eta_seconds(10, 20, 5.0, 2, None) == pytest.approx(5.0)  # no evaluation timed yet: steps only
    assert [clock(None), clock(59.6), clock(61), clock(3725)] == ["?", "1:00", "1:01", "1:02:05"]


def _view(**changes) -> View:
    evals = [
        {"epoch": e, "step": 10 * e, "accuracy": 0.5092, "correct": 444, "total": 872, "acc_low": 0.476}
        | {"acc_high": 0.542, "eval_s": 0.3, "train_s": 10.0 * e}
        for e in range(3)
    ]
    values = dict(
        folder="runs/<a&b>",
        plan="300 training rows",
        step=20,
        total_steps=20,
        epoch=2,
        epochs=2,
        trained_s=21.0,
        eta_s=None,
        loss=0.69312,
        samples_per_s=38.5,
        evals=evals,
        status="finished: 2 epoch(s) run",
    )
    return View(**{**values, **changes})


def test_view_text_is_the_final_state_in_a_few_lines():
    lines = _view().text().splitlines()
    assert lines[0] == "runs/<a&b>: 300 training rows"
    assert lines[1] == "step 20/20 (100%) · epoch 2/2 · trained 0:21 · loss 0.6931 · 38.5 samples/s"
    # the table: each column right-aligned to its widest cell, two spaces apart
    assert lines[2:6] == [
        "              epoch  step  dev accuracy  correct  95% interval  training s",
        "0 (before training)     0        0.5092  444/872   0.476–0.542         0.0",
        "                  1    10        0.5092  444/872   0.476–0.542        10.0",
        "                  2    20        0.5092  444/872   0.476–0.542        20.0",
    ]
    assert lines[-1] == "finished: 2 epoch(s) run" and len(lines) == 7
    running = _view(step=5, epoch=1, eta_s=75.0, status="").text().splitlines()
    assert "step 5/20 (25%) · epoch 1/2 · trained 0:21, ETA 1:15" in running[1] and len(running) == 6


def test_view_leaves_blank_the_counts_and_interval_an_evaluation_row_lacks():
    bare = {"epoch": 1, "step": 10, "accuracy": 0.75, "eval_s": 0.3, "train_s": 12.34}  # no correct/total/interval
    lines = _view(evals=[bare]).text().splitlines()
    assert lines[2:4] == [
        "epoch  step  dev accuracy  correct  95% interval  training s",
        "    1    10        0.7500" + " " * 31 + "12.3",  # two blank columns of 7 and 12, each after 2 spaces
    ]
    assert _Shown(_view(evals=[bare]).html()).texts[-3:] == ["0.7500", "12.3", "finished: 2 epoch(s) run"]


def test_view_of_a_run_of_zero_or_one_optimizer_step_shows_it_complete():
    """A FlagPerf-exact run counts its steps as micro-batches // accumulation: 0 when its micro-batches never fill a
    step. The display says 100% then rather than dividing by zero."""
    view = _view(step=0, total_steps=0, evals=[])
    assert view.text().splitlines()[1].startswith("step 0/0 (100%) · epoch 2/2")
    assert 'max="1"' in view.html()  # an HTML progress bar needs a positive max
    one_step = _view(step=1, total_steps=1, evals=[])
    assert one_step.text().splitlines()[1].startswith("step 1/1 (100%)")
    assert '<progress value="1" max="1"' in one_step.html()  # a full bar


class _Shown(HTMLParser):
    """What a browser shows of an HTML output: its pieces of text in order (tags between them split them)."""

    def __init__(self, page: str):
        super().__init__()
        self.texts: list[str] = []
        self.feed(page)
        self.close()

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.texts.append(data.strip())


def test_view_html_escapes_and_holds_a_row_per_evaluation():
    page = _view().html()
    assert "runs/&lt;a&amp;b&gt;" in page and "<a&b>" not in page
    assert page.count("<tr>") == 1 + 3 and '<progress value="20" max="20"' in page
    assert page.startswith('<div class="distil-kit-progress"')  # the class a notebook's own style sheet can use
    # the same words as the text form, with the table as a table: a header row, then a row per evaluation
    header = ["epoch", "step", "dev accuracy", "correct", "95% interval", "training s"]
    rows = [
        ["0 (before training)", "0", "0.5092", "444/872", "0.476–0.542", "0.0"],
        ["1", "10", "0.5092", "444/872", "0.476–0.542", "10.0"],
        ["2", "20", "0.5092", "444/872", "0.476–0.542", "20.0"],
    ]
    assert _Shown(page).texts == [
        "runs/<a&b>",
        ": 300 training rows",
        "step 20/20 (100%) · epoch 2/2 · trained 0:21 · loss 0.6931 · 38.5 samples/s",
        *header,
        *(cell for row in rows for cell in row),
        "finished: 2 epoch(s) run",
    ]
    assert '<div style="color:inherit">finished: 2 epoch(s) run</div></div>' in page  # a finished run: plain
    stopped = _view(status="stopped by SIGINT after step 20", ok=False).html()
    assert '<div style="color:#b35900">stopped by SIGINT after step 20</div>' in stopped  # a stopped one: orange
    running = _view(step=5, epoch=1, eta_s=75.0, status="").html()
    assert _Shown(running).texts[-1] == "20.0" and '<progress value="5" max="20"' in running  # no status line yet


def test_project_root_is_above_the_kits_notebooks_folder_only(tmp_path):
    (tmp_path / "notebooks").mkdir()
    assert project_root(tmp_path / "notebooks") == tmp_path / "notebooks"  # no kit notebook in it
    (tmp_path / "notebooks" / "finetune.ipynb").write_text("{}")
    assert project_root(tmp_path / "notebooks") == tmp_path
    assert project_root(tmp_path) == tmp_path


def test_list_parameters_as_papermill_passes_them(tmp_path, monkeypatch):
    """papermill's -p hands a list over as text (its -y and -f as YAML, its Python API as a list): each is a list."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "a").mkdir(parents=True)
    for text in ('["runs/a","runs/b"]', "[runs/a, runs/b]", "- runs/a\n- runs/b"):
        assert list_parameter("runs", text, patterns=True) == ["runs/a", "runs/b"]
    assert list_parameter("seeds", "[0,1,2]") == list_parameter("seeds", [0, 1, 2]) == [0, 1, 2]
    assert list_parameter("paired", "[]") == []
    # one path or glob pattern that names something stays one pattern
    assert list_parameter("runs", "runs/*", patterns=True) == ["runs/*"]
    assert list_parameter("runs", "runs/a", patterns=True) == ["runs/a"]


@pytest.mark.parametrize(
    "name, value, patterns",
    [("runs", "runs/a,runs/b", True), ("runs", '["runs/a", "runs/b"', True), ("benchmarks", "*.csv", True)]
    + [("seeds", "0,1,2", False), ("seeds", 3, False), ("paired", "runs/a", False)],
)
def test_a_list_parameter_that_is_not_one_says_where_it_looked_and_how_to_pass_a_list(
    name, value, patterns, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KitError) as error:
        list_parameter(name, value, patterns=patterns)
    message = str(error.value)
    assert message.startswith(f"parameter {name!r}={value!r}: not a list") and "\n" not in message
    assert f"-y '{name}: [x, y]'" in message  # papermill's option for YAML
    if patterns:
        assert f"no file or folder under {tmp_path} matches it" in message


def test_a_terminal_is_no_kernel():
    assert not notebook.in_kernel()


# --- the notebook files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_file_opens_unchanged_on_the_one_kernel(path):
    """nbformat 4.5 with cell ids and written as Jupyter writes it, so opening and saving changes nothing; the
    kernel is python3, the one the README and CI use."""
    text = path.read_text()
    raw = json.loads(text)
    assert (raw["nbformat"], raw["nbformat_minor"]) == (4, 5) and all(c.get("id") for c in raw["cells"])
    assert raw["metadata"]["kernelspec"]["name"] == "python3"
    assert nbformat.writes(nbformat.reads(text, as_version=nbformat.NO_CONVERT)) + "\n" == text
    assert not nbformat.validate(nbformat.reads(text, as_version=4))


def test_readme_and_ci_name_the_notebooks_kernel():
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    assert "--name distil-kit" not in readme
    assert "--name python3" in ci and "python3" in readme


# --- in a kernel ------------------------------------------------------------------------------------------------


@pytest.fixture
def kernel_env(monkeypatch):
    """Kernels import this checkout and train on one thread (see conftest.one_thread)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def _execute(sources: list[str], cwd: Path, timeout: int = 240) -> list[list[dict]]:
    """Run ``sources`` as the cells of one notebook in a python3 kernel started in ``cwd``; each cell's outputs."""
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = NotebookClient(
        nb, kernel_name="python3", timeout=timeout, allow_errors=True, resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    return [c.outputs for c in nb.cells]


def _text(outputs: list[dict], name: str | None = None) -> str:
    return "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and name in (None, o.name))


def test_kernel_setup_paths_errors_and_kernel_check(kernel_env, tmp_path):
    kit = tmp_path / "kit"
    shutil.copytree(ROOT / "notebooks", kit / "notebooks")
    cells = _execute(
        [
            "import os\nfrom distil_kit import notebook\nnotebook.setup()\nprint(os.getcwd())",
            "import transformers.utils.logging  # imports tqdm.auto, which warns in a kernel without ipywidgets",
            "print(notebook.in_kernel())",
            "from distil_kit import KitError\nraise KitError('output_dir runs/x holds a finished run')",
            "raise ValueError('a bug')",
        ],
        cwd=kit / "notebooks",
    )
    moved, imported, in_kernel, kit_error, bug = cells
    assert _text(moved).splitlines() == [
        f"working directory: {kit} (relative paths start here, as from the repository root)",
        str(kit),
    ]
    assert _text(in_kernel) == "True\n"
    assert not _text(imported, STDERR), _text(imported, STDERR)  # no "TqdmWarning: IProgress not found"
    (error,) = kit_error
    assert error.output_type == "error" and error.ename == "KitError"  # still an error: papermill stops on it
    assert error.traceback == ["\x1b[0;31mKitError\x1b[0m: output_dir runs/x holds a finished run"]
    (error,) = bug
    assert error.ename == "ValueError" and len(error.traceback) > 1  # a real bug keeps its traceback


STOP_AT_STEP_3 = """
import os, signal
from distil_kit import Callback

class Interrupt(Callback):  # what the kernel's interrupt does: SIGINT to the kernel process, once
    sent = False

    def on_log(self, trainer, row):
        if trainer.progress.step >= 3 and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)
"""


def test_interrupt_in_a_kernel_is_one_message_and_leaves_the_partial_run(kernel_env, tmp_path, tiny_model, sst2_dir):
    config = {
        "model": str(tiny_model),
        "data_dir": str(sst2_dir),
        "output_dir": "runs/stopped",
        "epochs": 1,
        "max_train_samples": 640,
        "log_every": 1,
        "save_model": False,
    }
    cells = _execute(
        [
            f"from distil_kit import RunConfig, notebook, plots\nnotebook.setup()\n{STOP_AT_STEP_3}",
            f"run = notebook.finetune(RunConfig.from_dict({config!r}), callbacks=[Interrupt()])",
            "print(run.folder, run.finished, run.steps.step.max())\nnotebook.figure_so_far(run)",
        ],
        cwd=tmp_path,
    )
    _, trained, after = cells
    assert [o.output_type for o in trained] == ["display_data", "display_data", "stream"], trained
    # the signal arrives during step 3's log row; the loop sees it after the step under way then, step 4
    assert "stopped by SIGINT after step 4" in trained[0].data["text/plain"].splitlines()[-1]
    assert trained[1].data["image/png"]
    first, then = _text(trained).splitlines()
    assert trained[2].name == "stdout" and first == (
        "Stopped (SIGINT) after step 4 of 20; checkpoint saved in runs/stopped/checkpoints."
    )
    assert then.startswith('To continue: set resume = True and output_dir = "runs/stopped" in the parameters cell')
    assert _text(after).startswith("runs/stopped False 4") and "image/png" in after[-1].data
    assert any((tmp_path / "runs" / "stopped" / "checkpoints").iterdir())


def _with_values(parameters_cell: str, **values) -> str:
    """The parameters cell with ``values`` in place of its defaults, as someone edits it."""
    lines = parameters_cell.splitlines()
    for name, value in values.items():
        at = next(i for i, line in enumerate(lines) if re.match(rf"{name}\b\s*[:=]", line))
        lines[at] = f"{name} = {value!r}"
    return "\n".join(lines)


@pytest.mark.slow
def test_the_finetune_notebook_runs_twice_in_one_kernel_with_a_parameter_edited_between(
    kernel_env, tmp_path, tiny_model, sst2_dir
):
    """Run All, edit the parameters cell, Run All again: the first run's globals (run, runs) are no parameters, and
    the second run trains with the edited values."""
    nb = nbformat.read(ROOT / "notebooks" / "finetune.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    parameters = code[0]
    assert "parameters" in nb.cells[[c.source for c in nb.cells].index(parameters)].metadata["tags"]
    values = {"model": str(tiny_model), "data_dir": str(sst2_dir), "output_dir": "runs/first", "epochs": 1}
    values |= {"max_train_samples": 32, "train_batch_size": 16, "target_acc": None, "save_model": False}
    edited = {**values, "output_dir": "runs/second", "epochs": 2}
    first, second = _with_values(parameters, **values), _with_values(parameters, **edited)
    cells = _execute([first, *code[1:], second, *code[1:]], cwd=tmp_path, timeout=300)
    errors = [o for outputs in cells for o in outputs if o.output_type == "error"]
    assert not errors, errors[0].traceback[-1]
    from distil_kit.records import Run

    runs = [Run.read(tmp_path / "runs" / name) for name in ("first", "second")]
    assert [r.summary["epochs_run"] for r in runs] == [1, 2] and [r.config["epochs"] for r in runs] == [1, 2]
    assert runs[1].evals.epoch.tolist() == [0, 1, 2]


# --- the notebooks, run as papermill runs them -------------------------------------------------------------------


def _papermill(notebook_path: Path, out: Path, cwd: Path, **parameters) -> nbformat.NotebookNode:
    import papermill

    papermill.execute_notebook(
        str(notebook_path), str(out), parameters=parameters, cwd=str(cwd), kernel_name="python3", progress_bar=False
    )
    return nbformat.read(out, as_version=4)


def test_papermill_injecting_a_parameter_the_cell_does_not_declare_stops_at_the_config_cell(kernel_env, tmp_path):
    """papermill only warns of an unknown -p NAME; the config cell, reading the injected cell from the kernel's
    history, stops the notebook there naming the nearest parameter."""
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError) as error:
        _papermill(ROOT / "notebooks" / "finetune.ipynb", tmp_path / "out.ipynb", tmp_path, epoch=3)
    assert error.value.evalue == "notebook parameters: unknown parameter 'epoch'; did you mean 'epochs'?"


@pytest.mark.slow
def test_notebooks_from_the_notebooks_folder_show_progress_and_resolve_paths(
    kernel_env, tmp_path, tiny_model, sst2_dir
):
    """finetune then analysis, each started in notebooks/ (as JupyterLab starts them) with relative paths: the run
    lands under the project root, the training cell shows one display in its final state and a figure, and no
    cell writes to stderr."""
    kit = tmp_path / "kit"
    shutil.copytree(ROOT / "notebooks", kit / "notebooks")
    parameters = {"model": str(tiny_model), "data_dir": str(sst2_dir), "output_dir": "runs/nb", "epochs": 2}
    parameters |= {"max_train_samples": 256, "target_acc": None, "save_model": False, "log_every": 2}
    nb = _papermill(
        kit / "notebooks" / "finetune.ipynb", tmp_path / "finetune-out.ipynb", kit / "notebooks", **parameters
    )
    assert (kit / "runs" / "nb" / "summary.json").is_file()
    train = next(c for c in nb.cells if "notebook.finetune(" in c.source)
    progress, figure = train.outputs
    text = progress.data["text/plain"].splitlines()
    assert "distil-kit-progress" in progress.data["text/html"] and len(text) <= 15
    assert text[1].startswith("step 16/16 (100%) · epoch 2/2") and text[-1].startswith("finished: 2 epoch(s) run")
    assert [line.split()[0] for line in text[3:-1]] == ["0", "1", "2"]  # one row per evaluation
    assert figure.data["image/png"]
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o.text for o in outputs if o.output_type == "stream" and o.name == STDERR]

    analysis = _papermill(
        kit / "notebooks" / "analysis.ipynb",
        tmp_path / "analysis-out.ipynb",
        kit / "notebooks",
        runs="runs/*",  # one glob string
        out_dir="analysis_out",
    )
    comparison = (kit / "analysis_out" / "comparison.csv").read_text()
    assert str(Path("runs") / "nb") in comparison
    printed = "".join(o.get("text", "") for c in analysis.cells for o in c.get("outputs", []))
    assert f"no benchmark CSV matches ['benchmarks/results/bench-*.csv'] under {kit}" in printed


@pytest.mark.slow
def test_a_seed_sweep_from_the_notebook_then_its_paired_comparison(kernel_env, tmp_path, tiny_model, sst2_dir):
    """finetune with seeds: one run per seed and the sweep record, shown in the notebook; analysis with paired:
    the comparison of two seeds' runs in words."""
    kit = tmp_path / "kit"
    shutil.copytree(ROOT / "notebooks", kit / "notebooks")
    parameters = {"model": str(tiny_model), "data_dir": str(sst2_dir), "output_dir": "runs/sweep", "epochs": 1}
    # lists as papermill's -p passes them, as text: -p seeds '[0, 1]', and below -p paired '[..., ...]'
    parameters |= {"max_train_samples": 64, "target_acc": 0.5, "save_model": False, "seeds": "[0, 1]"}
    nb = _papermill(
        kit / "notebooks" / "finetune.ipynb", tmp_path / "sweep-out.ipynb", kit / "notebooks", **parameters
    )
    sweep = json.loads((kit / "runs" / "sweep" / "sweep.json").read_text())
    assert sweep["seeds"] == [0, 1] and sweep["target_correct"] == 436
    shown = [o for c in nb.cells if c.cell_type == "code" and "sweep.json" in c.source for o in c.outputs]
    assert [o.output_type for o in shown] == ["display_data", "display_data"]  # the seeds figure, the record
    assert "pass_rate" in shown[1].data["text/plain"]

    analysis = _papermill(
        kit / "notebooks" / "analysis.ipynb",
        tmp_path / "analysis-out.ipynb",
        kit / "notebooks",
        runs="runs/sweep/seed-*",
        out_dir="analysis_out",
        paired="[runs/sweep/seed-0, runs/sweep/seed-1]",
    )
    printed = "".join(o.get("text", "") for c in analysis.cells for o in c.get("outputs", []))
    assert re.search(r"runs/sweep/seed-1 vs runs/sweep/seed-0: [+-]?\d+\.\d\d points, 95% interval \[", printed)


@pytest.mark.slow
def test_sigterm_to_papermill_loses_at_most_the_work_since_the_last_timed_checkpoint(
    kernel_env, tmp_path, tiny_model, sst2_dir
):
    """papermill killed with SIGTERM takes its kernel with it within a second, whatever the kernel was doing: no
    handler of the run's gets to write. What survives is the last checkpoint, and timed checkpoints
    (checkpoint_minutes, here 0.02: 1.2 s) bound how old it is; the folder resumes to a finished run."""
    import signal
    import subprocess
    import sys
    import time

    from distil_kit import checkpoint
    from distil_kit.records import Run

    out = tmp_path / "run"
    parameters = {"model": str(tiny_model), "data_dir": str(sst2_dir), "output_dir": str(out), "epochs": 2}
    parameters |= {"max_train_samples": 4000, "train_batch_size": 4, "target_acc": None, "save_model": False}
    parameters |= {"log_every": 1, "checkpoint_minutes": 0.02}
    sets = [a for k, v in parameters.items() for a in ("-p", k, str(v))]  # papermill reads None as None
    notebook_path = ROOT / "notebooks" / "finetune.ipynb"
    log = tmp_path / "papermill.log"
    with log.open("w") as err:
        command = [sys.executable, "-m", "papermill", str(notebook_path), str(tmp_path / "o.ipynb"), *sets]
        proc = subprocess.Popen([*command, "--cwd", str(ROOT)], stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 180
    while len(checkpoint.checkpoints(out / "checkpoints")) < 2:  # a few timed checkpoints in
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    killed = time.time()
    proc.wait(timeout=60)
    time.sleep(2)  # the kernel goes with papermill
    latest = checkpoint.checkpoints(out / "checkpoints")[-1]
    age = killed - latest.stat().st_mtime
    assert not Run(out).finished
    # the bound: checkpoint_minutes, plus the log row it waits for (one step) and the write itself
    assert age < 0.02 * 60 + 2.0, f"the last checkpoint was {age:.1f} s old when papermill was killed"
    resumed = subprocess.run(
        [sys.executable, "-m", "distil_kit", "finetune", "--resume", "--set", f"output_dir={out}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert Run(out).finished
