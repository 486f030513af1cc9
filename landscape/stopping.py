"""Stopping cleanly: SIGINT and SIGTERM ask long work to stop at its next safe point; a file-size limit becomes
an error we report rather than a signal that kills (no torch).

`StopSignals` blocks nest: a signal caught by an inner block (one run of an ablation) is passed on to the
enclosing one when the inner block ends, so the whole command stops after the running piece has saved.
"""
from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(Exception):
    """Raised from inside long work (between two products, two points) once a stop was asked; the caller keeps
    what is done and says how to resume."""


class StopSignals:
    """SIGINT and SIGTERM set `received` instead of interrupting (context manager; main thread only)."""

    def __init__(self):
        self.received: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self.previous[sig] = signal.signal(sig, self.handle)
                outer = getattr(self.previous[sig], "__self__", None)
                if isinstance(outer, StopSignals) and outer.received is not None:
                    self.received = outer.received  # asked before this block began: stop at its first safe point
        return self

    def handle(self, signum, frame) -> None:
        self.received = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        outer = self.previous.get(self.received)
        if self.received is not None and isinstance(getattr(outer, "__self__", None), StopSignals):
            outer(self.received, None)  # the enclosing block stops too


def ignore_file_size_signal() -> None:
    """Over a file-size limit (RLIMIT_FSIZE), let writes fail with EFBIG, which we report, instead of SIGXFSZ
    killing the process (main thread only; elsewhere the signal keeps its action)."""
    if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
