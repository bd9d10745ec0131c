"""Clean stops: SIGINT (Ctrl-C, a notebook's interrupt) and SIGTERM set a flag the training loop reads after each
step, so that it can checkpoint before stopping."""

from __future__ import annotations

import signal
import threading


class StopSignals:
    """Inside ``with``: SIGINT/SIGTERM set ``received`` (the signal's name); a second SIGINT interrupts at once."""

    def __init__(self):
        self.received: str | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
