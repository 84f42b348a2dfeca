"""What a lane is and how it fails: the contract between the pool (engines.pool) and each kind
of lane (a worker process, engines.worker; a server, engines.openai_engine; an engine in this
process, engines.pool.LocalLane). Its own module, so that the pool and the lanes import it and
not each other."""

from __future__ import annotations

from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Protocol

from airv.core.errors import EngineError
from airv.engines.base import Request, Result


class Lane(Protocol):
    """An engine that pulls from the queue: a worker process (engines.worker.EngineWorker), or
    an engine in this process (LocalLane)."""

    name: str
    ready: bool
    last_heard: float  # time.monotonic() of the lane's last sign of life
    started: float

    @property
    def pid(self) -> int | None: ...

    @property
    def waitable(self) -> Connection | None:
        """A connection multiprocessing.connection.wait can wait on; None: poll it."""
        ...

    def send(self, items: Sequence[tuple[int, Request]]) -> None: ...

    def abort(self, request_ids: Sequence[int]) -> None: ...

    def receive(self) -> list[Result]:
        """What has arrived, without waiting long; raises WorkerDied when the lane is gone."""
        ...

    def kill(self) -> None: ...

    def close(self) -> None: ...


class WorkerTimeout(EngineError):
    """The worker did not answer before its deadline; it has been killed."""


class WorkerDied(EngineError):
    """The worker process ended, vLLM's engine process died, or the engine raised; the worker
    has been killed. `partial`: the results it sent before, not yet taken."""

    def __init__(self, message: str, *, partial: Sequence[Result] = ()):
        super().__init__(message)
        self.partial = list(partial)


class EngineRefused(WorkerDied):
    """The engine refused its settings at start-up (a ConfigError): final, as a restart would
    be refused again."""


class WorkerStalled(WorkerDied):
    """The worker had work and said nothing for too long; it has been killed."""
