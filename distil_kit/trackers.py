"""``report_to``: the run logged where people already look, TensorBoard and MLflow (and MLPerf's event log,
``mllog.py``), each a callback on the engine's events; only rank 0 reports.

Each tracker starts (imports its package, reaches its store) as ``finetune`` builds its callbacks, before the model
loads: one that cannot is a one-line KitError then, not a traceback after training. What each logs: per steps.csv
row ``train/loss``, ``train/lr``, ``train/samples_per_s``; per evaluation ``eval/accuracy`` with ``eval/correct``,
``eval/total``, ``eval/acc_low``, ``eval/acc_high``; at the end the summary's numbers (``summary/...``, the time to
target among them). A resumed run continues its tracker runs: TensorBoard purges what followed the checkpoint,
MLflow's run (its id in ``<run>/trackers.json``) gets only the steps it has not seen.
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

from .callbacks import Callback
from .errors import KitError
from .tracker_state import read_state, require, update_state

PARENT_ENV = "DISTIL_KIT_MLFLOW_PARENT"  # a sweep's parent MLflow run, for its seeds' runs (spawned ones too)
EXPERIMENT = "distil-kit"
STEP_METRICS = ("loss", "lr", "samples_per_s")
EVAL_METRICS = ("accuracy", "correct", "total", "acc_low", "acc_high")


def metric_name(key: str) -> str:
    """A summary key as a metric name both tools accept: ``throughput(ips)_raw`` -> ``throughput_ips_raw``."""
    return re.sub(r"_+", "_", re.sub(r"[^\w./-]", "_", key)).strip("_")


def summary_metrics(summary: dict) -> dict[str, float]:
    """The summary's numbers (``converged`` as 0 or 1), each ``summary/<name>``."""
    return {f"summary/{metric_name(k)}": float(v) for k, v in summary.items() if isinstance(v, int | float)}


def trackers(cfg, world) -> list[Callback]:
    """The callbacks ``cfg.report_to`` asks for, started; none on ranks other than 0."""
    from .mllog import MLLog

    if not world.main:
        return []
    make = {"mllog": MLLog, "tensorboard": TensorBoard, "mlflow": MLflow}
    # MLPerf's log first: its run_stop is written before MLflow copies the run folder's files
    return [make[name](cfg) for name in sorted(set(cfg.report_to or ()), key=list(make).index)]


