"""Run ``finetune`` on several local devices from a notebook: torchrun as a subprocess, its output streamed."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from .config import RunConfig
from .errors import KitError
from .records import Run, default_output_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(params_file: Path, nproc_per_node: int, seeds: list[int] | None = None) -> list[str]:
    sweep = ["--seeds", ",".join(str(s) for s in seeds)] if seeds else []
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc_per_node),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{_free_port()}",
        "-m",
        "distil_kit",
        "finetune",
        "--params",
        str(params_file),
        *sweep,
    ]


def _torchrun(config: RunConfig, nproc_per_node: int, seeds: list[int] | None) -> Path:
    """torchrun of ``python -m distil_kit finetune`` on ``config`` (and ``seeds``), its output streamed; returns the
    output folder the ranks shared."""
    if nproc_per_node < 1:
        raise KitError(f"nproc_per_node={nproc_per_node}: expected a whole number >= 1")
    # Ranks must agree on the folder: fix the default here rather than let each rank take its own timestamp.
    config = config.replace(output_dir=config.output_dir or default_output_dir())
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config.to_dict(), f)
    try:
        proc = subprocess.Popen(
            torchrun_command(Path(f.name), nproc_per_node, seeds),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        for line in proc.stdout:
            print(line, end="")
        code = proc.wait()
    finally:
        Path(f.name).unlink(missing_ok=True)
    if code != 0:
        raise KitError(f"torchrun with {nproc_per_node} processes exited with code {code}; its output is above")
    return Path(config.output_dir)


def finetune_torchrun(config: RunConfig, nproc_per_node: int) -> Run:
    """``finetune(config)`` under torchrun with ``nproc_per_node`` processes on this machine."""
    return Run(_torchrun(config, nproc_per_node, None))


def sweep_torchrun(config: RunConfig, nproc_per_node: int, seeds: list[int]) -> list[Run]:
    """The seed sweep (``sweep.run_sweep``) under torchrun, each seed a DDP run of ``nproc_per_node`` processes;
    its runs."""
    from .sweep import seed_folder

    out = _torchrun(config, nproc_per_node, seeds)
    return [Run(seed_folder(out, seed)) for seed in seeds]
