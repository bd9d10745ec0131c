"""report_to (TensorBoard, MLflow, MLPerf's event log) and energy, each read back with the tool's own reader.

The runs: the tiny random DistilBERT on the first 64 SST-2 rows, batch 8, 2 epochs of 8 steps, a steps.csv row every
2 steps. One run reports everywhere, is stopped (SIGINT at step 6, or a crash at epoch 1's end after a checkpoint at
step 4) and resumed: every tracker must hold each step once, in one tracker run. MLflow's store is a SQLite file in
the test's folder (``MLFLOW_TRACKING_URI`` unset: the default place).
"""

from __future__ import annotations

import collections
import gc
import signal
from pathlib import Path

import pytest

from distil_kit import analysis, energy, engine, power, sweep
from distil_kit.callbacks import Callback
from distil_kit.config import RunConfig, load_config, notebook_config
from distil_kit.errors import KitError
from distil_kit.records import Run

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest

for _package in ("tensorboard", "mlflow", "mlperf_logging"):  # CI installs them: .ci/run
    pytest.importorskip(_package, reason='install the tracking extra: pip install -e ".[tracking]"')

ALL = ["tensorboard", "mlflow", "mllog"]


@pytest.fixture(scope="module")
def config(tiny_model, sst2_dir) -> dict:
    return dict(
        model=str(tiny_model),
        data_dir=str(sst2_dir),
        epochs=2,
        max_train_samples=64,
        train_batch_size=8,
        eval_batch_size=512,
        log_every=2,
        target_acc=None,
        save_model=False,
        device="cpu",
    )


@pytest.fixture(scope="module")
def no_tracking_env():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("DISTIL_KIT_MLFLOW_PARENT", raising=False)
        yield


class InterruptAt(Callback):
    """SIGINT at the steps.csv row of ``step``, as a user's Ctrl-C."""

    def __init__(self, step: int):
        self.step = step

    def on_log(self, trainer, row):
        if row["step"] == self.step:
            signal.raise_signal(signal.SIGINT)


class CrashAtEpochEnd(Callback):
    """An error (no clean stop) at epoch 1's evaluation, once the trackers have it, before its checkpoint."""

    def on_evaluate(self, trainer, row):
        if row["epoch"] == 1:
            raise RuntimeError("crashed")


# how the first process ends: (its extra parameters, its callback, its error, the finished run's steps.csv rows)
ENDINGS = {
    # the stop comes at the next step, 7, with a steps.csv row and a checkpoint of its own
    "SIGINT": ({}, InterruptAt(6), engine.RunInterrupted, [2, 4, 6, 7, 8, 10, 12, 14, 16]),
    # the trackers have steps 6 and 8 and epoch 1's evaluation, the checkpoint is at 4: the resume reports them again
    "crash": ({"checkpoint_every": 4}, CrashAtEpochEnd(), RuntimeError, [2, 4, 6, 8, 10, 12, 14, 16]),
}


@pytest.fixture(scope="module", params=list(ENDINGS))
def resumed(request, config, tmp_path_factory, no_tracking_env) -> Run:
    extra, callback, error, steps = ENDINGS[request.param]
    out = tmp_path_factory.mktemp("tracked") / "runs" / "run"
    with pytest.raises(error):
        engine.finetune({**config, **extra}, output_dir=str(out), report_to=ALL, callbacks=[callback])
    run = engine.finetune(output_dir=str(out), resume=True)
    assert run.steps.step.tolist() == steps
    return run


def _mlflow(run: Run):
    from mlflow import MlflowClient

    uri = f"sqlite:///{run.folder.parent.parent / 'mlflow.db'}"
    client = MlflowClient(uri)
    return client, client.get_experiment_by_name("distil-kit")


# --- the parameter ----------------------------------------------------------------------------------------------


def test_report_to_is_a_parameter_like_any_other():
    assert load_config(sets=["report_to=[tensorboard, mlflow]"]).report_to == ["tensorboard", "mlflow"]
    assert RunConfig().report_to is None
    with pytest.raises(KitError, match=r"^--set 'report_to=tensorboard': parameter 'report_to': expected a list"):
        load_config(sets=["report_to=tensorboard"])
    with pytest.raises(KitError, match=r"parameter 'report_to'=\['wandb'\]: expected null or a list of tensorboard"):
        RunConfig(report_to=["wandb"]).validate()
    # papermill's -p hands the list over as text
    cells = ["", "report_to = None  # type: Optional[list]", "# Parameters\nreport_to = '[mllog]'\n", "config = ..."]
    assert notebook_config({"report_to": "[mllog]", "In": cells}, "nb").report_to == ["mllog"]


