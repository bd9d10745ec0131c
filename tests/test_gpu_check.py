"""The prepared GPU check (benchmarks/gpu_check.sh) runs end to end on a CPU with --dry-run, so it cannot rot
between the rare times a GPU is lent; its summary says which targets a part measured and which it did not."""

import csv
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_summary  # noqa: E402


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_on_a_cpu(sst2_dir, tmp_path):
    carry, out = tmp_path / "carry", tmp_path / "out"
    env = {**os.environ, "DISTIL_KIT_SST2": str(sst2_dir)}
    script = ROOT / "benchmarks" / "gpu_check.sh"
    prepared = subprocess.run(
        ["bash", script, "--prepare", "--carry", carry], capture_output=True, text=True, env=env
    )
    assert prepared.returncode == 0, prepared.stderr
    done = subprocess.run(
        ["bash", script, "--dry-run", "--carry", carry, "--out", out], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with tarfile.open(out / "gpu-check.tar.gz") as tar:
        names = set(tar.getnames())
        parts = list(csv.DictReader(tar.extractfile("check/parts.csv").read().decode().splitlines()))
    assert [p["part"] for p in parts] == ["env", "model", "pytest", "ten", "packed", "bench", "seeds", "summary"]
    assert all(p["rc"] == "0" for p in parts), parts
    for name in ("ten-epochs/summary.json", "ten-epochs/evals.csv", "seeds/at-once/sweep.json", "pytest.xml"):
        assert f"check/{name}" in names
    assert not any(n.endswith((".pt", ".safetensors")) for n in names), "weights and checkpoints stay behind"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ten_epochs"]["epochs_run"] == 2 and summary["seeds"]["finished_at_once"] == 2
    assert summary["ten_epochs_packed"]["packing"] and summary["ten_epochs_packed"]["padded_per_real_token"] < 1.15
    assert all(t["measured"] is not None for t in summary["targets"])
    assert {r["variant"] for r in summary["bench"]} >= set("abcdepq")
    assert "=== seeds: rc 0" in (out / "gpu-check.log").read_text()


def test_a_carry_folder_missing_says_to_prepare(tmp_path):
    done = subprocess.run(
        ["bash", ROOT / "benchmarks" / "gpu_check.sh", "--dry-run", "--carry", tmp_path / "none"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"gpu_check.sh: {tmp_path / 'none'}/sst2/train.tsv is missing: run benchmarks/gpu_check.sh --prepare first"
    )


def test_parts_that_did_not_run_leave_their_targets_unmeasured(tmp_path):
    (tmp_path / "parts.csv").write_text("part,rc,seconds,limit_s\nten,124,140,140\n")
    summary = gpu_summary.gather(tmp_path)
    assert summary["parts"] == [{"part": "ten", "rc": 124, "seconds": 140, "limit_s": 140}]
    assert [t["met"] for t in summary["targets"]] == [None, None, None]
    (tmp_path / "seeds-wall.csv").write_text("what,seeds,wall_s\none seed alone,1,20\nseeds at once,5,50\n")
    seeds = gpu_summary.gather(tmp_path)["targets"][2]
    assert (seeds["measured"], seeds["met"]) == (2.5, False)
