"""Power read during a run, for summary.json's energy fields (``energy.energy_fields`` does the arithmetic).

On a GPU, NVML's board power (``nvidia-ml-py``, read directly); on a CPU, the kernel's RAPL counters
(``/sys/class/powercap/intel-rapl:N/energy_uj``, the CPU packages) where it exposes them and they can be read. A
thread samples every ``PERIOD_S`` seconds, so a run's clock never waits for a reading. NVML directly rather than
codecarbon or zeus: one call per sample, no emissions estimate, config files or network look-ups, and the samples
stay ours to integrate over the exact training window and up to the time the target was reached.
"""

from __future__ import annotations

import glob
import threading
import time
import weakref
from pathlib import Path

from . import energy
from .callbacks import Callback

PERIOD_S = 0.5  # two samples a second: NVML refreshes board power about every 100 ms on recent GPUs
RAPL_GLOB = "/sys/class/powercap/intel-rapl:[0-9]*/energy_uj"  # packages only: their sub-zones are inside them


class NvmlPower:
    """Board power of the GPUs ``indices``, summed, in watts."""

    name = "nvml"

    def __init__(self, indices: list[int]):
        import pynvml

        pynvml.nvmlInit()
        self._read = pynvml.nvmlDeviceGetPowerUsage  # milliwatts
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
        self.watts()  # a board that reports no power raises here, not in the sampler

    def watts(self) -> float:
        return sum(self._read(h) for h in self.handles) / 1000


class RaplPower:
    """CPU package power from RAPL's energy counters (microjoules, wrapping at ``max_energy_range_uj``): each
    reading is the mean power since the one before."""

    name = "rapl"

    def __init__(self, counters: list[Path]):
        self.counters = counters
        self.ranges = [int((c.parent / "max_energy_range_uj").read_text()) for c in counters]
        self.last = (time.perf_counter(), self._uj())

    def _uj(self) -> list[int]:
        return [int(c.read_text()) for c in self.counters]

    def watts(self) -> float:
        now, uj = time.perf_counter(), self._uj()
        (then, before), self.last = self.last, (now, uj)
        used = sum((b - a) % r for a, b, r in zip(before, uj, self.ranges, strict=True))  # % undoes a wrap
        return used / 1e6 / max(now - then, 1e-9)


def find_source(device, device_indices: list[int]) -> tuple[object | None, str | None]:
    """The power source for ``device`` (NVML for cuda, RAPL for cpu), or None and why there is none."""
    if device.type == "cuda":
        try:
            return NvmlPower(device_indices), None
        except ImportError:
            return None, "nvidia-ml-py is not installed (pip install nvidia-ml-py)"
        except Exception as e:  # pynvml.NVMLError and its many subclasses: no driver, no power reading
            return None, f"NVML gave no power reading ({e})"
    counters = [Path(p) for p in sorted(glob.glob(RAPL_GLOB))]
    if not counters:
        return None, "the kernel exposes no RAPL counters (/sys/class/powercap/intel-rapl*)"
    try:
        return RaplPower(counters), None
    except OSError as e:  # since 2020 (CVE-2020-8694) energy_uj is readable by root only
        return None, f"RAPL counters cannot be read ({e.strerror or e})"


class PowerSampler:
    """Samples ``source.watts()`` every ``period`` seconds on a daemon thread: ``(time.perf_counter(), watts)``.

    The thread holds the sampler only weakly: a run that ends in an error (no event stops it) leaves no thread
    sampling for the rest of a notebook's session once the run's objects are gone."""

    def __init__(self, source, period: float | None = None):
        self.source, self.period = source, period or PERIOD_S
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_sample, args=(weakref.ref(self), self._stop, self.period), name="power-sampler", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()


def _sample(sampler_ref, stop: threading.Event, period: float) -> None:
    while (sampler := sampler_ref()) is not None:
        sampler.samples.append((time.perf_counter(), sampler.source.watts()))
        del sampler  # held only while sampling
        if stop.wait(period):
            return


class EnergyMeter(Callback):
    """Power sampled from the run's start; training (and so energy) counts from the end of the evaluation before
    training (a resumed run: from its start) to the summary, the target's share up to the evaluation that reached
    it. A resumed run counts this process's share only, and its note says so."""

    def __init__(self, source, reason: str | None = None, period: float | None = None):
        self.source, self.reason = source, reason
        self.sampler = PowerSampler(source, period) if source is not None else None
        self.start = self.target = None
        self.resumed = False

    @classmethod
    def for_device(cls, device, world) -> EnergyMeter:
        """Rank 0's meter: its node's GPUs under torchrun (one node's share of a multi-node run), else its own."""
        if not world.main:
            return cls(None, "only rank 0 measures")
        indices = list(range(world.size // world.nodes)) if world.distributed else [device.index or 0]
        return cls(*find_source(device, indices))

    def on_run_start(self, trainer) -> None:
        self.resumed = trainer.cfg.resume
        if self.sampler is not None:
            self.sampler.start()
        if self.resumed:
            self.start = time.perf_counter()

    def on_evaluate(self, trainer, row: dict) -> None:
        now = time.perf_counter()
        if row["epoch"] == 0:
            self.start = now
        elif self.target is None and trainer.progress.time_to_target == row["train_s"]:  # this one reached it
            self.target = now

    def on_stop(self, trainer, reason: str) -> None:
        if self.sampler is not None:
            self.sampler.stop()

    def on_run_end(self, trainer, summary: dict) -> None:
        if self.sampler is not None:
            self.sampler.stop()

    def fields(self) -> dict:
        """summary.json's energy fields up to now."""
        end = time.perf_counter()
        if self.sampler is not None:
            self.sampler.stop()
        samples = self.sampler.samples if self.sampler is not None else []
        note = self.reason or ("resumed: earlier processes' energy is not counted" if self.resumed else None)
        start = self.start if self.start is not None else end
        return energy.energy_fields(samples, start, end, self.target, getattr(self.source, "name", None), note)


def measured_energy(callbacks) -> dict:
    """The energy fields of the run's ``EnergyMeter`` among ``callbacks`` (a ``CallbackList``)."""
    meters = [c for c in callbacks.callbacks if isinstance(c, EnergyMeter)]
    return meters[0].fields() if meters else energy.unmeasured("not measured")
