"""One shared queue of work and the engines that pull from it, supervised.

The queue holds every request owed, best first. Each engine (a lane: a worker process, or an
engine in this process) is kept `depth` requests ahead of what it has returned, so vLLM's
scheduler always has work waiting and an idle engine takes the next request whoever it is
for: several workers share one queue instead of a static split.

Supervision: a lane fails when its process or one of vLLM's ends, when its engine raises, or
when it has had work and said nothing for `stall_seconds` (a stalled engine). A failed lane's
whole process group is killed, its requests in flight go back to the queue, and it is started
again: up to `max_restarts` restarts per pool while time remains. After that the lane stays
down, and the others go on; `check` raises EngineError once no lane is left.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, Protocol, TypeVar

from airv.core.errors import EngineError
from airv.engines.base import Engine, GenerateRequest, Request, Result, in_order
from airv.engines.config import Backend, Decoding, EngineConfig
from airv.engines.lane import EngineRefused, Lane, WorkerDied, WorkerStalled, WorkerTimeout
from airv.engines.worker import EngineWorker, Faults

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Job(Generic[T]):
    """One request owed, with the caller's own record of it."""

    id: int
    priority: tuple[Any, ...]  # lower first
    request: Request
    payload: T


class SharedQueue(Generic[T]):
    """Work owed, best (lowest priority) first; job ids are unique for the queue's life."""

    def __init__(self) -> None:
        self._heap: list[tuple[tuple[Any, ...], int, Job[T]]] = []
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, request: Request, payload: T, priority: tuple[Any, ...]) -> Job[T]:
        job = Job(next(self._ids), priority, request, payload)
        heapq.heappush(self._heap, (priority, job.id, job))
        return job

    def requeue(self, jobs: Iterable[Job[T]]) -> None:
        for job in jobs:
            heapq.heappush(self._heap, (job.priority, job.id, job))

    def take(self, n: int, keep: Callable[[Job[T]], bool]) -> tuple[list[Job[T]], list[Job[T]]]:
        """Up to n jobs, best first; jobs `keep` refuses on the way are dropped (returned
        second)."""
        taken: list[Job[T]] = []
        dropped: list[Job[T]] = []
        while self._heap and len(taken) < n:
            job = heapq.heappop(self._heap)[2]
            (taken if keep(job) else dropped).append(job)
        return taken, dropped

    def drop(self, pred: Callable[[Job[T]], bool]) -> list[Job[T]]:
        picked = [(pred(e[2]), e) for e in self._heap]  # pred asked once per job
        gone = [e[2] for hit, e in picked if hit]
        if gone:
            self._heap = [e for hit, e in picked if not hit]
            heapq.heapify(self._heap)
        return gone


class LocalLane:
    """An engine in this process as a lane: each `receive` runs one engine step (the bench's
    synthetic engine, tests). There is no process to supervise, and every step that returns
    counts as a sign of life, so the stall watchdog sees only an engine that holds work it no
    longer reports as unfinished; a step that blocks blocks the caller. Engines whose work
    happens elsewhere are lanes of their own (engines.openai_engine.OpenAILane)."""

    def __init__(self, engine: Engine, name: str = "local"):
        self.engine = engine
        self.name = name
        self.ready = True
        self.started = self.last_heard = time.monotonic()

    @property
    def pid(self) -> int | None:
        return None

    @property
    def waitable(self) -> Connection | None:
        return None

    def send(self, items: Sequence[tuple[int, Request]]) -> None:
        for request_id, request in items:
            self.engine.add(request_id, request)

    def abort(self, request_ids: Sequence[int]) -> None:
        self.engine.abort(request_ids)

    def receive(self) -> list[Result]:
        if not self.engine.unfinished():
            return []
        try:
            out = self.engine.step()
        except Exception as exc:  # the engine is broken: the pool restarts the lane
            raise WorkerDied(f"{self.name}: engine failed: {type(exc).__name__}: {exc}") from exc
        self.last_heard = time.monotonic()
        return out

    def kill(self) -> None:
        self.engine.close()

    def close(self) -> None:
        self.engine.close()


