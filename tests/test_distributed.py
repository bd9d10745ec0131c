"""The engine under DDP (gloo on CPU, two or three torchrun processes on one machine).

This file is also the harness torchrun starts (``python tests/test_distributed.py MODE OUT CONFIG_JSON``, see the
bottom): it runs the real engine with a few hooks that record, per rank, the training rows each micro-batch held,
every file write, the ``no_sync`` contexts entered and the final weights.

torchrun runs with ``--standalone`` (a c10d rendezvous on 127.0.0.1 and a free port it picks itself), so no port
is guessed and no host name resolved; ``--redirects 3 --log-dir`` keeps each rank's stdout/stderr apart.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distil_kit import distributed, engine
from distil_kit.batching import EpochBatches, eval_batches
from distil_kit.callbacks import Callback
from distil_kit.config import RunConfig
from distil_kit.errors import KitError
from distil_kit.evaluate import evaluate
from distil_kit.inputs import load_splits
from distil_kit.modeling import load_classifier, load_tokenizer
from distil_kit.records import Run
from distil_kit.resolve import resolve_config

# torchrun starts processes: the end-to-end tier (slow)
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # one_thread: see conftest

ROWS = 297  # 37 global batches of 8 and one of a single row: rank 1 gets a filler row in the last batch
BATCH = 4  # per process; the one-process run uses 2 * BATCH


# --- the sampler and the evaluation split, every rank at once (no processes) --------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("bucketed", [False, True])
def test_epoch_batches_cover_each_row_once_per_epoch(world_size, bucketed):
    lengths = np.random.default_rng(0).integers(3, 60, size=103)
    ranks = [
        EpochBatches(lengths, 4, seed=7, accumulation=3, bucketed=bucketed, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    orders = []
    for epoch in range(3):
        per_rank = []
        for sampler in ranks:
            sampler.set_epoch(epoch)
            per_rank.append(list(sampler))
        assert len({len(batches) for batches in per_rank}) == 1, "every rank must run the same number of steps"
        real = [row for batches in per_rank for batch in batches for row, weight in batch if weight > 0]
        assert sorted(real) == list(range(len(lengths)))
        # Each real row of an optimizer step (3 micro-batches) weighs world size / the step's rows (DDP divides by
        # the world size: a mean over the step).
        for start in range(0, len(per_rank[0]), 3):
            weights = [w for batches in per_rank for batch in batches[start : start + 3] for _, w in batch if w > 0]
            assert weights == pytest.approx([world_size / len(weights)] * len(weights))
        orders.append(real)
        ranks[0].set_epoch(epoch, skip=5)  # resuming mid-epoch yields the rest of the same epoch
        assert list(ranks[0]) == per_rank[0][5:]
    assert orders[0] != orders[1], "each epoch is a new seeded order"


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_batches_score_each_dev_row_once(world_size):
    lengths = np.random.default_rng(1).integers(3, 60, size=872)
    rows = [r for rank in range(world_size) for batch in eval_batches(lengths, 50, rank, world_size) for r in batch]
    assert sorted(rows) == list(range(872))


# --- real runs under torchrun ----------------------------------------------------------------------------------


def _torchrun(nproc: int, mode: str, out: Path, config: dict) -> dict[int, str]:
    """Run this file's harness under torchrun; returns each rank's stdout + stderr."""
    proc, per_rank = _launch(nproc, out, [__file__, mode, str(out), json.dumps(config)])
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stderr[-3000:]}\n" + "\n".join(
        f"--- rank {r} ---\n{text[-3000:]}" for r, text in per_rank.items()
    )
    return per_rank


def _torchrun_command(logs: Path, nproc: int, rendezvous: list[str], target: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rendezvous,
        "--nproc_per_node",
        str(nproc),
        "--log-dir",
        str(logs),
        "--redirects",
        "3",
        *target,
    ]


def _rank_logs(logs: Path, ranks) -> dict[int, str]:
    """Each rank's stdout + stderr, every attempt (torchrun restarts) in order."""
    return {
        rank: "".join(
            p.read_text() for f in sorted(logs.glob(f"*/attempt_*/{rank}")) for p in sorted(f.glob("*.log"))
        )
        for rank in ranks
    }


