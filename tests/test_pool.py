"""Tests for airv.engines.pool: the shared queue (properties) and the supervised pool, driven
as the pipeline drives it, with scripted in-process engines in LocalLane (no model, no
processes)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airv.core.errors import EngineError
from airv.engines.base import (
    Completion,
    GenerateRequest,
    Request,
    Result,
    ScoreRequest,
    generate_blocking,
    score_blocking,
)
from airv.engines.lane import Lane
from airv.engines.pool import Done, Job, LocalLane, Pool, SharedQueue, Supervision

LIMIT = 3.0  # seconds: a drive loop that runs longer than this has hung
PROMPT = (7, 8)  # every job's prompt: 2 tokens


class Scripted:
    """A streamed engine that follows a script. Every `every`-th step finishes the oldest
    `per_step` requests held (a generate request's completion has max_tokens tokens); with
    `partials`, the other steps return a partial result for them. The k-th step first sleeps
    sleeps[k-1] seconds, if given. `raise_at`: that step and every later one raise.
    `silent_at`: from that step on the engine has lost its work and says nothing (unfinished()
    is 0, so LocalLane never steps it: a hung engine); 0: from the start."""

    tokenizer: Any = None

    def __init__(
        self,
        *,
        per_step: int = 1,
        every: int = 1,
        partials: bool = False,
        sleeps: Sequence[float] = (),
        raise_at: int | None = None,
        silent_at: int | None = None,
        honour_abort: bool = True,
    ):
        self.per_step, self.every, self.partials = per_step, every, partials
        self.sleeps, self.raise_at, self.silent_at = sleeps, raise_at, silent_at
        self.honour_abort = honour_abort
        self.held: dict[int, Request] = {}
        self.added: list[int] = []
        self.aborted: list[int] = []
        self.steps = 0
        self.most_held = 0
        self.closed = False

    def add(self, request_id: int, request: Request) -> None:
        assert not self.closed and request_id not in self.held
        self.held[request_id] = request
        self.added.append(request_id)
        self.most_held = max(self.most_held, len(self.held))

    def step(self) -> list[Result]:
        assert self.held and not self.closed, "stepped with nothing to do"
        self.steps += 1
        if self.raise_at is not None and self.steps >= self.raise_at:
            raise RuntimeError("scripted failure")
        if self.steps <= len(self.sleeps):
            time.sleep(self.sleeps[self.steps - 1])
        oldest = list(self.held)[: self.per_step]
        if self.steps % self.every:
            return [Result(i, finished=False) for i in oldest] if self.partials else []
        return [_answer(i, self.held.pop(i)) for i in oldest]

    def abort(self, request_ids: Sequence[int]) -> None:
        self.aborted.extend(request_ids)
        if self.honour_abort:
            for i in request_ids:
                self.held.pop(i, None)

    def unfinished(self) -> int:
        if self.silent_at is not None and self.steps >= self.silent_at:
            return 0
        return len(self.held)

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        return generate_blocking(self, requests)

    def score(self, requests: Sequence[ScoreRequest]) -> list[float]:
        return score_blocking(self, requests)

    def close(self) -> None:
        self.closed = True


def _answer(request_id: int, request: Request) -> Result:
    if isinstance(request, ScoreRequest):
        return Result(request_id, score=-1.0)
    ids = tuple(range(request.max_tokens))
    return Result(request_id, completions=(Completion("x", ids, -1.0, "length"),))


@dataclass
class Rig:
    """A pool of LocalLanes around scripted engines, with every engine it started and when
    each failure was noticed (the pool's on_failure)."""

    pool: Pool[int]
    engines: dict[tuple[int, int], Scripted] = field(default_factory=dict)  # (lane, life)
    failure_times: list[float] = field(default_factory=list)

    @property
    def queue(self) -> SharedQueue[int]:
        return self.pool.queue


def rig(
    make: Callable[[int, int], Scripted],
    *,
    lanes: int = 1,
    depth: int = 3,
    jobs: Sequence[int] = (),
    policy: Supervision | None = None,
    deadline: float = 60.0,
) -> Rig:
    """A pool of `lanes` lanes (engine `make(lane, life)`), its queue holding one generate job
    per entry of `jobs` (that many new tokens), payload its index, best first."""
    queue: SharedQueue[int] = SharedQueue()
    for k, tokens in enumerate(jobs):
        queue.push(GenerateRequest(PROMPT, tokens), k, (k,))
    engines: dict[tuple[int, int], Scripted] = {}
    failure_times: list[float] = []

    def start(index: int, life: int) -> Lane:
        engines[index, life] = make(index, life)
        return LocalLane(engines[index, life], name=f"lane{index}")

    pool = Pool(
        start,
        lanes,
        queue,
        depth=depth,
        policy=policy or Supervision(),
        deadline=time.monotonic() + deadline,
        on_failure=lambda why: failure_times.append(time.monotonic()),
    )
    return Rig(pool, engines, failure_times)


def drive(pool: Pool[int], keep: Callable[[Job[int]], bool] = lambda j: True) -> list[Done[int]]:
    """Feed and poll as the pipeline's _stream does until the queue is empty and the pool
    idle; fails after LIMIT seconds. EngineError once no lane is left."""
    done: list[Done[int]] = []
    end = time.monotonic() + LIMIT
    while len(pool.queue) or not pool.idle():
        assert time.monotonic() < end, "the pool did not finish in time"
        pool.feed(keep)
        done.extend(pool.poll(0.05))
        pool.check()
    return done


def finished_payloads(done: Sequence[Done[int]]) -> Counter[int]:
    return Counter(d.job.payload for d in done if d.result.finished)


# -- SharedQueue --------------------------------------------------------------------------

REQ = GenerateRequest(PROMPT, 1)
priority_lists = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2)), max_size=30)