def start_lane(
    engine: EngineConfig,
    sampling: Decoding,
    index: int,
    *,
    life: int = 0,
    devices: Sequence[str] = (),
    faults: Faults | None = None,
    name: str | None = None,
) -> Lane:
    """Lane `index` of an engine config, for its `life`-th time: a request over HTTP to
    endpoint `index` (the openai backend), else a worker process pinned to `devices[index]`
    (CPU without devices). The run, `airv plan` and the bench all start lanes here."""
    if engine.backend is Backend.OPENAI:
        from airv.engines.openai_engine import OpenAILane

        return OpenAILane(
            engine.endpoints[index],
            sampling,
            name=f"endpoint-{index}",
            life=life,
            allow_insecure_key=engine.allow_insecure_key,
        )
    return EngineWorker(
        engine,
        sampling,
        device=devices[index] if devices else None,
        n_gpus=1 if devices else 0,
        faults=faults,
        name=name or f"worker-{index}",
    )


class LaneStarter(Protocol):
    """How a run starts lane `index` for its `life`-th time: `start_lane`, or a starter that
    wraps it (FaultyLanes). The run takes one, so tests and the bench inject faults through
    it, not through the run."""

    def __call__(
        self,
        engine: EngineConfig,
        sampling: Decoding,
        index: int,
        *,
        life: int = 0,
        devices: Sequence[str] = (),
        name: str | None = None,
    ) -> Lane: ...


@dataclass
class FaultyLanes:
    """A LaneStarter for tests of the supervision and the bench's fault runs: the worker lanes'
    lives get `faults` (one Faults for its first `lives` lives, or one per life), the fallback
    lane none; every worker's pid is kept (each leads its own process group)."""

    faults: Faults | Sequence[Faults] = ()
    pids: list[int] = field(default_factory=list)

    def for_life(self, life: int) -> Faults | None:
        f = self.faults
        if isinstance(f, Faults):
            return f if life < f.lives else None
        return f[life] if life < len(f) else None

    def __call__(
        self,
        engine: EngineConfig,
        sampling: Decoding,
        index: int,
        *,
        life: int = 0,
        devices: Sequence[str] = (),
        name: str | None = None,
    ) -> Lane:
        faults = None if name is not None else self.for_life(life)
        lane = start_lane(
            engine, sampling, index, life=life, devices=devices, faults=faults, name=name
        )
        if lane.pid is not None:
            self.pids.append(lane.pid)
        return lane


def await_ready(lane: Lane, deadline: float) -> None:
    """Block until the lane's engine is up; WorkerTimeout (the lane killed) at `deadline`
    (time.monotonic()), WorkerDied if it fails to start."""
    while not lane.ready:
        _wait(lane, deadline, "the engine did not start before the deadline")
        lane.receive()


def run_lane(lane: Lane, requests: Sequence[Request], deadline: float) -> list[Result]:
    """Every request through one lane, blocking (airv plan, the bench): the one blocking
    driver, whatever the backend. Results in request order; WorkerTimeout (the lane killed)
    at `deadline`, EngineError if a request failed, WorkerDied if the lane did."""
    await_ready(lane, deadline)
    lane.send(list(enumerate(requests)))
    out: dict[int, Result] = {}
    while len(out) < len(requests):
        _wait(lane, deadline, "no answer before the deadline; stopped it")
        out.update((r.request_id, r) for r in lane.receive() if r.finished)
    return in_order(out, len(requests), lane.name)


def _wait(lane: Lane, deadline: float, why: str) -> None:
    """Wait a little for the lane to have something (a lane in this process: not at all)."""
    left = deadline - time.monotonic()
    if left <= 0:
        lane.kill()
        raise WorkerTimeout(f"{lane.name}: {why}")
    if lane.waitable is not None:
        lane.waitable.poll(min(left, 0.2))


@dataclass(frozen=True)
class Supervision:
    """The restart policy."""

    max_restarts: int = 3  # per pool, over all lanes, while time remains
    stall_seconds: float = 120.0  # a lane with work that says nothing this long is restarted


@dataclass
class Done(Generic[T]):
    job: Job[T]
    result: Result
    seconds: float  # the job's share of its engine's busy time (by tokens)


def request_tokens(request: Request, result: Result) -> int:
    """Tokens one request cost its engine: prompt (+ continuation) + completions."""
    if isinstance(request, GenerateRequest):
        return len(request.prompt_ids) + sum(len(c.token_ids) for c in result.completions)
    return request.tokens


@dataclass
class _Slot(Generic[T]):
    """One lane's place in the pool, across its lives."""

    lane: Lane | None
    life: int = 0
    inflight: dict[int, Job[T]] = field(default_factory=dict)
    quiet_since: float = 0.0  # when the lane last got work while idle, or was heard
    uncharged: float = 0.0  # time with work in flight not yet charged to finished jobs
    busy_tick: float = 0.0
    finished: int = 0  # jobs finished, over all lives


