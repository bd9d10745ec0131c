"""Fused accumulation: FlagPerf's 32 x 8 accumulated micro-batches trained as one micro-batch of 256 rows per
optimizer step makes the same updates (the mean loss over the step's rows), up to the order of float sums."""

import numpy as np
import pytest
import torch

from distil_kit import Callback, KitError, Run, RunConfig, finetune, micro_batch
from distil_kit.data import Split

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest


@pytest.fixture(scope="module")
def pair(still_model, sst2_dir, tmp_path_factory):
    """The same rows per step (plain sampler: a step's 256 rows are 8 consecutive batches of 32), dropout off."""
    out = tmp_path_factory.mktemp("fused")
    common = dict(
        model=str(still_model),
        data_dir=str(sst2_dir),
        epochs=2,
        max_train_samples=768,
        train_batch_size=32,
        gradient_accumulation_steps=8,
        log_every=1,
        target_acc=None,
        device="cpu",
    )
    shapes = {}
    for name, micro in (("accumulated", 32), ("fused", 256)):
        probe = Shape()
        finetune({**common, "micro_batch_size": micro, "output_dir": str(out / name)}, callbacks=[probe])
        shapes[name] = probe.seen
    assert shapes == {"accumulated": (8, 24), "fused": (1, 3)}  # micro-batches a step, micro-batches an epoch
    return Run(out / "accumulated"), Run(out / "fused")


class Shape(Callback):
    def on_run_start(self, trainer):
        self.seen = (trainer.accumulation, trainer.batches_per_epoch)


def test_fused_steps_make_the_accumulated_updates(pair):
    from safetensors.torch import load_file

    accumulated, fused = pair
    assert (accumulated.config["micro_batch_size"], fused.config["micro_batch_size"]) == (32, 256)
    assert accumulated.summary["steps"] == fused.summary["steps"] == 6  # 768 rows / 256, two epochs
    assert accumulated.summary["global_batch_size"] == fused.summary["global_batch_size"] == 256
    assert fused.steps.lr.tolist() == accumulated.steps.lr.tolist()
    assert np.abs(fused.steps.loss - accumulated.steps.loss).max() <= 1e-5
    w_acc = load_file(accumulated.folder / "model" / "model.safetensors")
    w_fused = load_file(fused.folder / "model" / "model.safetensors")
    worst = max((w_acc[k] - w_fused[k]).abs().max().item() for k in w_acc)
    moved = max((w_acc[k] - w0).abs().max().item() for k, w0 in _initial(accumulated).items())
    assert worst <= 1e-5 < moved  # equal within float tolerance, after updates that moved the weights
    assert fused.summary["train_samples"] == accumulated.summary["train_samples"] == 2 * 768


def _initial(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run.config["model"] + "/model.safetensors")


def test_fast_on_a_cpu_accumulates_the_steps_rows_sorted_into_micro_batches(still_model, sst2_dir, tmp_path):
    run = finetune(
        dict(
            model=str(still_model),
            data_dir=str(sst2_dir),
            epochs=1,
            max_train_samples=512,
            train_batch_size=32,
            gradient_accumulation_steps=8,
            fast=True,
            packing=False,
            target_acc=None,
            save_model=False,
            device="cpu",
            output_dir=str(tmp_path / "fast"),
        )
    )
    # Padded on a CPU, one micro-batch would pad the whole step to its longest row (the GPU's fused step: test_engine)
    assert run.config["micro_batch_size"] == 32 and run.config["bucket_batches"] and run.summary["steps"] == 2
    assert run.summary["global_batch_size"] == 256 and run.summary["train_samples"] == 512


def test_a_micro_batch_size_must_divide_the_step():
    with pytest.raises(KitError, match=r"'micro_batch_size'=48: expected null or a divisor of .* \(256\)"):
        RunConfig.from_dict({"train_batch_size": 32, "gradient_accumulation_steps": 8, "micro_batch_size": 48})


# --- micro_batch_size auto on a GPU: the largest part of the step that fits ---------------------------------------


def test_auto_micro_batch_tries_the_step_then_its_halves_down_to_train_batch_size():
    assert micro_batch.candidates(256, 32) == [256, 128, 64, 32]
    assert micro_batch.candidates(96, 32) == [96, 48] and micro_batch.candidates(32, 32) == [32]


