"""An engine in a child process, so that the parent keeps the clock.

Every call to the worker has a timeout. At the deadline the parent kills the worker's whole
process group (the worker and vLLM's own engine process), so a hung or slow engine cannot
push a run past its budget. With several GPUs there is one worker per device, pinned by
CUDA_VISIBLE_DEVICES before torch or vLLM is imported.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from airv.core.errors import EngineError
from airv.engines.base import Completion, GenerateRequest, ScoreRequest
from airv.engines.config import EngineConfig, SamplingConfig

T = TypeVar("T")


class WorkerTimeout(EngineError):
    """The worker did not answer before its deadline; it has been killed."""


class WorkerDied(EngineError):
    """The worker process ended or its engine raised; it has been killed."""


@dataclass(frozen=True)
class Faults:
    """Faults to inject inside the worker, for tests of the pipeline's recovery.

    Counts are 1-based numbers of `generate` calls in one worker's life; `lives` is how many
    worker lives (the first start, then restarts) the faults apply to.
    """

    raise_on_call: int | None = None  # the engine raises mid-batch
    exit_on_call: int | None = None  # the process dies without a word (as if OOM-killed)
    hang_on_call: int | None = None  # the engine never answers
    # vLLM's own engine process (VLLM::EngineCore) is killed with SIGKILL, as an
    # out-of-memory kill would, just before this call reaches it.
    kill_engine_on_call: int | None = None
    lives: int = 1


def _serve(
    conn: Connection,
    engine_cfg: EngineConfig,
    sampling_cfg: SamplingConfig,
    device: str | None,
    n_gpus: int,
    faults: Faults,
) -> None:
    # A process group of our own: killing it ends vLLM's engine-core process with us.
    os.setsid()
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    os.environ.setdefault("VLLM_LOGGING_LEVEL", engine_cfg.log_level)  # before vLLM is imported
    from airv.engines import make_engine

    try:
        engine = make_engine(engine_cfg, sampling_cfg, n_gpus=n_gpus)
    except BaseException as exc:  # report any start-up failure to the parent, then end
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        return
    # The engine's own processes (vLLM's EngineCore and its workers): the parent watches them,
    # since the engine's client in this process may wait forever for a dead one.
    engine_pids = descendants(os.getpid())
    conn.send(("ready", engine_pids))
    calls = 0
    while True:
        try:
            method, payload = conn.recv()
        except EOFError:
            break
        if method == "close":
            break
        if method == "generate":
            calls += 1
            if calls == faults.exit_on_call:
                os._exit(17)
            if calls == faults.hang_on_call:
                time.sleep(10**6)
            if calls == faults.kill_engine_on_call:
                for pid in engine_pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        try:
            if calls == faults.raise_on_call and method == "generate":
                raise RuntimeError("injected fault: engine raised mid-batch")
            result = getattr(engine, method)(payload)
        except Exception as exc:  # sent to the parent, which decides what to do
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
            continue
        conn.send(("ok", result))
    with contextlib.suppress(Exception):
        engine.close()


class EngineWorker:
    """One engine in one child process; calls block until an answer or the deadline."""

    def __init__(
        self,
        engine: EngineConfig,
        sampling: SamplingConfig,
        *,
        device: str | None = None,
        n_gpus: int = 0,
        faults: Faults | None = None,
        name: str = "worker-0",
    ):
        self.name = name
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve,
            args=(child, engine, sampling, device, n_gpus, faults or Faults()),
            name=name,
            daemon=False,  # vLLM starts processes of its own; daemons may not
        )
        self._proc.start()
        child.close()
        self._pending = False
        self.engine_pids: list[int] = []  # vLLM's own processes, known once the engine is up

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def wait_ready(self, deadline: float) -> None:
        self.engine_pids = list(self._receive(deadline) or [])

    def submit(self, method: str, payload: Any) -> None:
        """Send a call without waiting: workers on several GPUs run concurrently."""
        try:
            self._conn.send((method, payload))
        except (OSError, ValueError) as exc:
            self.kill()
            raise WorkerDied(f"{self.name}: cannot reach the engine process: {exc}") from exc
        self._pending = True

    def result(self, deadline: float) -> Any:
        out = self._receive(deadline)
        self._pending = False
        return out

    def generate(
        self, requests: Sequence[GenerateRequest], deadline: float
    ) -> list[list[Completion]]:
        self.submit("generate", list(requests))
        return self.result(deadline)  # type: ignore[no-any-return]

    def score(self, requests: Sequence[ScoreRequest], deadline: float) -> list[float]:
        self.submit("score", list(requests))
        return self.result(deadline)  # type: ignore[no-any-return]

    def _receive(self, deadline: float) -> Any:
        """Wait for the child's next message until `deadline` (time.monotonic())."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise WorkerTimeout(f"{self.name}: no answer before the deadline; stopped it")
            if self._conn.poll(min(left, 1.0)):
                break
            if not self._proc.is_alive():
                code = self._proc.exitcode
                self.kill()
                raise WorkerDied(f"{self.name}: engine process ended (exit code {code})")
            dead = [pid for pid in self.engine_pids if not process_alive(pid)]
            if dead:
                self.kill()
                raise WorkerDied(f"{self.name}: vLLM's engine process {dead[0]} died")
        try:
            status, payload = self._conn.recv()
        except (EOFError, OSError) as exc:
            self.kill()
            raise WorkerDied(f"{self.name}: engine process ended: {exc}") from exc
        if status == "error":
            self.kill()
            raise WorkerDied(f"{self.name}: engine failed: {payload}")
        return payload

    def close(self, timeout: float = 30.0) -> None:
        """Ask the engine to shut down; kill it if it does not within `timeout` seconds."""
        if self._proc.is_alive() and not self._pending:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(("close", None))
            self._proc.join(timeout)
        self.kill()

    def kill(self) -> None:
        pid = self._proc.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join(5)
        with contextlib.suppress(OSError):
            self._conn.close()


def share_out(
    items: Sequence[T], n: int, task_of: Callable[[T], str], cost_of: Callable[[T], int]
) -> list[list[T]]:
    """Share items among n workers by estimated token cost, whole tasks together, greedily
    (largest task to the least-loaded worker)."""
    if n == 1:
        return [list(items)]
    by_task: dict[str, list[T]] = defaultdict(list)
    for item in items:
        by_task[task_of(item)].append(item)
    loads = [0] * n
    shares: list[list[T]] = [[] for _ in range(n)]
    for group in sorted(by_task.values(), key=lambda g: -sum(cost_of(x) for x in g)):
        i = loads.index(min(loads))
        shares[i].extend(group)
        loads[i] += sum(cost_of(x) for x in group)
    return shares


def fan_out(
    workers: Sequence[EngineWorker],
    method: str,
    items: Sequence[T],
    *,
    request_of: Callable[[T], object],
    task_of: Callable[[T], str],
    cost_of: Callable[[T], int],
    deadline: float,
) -> Iterator[tuple[list[T], Any]]:
    """One engine call (`generate` or `score`) over several workers: items are shared out
    (`share_out`), every worker gets its share at once, and each share is yielded with its
    results as that worker answers, so what one worker finished is kept if a later one fails.
    The one place a call fans out to workers."""
    shares = share_out(items, len(workers), task_of, cost_of)
    busy = [(w, share) for w, share in zip(workers, shares, strict=True) if share]
    for w, share in busy:
        w.submit(method, [request_of(x) for x in share])
    for w, share in busy:
        yield share, w.result(deadline)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc; [] elsewhere)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except (OSError, ValueError):
                continue
            out.extend(children)
            todo.extend(children)
    return out


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
