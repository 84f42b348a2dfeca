"""Time: the run's deadline, and the signals that end a run early.

The clock starts at process start (model loading counts), so a 12-hour Kaggle limit is
respected by `--time-budget 11h30m` without the user guessing how long loading takes.
SIGTERM (Kaggle's time limit, a container stop) and SIGINT (Ctrl-C) end a run as its deadline
would: `stop_on_signals` turns the first into `Stopped`, raised where the run is.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass


def process_start_time() -> float:
    """time.monotonic() at which this process started (Linux), else now."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        import os

        start_ticks = int(fields[19])  # field 22 of stat: start time in clock ticks after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - max(0.0, age)
    except (OSError, ValueError, IndexError):
        return time.monotonic()


@dataclass(frozen=True)
class Clock:
    """The run's deadline on the monotonic clock. `reserve` is kept back for the final write."""

    start: float
    budget: float
    reserve: float

    @property
    def deadline(self) -> float:
        """When inference must stop: the budget minus the reserve."""
        return self.start + self.budget - self.reserve

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class Stopped(BaseException):
    """A signal asked the run to stop. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` on the way (one task's failure) mistakes it for a task's fault."""

    def __init__(self, signum: int):
        self.signal = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal}")


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalStop:
    """While armed, the first SIGTERM or SIGINT raises Stopped where the run is; after that,
    or once disarmed (the final write has begun and must not be cut), signals are only
    recorded in `received`."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.armed = True
        self._holding = False
        self._held: int | None = None  # a signal that came while held

    def handle(self, signum: int, frame: object) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
        if self.armed and self._holding:
            self._held = signum
        elif self.armed:
            self.armed = False
            raise Stopped(signum)

    def disarm(self) -> None:
        self.armed = False

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """A block a signal must not cut in two (a log line written and the run's memory of it
        updated): a signal within it raises Stopped once the block is done."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self._held is not None and self.armed:
            self.armed = False
            raise Stopped(self._held)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[SignalStop]:
    """SIGTERM and SIGINT handled by a SignalStop within the block, the old handlers restored
    after. Outside the main thread (where Python takes no signals) nothing is installed."""
    stop = SignalStop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, stop.handle) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