def _launch(
    nproc: int, out: Path, target: list[str], options: tuple[str, ...] = (), env: dict | None = None
) -> tuple[subprocess.CompletedProcess, dict[int, str]]:
    logs = out / "logs"
    cmd = _torchrun_command(logs, nproc, ["--standalone", *options], target)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    return proc, _rank_logs(logs, range(nproc))


def _train_config(model: Path, data: Path, out: Path, batch: int) -> dict:
    return dict(
        model=str(model),
        data_dir=str(data),
        output_dir=str(out),
        epochs=2,
        max_train_samples=ROWS,
        train_batch_size=batch,
        gradient_accumulation_steps=2,
        eval_batch_size=256,
        log_every=1,
        checkpoint_every=7,
        keep_checkpoints=True,  # the resume tests continue copies of the finished run from its checkpoints
        target_acc=None,
        device="cpu",
    )


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, still_model, sst2_dir):
    """Two processes of batch BATCH: the harness's per-rank records and the rank output."""
    out = tmp_path_factory.mktemp("ddp")
    config = _train_config(still_model, sst2_dir, out / "run", BATCH)
    output = _torchrun(2, "train", out, config)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return {"out": out, "run": Run(out / "run"), "ranks": ranks, "output": output, "config": config}


def test_ddp_every_training_row_seen_once_per_epoch(ddp_run):
    for epoch in range(2):
        rows = [row for rank in ddp_run["ranks"] for e, batch in rank["seen"] if e == epoch for row in batch]
        assert sorted(rows) == list(range(ROWS)), f"epoch {epoch + 1}: rows missed or seen twice"
    assert len(ddp_run["ranks"][0]["seen"]) == len(ddp_run["ranks"][1]["seen"])


