"""An engine in a child process, streamed, so that the parent keeps the clock.

The parent sends requests as the engine has room for them and the worker sends each result
back as soon as the engine returns it, with a heartbeat after engine steps that finish
nothing: a worker that is silent while it has work is stalled. The worker leads a process
group of its own, with vLLM's engine process (VLLM::EngineCore) in it; it reports that
process's pid, so the parent can watch it (the worker's vLLM client may wait forever on a dead
one) and end the whole group at once. With several GPUs there is one worker per device,
pinned by CUDA_VISIBLE_DEVICES before CUDA is initialised (the fork server it starts from
imported torch, never CUDA).

Messages, parent to worker: ("add", [(id, request), ...]), ("abort", [id, ...]),
("close", None). Worker to parent: ("ready", [engine pid, ...]), ("results", [Result, ...]),
("beat", None), ("error", text) and then the worker ends; ("refused", text) when the engine
refuses its settings at start-up (a ConfigError: final, never restarted).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import select
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from airv.core.errors import ConfigError
from airv.engines.base import (
    Request,
    Result,
)
from airv.engines.config import Decoding, EngineConfig
from airv.engines.lane import EngineRefused, WorkerDied

BEAT_SECONDS = 1.0  # at most one heartbeat a second while the engine steps
CLOSE_SECONDS = 30.0  # a clean engine shutdown's limit, then a kill
_CHECK_SECONDS = 0.2  # how often the parent looks at the worker's processes


@dataclass(frozen=True)
class Faults:
    """Faults to inject inside the worker, for tests of the supervision.

    Each fires once the worker has returned that many finished results in this life (0: at
    the first request). A run applies one Faults to its first `lives` worker lives (or a
    sequence of them, one per life; see engines.pool.FaultyLanes).
    """

    raise_after: int | None = None  # the engine raises
    exit_after: int | None = None  # the worker dies without a word (as if OOM-killed)
    hang_after: int | None = None  # the worker stops answering (it sleeps)
    # vLLM's own engine process (VLLM::EngineCore) is killed with SIGKILL, as an
    # out-of-memory kill would, or stopped with SIGSTOP (a stall the worker cannot see).
    kill_engine_after: int | None = None
    stop_engine_after: int | None = None
    lives: int = 1

    def fire(self, finished: int, engine_pids: Sequence[int]) -> None:
        """Inject whatever is due after `finished` results; called before each engine step."""

        def due(at: int | None) -> bool:
            return at is not None and finished >= at

        if due(self.exit_after):
            os._exit(17)
        if due(self.hang_after):
            time.sleep(10**6)
        for at, sig in (
            (self.kill_engine_after, signal.SIGKILL),
            (self.stop_engine_after, signal.SIGSTOP),
        ):
            if due(at):
                for pid in engine_pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
        if due(self.raise_after):
            raise RuntimeError("injected fault: the engine raised")


def _read(conn: Connection, inbox: queue.Queue[tuple[str, Any]]) -> None:
    """Move the parent's messages into `inbox` as they come, so the parent's sends never wait
    on this worker's own sends (both ends of a full pipe would block)."""
    while True:
        try:
            inbox.put(conn.recv())
        except (EOFError, OSError):
            inbox.put(("close", None))
            return


# Engine workers and training processes start from multiprocessing's fork server, which
# imports these once and forks each child from there: a spawned child imported them again,
# about 5 s of each start on a 2-core CPU (every engine restart, every wave's trainers and
# engine). The fork server never touches a GPU, so each child still initialises CUDA for
# itself, after its CUDA_VISIBLE_DEVICES is set. vLLM is not among them: a run that never
# starts it pays nothing for it.
CHILD_PRELOAD = ("torch", "transformers", "peft")


