"""Every command in the README works as written: its bash blocks, run top to bottom in one shell on a fresh copy of
the repository, succeed and leave nothing git does not ignore.

As written, but for what the README's Tests section names: ``MODEL`` is the packaged all-MiniLM-L6-v2 (standing in
for the hub's distilbert-base-uncased), ``DISTIL_KIT_SST2`` the real GLUE SST-2 folder, and ``params/smoke.yaml``
replaces ``params/flagperf_*.yaml`` (seconds instead of hours). The hub is off (``HF_HUB_OFFLINE=1``, an empty hub
cache): a command that still needed it would fail at once. A block under a
``<!-- tests/test_readme.py: not run (why) -->`` comment is left out.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NOT_RUN = re.compile(r"<!-- tests/test_readme\.py: not run \(([^<>]*)\) -->$")
FLAGPERF_PARAMS = re.compile(r"params/flagperf_\w+\.yaml")
SMOKE_PARAMS = "params/smoke.yaml"


def readme_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """``(line, code, why not run or None)`` for every bash block of ``text``, in order."""
    blocks = []
    for match in re.finditer(r"^```bash\n(.*?)^```$", text, flags=re.M | re.S):
        skip = NOT_RUN.search(text[: match.start()].rstrip())
        why = " ".join(skip.group(1).split()) if skip else None
        blocks.append((text.count("\n", 0, match.start()) + 1, match.group(1), why))
    return blocks


def runnable_script(text: str) -> str:
    """The blocks to run, as one bash script that names each block's README line before running it."""
    parts = ["set -euo pipefail"]
    for line, code, why in readme_blocks(text):
        if why is None:
            parts += [f"echo '::: README.md line {line}' >&2", FLAGPERF_PARAMS.sub(SMOKE_PARAMS, code)]
    return "\n".join(parts) + "\n"


def test_readme_blocks_are_run_or_say_why_not():
    text = README.read_text()
    blocks = readme_blocks(text)
    assert text.count("```bash") == len(blocks)
    run = [code for _, code, why in blocks if why is None]
    assert len(run) >= 5 and all(why.strip() for _, _, why in blocks if why is not None)
    script = "\n".join(run)
    # the commands a reader tries first are all run: preprocess, both notebooks, the CLI's finetune and report
    for command in (
        "distil_kit preprocess",
        "notebooks/finetune.ipynb",
        "notebooks/analysis.ipynb",
        "finetune --params",
    ):
        assert command in script, command
    assert FLAGPERF_PARAMS.search(script), "no params/flagperf_*.yaml left to stand in for: update the test's note"
    # data comes from DISTIL_KIT_SST2, the hub, or a folder a command made: never this project's CI layout
    assert "../shared" not in text and "shared/data" not in text


def test_readme_script_substitutes_only_the_documented_parameters():
    text = "a\n<!-- tests/test_readme.py: not run (needs\n  a GPU) -->\n```bash\nrm -rf /\n```\n\n```bash\n" + (
        "python -m distil_kit finetune --params params/flagperf_a100x1x8.yaml\n```\n"
    )
    assert readme_blocks(text) == [
        (4, "rm -rf /\n", "needs a GPU"),
        (8, "python -m distil_kit finetune --params params/flagperf_a100x1x8.yaml\n", None),
    ]
    script = runnable_script(text)
    assert "rm -rf" not in script and "--params params/smoke.yaml" in script and "README.md line 8" in script


def _fresh_copy(dest: Path) -> Path:
    """The repository's files as a clone of them would hold them (tracked, and new ones git does not ignore),
    committed, so that git status shows what the commands leave behind."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is not in a clone of it
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git = ["git", "-c", "user.name=readme-test", "-c", "user.email=readme-test@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "fresh copy"], cwd=dest, check=True)
    return dest


@pytest.mark.slow
def test_readme_commands_run_as_written_on_a_fresh_clone(sst2_dir, minilm_dir, tmp_path):
    clone = _fresh_copy(tmp_path / "distil-kit")
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL", "PYTHONPATH")}
    env |= {
        "MODEL": str(minilm_dir),
        "DISTIL_KIT_SST2": str(sst2_dir),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf-home"),  # an empty hub cache
        "PYTHONPATH": str(clone),  # the clone's package, as `pip install -e .` in it would give
        "TOKENIZERS_PARALLELISM": "false",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    log = tmp_path / "readme.log"
    with log.open("w") as out:
        done = subprocess.run(
            ["bash", "-c", runnable_script(README.read_text())],
            cwd=clone,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=1800,
        )
    output = log.read_text()
    if done.returncode != 0:
        failed = re.findall(r"::: (README\.md line \d+)", output)
        pytest.fail(
            f"the block at {failed[-1] if failed else '?'} failed (exit {done.returncode}):\n{output[-4000:]}"
        )

    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout
    assert status == "", f"the README's commands left files git does not ignore:\n{status}"
    # the commands did their work: data, runs, the analysis and the report, the benchmark's CSV
    assert (clone / "data" / "sst2" / "dataset" / "train_dataset.npz").is_file()
    runs = [p for p in (clone / "runs").iterdir() if (p / "summary.json").is_file()]
    assert len(runs) >= 4, sorted(p.name for p in (clone / "runs").iterdir())
    assert (clone / "analysis_out" / "comparison.csv").is_file() and (
        clone / "report_out" / "comparison.csv"
    ).is_file()
    assert list((clone / "bench_out").glob("bench-*.csv"))