def filled(priorities: Sequence[tuple[int, int]]) -> tuple[SharedQueue[int], list[Job[int]]]:
    q: SharedQueue[int] = SharedQueue()
    return q, [q.push(REQ, k, p) for k, p in enumerate(priorities)]


def best_first(priorities: Sequence[tuple[int, int]]) -> list[int]:
    """Payloads in the order the queue owes them: priority, then push order."""
    return sorted(range(len(priorities)), key=lambda k: (priorities[k], k))


@given(priority_lists)
def test_take_returns_jobs_by_priority_then_push_order(prios: list[tuple[int, int]]) -> None:
    """take hands out jobs lowest priority first, ties in the order they were pushed."""
    q, _ = filled(prios)
    taken, dropped = q.take(len(prios) + 5, lambda j: True)
    assert dropped == [] and len(q) == 0
    assert [j.payload for j in taken] == best_first(prios)
    assert all(j.priority == prios[j.payload] for j in taken)


@given(priority_lists, st.integers(0, 35), st.sets(st.integers(0, 29)))
def test_take_keeps_at_most_n_and_returns_refused_jobs_as_dropped(
    prios: list[tuple[int, int]], n: int, refuse: set[int]
) -> None:
    """take(n, keep) pops best first until n jobs are kept: the ones keep refused on the way
    come back as dropped, none is kept twice or lost, the rest stay queued in order."""
    q, _ = filled(prios)
    kept, dropped = q.take(n, lambda j: j.payload not in refuse)
    assert len(kept) <= n
    assert all(j.payload not in refuse for j in kept)
    assert all(j.payload in refuse for j in dropped)
    # The model: pop best first until n are kept.
    order = best_first(prios)
    want_kept: list[int] = []
    want_dropped: list[int] = []
    while order and len(want_kept) < n:
        k = order.pop(0)
        (want_dropped if k in refuse else want_kept).append(k)
    assert [j.payload for j in kept] == want_kept
    assert [j.payload for j in dropped] == want_dropped
    rest, _ = q.take(len(prios), lambda j: True)
    assert [j.payload for j in rest] == order


@given(
    priority_lists, st.integers(0, 30), st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2)))
)
def test_requeue_restores_taken_jobs_in_priority_order(
    prios: list[tuple[int, int]], n: int, later: list[tuple[int, int]]
) -> None:
    """Jobs taken and handed back (a failed lane's work) go back in their place: before
    anything pushed since at equal priority, after anything better."""
    q, jobs = filled(prios)
    taken, _ = q.take(n, lambda j: True)
    newer = [q.push(REQ, len(prios) + k, p) for k, p in enumerate(later)]
    q.requeue(reversed(taken))
    everything = [*jobs, *newer]
    out, _ = q.take(len(everything), lambda j: True)
    assert [j.id for j in out] == [
        j.id for j in sorted(everything, key=lambda j: (j.priority, j.id))
    ]
    assert len(q) == 0


@given(priority_lists, st.sets(st.integers(0, 29)))
def test_drop_removes_exactly_the_matching_jobs(
    prios: list[tuple[int, int]], chosen: set[int]
) -> None:
    """drop(pred) returns and removes the queued jobs pred selects, and only those."""
    q, _ = filled(prios)
    gone = q.drop(lambda j: j.payload in chosen)
    assert sorted(j.payload for j in gone) == sorted(chosen & set(range(len(prios))))
    assert len(q) == len(prios) - len(gone)
    rest, _ = q.take(len(prios), lambda j: True)
    assert [j.payload for j in rest] == [k for k in best_first(prios) if k not in chosen]


