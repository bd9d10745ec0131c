"""GPU-only checks (CI has no GPU): run on a CUDA machine with `pytest -m gpu tests/test_gpu.py`."""
import subprocess
import sys

import pytest
import torch

from distil_kit import RunConfig, finetune

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)")]


def _config(tiny_model, sst2_dir, out, **changes):
    values = dict(model=str(tiny_model), data_dir=str(sst2_dir), output_dir=str(out), epochs=1,
                  max_train_samples=2048, target_acc=None, save_model=False, device="cuda")
    return RunConfig.from_dict({**values, **changes})


def test_plain_and_fast_paths_on_gpu(tiny_model, sst2_dir, tmp_path):
    plain = finetune(_config(tiny_model, sst2_dir, tmp_path / "plain"))
    fast = finetune(_config(tiny_model, sst2_dir, tmp_path / "fast", fast=True))
    assert plain.config["precision"] == "fp32" and plain.summary["compile_time"] == 0
    assert fast.config["precision"] == "bf16" and fast.config["compile"] and fast.config["fused_adamw"]
    assert fast.summary["compile_time"] > 0  # reported apart from the training timers
    for run in (plain, fast):
        assert run.summary["train_samples"] == 2048 and len(run.predictions) == 872
        assert run.summary["peak_memory_gib"] > 0 and run.manifest["cuda"]


def test_single_gpu_torchrun(tiny_model, sst2_dir, tmp_path):
    out = tmp_path / "ddp1"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
                           "-m", "distil_kit", "finetune", "--set", f"model={tiny_model}", "--set",
                           f"data_dir={sst2_dir}", "--set", f"output_dir={out}", "--set", "epochs=1",
                           "--set", "max_train_samples=512", "--set", "target_acc=null", "--set", "save_model=false"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (out / "summary.json").is_file()