def test_a_tracker_that_cannot_start_is_one_line_before_loading(config, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(engine, "Trainer", never)
    monkeypatch.setitem(__import__("sys").modules, "tensorboard", None)  # not installed
    with pytest.raises(KitError, match=r"^parameter 'report_to' names tensorboard, but tensorboard cannot be"):
        engine.finetune(config, output_dir=str(tmp_path / "a"), report_to=["tensorboard"])
    (tmp_path / "a-file").write_text("")
    for uri in (f"sqlite:///{tmp_path}/a-file/mlflow.db", "htps://tracking.example"):  # a file in the way, a typo
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(KitError, match=rf"^parameter 'report_to': mlflow cannot use tracking URI {uri} \("):
            engine.finetune(config, output_dir=str(tmp_path / "b"), report_to=["mlflow"])


def test_only_rank_0_reports_and_measures(tmp_path, monkeypatch):
    import torch

    from distil_kit.distributed import World
    from distil_kit.trackers import trackers

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    cfg = RunConfig(output_dir=str(tmp_path / "run"), report_to=ALL)
    assert trackers(cfg, World(rank=1, size=2)) == []
    assert [type(t).__name__ for t in trackers(cfg.replace(output_dir=str(tmp_path / "a")), World())] == [
        "MLLog",
        "TensorBoard",
        "MLflow",
    ]
    meter = power.EnergyMeter.for_device(torch.device("cpu"), World(rank=1, size=2))
    assert meter.sampler is None and meter.fields()["energy_note"] == "only rank 0 measures"


# --- each tracker read back, after a stop and a resume -------------------------------------------------------------


def test_tensorboard_holds_every_step_once(resumed):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(resumed.folder / "tensorboard")).Reload()
    steps = resumed.steps.step.tolist()
    for tag in ("train/loss", "train/lr", "train/samples_per_s"):
        assert [e.step for e in events.Scalars(tag)] == steps, tag
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(resumed.steps.loss.tolist())
    for tag in ("eval/accuracy", "eval/correct", "eval/acc_low", "eval/acc_high"):
        assert [e.step for e in events.Scalars(tag)] == resumed.evals.step.tolist(), tag
    assert [e.value for e in events.Scalars("eval/correct")] == resumed.evals.correct.tolist()
    assert events.Scalars("summary/acc")[0].value == pytest.approx(resumed.summary["acc"])
    assert "summary/train_time" in events.Tags()["scalars"]