@given(priority_lists, priority_lists)
def test_job_ids_are_unique_for_the_queues_life(
    first: list[tuple[int, int]], second: list[tuple[int, int]]
) -> None:
    """Ids are never reused, even after the queue has been emptied and jobs requeued."""
    q, jobs = filled(first)
    taken, _ = q.take(len(first), lambda j: True)
    q.requeue(taken[::2])
    q.drop(lambda j: True)
    jobs += [q.push(REQ, 0, p) for p in second]
    ids = [j.id for j in jobs]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


# -- the pool: feeding ---------------------------------------------------------------------


def test_two_lanes_share_one_queue_within_depth() -> None:
    """Two lanes pull from one queue: both get work, every job finishes exactly once, and
    each engine is kept full (depth requests) but never holds more."""
    r = rig(lambda i, life: Scripted(), lanes=2, depth=3, jobs=[4] * 30)
    done = drive(r.pool)
    assert finished_payloads(done) == Counter(range(30))
    assert all(d.result.finished for d in done)
    per_lane = r.pool.finished()
    assert sum(per_lane) == 30 and min(per_lane) > 0
    assert [e.most_held for e in r.engines.values()] == [3, 3]
    assert sorted(r.engines) == [(0, 0), (1, 0)]  # no restarts
    assert r.pool.restarts == 0 and r.pool.failures == []


def test_a_short_queue_is_shared_evenly_among_the_lanes() -> None:
    """Less work queued than one lane's depth: it is split between the lanes, not all sent to
    the first one while the other idles."""
    r = rig(lambda i, life: Scripted(), lanes=2, depth=512, jobs=[4] * 30)
    r.pool.feed(lambda j: True)
    assert sorted(len(s.inflight) for s in r.pool._slots) == [15, 15]
    done = drive(r.pool)
    assert finished_payloads(done) == Counter(range(30))
    assert r.pool.finished() == [15, 15]


@settings(max_examples=30)
@given(
    st.lists(st.integers(1, 9), max_size=25),
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(1, 2),
)
def test_every_job_finishes_once_whatever_the_shape(
    jobs: list[int], lanes: int, depth: int, per_step: int, every: int
) -> None:
    """Any number of lanes, depth and engine pace: each job is done exactly once, the engines
    never hold more than depth, and the charges are non-negative."""
    r = rig(
        lambda i, life: Scripted(per_step=per_step, every=every),
        lanes=lanes,
        depth=depth,
        jobs=jobs,
    )
    done = drive(r.pool)
    assert finished_payloads(done) == Counter(range(len(jobs)))
    assert sum(r.pool.finished()) == len(jobs)
    assert all(e.most_held <= depth for e in r.engines.values())
    assert all(d.seconds >= 0.0 for d in done)
    assert r.pool.idle() and len(r.queue) == 0


def test_feed_drops_what_keep_refuses() -> None:
    """Jobs `keep` refuses at dispatch come back from feed and never reach an engine."""
    r = rig(lambda i, life: Scripted(), depth=4, jobs=[1] * 10)
    dropped: list[Job[int]] = []
    done: list[Done[int]] = []
    end = time.monotonic() + LIMIT
    while len(r.queue) or not r.pool.idle():
        assert time.monotonic() < end
        dropped += r.pool.feed(lambda j: j.payload % 3 != 0)
        done += r.pool.poll(0.05)
    assert sorted(j.payload for j in dropped) == [0, 3, 6, 9]
    assert finished_payloads(done) == Counter([1, 2, 4, 5, 7, 8])
    assert not {0, 3, 6, 9} & set(r.engines[0, 0].added)


def test_partial_results_come_back_without_finishing_the_job() -> None:
    """A partial result is handed back (seconds 0) and its job stays in flight until its
    final result, which alone counts as finished."""
    r = rig(lambda i, life: Scripted(every=2, partials=True), depth=2, jobs=[3] * 4)
    done = drive(r.pool)
    partial = [d for d in done if not d.result.finished]
    assert partial and all(d.seconds == 0.0 for d in partial)
    assert finished_payloads(done) == Counter(range(4))
    for k in range(4):
        mine = [d.result.finished for d in done if d.job.payload == k]
        assert mine[-1] and mine.count(True) == 1 and len(mine) >= 2
    assert r.pool.finished() == [4]


# -- the pool: supervision -----------------------------------------------------------------


