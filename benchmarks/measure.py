"""What the benchmarks measure besides time: the machine's name, peak memory, and how busy other processes kept the
CPUs. Memory and CPU times come from psutil, except the kernel's peak-RSS mark, which psutil does not expose."""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import re
import threading
import time
from pathlib import Path

import psutil
import torch

GIB = 2**30


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    # platform.processor() is only the architecture on Linux; the model name is in /proc/cpuinfo
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model}, {torch.get_num_threads()} threads"


def device_slug(device: torch.device) -> str:
    """The machine in a file name: the GPU's name, or cpu-<N>cores."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{os.cpu_count()}cores"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def environment(device: torch.device) -> dict:
    """The machine and library versions, as the leading columns of every CSV."""
    import transformers

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": device_slug(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, seconds: float = 1.0) -> float:
    """The bf16 matrix-multiply rate of this device, in TFLOP/s: square matmuls (4096 on a GPU, 1024 on a CPU,
    with this process's threads) repeated for about ``seconds``, after a warm-up. The denominator of model FLOP
    utilisation: the rate this machine reaches, not a datasheet's."""
    n = 4096 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or reps < 3:
        for _ in range(10 if device.type == "cuda" else 1):
            a @ b
            reps += 1
        sync(device)
    return 2 * n**3 * reps / elapsed / 1e12


def trim_heap() -> None:
    """Give freed memory back (Python objects, the CUDA cache, glibc's heap), so that one variant's leftovers do not
    count as the next one's RSS, nor hide its growth."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _reset_kernel_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _kernel_peak() -> int:
    """VmHWM in bytes. psutil has no field for it (its memory_info() is read from /proc/self/statm, which holds no
    peak), so this one line is read from /proc/self/status."""
    match = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) * 1024


class PeakMemory:
    """Peak memory of what runs inside ``with``: on a GPU ``torch.cuda.max_memory_allocated``; on CPU the peak RSS
    of this process minus its RSS at entry (psutil's ``memory_info().rss``).

    On Linux the CPU peak is the kernel's own mark, reset at entry: it sees every page, costs nothing while the
    variant runs, and no sampling thread competes with training for the cores. Where it cannot be reset, a thread
    samples psutil's RSS every 0.1 s instead, which can miss a peak shorter than that."""

    def __init__(self, device: torch.device):
        self.device, self.gib, self._stop, self._thread = device, float("nan"), threading.Event(), None
        self.kind = "gpu_max_allocated" if device.type == "cuda" else "cpu_rss_peak_delta"

    def __enter__(self):
        trim_heap()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._base = self._peak = _rss()
        if not _reset_kernel_peak():
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.1):
            self._peak = max(self._peak, _rss())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.gib = torch.cuda.max_memory_allocated(self.device) / GIB
            return False
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss())
        else:
            peak = _kernel_peak()
        self.gib = (peak - self._base) / GIB
        return False


class Contention:
    """How busy the machine's CPUs were with *other* processes since creation: (all busy CPU time minus this
    process's CPU time) / (wall time x CPUs), from psutil's system-wide and per-process CPU times. Near 0 on a quiet
    machine: a timing taken while it is high is slowed by others, not by the code measured."""

    def __init__(self):
        self._process = psutil.Process()
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()  # busy = not idle, not waiting for I/O, not stolen by a hypervisor
        return t.user + t.system + sum(getattr(t, f, 0.0) for f in ("nice", "irq", "softirq"))

    def _own(self) -> float:
        t = self._process.cpu_times()
        return t.user + t.system

    def others_share(self) -> float:
        wall = time.perf_counter() - self.t0
        others = (self._busy() - self.busy0) - (self._own() - self.own0)
        return max(0.0, others / (wall * (os.cpu_count() or 1)))