def _fast_gpu_like_config(**extra) -> RunConfig:
    """A resolved fast config as a GPU gets it (the whole step as one micro-batch, graphs on)."""
    return RunConfig.from_dict(
        {"train_batch_size": 32, "gradient_accumulation_steps": 8, "micro_batch_size": 256, "fast": True}
        | {"precision": "fp32", "pad_to_multiple_of": 8, "cuda_graphs": True, **extra}
    )


def _split(lengths: list[int], width: int) -> Split:
    """A tokenized split of rows with these real lengths, padded to ``width``."""
    mask = (np.arange(width)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    n = len(lengths)
    return Split(np.arange(n), np.array(["x"] * n), np.zeros(n, dtype=np.int64), mask * 1000, mask)


def test_auto_micro_batch_falls_back_to_accumulation_when_the_step_does_not_fit(tiny_model, monkeypatch, capsys):
    from distil_kit.distributed import World
    from distil_kit.engine import _fitted_micro_batch
    from distil_kit.modeling import load_classifier

    model = load_classifier(str(tiny_model))
    tried = []
    real_trial = micro_batch.trial_step

    def trial(model, rows, width, device, precision, held):
        tried.append((rows, width, held))
        if rows > 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        real_trial(model, rows, width, device, precision, held)

    monkeypatch.setattr(micro_batch, "trial_step", trial)
    rng = torch.get_rng_state()
    cfg = _fitted_micro_batch(_fast_gpu_like_config(), model, _split([12, 61, 30], 128), torch.device("cpu"), World())
    # the widest batch the run can draw: the longest row, padded to a multiple of 8; AdamW's two moments held, and
    # the copy of weights and moments a graph capture holds
    assert tried == [(256, 64, 5), (128, 64, 5), (64, 64, 5)]
    assert cfg.micro_batch_size == 64 and not cfg.cuda_graphs  # 4 accumulated; a graph replays one micro-batch
    assert "training 64 rows a micro-batch, 4 accumulated (cuda_graphs off" in capsys.readouterr().out
    # the trial leaves the run as it found it: no gradients, the same RNG state (the run's dropout draws)
    assert all(p.grad is None for p in model.parameters()) and torch.equal(torch.get_rng_state(), rng)
    # never wider than the split's rows: the collate cuts the width there too
    tried.clear()
    _fitted_micro_batch(
        _fast_gpu_like_config(pad_to_multiple_of=48), model, _split([61], 64), torch.device("cpu"), World()
    )
    assert {width for _, width, _ in tried} == {64}

    monkeypatch.setattr(micro_batch, "trial_step", lambda *a: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError()))
    with pytest.raises(KitError, match=r"'train_batch_size'=32: even 32 rows of 64 tokens do not fit"):
        _fitted_micro_batch(_fast_gpu_like_config(), model, _split([61], 128), torch.device("cpu"), World())
    # cuBLAS's failed workspace allocation is out of memory too; another error is the run's
    cublas = RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
    monkeypatch.setattr(micro_batch, "trial_step", lambda *a: (_ for _ in ()).throw(cublas))
    with pytest.raises(KitError, match=r"even 32 rows of 64 tokens do not fit"):
        _fitted_micro_batch(_fast_gpu_like_config(), model, _split([61], 128), torch.device("cpu"), World())
    monkeypatch.setattr(
        micro_batch, "trial_step", lambda *a: (_ for _ in ()).throw(RuntimeError("device-side assert"))
    )
    with pytest.raises(RuntimeError, match="device-side assert"):
        _fitted_micro_batch(_fast_gpu_like_config(), model, _split([61], 128), torch.device("cpu"), World())


def test_auto_micro_batch_keeps_the_whole_step_when_it_fits(tiny_model, capsys):
    from distil_kit.distributed import World
    from distil_kit.engine import _fitted_micro_batch
    from distil_kit.modeling import load_classifier

    model, split = load_classifier(str(tiny_model)), _split([40, 7], 64)
    cfg = _fitted_micro_batch(_fast_gpu_like_config(), model, split, torch.device("cpu"), World())
    assert cfg.micro_batch_size == 256 and cfg.cuda_graphs and capsys.readouterr().out == ""
