"""The finetune notebook in a real browser: Debian's Chromium, driven by Playwright, against a JupyterLab this test
starts on 127.0.0.1 from a temporary copy of the notebooks; and the HTML report (``report --html``) opened from its
file, its figures loaded.

One run of the notebook to its end (the progress display compact and final, no IProgress warning or library noise
on stderr, the figures drawn), then its parameters edited in the page and Run All again in the same kernel (the
second run trains with the edited parameters), a second notebook interrupted from the Kernel menu (one message, no
traceback, the checkpoint on disk, the cells below showing the partial run), then the first notebook reopened from
its saved file (the final progress still shown). Screenshots go to $DISTIL_KIT_ARTIFACTS (default: the test's tmp
folder).

Needs /usr/bin/chromium (Debian's chromium package; .ci/run installs it) and the playwright package (the dev
extra); Playwright's own browser download is never used.
"""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# No news or update checks (the machine has no network); every cell in the page, none virtualized; the notebook's
# kernel started without a "Select Kernel" dialog (it shows when the kernel list arrives after the notebook).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"checkForUpdates": False, "fetchNews": "false"},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
}
FIRST = {"output_dir": "runs/first", "epochs": 2, "max_train_samples": 256, "log_every": 2}
SECOND = {"output_dir": "runs/stopped", "epochs": 1, "max_train_samples": 20_000, "log_every": 5}
AGAIN_EPOCHS = 1  # the first notebook's second Run All, its parameters edited in the page
MINUTE = 60_000  # ms


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_parameters(path: Path, **values) -> None:
    """Rewrite the named lines of ``path``'s parameters cell as ``name = value`` (a read-modify-write of a copy)."""
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    lines = cell.source.splitlines()
    for name, value in values.items():
        matches = [i for i, line in enumerate(lines) if re.match(rf"{name}\b\s*(:[^=]*)?=", line)]
        assert len(matches) == 1, f"parameter {name} not in {path.name}'s parameters cell"
        lines[matches[0]] = f"{name} = {value!r}"
    cell.source = "\n".join(lines)
    nbformat.write(nb, path)


@pytest.fixture
def kit(tmp_path, tiny_model, sst2_dir) -> Path:
    """A project folder holding a copy of notebooks/: finetune.ipynb set for a short run, second.ipynb for a long
    one to interrupt. Relative output_dirs: the runs land under the project root, not under notebooks/."""
    kit = tmp_path / "kit"
    shutil.copytree(ROOT / "notebooks", kit / "notebooks")
    common = {"model": str(tiny_model), "data_dir": str(sst2_dir), "target_acc": None, "save_model": False}
    set_parameters(kit / "notebooks" / "finetune.ipynb", **common, **FIRST)
    shutil.copy(ROOT / "notebooks" / "finetune.ipynb", kit / "notebooks" / "second.ipynb")
    set_parameters(kit / "notebooks" / "second.ipynb", **common, **SECOND)
    return kit


class Lab:
    def __init__(self, url: str, token: str):
        self.url, self.token = url, token

    def __call__(self, notebook: str) -> str:
        return f"{self.url}/lab/tree/notebooks/{notebook}?token={self.token}"

    def shut_down_kernels(self) -> None:
        """End every session and its kernel (what closing and shutting down a notebook does)."""
        headers = {"Authorization": f"token {self.token}"}
        with urllib.request.urlopen(urllib.request.Request(f"{self.url}/api/sessions", headers=headers)) as r:
            sessions = json.load(r)
        for session in sessions:
            request = urllib.request.Request(f"{self.url}/api/sessions/{session['id']}", headers=headers)
            request.method = "DELETE"
            urllib.request.urlopen(request).close()