class Pool(Generic[T]):
    """Lanes fed from one SharedQueue, supervised (module docstring)."""

    def __init__(
        self,
        start: Callable[[int, int], Lane],
        n_lanes: int,
        queue: SharedQueue[T],
        *,
        depth: int,
        policy: Supervision,
        deadline: float,
        on_failure: Callable[[str], None] | None = None,
    ):
        self._start = start  # (lane index, life) -> a started lane
        self._on_failure = on_failure  # told each failure's reason as it is noticed
        self.queue = queue
        self.depth = depth
        self.policy = policy
        self.deadline = deadline
        self.restarts = 0
        self.failures: list[str] = []  # why each lane life ended early, first line each
        self.start_seconds: list[float] = []  # each start and restart, until ready
        self._slots: list[_Slot[T]] = []
        try:
            for i in range(n_lanes):
                self._slots.append(_Slot(lane=self._start(i, 0)))
        except BaseException:  # a stop mid-start (a signal, the deadline's alarm): no pool
            self.close(kill=True)  # holds the lanes already started, so none may outlive it
            raise

    # -- state ---------------------------------------------------------------------------

    @property
    def lanes(self) -> list[Lane]:
        return [s.lane for s in self._slots if s.lane is not None]

    @property
    def capacity(self) -> int:
        """Requests the live lanes hold in flight when full."""
        return self.depth * len(self.lanes)

    def finished(self) -> list[int]:
        """Jobs each lane has finished, over all its lives."""
        return [s.finished for s in self._slots]

    def inflight(self) -> list[Job[T]]:
        return [j for s in self._slots for j in s.inflight.values()]

    def idle(self) -> bool:
        return not any(s.inflight for s in self._slots)

    def wait_ready(self) -> list[Done[T]]:
        """Block until every live lane has started (restarting lanes that fail to start, by
        the policy); results already returned by ready lanes are handed back."""
        done: list[Done[T]] = []
        while any(not lane.ready for lane in self.lanes) or not self.lanes:
            self.check()
            if time.monotonic() >= self.deadline:
                raise WorkerTimeout("the engine did not start before the deadline")
            done.extend(self.poll(min(1.0, self.deadline - time.monotonic())))
        return done

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, keep: Callable[[Job[T]], bool]) -> list[Job[T]]:
        """Top every ready lane up to `depth` requests in flight, least loaded first; when
        the queue holds less than that, it is shared evenly among the lanes with room, so no
        lane takes all the work while another idles. Returns the queued jobs `keep` refused
        on the way (dropped)."""
        dropped: list[Job[T]] = []
        now = time.monotonic()
        open_slots = [
            slot
            for slot in sorted(self._slots, key=lambda s: len(s.inflight))
            if slot.lane is not None and slot.lane.ready and len(slot.inflight) < self.depth
        ]
        for i, slot in enumerate(open_slots):
            lane = slot.lane
            assert lane is not None
            share = -(-len(self.queue) // (len(open_slots) - i))  # ceil: the rest split evenly
            room = min(self.depth - len(slot.inflight), share)
            if room <= 0:
                continue
            jobs, refused = self.queue.take(room, keep)
            dropped.extend(refused)
            if not jobs:
                continue
            if not slot.inflight:
                slot.quiet_since = slot.busy_tick = now
            try:
                lane.send([(j.id, j.request) for j in jobs])
            except WorkerDied as exc:
                self.queue.requeue(jobs)
                self._fail(slot, exc)
                continue
            slot.inflight.update((j.id, j) for j in jobs)
        return dropped

    def abort(self, pred: Callable[[Job[T]], bool]) -> list[Job[T]]:
        """Take back every queued or in-flight job `pred` selects (their engines drop them)."""
        gone = self.queue.drop(pred)
        for slot in self._slots:
            ids = [i for i, j in slot.inflight.items() if pred(j)]
            if not ids:
                continue
            gone.extend(slot.inflight.pop(i) for i in ids)
            if slot.lane is not None:
                try:
                    slot.lane.abort(ids)
                except WorkerDied as exc:
                    self._fail(slot, exc)
        return gone

    # -- results and supervision ---------------------------------------------------------

    def poll(self, timeout: float) -> list[Done[T]]:
        """Wait up to `timeout` seconds for results; restart failed or stalled lanes."""
        lanes = self.lanes
        local_busy = any(
            s.lane is not None and s.lane.waitable is None and s.inflight for s in self._slots
        )
        conns = [lane.waitable for lane in lanes if lane.waitable is not None]
        if conns:
            wait(conns, 0 if local_busy else max(0.0, timeout))
        elif not local_busy:
            time.sleep(max(0.0, min(timeout, 0.05)))
        done: list[Done[T]] = []
        now = time.monotonic()
        for slot in self._slots:
            lane = slot.lane
            if lane is None:
                continue
            was_ready = lane.ready
            try:
                results = lane.receive()
            except WorkerDied as exc:
                done.extend(self._take(slot, exc.partial, now))
                self._fail(slot, exc)
                continue
            if lane.ready and not was_ready:
                self.start_seconds.append(now - lane.started)
            done.extend(self._take(slot, results, now))
            self._watch(slot, now)
        return done

    def _take(self, slot: _Slot[T], results: Sequence[Result], now: float) -> list[Done[T]]:
        if slot.inflight:
            slot.uncharged += now - slot.busy_tick
        slot.busy_tick = now
        finished: list[tuple[Job[T], Result, int]] = []
        partial: list[Done[T]] = []
        for r in results:
            job = slot.inflight.get(r.request_id)
            if job is None:  # aborted meanwhile
                continue
            if not r.finished:
                partial.append(Done(job, r, 0.0))
                continue
            del slot.inflight[r.request_id]
            slot.finished += 1
            finished.append((job, r, request_tokens(job.request, r)))
        # The engine time since the last charge goes to the jobs finishing now, by their
        # tokens: the charges add up to exactly the time the engine had work.
        total = sum(tokens for _, _, tokens in finished)
        rate = slot.uncharged / total if total else 0.0
        if finished:
            slot.uncharged = 0.0
        return partial + [Done(job, r, tokens * rate) for job, r, tokens in finished]

    def _watch(self, slot: _Slot[T], now: float) -> None:
        """The stall watchdog: a lane with work in flight that has said nothing for
        policy.stall_seconds is restarted."""
        lane = slot.lane
        if lane is None or not lane.ready or not slot.inflight:
            return
        quiet = now - max(lane.last_heard, slot.quiet_since)
        if quiet > self.policy.stall_seconds:
            self._fail(
                slot,
                WorkerStalled(
                    f"{lane.name}: stalled: nothing for {quiet:.0f}s with "
                    f"{len(slot.inflight)} request(s) in flight"
                ),
            )

    def _fail(self, slot: _Slot[T], exc: EngineError) -> None:
        """End a lane's life: kill it, requeue its work, restart it if the policy allows."""
        lane = slot.lane
        assert lane is not None
        lane.kill()
        reason = str(exc).splitlines()[0]
        self.failures.append(reason)
        if self._on_failure is not None:
            self._on_failure(reason)
        self.queue.requeue(slot.inflight.values())
        slot.inflight.clear()
        slot.uncharged = 0.0
        index = self._slots.index(slot)
        final = isinstance(exc, EngineRefused)  # a restart would be refused again
        if (
            not final
            and self.restarts < self.policy.max_restarts
            and time.monotonic() < self.deadline
        ):
            self.restarts += 1
            slot.life += 1
            log.warning(
                "%s; restart %d of at most %d",
                reason,
                self.restarts,
                self.policy.max_restarts,
            )
            slot.lane = self._start(index, slot.life)
            return
        slot.lane = None
        if self.lanes:
            log.error("%s; no restarts left: going on with %d engine(s)", reason, len(self.lanes))

    def check(self) -> None:
        """Raise EngineError if no lane is left (every restart spent)."""
        if not self.lanes:
            last = self.failures[-1] if self.failures else "no engine"
            raise EngineError(f"engine failed after {self.restarts} restart(s): {last}")

    # -- ending ----------------------------------------------------------------------------

    def drain(self) -> list[Done[T]]:
        """Results already sent, taken without waiting (at the deadline, before the kill)."""
        done: list[Done[T]] = []
        now = time.monotonic()
        for slot in self._slots:
            if slot.lane is None:
                continue
            try:
                results = slot.lane.receive()
            except WorkerDied as exc:
                results = exc.partial
                slot.lane = None
            done.extend(self._take(slot, results, now))
        return done

    def close(self, *, kill: bool = False) -> None:
        """Shut every lane down: a clean exit when idle, a kill when it has work in flight or
        with `kill` (at the deadline or a signal: a lane still starting would not hear a
        request to close, and only the kill's time is bounded)."""
        for slot in self._slots:
            if slot.lane is None:
                continue
            if slot.inflight or kill:
                slot.lane.kill()
            else:
                slot.lane.close()
            slot.lane = None
            slot.inflight.clear()
