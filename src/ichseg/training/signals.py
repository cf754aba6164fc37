"""SIGTERM and SIGINT turn into a stop request that the training loop honours at a step boundary.

The handlers only set a flag: saving inside a signal handler would save whatever half-updated
state the interrupted step left (Lightning's SLURM handler does exactly that). The loop checks
`requested` between steps, saves, and exits 0. A second SIGINT (Ctrl-C pressed again) raises
KeyboardInterrupt at once: the run stops without saving, and the last committed checkpoint is
intact because checkpoints are only ever replaced atomically.

Python delivers signals to the main thread only, so outside it (a notebook running training in a
worker thread) `StopRequest` installs nothing and only `request()` can set the flag.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class StopRequest:
    """Context manager: SIGTERM/SIGINT set `requested` and `reason`; previous handlers come back
    on exit."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.requested = False
        self.reason = ""
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def request(self, reason: str) -> None:
        """Ask for a clean stop from code (the time limit, a notebook's stop button)."""
        if not self.requested:
            self.requested = True
            self.reason = reason

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt
        # Only set the flag: logging here could deadlock on a lock the interrupted code holds.
        self.request(signal.Signals(signum).name)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            # None: the previous handler was not set from Python; the default is the best guess.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()