def test_a_lane_whose_engine_raises_is_restarted_and_its_work_requeued() -> None:
    """The engine raises at its first step: the lane is killed and started again (life 1),
    the three requests it held go back to the queue, first, and finish on the new life."""
    r = rig(lambda i, life: Scripted(raise_at=1 if life == 0 else None), depth=3, jobs=[2] * 6)
    done = drive(r.pool)
    assert sorted(r.engines) == [(0, 0), (0, 1)]
    first, second = r.engines[0, 0], r.engines[0, 1]
    assert first.added == [0, 1, 2] and first.closed
    assert second.added[:3] == [0, 1, 2]
    assert finished_payloads(done) == Counter(range(6))
    assert r.pool.restarts == 1
    assert len(r.pool.failures) == 1 and len(r.failure_times) == 1
    assert r.pool.failures[0].startswith("lane0")
    assert "RuntimeError: scripted failure" in r.pool.failures[0]
    assert r.pool.finished() == [6]


def test_without_restarts_left_the_other_lanes_go_on() -> None:
    """max_restarts=0: the failed lane stays down, its work moves to the other lane, and the
    pool carries on (check does not raise while a lane is left)."""
    r = rig(
        lambda i, life: Scripted(raise_at=1 if i == 0 else None),
        lanes=2,
        depth=2,
        jobs=[1] * 8,
        policy=Supervision(max_restarts=0),
    )
    done = drive(r.pool)
    assert finished_payloads(done) == Counter(range(8))
    assert r.pool.finished() == [0, 8]
    assert len(r.pool.lanes) == 1 and r.pool.restarts == 0 and len(r.pool.failures) == 1
    assert sorted(r.engines) == [(0, 0), (1, 0)]


def test_no_restart_after_the_deadline() -> None:
    """Past the pool's deadline a failed lane is not started again, restarts left or not."""
    r = rig(lambda i, life: Scripted(raise_at=1), jobs=[1] * 3, deadline=-1.0)
    with pytest.raises(EngineError, match="scripted failure"):
        drive(r.pool)
    assert r.pool.restarts == 0 and r.pool.lanes == [] and sorted(r.engines) == [(0, 0)]
    assert len(r.queue) == 3  # nothing lost


def test_a_silent_lane_is_failed_by_the_watchdog_and_restarted() -> None:
    """A lane with work that says nothing for longer than stall_seconds is failed as stalled
    (not before) and started again; its work finishes on the new life."""
    stall = 0.3
    r = rig(
        lambda i, life: Scripted(silent_at=0 if life == 0 else None),
        depth=2,
        jobs=[1] * 4,
        policy=Supervision(max_restarts=1, stall_seconds=stall),
    )
    t0 = time.monotonic()
    done = drive(r.pool)
    assert finished_payloads(done) == Counter(range(4))
    assert r.pool.restarts == 1 and len(r.pool.failures) == 1
    assert "stalled" in r.pool.failures[0]
    assert r.failure_times[0] - t0 >= stall
    assert r.engines[0, 0].closed and r.engines[0, 0].added == [0, 1]
    assert r.engines[0, 1].added[:2] == [0, 1]


def test_a_stall_without_restarts_left_ends_the_pool() -> None:
    """With max_restarts=0 the stalled lane stays down: no lane is left, check raises
    EngineError naming the stall, and the lane's work is back in the queue."""
    r = rig(
        lambda i, life: Scripted(silent_at=0),
        depth=2,
        jobs=[1] * 3,
        policy=Supervision(max_restarts=0, stall_seconds=0.3),
    )
    with pytest.raises(EngineError, match="stalled"):
        drive(r.pool)
    assert r.pool.lanes == [] and r.pool.restarts == 0
    assert len(r.queue) == 3 and r.pool.idle()
    with pytest.raises(EngineError, match="after 0 restart"):
        r.pool.check()


def test_an_engine_that_steps_without_results_is_alive() -> None:
    """An engine that steps and returns nothing yet (long generations) is heard, like the
    worker's heartbeat after such steps: the watchdog leaves it alone."""
    r = rig(
        lambda i, life: Scripted(every=10**9),
        depth=2,
        jobs=[1] * 2,
        policy=Supervision(stall_seconds=0.2),
    )
    r.pool.feed(lambda j: True)
    end = time.monotonic() + 0.4
    while time.monotonic() < end:
        r.pool.poll(0.05)
        time.sleep(0.01)
    assert r.pool.failures == [] and r.pool.restarts == 0
    assert len(r.pool.inflight()) == 2 and r.engines[0, 0].steps > 0


# -- the pool: aborts ----------------------------------------------------------------------