class TensorBoard(Callback):
    """Event files in ``<run>/tensorboard/`` (``tensorboard --logdir runs/``)."""

    def __init__(self, cfg):
        require("tensorboard", "tensorboard")
        self.folder = Path(cfg.output_dir) / "tensorboard"
        self.writer = None

    def on_run_start(self, trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        step = trainer.progress.step
        # A resume hides what the stopped process logged after its checkpoint; it logs those steps again.
        self.writer = SummaryWriter(str(self.folder), purge_step=step + 1 if trainer.cfg.resume else None)
        if not trainer.cfg.resume:
            self.writer.add_text("config", f"```\n{json.dumps(trainer.cfg.to_dict(), indent=1)}\n```", 0)

    # Flushed at every row (a few scalars, every log_every steps): TensorBoard shows a run as it trains, not two
    # minutes late (SummaryWriter's default), and a crashed run's rows are on disk.
    def on_log(self, trainer, row: dict) -> None:
        for key in STEP_METRICS:
            self.writer.add_scalar(f"train/{key}", row[key], row["step"])
        self.writer.flush()

    def on_evaluate(self, trainer, row: dict) -> None:
        for key in EVAL_METRICS:
            self.writer.add_scalar(f"eval/{key}", row[key], row["step"])
        self.writer.flush()

    def on_stop(self, trainer, reason: str) -> None:
        self.writer.close()

    def on_run_end(self, trainer, summary: dict) -> None:
        for tag, value in summary_metrics(summary).items():
            self.writer.add_scalar(tag, value, trainer.progress.step)
        self.writer.close()


def default_tracking_uri(folder: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else SQLite's ``mlflow.db`` beside the folder that holds ``folder`` (the
    project root for ``runs/<name>``, where ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` finds it)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(folder).resolve().parent.parent / 'mlflow.db'}"


def mlflow_client(uri: str):
    """A client of ``uri`` that has reached its store (a bad URI or an unreachable server: one line) and the kit's
    experiment's id (artifacts beside a SQLite database, in ``mlartifacts/``)."""
    require("mlflow", "mlflow")
    from mlflow import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            return client, experiment.experiment_id
        artifacts = (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
        return client, client.create_experiment(EXPERIMENT, artifacts if uri.startswith("sqlite:///") else None)
    except Exception as e:  # MlflowException, connection and database errors alike
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise KitError(f"parameter 'report_to': mlflow cannot use tracking URI {uri} ({first})") from None


class MLflow(Callback):
    """A run in the tracking store, a child of a sweep's run when ``PARENT_ENV`` names one; the run folder's files
    as its artifacts at the end (not ``model/`` or ``tensorboard/``: the run folder keeps them)."""

    def __init__(self, cfg):
        self.out = Path(cfg.output_dir)
        saved = read_state(self.out) if cfg.resume else {}
        self.uri = saved.get("tracking_uri") or default_tracking_uri(self.out)
        self.client, self.experiment = mlflow_client(self.uri)
        self.run_id = saved.get("run_id")
        self.logged: dict[str, int] = {}  # a resumed run's last logged step per metric

    def on_run_start(self, trainer) -> None:
        if self.run_id is not None:  # resumed: continue the stopped process's run
            self.client.update_run(self.run_id, status="RUNNING")
            for key in (*(f"train/{k}" for k in STEP_METRICS), *(f"eval/{k}" for k in EVAL_METRICS)):
                history = self.client.get_metric_history(self.run_id, key)
                self.logged[key] = max((m.step for m in history), default=-1)
            return
        parent = os.environ.get(PARENT_ENV)
        tags = {"mlflow.parentRunId": parent} if parent else {}
        run = self.client.create_run(self.experiment, run_name=self.out.name, tags=tags)
        self.run_id = run.info.run_id
        update_state(self.out, tracking_uri=self.uri, run_id=self.run_id)
        self.client.log_batch(self.run_id, params=_param_list(trainer.cfg.to_dict()))

    def _log(self, prefix: str, keys, row: dict) -> None:
        from mlflow.entities import Metric

        step, now = int(row["step"]), _now_ms()
        metrics = [
            Metric(f"{prefix}/{k}", float(row[k]), now, step)
            for k in keys
            if step > self.logged.get(f"{prefix}/{k}", -1)
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def on_log(self, trainer, row: dict) -> None:
        self._log("train", STEP_METRICS, row)

    def on_evaluate(self, trainer, row: dict) -> None:
        self._log("eval", EVAL_METRICS, row)

    def on_stop(self, trainer, reason: str) -> None:
        self.client.set_terminated(self.run_id, status="KILLED")

    def on_run_end(self, trainer, summary: dict) -> None:
        from mlflow.entities import Metric

        step, now = trainer.progress.step, _now_ms()
        metrics = [Metric(k, v, now, step) for k, v in summary_metrics(summary).items()]
        self.client.log_batch(self.run_id, metrics=metrics)
        for path in sorted(self.out.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status="FINISHED")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _param_list(values: dict) -> list:
    """MLflow's params: text, JSON for what is not (``null``, ``["mlflow"]``, ``5e-05``)."""
    from mlflow.entities import Param

    return [Param(k, v if isinstance(v, str) else json.dumps(v)) for k, v in values.items()]


@contextmanager
def sweep_parent(config, seeds: list[int]):
    """A sweep's parent MLflow run around its seeds' runs (``PARENT_ENV`` names it to them); its id is in
    ``<output_dir>/trackers.json``, so a sweep started again continues it (one started over, ``overwrite``, gets a
    new one). Yields a function that finishes it with the sweep's record and files."""
    out = Path(config.output_dir)
    saved = read_state(out) if not config.overwrite else {}
    uri = saved.get("tracking_uri") or default_tracking_uri(out)
    client, experiment = mlflow_client(uri)
    run_id = saved.get("run_id")
    if run_id is None:
        run_id = client.create_run(experiment, run_name=out.name).info.run_id
        out.mkdir(parents=True, exist_ok=True)
        update_state(out, tracking_uri=uri, run_id=run_id)
        client.log_batch(run_id, params=_param_list({**config.to_dict(), "seeds": seeds}))
    else:  # the sweep started again
        client.update_run(run_id, status="RUNNING")

    def finish(record: dict, files: list[Path]) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        numbers = {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        metrics = [Metric(f"sweep/{metric_name(k)}", float(v), now, 0) for k, v in numbers.items()]
        client.log_batch(run_id, metrics=metrics)
        for path in files:
            client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, status="FINISHED")

    before = {name: os.environ.get(name) for name in (PARENT_ENV, "MLFLOW_TRACKING_URI")}
    os.environ.update({PARENT_ENV: run_id, "MLFLOW_TRACKING_URI": uri})  # the seeds' runs, in this process or not
    try:
        yield finish
    except BaseException:
        client.set_terminated(run_id, status="KILLED")
        raise
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
