"""The real pipeline as bench.run_bench's sections time it: `SyntheticRun`, with an engine in
this process that answers instantly from the solutions (section 2), and `TimedRun`, which notes
when answers arrive and can share a live engine worker (sections 4, 5, 7 and 8).

Both subclass airv.run.pipeline.Run, overriding some of its steps; they are to become observers
of a run once Run offers hooks, so they sit here apart from the sections that use them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np

from airv.core.augment import Augmentation
from airv.core.formats import FormatSpec, encode_grid
from airv.core.types import Grid, TaskId, Unit
from airv.core.voting import Vote
from airv.engines.base import Completion, Engine, GenerateRequest, Result
from airv.engines.lane import Lane
from airv.engines.pool import FaultyLanes, LocalLane, start_lane
from airv.engines.worker import EngineWorker, Faults
from airv.run.budget import Clock
from airv.run.config import RunConfig
from airv.run.pipeline import Run
from bench.common import Timers as _Timers  # the name SyntheticRun's body knows it by


def synthetic_answer(
    truth: Grid, aug: Augmentation, spec: FormatSpec, rng: np.random.Generator
) -> str:
    """What a decent model might answer in the augmented frame: the right grid half the time,
    a grid one cell off 40%, text that does not parse 10%."""
    r = rng.random()
    if r < 0.1:
        return "12\n3"  # ragged: a counted rejection
    grid = aug.apply_grid(truth)
    if r >= 0.5:
        rows = [list(row) for row in grid]
        i, j = int(rng.integers(len(rows))), int(rng.integers(len(rows[0])))
        rows[i][j] = (rows[i][j] + 1 + int(rng.integers(9))) % 10
        grid = tuple(tuple(row) for row in rows)
    return encode_grid(grid, spec)


class SyntheticEngine:
    """An engine (engines.base.Engine, streamed) that answers every request at once from the
    solutions: each `step` answers all that is queued."""

    def __init__(self, run: SyntheticRun):
        self.run = run
        self.tokenizer = None
        self._queue: list[tuple[int, GenerateRequest]] = []

    def add(self, request_id: int, request: Any) -> None:
        self._queue.append((request_id, request))

    def abort(self, request_ids: Sequence[int]) -> None:
        drop = set(request_ids)
        self._queue = [(i, r) for i, r in self._queue if i not in drop]

    def unfinished(self) -> int:
        return len(self._queue)

    def step(self) -> list[Result]:
        run = self.run
        t0 = time.perf_counter()
        out = []
        for request_id, request in self._queue:
            r = run.asked[request]
            text = synthetic_answer(
                run.solutions[r.unit[0]][r.unit[1]], r.aug, run.cfg.prompt.grid, run.rng
            )
            completion = Completion(
                text=text,
                token_ids=tuple(range(len(text) + 1)),  # char tokenizer: one per char + EOS
                logprob=-float(run.rng.random()),
                finish_reason="stop",
            )
            out.append(Result(request_id, (completion,)))
        self._queue = []
        run.timers.add("synthetic engine", t0)
        return out

    def close(self) -> None:
        self._queue = []


class SyntheticRun(Run):
    """The real pipeline (plan, fit prompts, the shared queue, parse, reverse, log, vote, write
    on its cadence) with an engine in this process that answers instantly from the
    solutions."""

    def __init__(
        self, cfg: RunConfig, *, solutions: Mapping[TaskId, Sequence[Grid]], seed: int
    ) -> None:
        super().__init__(cfg, clock=Clock(time.monotonic(), cfg.time_budget, cfg.reserve_seconds))
        self.solutions = solutions
        self.rng = np.random.default_rng(seed)
        self.timers = _Timers()
        # Each engine request (a value: prompt ids, max_tokens) -> the pipeline's record of it.
        self.asked: dict[GenerateRequest, Any] = {}

    def start_lane(self, index: int, life: int) -> Lane:
        return LocalLane(cast(Engine, SyntheticEngine(self)), name=f"synthetic-{index}")

    def plan(self, round_no: int, votes: dict[Unit, Vote]) -> list[Any]:
        t0 = time.perf_counter()
        out = super().plan(round_no, votes)
        self.asked.update((r.request, r) for r in out)
        self.timers.add("plan (augment, encode, tokenize)", t0)
        return out

    def write(self) -> dict[Unit, Vote]:
        t0 = time.perf_counter()
        out = super().write()
        self.timers.add("write (vote, submission.json)", t0)
        return out

    def _record(self, items: Sequence[Any]) -> None:
        t0 = time.perf_counter()
        super()._record(items)
        self.timers.add("record (parse, reverse, log)", t0)


class TimedRun(Run):
    """The real pipeline, noting when submission.json first holds an answer and when each
    completion arrives. With `worker`, it uses that live engine worker instead of starting
    one; it never closes its worker, which the caller takes over (`kept`)."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        clock: Clock,
        worker: EngineWorker | None = None,
        faults: Faults | None = None,
    ):
        super().__init__(cfg, clock=clock, lanes=FaultyLanes(faults) if faults else start_lane)
        self.shared = worker
        self.kept: EngineWorker | None = None
        self.first_answer_seconds: float | None = None
        self.asked: list[GenerateRequest] = []  # every generation request queued, in order
        self.arrivals: list[float] = []  # time.monotonic() of each finished result taken
        self.failure_times: list[float] = []  # when each engine failure was noticed

    def start_lane(self, index: int, life: int) -> Lane:
        if self.shared is not None and life == 0:
            return self.shared
        return super().start_lane(index, life)

    def stop_workers(self) -> None:
        if self.pool is not None:
            self.failure_times = list(self.pool.failure_times)
        if self.shared is None or self.pool is None:
            super().stop_workers()
            return
        self._sync_pool()
        lanes = self.pool.lanes
        self.kept = lanes[0] if lanes and lanes[0] is self.shared else None
        self.pool = None  # the shared worker stays up for the caller

    def plan(self, round_no: int, votes: dict[Unit, Vote]) -> list[Any]:
        out = super().plan(round_no, votes)
        self.asked.extend(r.request for r in out)
        return out

    def _take(self, done: Sequence[Any]) -> int:
        n = super()._take(done)
        self.arrivals.extend([time.monotonic()] * n)
        return n

    def write(self) -> dict[Unit, Vote]:
        votes = super().write()
        if votes and self.first_answer_seconds is None:
            self.first_answer_seconds = self.clock.elapsed()
        return votes