@pytest.mark.parametrize("honour_abort", [True, False])
def test_abort_takes_back_queued_and_inflight_jobs(honour_abort: bool) -> None:
    """abort(pred) returns the queued and in-flight jobs pred selects, tells the engine the
    in-flight ids, and none of them comes back as done, even when the engine's answer was
    already on its way (honour_abort False)."""
    r = rig(lambda i, life: Scripted(honour_abort=honour_abort), depth=3, jobs=[1] * 8)
    r.pool.feed(lambda j: True)  # 0, 1, 2 in flight
    gone = r.pool.abort(lambda j: j.payload % 2 == 1)
    assert sorted(j.payload for j in gone) == [1, 3, 5, 7]
    assert r.engines[0, 0].aborted == [1]
    done = drive(r.pool)
    assert finished_payloads(done) == Counter([0, 2, 4, 6])
    assert not {d.job.payload for d in done} & {1, 3, 5, 7}
    assert set(r.engines[0, 0].added) == {0, 1, 2, 4, 6}


# -- the pool: time charged ----------------------------------------------------------------


def test_done_seconds_share_one_batch_by_tokens_within_wall_time() -> None:
    """Jobs that finish together split the engine's busy time by their tokens; the charges
    are non-negative and add up to no more than the wall time."""
    r = rig(
        lambda i, life: Scripted(per_step=4, every=3, sleeps=(0.05, 0.05, 0.05)),
        depth=4,
        jobs=[1, 2, 5, 11],
    )
    t0 = time.monotonic()
    done = drive(r.pool)
    wall = time.monotonic() - t0
    assert finished_payloads(done) == Counter(range(4))
    assert all(d.seconds > 0.0 for d in done)
    per_token = [d.seconds / (len(PROMPT) + len(d.result.completions[0].token_ids)) for d in done]
    assert per_token == pytest.approx([per_token[0]] * 4)
    assert sum(d.seconds for d in done) <= wall


def test_done_seconds_of_one_lane_add_up_to_at_most_the_wall_time() -> None:
    """One lane, one job at a time: a small job that took long, then a large job that was
    quick. The time charged to the two cannot exceed the time the test took."""
    r = rig(lambda i, life: Scripted(every=2, sleeps=(0.3,)), depth=1, jobs=[1, 2000])
    t0 = time.monotonic()
    done = drive(r.pool)
    wall = time.monotonic() - t0
    assert finished_payloads(done) == Counter([0, 1])
    assert all(d.seconds >= 0.0 for d in done)
    assert sum(d.seconds for d in done) <= wall


# -- the one blocking driver over a lane ---------------------------------------------------


def test_run_lane_returns_results_in_request_order() -> None:
    from airv.engines.pool import run_lane

    engine = Scripted(per_step=2, every=2, partials=True)
    requests = [GenerateRequest(PROMPT, n) for n in (3, 1, 2)]
    results = run_lane(LocalLane(engine), requests, time.monotonic() + 30)
    assert [len(r.completions[0].token_ids) for r in results] == [3, 1, 2]
    assert all(r.finished for r in results)


def test_run_lane_stops_at_its_deadline_and_raises_on_a_failed_request() -> None:
    from airv.core.errors import EngineError
    from airv.engines.lane import WorkerTimeout
    from airv.engines.pool import run_lane

    hung = Scripted(silent_at=0)
    with pytest.raises(WorkerTimeout, match="no answer before the deadline"):
        run_lane(LocalLane(hung), [GenerateRequest(PROMPT, 2)], time.monotonic() + 0.3)
    assert hung.closed  # the lane was killed

    class Refusing(Scripted):
        def step(self) -> list[Result]:
            return [Result(i, error="too long") for i in list(self.held)] if self.held else []

    with pytest.raises(EngineError, match=r"1 request.*too long"):
        run_lane(LocalLane(Refusing()), [GenerateRequest(PROMPT, 2)], time.monotonic() + 30)


def test_a_stop_while_the_pool_starts_its_lanes_ends_those_already_started() -> None:
    """A stop (a signal, the deadline's alarm) raised while the third lane starts: no pool is
    built for the run to close, so the two lanes already started are ended before the stop
    goes on (worker processes would otherwise outlive the run)."""
    import signal

    from airv.run.budget import Stopped

    started: list[Scripted] = []

    def start(index: int, life: int) -> Lane:
        if index == 2:
            raise Stopped(signal.SIGALRM)
        started.append(Scripted())
        return LocalLane(started[-1], name=f"lane{index}")

    with pytest.raises(Stopped):
        Pool(start, 3, SharedQueue(), depth=2, policy=Supervision(), deadline=time.monotonic())
    assert len(started) == 2 and all(engine.closed for engine in started)