def test_mlflow_holds_params_every_step_once_and_the_run_folder(resumed):
    client, experiment = _mlflow(resumed)
    [run] = client.search_runs([experiment.experiment_id])  # the resume continued the stopped run
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["lr"] == "5e-05" and run.data.params["report_to"] == '["tensorboard", "mlflow", "mllog"]'
    for key in ("train/loss", "train/lr", "train/samples_per_s"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == resumed.steps.step.tolist()
    accuracy = client.get_metric_history(run.info.run_id, "eval/accuracy")
    assert [(m.step, m.value) for m in accuracy] == list(zip(resumed.evals.step, resumed.evals.accuracy, strict=True))
    assert run.data.metrics["summary/acc_correct"] == resumed.summary["acc_correct"]
    assert run.data.metrics["summary/throughput_ips_raw"] == resumed.summary["throughput(ips)_raw"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts >= {"config.json", "steps.csv", "evals.csv", "summary.json", "manifest.json", "mllog.txt"}


def test_mllog_reads_as_one_mlperf_run(resumed):
    from mlperf_logging.compliance_checker.mlp_parser import parse_file

    lines, errors = parse_file(str(resumed.folder / "mllog.txt"), ruleset="6.1.0")
    assert not errors
    count = collections.Counter(line.key for line in lines)
    for key in ("init_start", "init_stop", "run_start", "run_stop", "seed", "global_batch_size", "train_samples"):
        assert count[key] == 1, key  # MLPerf's rules: exactly one each (the resume cut its log back)
    value = {line.key: line.value for line in lines}
    assert value["run_stop"]["metadata"]["status"] == "success"
    assert value["train_samples"]["value"] == 64 and value["eval_samples"]["value"] == 872
    assert value["global_batch_size"]["value"] == 8 and value["opt_base_learning_rate"]["value"] == 5e-5
    accuracies = [(x.value["metadata"]["epoch_num"], x.value["value"]) for x in lines if x.key == "eval_accuracy"]
    assert accuracies == list(zip(resumed.evals.epoch, resumed.evals.accuracy, strict=True))
    for key in ("epoch_start", "epoch_stop"):
        assert [x.value["metadata"]["epoch_num"] for x in lines if x.key == key] == [1, 2], key
    assert [x.timestamp for x in lines] == sorted(x.timestamp for x in lines)
    order = [x.key for x in lines]
    assert order.index("init_stop") < order.index("run_start") < order.index("epoch_start")
    assert order[-1] == "run_stop"


# --- a sweep: one parent run, a child per seed; energy from a fake power source --------------------------------


class FakePower:
    name = "fake"

    def watts(self) -> float:
        return 50.0


@pytest.fixture(scope="module")
def swept(config, tmp_path_factory, no_tracking_env):
    out = tmp_path_factory.mktemp("swept") / "runs" / "sweep"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(power, "find_source", lambda device, indices: (FakePower(), None))
        mp.setattr(power, "PERIOD_S", 0.05)
        cfg = RunConfig.from_dict({**config, "epochs": 1, "output_dir": str(out), "report_to": ["mlflow"]})
        sweep.run_sweep(cfg, [0, 1])
    return out


def test_a_sweep_is_one_mlflow_run_with_a_child_per_seed(swept):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{swept.parent.parent / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("distil-kit").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([experiment])}
    assert set(runs) == {"sweep", "seed-0", "seed-1"}
    parent = runs["sweep"]
    assert parent.data.params["seeds"] == "[0, 1]" and "sweep/accuracy_mean" in parent.data.metrics
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"sweep.csv", "sweep.json"}
    for seed in (0, 1):
        child = runs[f"seed-{seed}"]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.params["seed"] == str(seed) and child.info.status == "FINISHED"


def test_energy_from_a_fake_power_source_lands_in_the_summary_and_the_table(swept):
    runs = [Run.read(swept / f"seed-{seed}") for seed in (0, 1)]
    for run in runs:
        s = run.summary
        assert s["energy_source"] == "fake" and s["power_avg_w"] == pytest.approx(50.0)
        assert s["power_max_w"] == 50.0 and s["energy_to_target_j"] is None  # no target
        # training, evaluations included: about the training clock's seconds at 50 W
        assert s["energy_j"] == pytest.approx(50 * s["train_time"], rel=0.5)
    table = analysis.comparison_table(runs, published=False)
    assert table.energy_j.tolist() == [r.summary["energy_j"] for r in runs]
    assert "power_avg_w" in table.columns


def test_energy_is_null_with_a_reason_where_nothing_can_be_read(resumed, monkeypatch):
    # this machine's CPU: no RAPL counters readable here (CI's and the project's machines alike)
    s = resumed.summary
    assert s["energy_j"] is None and s["energy_source"] is None and s["energy_note"]
    assert "energy_j" not in analysis.comparison_table([resumed], published=False).columns
    source, reason = power.find_source(__import__("torch").device("cpu"), [])
    assert (source is None) == bool(reason)


# --- the arithmetic ---------------------------------------------------------------------------------------------


def test_energy_is_the_trapezoid_integral_of_power_over_the_window():
    samples = [(0.0, 100.0), (1.0, 100.0), (2.0, 200.0), (4.0, 200.0)]
    assert energy.joules(samples, 0.0, 4.0) == pytest.approx(100 + 150 + 400)
    # a window inside the samples counts its own share: power at 1.5 s is 150 W
    assert energy.joules(samples, 1.5, 2.0) == pytest.approx(0.5 * (150 + 200) / 2)
    # outside the samples power is the nearest sample's
    assert energy.joules(samples, 4.0, 5.0) == pytest.approx(200.0)
    fields = energy.energy_fields(samples, 0.0, 4.0, target=2.0, source="nvml")
    assert fields == {
        "energy_j": 650.0,
        "energy_to_target_j": 250.0,
        "power_avg_w": 162.5,
        "power_max_w": 200.0,
        "energy_source": "nvml",
        "energy_note": None,
    }
    assert energy.energy_fields([], 0.0, 4.0, None, None, "no RAPL")["energy_note"] == "no RAPL"


def test_the_sampler_reads_a_power_source_in_the_background():
    import time

    sampler = power.PowerSampler(FakePower(), period=0.01)
    sampler.start()
    time.sleep(0.2)
    sampler.stop()
    assert len(sampler.samples) >= 5 and {w for _, w in sampler.samples} == {50.0}
    times = [t for t, _ in sampler.samples]
    assert times == sorted(times)
    # a sampler nobody stops (its run ended in an error) ends with its run's objects
    sampler = power.PowerSampler(FakePower(), period=0.01)
    sampler.start()
    thread = sampler._thread
    del sampler
    gc.collect()
    thread.join(timeout=1)
    assert not thread.is_alive()


def test_rapl_counters_are_read_as_power_across_a_wrap(tmp_path):
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "max_energy_range_uj").write_text("1000000\n")
    (zone / "energy_uj").write_text("900000\n")
    source = power.RaplPower([zone / "energy_uj"])
    source.last = (source.last[0] - 1.0, source.last[1])  # a second ago
    (zone / "energy_uj").write_text("100000\n")  # wrapped: 200,000 uJ used
    assert source.watts() == pytest.approx(0.2, rel=0.01)


def test_mlflow_db_goes_beside_the_runs_folder(tmp_path, monkeypatch):
    from distil_kit.trackers import default_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path / "runs" / "x") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert default_tracking_uri(Path("runs/x")) == "http://tracking:5000"