def test_ddp_no_sync_on_accumulation_micro_batches(ddp_run):
    groups = -(-ROWS // (2 * BATCH)) // 2  # 38 micro-batches an epoch in 19 groups of 2: no_sync on the first
    for rank in ddp_run["ranks"]:
        assert rank["no_sync"] == 2 * groups  # two epochs


def test_ddp_ranks_end_with_identical_weights(ddp_run):
    from safetensors.torch import load_file

    w0, w1 = (torch.load(ddp_run["out"] / f"rank{r}.pt") for r in range(2))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    saved = load_file(ddp_run["run"].folder / "model" / "model.safetensors")
    assert all(torch.equal(saved[k], w0[k]) for k in saved)


def test_ddp_run_folder_written_once_by_rank_0(ddp_run):
    writes0, writes1 = (rank["writes"] for rank in ddp_run["ranks"])
    assert writes1 == []
    names = [Path(p).name for p in writes0]
    for name in ("config.json", "manifest.json", "summary.json", "predictions.csv", "model"):
        assert names.count(name) == 1, name
    run = ddp_run["run"]
    assert run.finished
    assert {k: run.manifest[k] for k in ("world_size", "nodes", "backend")} == {
        "world_size": 2,
        "nodes": 1,
        "backend": "gloo",
    }
    assert run.summary["world_size"] == 2
    assert run.summary["global_batch_size"] == 2 * BATCH * 2
    assert run.summary["train_samples"] == 2 * ROWS  # global: both ranks' rows, each row once per epoch
    assert len(run.predictions) == 872 and run.predictions["idx"].is_unique


def test_ddp_only_rank_0_prints(ddp_run):
    rank0, rank1 = ddp_run["output"][0], ddp_run["output"][1]
    assert "global batch 16" in rank0 and "epoch 1" in rank0  # the start line and the progress bars
    assert rank1.strip() == "", f"rank 1 printed:\n{rank1[:2000]}"


def test_two_ranks_of_batch_b_track_one_rank_of_batch_2b(ddp_run, tmp_path):
    """Same global batches, same rows in each: the loss curves and weights agree up to float summation order.

    Measured (tiny model without dropout, 2 epochs x 19 optimizer steps, uneven and filler last batches, torch
    2.13 CPU): largest loss difference 1.0e-6 (one unit of steps.csv's 6th decimal), mean 2.6e-8; largest
    weight difference 1.1e-8. The bounds (1e-5 on losses, 1e-6 on weights) leave room for other CPUs and
    thread counts and stay far below what a wrong loss weighting gives (a factor 2 on the uneven last batch
    moves that step's loss by 0.17). With dropout (the default tiny model) the two runs draw different masks:
    losses then differ by up to 3.5e-3 (0.5%) and weights by 1.1e-3, which is why this test turns dropout off.
    """
    from safetensors.torch import load_file

    config = {**ddp_run["config"], "train_batch_size": 2 * BATCH, "output_dir": str(tmp_path / "one")}
    one = engine.finetune(config)
    two = ddp_run["run"]
    assert one.steps["step"].tolist() == two.steps["step"].tolist()
    assert np.abs(one.steps["loss"] - two.steps["loss"]).max() <= 1e-5
    assert one.steps["lr"].tolist() == pytest.approx(two.steps["lr"].tolist())
    w1 = load_file(one.folder / "model" / "model.safetensors")
    w2 = load_file(two.folder / "model" / "model.safetensors")
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-6


def test_ddp_resume_from_a_mid_epoch_checkpoint_continues_exactly(ddp_run, tmp_path):
    """The DDP run's folder as a kill in epoch 2 would leave it: checkpoints up to step 35 of 38 (mid-epoch,
    batch position 32 of 38), no summary. Two processes resume it to the same records and weights."""
    run = Path(shutil.copytree(ddp_run["run"].folder, tmp_path / "run", ignore=shutil.ignore_patterns("step-38.pt")))
    (run / "summary.json").unlink()
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-35.pt"]
    _torchrun(2, "train", tmp_path, {"output_dir": str(run), "resume": True})
    _assert_same_as(Run(run), ddp_run["run"])


def test_resume_with_another_world_size_is_refused(ddp_run, tmp_path):
    run = Path(shutil.copytree(ddp_run["run"].folder, tmp_path / "run"))
    (run / "summary.json").unlink()
    before = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(
        KitError,
        match=r"the run was started with 2 process\(es\), this is 1; resume with "
        r"the same number of processes \(torchrun --nproc_per_node\)$",  # found before the model is loaded
    ):
        engine.finetune(output_dir=str(run), resume=True)
    assert sorted(p.name for p in run.rglob("*")) == before


def test_an_unusable_output_dir_stops_every_rank_with_its_message(tiny_model, sst2_dir, tmp_path):
    """The run folder cannot be created (its parent is a file): every rank stops at once with the one-line cause
    (each finds it before loading anything), and none hangs waiting for another."""
    (tmp_path / "file").write_text("")
    config = _train_config(tiny_model, sst2_dir, tmp_path / "file" / "run", BATCH)
    sets = [a for k, v in config.items() for a in ("--set", f"{k}={'null' if v is None else v}")]
    proc, output = _launch(2, tmp_path, ["-m", "distil_kit", "finetune", *sets])
    assert proc.returncode != 0
    cause = f"output_dir {tmp_path / 'file' / 'run'} cannot be created: file is a file; expected a folder path"
    assert f"error: {cause}" in output[0]
    assert cause in output[1]


def _assert_same_as(run: Run, reference: Run) -> None:
    from safetensors.torch import load_file

    assert run.finished
    assert run.steps[["step", "loss", "lr"]].equals(reference.steps[["step", "loss", "lr"]])
    assert run.evals["accuracy"].equals(reference.evals["accuracy"])
    ours, theirs = (load_file(r.folder / "model" / "model.safetensors") for r in (run, reference))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_an_elastic_restart_resumes_and_finishes_identical(ddp_run, tmp_path):
    """``torchrun --max-restarts 1``: rank 1 killed at step 10 (after the step-7 checkpoint); torchrun restarts
    both ranks, which continue the run from its checkpoint to the uninterrupted run's records and weights."""
    config = {**ddp_run["config"], "output_dir": str(tmp_path / "run")}
    target = [__file__, "train", str(tmp_path), json.dumps(config)]
    proc, output = _launch(2, tmp_path, target, ("--max-restarts", "1"), env={"FAULT": "SIGKILL@10"})
    assert proc.returncode == 0, proc.stderr[-3000:] + output[0][-3000:]
    assert "torchrun restart 1: " in output[0] and "resuming it from its last checkpoint" in output[0]
    _assert_same_as(Run(tmp_path / "run"), ddp_run["run"])


def test_a_frozen_rank_stops_the_others_within_the_collective_timeout(ddp_run, tmp_path):
    """Rank 1 frozen (SIGSTOP) at step 3: rank 0 waits collective_timeout_s (5 s here; gloo's own default is 30
    minutes), then stops with one line naming the cause."""
    config = {**ddp_run["config"], "output_dir": str(tmp_path / "run"), "collective_timeout_s": 5}
    started = time.monotonic()
    proc, output = _launch(
        2, tmp_path, [__file__, "train", str(tmp_path), json.dumps(config)], env={"FAULT": "SIGSTOP@3"}
    )
    took = time.monotonic() - started
    assert proc.returncode != 0
    errors = re.findall(r"error: [^\r\n]*", output[0])  # tqdm's bars end in \r and cursor moves, not \n
    assert len(errors) == 1 and re.fullmatch(
        r"error: rank 0: another rank stopped answering \(it hung past collective_timeout_s=5, or died\); this rank "
        r"stops too \(gloo: Timed out waiting 5000ms for (send|recv) operation to complete\)",
        errors[0],
    ), output[0][-3000:]
    # start-up, 3 steps, the 5 s wait, then torchrun's own grace period before it kills the frozen rank (30 s)
    assert took < 120


def test_two_torchrun_nodes_on_loopback_train_as_two_ranks_on_one(ddp_run, tmp_path):
    """``--nnodes 2``: node ranks 0 and 1, one process each, rendezvous on 127.0.0.1: the same run as two
    processes on one node (gloo: the same arithmetic), recorded as two nodes."""
    with socket.socket() as s:  # a free port for the rendezvous (released just before torchrun binds it)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = {**ddp_run["config"], "output_dir": str(tmp_path / "run")}
    target = [__file__, "train", str(tmp_path), json.dumps(config)]
    nodes = []
    for node in range(2):
        rendezvous = ["--nnodes", "2", "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port"]
        cmd = _torchrun_command(tmp_path / f"logs{node}", 1, [*rendezvous, str(port)], target)
        # torchrun sets one thread per process only above one process a node: float sums depend on it
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        nodes.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    run = Run(tmp_path / "run")
    assert (run.manifest["world_size"], run.manifest["nodes"]) == (2, 2)
    _assert_same_as(run, ddp_run["run"])


@pytest.mark.parametrize("nproc", [2, 3])  # 872 dev rows: not a multiple of 3
def test_distributed_evaluation_equals_one_process(nproc, varied_model, sst2_dir, tmp_path):
    config = dict(
        model=str(varied_model),
        data_dir=str(sst2_dir),
        output_dir=str(tmp_path / "unused"),
        max_train_samples=8,
        eval_batch_size=64,
        device="cpu",
    )
    acc, predictions = _evaluate(config, distributed.World())
    assert 0.1 < np.mean(predictions["pred"]) < 0.9, "the model must predict both classes for this test to bite"
    _torchrun(nproc, "eval", tmp_path, config)
    scored = json.loads((tmp_path / "eval.json").read_text())
    assert scored["acc"] == acc
    assert scored["predictions"]["idx"] == predictions["idx"]  # every dev row once, in dev order
    assert scored["predictions"]["pred"] == predictions["pred"]
    assert np.allclose(scored["predictions"]["prob_pos"], predictions["prob_pos"], atol=1e-5)
    assert not (tmp_path / "unused").exists()


# --- the harness torchrun runs ---------------------------------------------------------------------------------


def _evaluate(config: dict, world: distributed.World) -> tuple[float, dict]:
    """The engine's evaluation of ``config``'s model on the whole dev split, as every rank sees it."""
    device = torch.device("cpu")
    cfg = resolve_config(RunConfig.from_dict(config), device)
    splits = load_splits(cfg, load_tokenizer(cfg.model))
    result = evaluate(
        load_classifier(cfg.model), splits["dev"], batch_size=cfg.eval_batch_size, device=device, world=world
    )
    frame = result.predictions[["idx", "pred", "prob_pos"]] if world.main else None
    return result.accuracy, frame.to_dict("list") if frame is not None else {}


def _harness_eval(out: Path, config: dict) -> None:
    with distributed.joined_world(use_cuda=False) as world:
        acc, predictions = _evaluate(config, world)
        if world.main:
            (out / "eval.json").write_text(json.dumps({"acc": acc, "predictions": predictions}))


def _harness_train(out: Path, config: dict) -> None:
    """``finetune`` with hooks recording this rank's training rows, file writes, no_sync contexts and weights."""
    from distil_kit import atomic, checkpoint

    rank = int(os.environ["RANK"])
    seen, writes, no_sync = [], [], [0]

    def recording(write):
        def wrapper(path, *args, **kwargs):
            writes.append(str(path))
            return write(path, *args, **kwargs)

        return wrapper

    atomic.write_atomic = recording(atomic.write_atomic)  # json and csv writes go through it
    checkpoint.write_atomic = recording(checkpoint.write_atomic)
    engine.replace_dir = recording(engine.replace_dir)

    batches = EpochBatches.__iter__

    def recording_batches(self):  # the rows of each micro-batch this rank trains, as the sampler hands them out
        for keys in batches(self):
            seen.append((self.epoch, [row for row, weight in keys if weight > 0]))
            yield keys

    EpochBatches.__iter__ = recording_batches

    ddp_no_sync = torch.nn.parallel.DistributedDataParallel.no_sync

    def counting_no_sync(self):
        no_sync[0] += 1
        return ddp_no_sync(self)

    torch.nn.parallel.DistributedDataParallel.no_sync = counting_no_sync

    class SaveWeights(Callback):
        def on_run_end(self, trainer, summary):
            torch.save(trainer.model.state_dict(), out / f"rank{rank}.pt")

    engine.finetune(config, callbacks=[SaveWeights(), Fault()])
    (out / f"rank{rank}.json").write_text(json.dumps({"seen": seen, "writes": writes, "no_sync": no_sync[0]}))


def test_a_notebook_sweep_on_two_processes_runs_each_seed_through_torchrun(still_model, sst2_dir, tmp_path, capsys):
    """The finetune notebook's ``seeds`` with ``nproc_per_node`` 2: one torchrun of the sweep, every seed a run of
    two processes, the sweep record beside them, the ranks' output streamed into the cell."""
    from distil_kit import notebook

    config = RunConfig.from_dict({**_train_config(still_model, sst2_dir, tmp_path / "sweep", BATCH), "epochs": 1})
    runs = notebook.sweep(config.replace(max_train_samples=64, keep_checkpoints=False), [0, 1], nproc_per_node=2)
    assert [r.folder.name for r in runs] == ["seed-0", "seed-1"] and all(r.finished for r in runs)
    assert [r.summary["world_size"] for r in runs] == [2, 2] and [r.config["seed"] for r in runs] == [0, 1]
    assert (tmp_path / "sweep" / "sweep.json").is_file() and "sweep record:" in capsys.readouterr().out


class Fault(Callback):
    """``FAULT=SIGNAL@STEP`` (e.g. ``SIGKILL@10``): rank 1 sends itself the signal once step STEP is logged, in
    torchrun's first attempt only (a restarted attempt runs clean)."""

    def __init__(self):
        fault = os.environ.get("FAULT")
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        self.fault = fault.split("@") if fault and first_attempt and os.environ["RANK"] == "1" else None

    def on_log(self, trainer, row):
        if self.fault and row["step"] == int(self.fault[1]):
            os.kill(os.getpid(), getattr(signal, self.fault[0]))


if __name__ == "__main__":
    mode, out_dir, config_json = sys.argv[1:]
    if os.environ.get("FAULT"):  # a rank that hangs dumps its threads' stacks and exits, not to hold the test
        import faulthandler

        faulthandler.dump_traceback_later(60, exit=True)
    try:
        {"train": _harness_train, "eval": _harness_eval}[mode](Path(out_dir), json.loads(config_json))
    except KitError as e:  # as the CLI reports it
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