def child_context() -> mp.context.ForkServerContext:
    """The multiprocessing context that starts engine workers and training processes. torch
    is told to ask NVML, not CUDA, whether a GPU is there: an import that asked CUDA in the
    server would leave every forked child unable to use it."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(CHILD_PRELOAD))
    return ctx


def end_child_server() -> None:
    """End the fork server now: at a deadline or a signal it may still be importing
    CHILD_PRELOAD, seconds of CPU that the run's last writes need, and an interrupted start
    would have it fork a child no one waits for. It is reaped here, under the server's own
    lock, so that the next child starts a new one rather than ask the dying one."""
    from multiprocessing import forkserver

    server = forkserver._forkserver
    lock = getattr(server, "_lock", None)
    stop = getattr(server, "_stop_unlocked", None)  # closes its pipe, waits for it, forgets it
    if lock is None or stop is None:
        return
    with lock:
        pid = getattr(server, "_forkserver_pid", None)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        try:
            stop()
        except Exception:  # reaped elsewhere: forget it all the same
            for name in ("_forkserver_pid", "_forkserver_alive_fd", "_forkserver_address"):
                setattr(server, name, None)


def child_process(target: Any, *args: Any, name: str | None = None) -> mp.context.ForkServerProcess:
    """An engine worker or training process running `target(*args)`, not yet started, from
    child_context() (whose pipes and queues it may be handed). It runs in the parent's
    environment as it is now, temporary folder included: a child forked from the fork server
    has the server's, from when the server started. Not a daemon: vLLM starts processes of
    its own, and daemons may not."""
    return child_context().Process(
        target=_in_environment, args=(dict(os.environ), target, *args), name=name, daemon=False
    )


def _in_environment(env: dict[str, str], target: Any, *args: Any) -> None:
    os.environ.clear()
    os.environ.update(env)
    # The server's imports asked tempfile for its folder under the server's TMPDIR, and
    # tempfile keeps the answer: forgotten, it is read again from this environment. (vLLM's
    # engine meets its own processes through a file there: in a folder since removed, its
    # start waited forever.)
    tempfile.tempdir = None
    target(*args)


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to this process when `parent`, the process that started it, dies: an
    orphaned engine or trainer would hold a GPU, or the CPU, for nothing. A thread waits on
    the parent's pidfd (the fork server, this process's parent by the kernel's count, lives
    on while its children do), or looks every second where the kernel has no pidfd. If the
    parent is already gone, end now. Without /proc (not Linux) nothing is done."""
    if not os.path.isdir("/proc"):
        return
    try:
        fd: int | None = os.pidfd_open(parent)
    except ProcessLookupError:
        os.kill(os.getpid(), sig)
        return
    except (OSError, AttributeError):  # a kernel or a Python without pidfds
        fd = None

    def wait() -> None:
        if fd is not None:
            select.select([fd], [], [])  # readable once the parent has ended
        else:
            while process_alive(parent):
                time.sleep(1.0)
        os.kill(os.getpid(), sig)

    threading.Thread(target=wait, name="parent-watch", daemon=True).start()


def _end_group(signum: int, frame: object) -> None:
    """SIGTERM in a worker (its parent died, or someone stopped it): end its whole process
    group, vLLM's EngineCore and workers included. A plain kill of the worker alone would
    leave them orphaned, holding their memory."""
    os.killpg(0, signal.SIGKILL)


def _serve(
    conn: Connection,
    engine_cfg: EngineConfig,
    sampling_cfg: Decoding,
    device: str | None,
    n_gpus: int,
    faults: Faults,
    parent: int,
) -> None:
    # A process group of our own: killing it ends vLLM's engine-core process with us.
    os.setsid()
    signal.signal(signal.SIGTERM, _end_group)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    die_with_parent(parent)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    os.environ.setdefault("VLLM_LOGGING_LEVEL", engine_cfg.log_level)  # before vLLM is imported
    from airv.engines import make_engine

    try:
        engine = make_engine(engine_cfg, sampling_cfg, n_gpus=n_gpus)
    except ConfigError as exc:  # settings the engine refuses: every restart would again
        conn.send(("refused", str(exc)))
        return
    except BaseException as exc:  # report any start-up failure to the parent, then end
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        return
    signal.signal(signal.SIGTERM, _end_group)  # again: the engine may have set its own
    # The engine's own processes (vLLM's EngineCore and its workers): the parent watches them.
    engine_pids = descendants(os.getpid())
    conn.send(("ready", engine_pids))
    inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
    threading.Thread(target=_read, args=(conn, inbox), daemon=True).start()
    finished = 0
    last_sent = time.monotonic()
    try:
        while True:
            # Take every message waiting; wait for one only when the engine has nothing to do.
            block = not engine.unfinished()
            while True:
                try:
                    method, payload = inbox.get(block=block)
                except queue.Empty:
                    break
                block = False
                if method == "close":
                    return
                if method == "add":
                    for request_id, request in payload:
                        engine.add(request_id, request)
                elif method == "abort":
                    engine.abort(payload)
            if not engine.unfinished():
                continue
            faults.fire(finished, engine_pids)
            results = engine.step()
            if results:
                conn.send(("results", results))
                finished += sum(r.finished for r in results)
                last_sent = time.monotonic()
            elif time.monotonic() - last_sent >= BEAT_SECONDS:
                conn.send(("beat", None))
                last_sent = time.monotonic()
    except Exception as exc:  # sent to the parent, which restarts the engine
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        with contextlib.suppress(Exception):
            engine.close()


