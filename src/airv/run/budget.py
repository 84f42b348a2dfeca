"""Time: the run's deadline, and the signals that end a run early.

The clock starts at process start (model loading counts), so a 12-hour Kaggle limit is
respected by `--time-budget 11h30m` without the user guessing how long loading takes.
SIGTERM (Kaggle's time limit, a container stop) and SIGINT (Ctrl-C) end a run as its deadline
would: `stop_on_signals` turns the first into `Stopped`, raised where the run is.

The run's loop checks its deadline at least every half second and stops in order, keeping what
the engines returned. A step that blocks (a tokenizer loading, transformers imported, on cores
five runs share: 16 s, past the deadline by 4) is stopped by an alarm (SIGALRM) `DEADLINE_GRACE`
seconds after the deadline, as a SIGTERM would stop it: the reserve is then still there for the
final write and the exit.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airv.run.config import RunConfig


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

    @classmethod
    def for_run(cls, cfg: RunConfig, start: float | None = None) -> Clock:
        """The clock of a run of `cfg` (its budget and reserve) from `start`; None: from now,
        for a run started inside a longer-lived process (the bench, a test), whose own start
        is not the run's. A run's own process counts from its start (`process_start_time`):
        model loading is part of Kaggle's limit."""
        return cls(
            time.monotonic() if start is None else start, cfg.time_budget, cfg.reserve_seconds
        )

    @property
    def deadline(self) -> float:
        """When inference must stop: the budget minus the reserve."""
        return self.start + self.budget - self.reserve

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


# Seconds past the deadline at which the alarm stops a run blocked in a step that does not
# check it (the loop itself stops within half a second, in order).
DEADLINE_GRACE = 1.0
DEADLINE = "deadline"  # what the alarm's stop is called (stopped_by), not "SIGALRM"
# Beyond this a deadline is as good as none (setitimer overflows near 1e10 s; a budget of
# years parses): no alarm is set.
ALARM_MAX_SECONDS = 1e8


def _stop_name(signum: int) -> str:
    return DEADLINE if signum == signal.SIGALRM else signal.Signals(signum).name


class Stopped(BaseException):
    """A signal asked the run to stop, or its deadline alarm rang. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` on the way (one task's failure) mistakes
    it for a task's fault."""

    def __init__(self, signum: int):
        self.signal = _stop_name(signum)  # SIGTERM, SIGINT, or "deadline"
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
            self.received = _stop_name(signum)
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


@contextlib.contextmanager
def deadline_alarm(stop: SignalStop, deadline: float) -> Iterator[None]:
    """Within the block, SIGALRM DEADLINE_GRACE seconds after `deadline` (time.monotonic()),
    handled by `stop` as a stop named "deadline". The run opens it inside its `try`, so that
    the alarm can only ring where its handlers catch it, and closes it before they run.

    An alarm already set (pytest-timeout's, a caller's) that rings first is left alone, and
    the block has no alarm of its own; one that rings later is set again after the block,
    less the time the block took. Outside the main thread, or with a deadline too far off
    for a timer (ALARM_MAX_SECONDS), nothing."""
    armed = time.monotonic()
    ring = max(deadline + DEADLINE_GRACE - armed, 1e-3)
    outer = signal.getitimer(signal.ITIMER_REAL)
    if (
        threading.current_thread() is not threading.main_thread()
        or not ring < ALARM_MAX_SECONDS
        or 0 < outer[0] <= ring
    ):
        yield
        return
    previous = signal.signal(signal.SIGALRM, stop.handle)
    try:
        signal.setitimer(signal.ITIMER_REAL, ring)
        yield
    finally:
        # Ignored while the timer is cancelled and the old handler put back: an alarm that
        # rang just now must not raise from here, nor reach the old handler.
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer[0] > 0:
            left = outer[0] - (time.monotonic() - armed)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), outer[1])