@pytest.fixture
def lab(kit, tmp_path):
    """JupyterLab on 127.0.0.1 (a free port, a token) serving ``kit``; kernels import this checkout."""
    settings = tmp_path / "lab-settings"
    for plugin, values in LAB_SETTINGS.items():
        file = settings / f"{plugin}.jupyterlab-settings"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(values))
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",  # the tiny model is fastest on one thread, and the machine is shared
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    port, token = _free_port(), secrets.token_hex(16)
    log = (tmp_path / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",  # CI runs as root
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={kit}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                log.close()
                pytest.fail(f"JupyterLab did not start: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
            time.sleep(0.3)
    yield Lab(url, token)
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


@pytest.fixture
def browser(tmp_path):
    """Debian's Chromium with a fresh profile."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium chromium-driver (.ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(MINUTE)
        yield context
        context.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("DISTIL_KIT_ARTIFACTS", tmp_path / "artifacts")) / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- JupyterLab, as a user drives it ----------------------------------------------------------------------------

ALL_CELLS_RAN = """() => {
    const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
    const idle = document.querySelector(".jp-Notebook-ExecutionIndicator[data-status='idle']");
    const error = document.querySelector('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]');
    return (prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent))) || (idle && error);
}"""  # every cell has run, or one failed (Run All stops there)


KERNEL_IDLE = """() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]
    .some(t => /ipykernel.*Idle/.test(t.innerText))"""  # the status bar's "Python 3 (ipykernel) | Idle"


def open_notebook(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=2 * MINUTE)
    page.wait_for_function(KERNEL_IDLE, timeout=2 * MINUTE)


def menu(page, top: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(rf"^{top}$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(rf"^{item}$")).click()


def run_all(page) -> None:
    menu(page, "Run", "Run All Cells")


def wait_all_ran(page, timeout: int = MINUTE) -> None:
    page.wait_for_function(ALL_CELLS_RAN, timeout=timeout)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
    assert stderr_outputs(page) == [], "a cell wrote to stderr (an error, a warning or a library's noise)"


def cell_with(page, code: str):
    """The code cell whose source contains ``code``."""
    return page.locator(".jp-Notebook .jp-CodeCell").filter(has=page.locator(".jp-InputArea", has_text=code))


def output_text(page) -> str:
    return "\n".join(page.locator(".jp-Notebook .jp-OutputArea").all_inner_texts())


def stderr_outputs(page) -> list[str]:
    return page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()


def rendered_images(locator) -> int:
    return locator.locator("img").evaluate_all("imgs => imgs.filter(i => i.complete && i.naturalWidth > 0).length")


def assert_final_progress(page, steps: int, evaluations: int) -> None:
    progress = page.locator(".distil-kit-progress")
    assert progress.count() == 1, "one progress display per run"
    text = progress.inner_text()
    assert f"step {steps}/{steps} (100%)" in text and "finished:" in text, text
    assert progress.locator("tbody tr").count() == evaluations  # one row per evaluation, epoch 0 included
    assert "/872" in progress.locator("tbody tr").first.inner_text()


# --- the test ---------------------------------------------------------------------------------------------------


def test_finetune_notebook_in_jupyterlab(lab, browser, kit, shots):
    started = time.monotonic()
    try:
        drive(lab, browser, kit, shots)
    except BaseException:  # what the pages showed, for the CI artifacts
        for i, page in enumerate(browser.pages):
            page.screenshot(path=str(shots / f"failure-{i}.png"), full_page=True)
        raise
    print(f"browser test: {time.monotonic() - started:.0f} s; screenshots in {shots}")


def drive(lab, browser, kit, shots) -> None:
    page = browser.new_page()
    steps = FIRST["epochs"] * FIRST["max_train_samples"] // 32

    # 1. Run all, to the end.
    open_notebook(page, lab("finetune.ipynb"))
    run_all(page)
    wait_all_ran(page)
    train = cell_with(page, "notebook.finetune(")
    assert_final_progress(page, steps, FIRST["epochs"] + 1)
    box = page.locator(".distil-kit-progress").bounding_box()
    assert box["height"] < 300, f"the progress display is {box['height']:.0f} px high"
    assert train.locator(".jp-OutputArea-output").count() == 2  # the progress display and the live figure
    assert rendered_images(train) == 1 and rendered_images(page.locator(".jp-Notebook")) == 3  # + two curves
    assert "IProgress" not in output_text(page)
    assert stderr_outputs(page) == [], "a library wrote to stderr"
    assert "Traceback" not in output_text(page)
    train.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "1-finished.png"))

    # 1b. The parameters edited in the page, then Run All again in the same kernel (the first run's globals, run
    # and runs among them, still there): the second run trains with the new parameters.
    again = kit / "runs" / "again" / "summary.json"
    editor = page.locator(".jp-Notebook .jp-CodeCell").first.locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+End")
    page.keyboard.type(f"\noutput_dir = 'runs/again'\nepochs = {AGAIN_EPOCHS}")
    run_all(page)
    deadline = time.monotonic() + 2 * MINUTE / 1000
    while not again.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert again.is_file(), "the second Run All did not finish a run in runs/again"
    wait_all_ran(page)
    steps = AGAIN_EPOCHS * FIRST["max_train_samples"] // 32
    assert_final_progress(page, steps, AGAIN_EPOCHS + 1)
    assert json.loads(again.read_text())["epochs_run"] == AGAIN_EPOCHS
    assert "unknown parameter" not in output_text(page) and "Traceback" not in output_text(page)
    train.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "1b-run-again.png"))
    menu(page, "File", "Save Notebook")
    page.wait_for_selector(".lm-TabBar-tab.jp-mod-current:not(.jp-mod-dirty)")
    saved = nbformat.read(kit / "notebooks" / "finetune.ipynb", as_version=4)
    outputs = next(c for c in saved.cells if "notebook.finetune(" in c.source).outputs
    assert "distil-kit-progress" in outputs[0].data["text/html"]
    assert (kit / "runs" / "first" / "summary.json").is_file()  # relative to the project root, not notebooks/

    # 2. A longer run, interrupted from the Kernel menu once training is under way.
    page = browser.new_page()
    open_notebook(page, lab("second.ipynb"))
    run_all(page)
    progress = page.locator(".distil-kit-progress")
    page.wait_for_function(
        """() => {
            const p = document.querySelector('.distil-kit-progress');
            const m = p && p.innerText.match(/step (\\d+)\\//);
            return m && Number(m[1]) >= 30;
        }""",
        timeout=2 * MINUTE,
    )
    assert "ETA" in progress.inner_text() and progress.locator("tbody tr").count() == 1
    page.screenshot(path=str(shots / "2-mid-run.png"))
    menu(page, "Kernel", "Interrupt Kernel")
    wait_all_ran(page)
    train = cell_with(page, "notebook.finetune(")
    message = train.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stdout']").inner_text()
    step = int(re.search(r"after step (\d+) of", message).group(1))
    assert (
        message.startswith("Stopped (SIGINT) after step")
        and "checkpoint saved in runs/stopped/checkpoints" in message
    )
    assert 'set resume = True and output_dir = "runs/stopped"' in message
    assert f"stopped by SIGINT after step {step}" in progress.inner_text()
    assert "Traceback" not in output_text(page) and "RunInterrupted" not in output_text(page)
    assert stderr_outputs(page) == []
    checkpoints = kit / "runs" / "stopped" / "checkpoints"
    assert any(checkpoints.iterdir()), "no checkpoint written"
    assert rendered_images(cell_with(page, "plots.loss_figure(runs)")) == 1  # the partial run's curves so far
    assert "unfinished, so no summary yet" in cell_with(page, "r.summary for r in runs").inner_text()
    train.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "3-interrupted.png"))

    # 3. The first notebook reopened from its saved file, in a new tab with its kernel shut down.
    for tab in browser.pages:
        tab.close()
    lab.shut_down_kernels()
    page = browser.new_page()
    open_notebook(page, lab("finetune.ipynb"))
    assert_final_progress(page, steps, AGAIN_EPOCHS + 1)  # saved after the second Run All
    assert rendered_images(cell_with(page, "notebook.finetune(")) == 1
    cell_with(page, "notebook.finetune(").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "4-reopened.png"))


# --- the HTML report, opened from its file ---------------------------------------------------------------------


def test_html_report_in_chromium(browser, shots, tmp_path):
    """``report --html``'s file as a reader opens it: every figure decoded (data URIs, nothing fetched), tables and
    configurations shown, no code."""
    from test_analysis import FIGURES, write_run

    from distil_kit import records, report

    folders = [write_run(tmp_path / "runs" / "a" / f"seed-{s}", seed=s) for s in (0, 1, 2)]
    folders.append(write_run(tmp_path / "runs" / "b-bf16", precision="bf16", batch=64, skill=0.95, speed=90.0))
    path = report.write_html(records.find_runs(folders), tmp_path / "report")
    page = browser.new_page()
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    images = page.locator("img")
    assert images.count() == len(FIGURES)
    assert rendered_images(page.locator("body")) == len(FIGURES), "an image did not load"
    assert page.locator(".jp-CodeCell .jp-InputArea").count() == 0  # code cells show their outputs only
    text = page.locator("body").inner_text()
    for heading in ("Runs side by side", "Configurations", "FlagPerf's metrics", "Repeated seeds"):
        assert heading in text, heading
    assert "check_notebook_parameters" not in text and "Traceback" not in text
    page.screenshot(path=str(shots / "report-top.png"))
    page.locator("h2#Repeated-seeds").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "report-seeds.png"))
    page.screenshot(path=str(shots / "report-full.png"), full_page=True)
    print(f"HTML report {path}; screenshots in {shots}")