class EngineWorker:
    """One engine in one child process, fed without blocking (a lane of engines.pool.Pool).

    `send` and `abort` never wait for the engine; `receive` returns what has arrived, and
    raises WorkerDied once the worker, or one of vLLM's processes, is gone."""

    def __init__(
        self,
        engine: EngineConfig,
        sampling: Decoding,
        *,
        device: str | None = None,
        n_gpus: int = 0,
        faults: Faults | None = None,
        name: str = "worker-0",
    ):
        self.name = name
        ctx = child_context()
        self._conn, child = ctx.Pipe()
        self._proc = child_process(
            _serve,
            child,
            engine,
            sampling,
            device,
            n_gpus,
            faults or Faults(),
            os.getpid(),
            name=name,
        )
        self._proc.start()
        child.close()
        self.started = time.monotonic()
        self.ready = False
        self.last_heard = self.started  # when the worker last said anything
        self.engine_pids: list[int] = []  # vLLM's own processes, known once the engine is up
        self._checked = 0.0
        self._dead: str | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def waitable(self) -> Connection:
        """What multiprocessing.connection.wait can wait on."""
        return self._conn

    def send(self, items: Sequence[tuple[int, Request]]) -> None:
        self._send("add", list(items))

    def abort(self, request_ids: Sequence[int]) -> None:
        self._send("abort", list(request_ids))

    def _send(self, method: str, payload: Any) -> None:
        try:
            self._conn.send((method, payload))
        except (OSError, ValueError) as exc:
            self.kill()
            raise WorkerDied(f"{self.name}: cannot reach the engine process: {exc}") from exc

    def receive(self) -> list[Result]:
        """Every result that has arrived, without waiting. Raises WorkerDied (after taking
        what the worker sent before it died) if the worker ended, reported an error, or one of
        vLLM's processes died."""
        out: list[Result] = []
        failure: str | None = None
        try:
            while self._conn.poll(0):
                status, payload = self._conn.recv()
                self.last_heard = time.monotonic()
                if status == "results":
                    out.extend(payload)
                elif status == "ready":
                    self.ready = True
                    self.engine_pids = list(payload)
                elif status == "error":
                    failure = f"engine failed: {payload}"
                    break
                elif status == "refused":
                    self.kill()
                    self._dead = f"the engine refused its settings: {payload}"
                    raise EngineRefused(f"{self.name}: {self._dead}", partial=out)
        except (EOFError, OSError):
            self._proc.join(1.0)  # the pipe closes as the process ends: give it time to exit
            failure = f"engine process ended (exit code {self._proc.exitcode})"
        if failure is None:
            failure = self._check()
        if failure is not None:
            self.kill()
            self._dead = failure
            raise WorkerDied(f"{self.name}: {failure}", partial=out)
        return out

    def _check(self) -> str | None:
        """Why the worker cannot go on (its process or one of vLLM's is gone), else None."""
        now = time.monotonic()
        if now - self._checked < _CHECK_SECONDS:
            return None
        self._checked = now
        if not self._proc.is_alive():
            return f"engine process ended (exit code {self._proc.exitcode})"
        dead = [pid for pid in self.engine_pids if not process_alive(pid)]
        if dead:
            return f"vLLM's engine process {dead[0]} died"
        return None

    # -- ending ---------------------------------------------------------------------------

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Ask the engine to shut down; kill it if it does not within `timeout` seconds."""
        if self._proc.is_alive() and self._dead is None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(("close", None))
            self._proc.join(timeout)
        self.kill()

    def kill(self) -> None:
        """End the worker's whole process group (vLLM's processes too), stopped ones included."""
        if self._proc.pid is not None:
            end_group(self._proc.pid)
        self._proc.join(5)
        with contextlib.suppress(OSError):
            self._conn.close()


def end_group(pgid: int, timeout: float = 5.0) -> None:
    """Kill process group `pgid` (stopped members too) and wait up to `timeout` seconds until
    none of its members runs: one still exiting holds memory (a GPU's too) that the next engine
    start needs. The caller reaps the leader, its own child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def group_members(pgid: int) -> list[int]:
    """The running processes of group `pgid` (zombies are not; Linux /proc, [] elsewhere)."""
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    return [
        pid
        for pid in pids
        if (stat := _stat(pid)) is not None and stat[2] == str(pgid) and stat[0] not in _DEAD
    ]


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
    stat = _stat(pid)
    return stat is not None and stat[0] not in _DEAD


_DEAD = ("Z", "X")  # /proc states of a process that has ended: zombie, dead


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...); None
    when there is no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > 2 else None
