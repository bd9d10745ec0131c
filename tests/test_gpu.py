"""GPU-only checks (CI has no GPU): run on a CUDA machine with `pytest -m gpu tests/test_gpu.py`."""

import signal
import subprocess
import sys

import pytest
import torch

from distil_kit import RunConfig, engine, finetune
from distil_kit.callbacks import Callback

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the GPU machine)"),
]


def _config(tiny_model, sst2_dir, out, **changes):
    values = dict(
        model=str(tiny_model),
        data_dir=str(sst2_dir),
        output_dir=str(out),
        epochs=1,
        max_train_samples=2048,
        target_acc=None,
        save_model=False,
        device="cuda",
    )
    return RunConfig.from_dict({**values, **changes})


def test_plain_and_fast_paths_on_gpu(tiny_model, sst2_dir, tmp_path):
    plain = finetune(_config(tiny_model, sst2_dir, tmp_path / "plain"))
    fast = finetune(_config(tiny_model, sst2_dir, tmp_path / "fast", fast=True))
    assert plain.config["precision"] == "fp32" and plain.summary["compile_time"] == 0
    assert not plain.config["cuda_graphs"]
    assert fast.config["precision"] == "bf16" and fast.config["cuda_graphs"] and fast.config["fused_adamw"]
    assert not fast.config["compile"]
    assert fast.summary["compile_time"] > 0  # graph captures, reported apart from the training timers
    for run in (plain, fast):
        assert run.summary["train_samples"] == 2048 and len(run.predictions) == 872
        assert run.summary["peak_memory_gib"] > 0 and run.manifest["cuda"]


def test_graphed_steps_train_exactly_like_eager_steps(tiny_model, sst2_dir, tmp_path):
    # fp32, no compile, dropout on, weight decay on one group; bucketed widths and a short last batch: several
    # graphs. The warm-up steps before each capture must leave no trace (weights, AdamW state, RNG).
    common = dict(
        max_train_samples=500,
        train_batch_size=16,
        log_every=1,
        bucket_batches=True,
        pad_to_multiple_of=8,
        precision="fp32",
        compile=False,
        weight_decay=0.01,
        epochs=2,
    )
    eager = finetune(_config(tiny_model, sst2_dir, tmp_path / "eager", cuda_graphs=False, **common))
    graphed = finetune(_config(tiny_model, sst2_dir, tmp_path / "graphed", cuda_graphs=True, **common))
    assert graphed.config["cuda_graphs"] and graphed.summary["compile_time"] > 0
    assert graphed.summary["steps"] == eager.summary["steps"] == 64
    assert graphed.steps.lr.tolist() == pytest.approx(eager.steps.lr.tolist(), rel=1e-6)
    assert graphed.steps.loss.tolist() == pytest.approx(eager.steps.loss.tolist(), rel=1e-4)
    assert graphed.evals.accuracy.tolist() == eager.evals.accuracy.tolist()


def test_graphed_run_resumes_like_the_uninterrupted_run(tiny_model, sst2_dir, tmp_path):
    common = dict(max_train_samples=500, train_batch_size=16, log_every=1, checkpoint_every=5, fast=True, epochs=2)
    reference = finetune(_config(tiny_model, sst2_dir, tmp_path / "ref", **common))

    class SignalAfterStep40(Callback):  # mid second epoch: SIGINT arrives during step 41
        def on_log(self, trainer, row):
            if row["step"] == 40:
                signal.raise_signal(signal.SIGINT)

    with pytest.raises(engine.RunInterrupted, match="stopped after step 41 "):
        finetune(_config(tiny_model, sst2_dir, tmp_path / "run", **common), callbacks=[SignalAfterStep40()])
    resumed = finetune(_config(tiny_model, sst2_dir, tmp_path / "run", resume=True, **common))
    assert resumed.steps.loss.tolist() == pytest.approx(reference.steps.loss.tolist(), rel=1e-3)
    assert resumed.steps.lr.tolist() == pytest.approx(reference.steps.lr.tolist(), rel=1e-6)


def test_graphs_around_a_compiled_model(tiny_model, sst2_dir, tmp_path):
    run = finetune(
        _config(tiny_model, sst2_dir, tmp_path / "compiled", fast=True, compile=True, max_train_samples=512)
    )
    assert run.config["compile"] and run.config["cuda_graphs"] and run.summary["train_samples"] == 512


def test_cuda_graphs_refuse_gradient_accumulation(tiny_model, sst2_dir, tmp_path):
    with pytest.raises(engine.KitError, match="parameter 'cuda_graphs'=true: needs .* gradient_accumulation_steps 1"):
        finetune(_config(tiny_model, sst2_dir, tmp_path / "acc", cuda_graphs=True, gradient_accumulation_steps=2))


def test_single_gpu_torchrun(tiny_model, sst2_dir, tmp_path):
    out = tmp_path / "ddp1"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "1",
            "-m",
            "distil_kit",
            "finetune",
            "--set",
            f"model={tiny_model}",
            "--set",
            f"data_dir={sst2_dir}",
            "--set",
            f"output_dir={out}",
            "--set",
            "epochs=1",
            "--set",
            "max_train_samples=512",
            "--set",
            "target_acc=null",
            "--set",
            "save_model=false",
            "--set",
            "fast=true",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (out / "summary.json").is_file()
