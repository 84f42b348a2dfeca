"""The real pipeline as bench.run_bench's sections time it: `SyntheticRun`, with an engine in
this process that answers instantly from the solutions (section 2), and `TimedRun`, which notes
when answers arrive and can share a live engine worker (sections 4, 5, 7 and 8).

Both run airv.run.pipeline.Run as it is, watched through its Observer hooks, with lanes of
their own making (a LaneStarter): neither reaches into the run. A finished run's figures are
`run_result`'s; `check_done` refuses to measure a run that did not finish its work.
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
from airv.engines.config import Decoding, EngineConfig
from airv.engines.lane import Lane
from airv.engines.pool import FaultyLanes, LaneStarter, LocalLane, start_lane
from airv.engines.worker import EngineWorker, Faults
from airv.run.budget import Clock
from airv.run.config import RunConfig
from airv.run.observer import Observer
from airv.run.pipeline import Run
from airv.run.rounds import View
from airv.run.summary import RunSummary
from bench.common import Timers


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
            r = run.view(request)
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


class _Timed(Observer):
    """A run's steps as the bench times them: each planned request, in order; when each
    result arrives and each engine failure is noticed; when submission.json first holds an
    answer; and seconds per step (plan, record, write)."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.timers = Timers()
        self.views: list[View] = []  # every view planned, in order
        self.arrivals: list[float] = []  # time.monotonic() of each finished result taken
        self.failure_times: list[float] = []  # when each engine failure was noticed
        self.first_answer_seconds: float | None = None

    def planned(self, views: Sequence[View], seconds: float) -> None:
        self.views.extend(views)
        self.timers.seconds["plan (augment, encode, tokenize)"] += seconds

    def taken(self, results: int, seconds: float) -> None:
        self.arrivals.extend([time.monotonic()] * results)
        self.timers.seconds["record (parse, reverse, log)"] += seconds

    def wrote(self, votes: Mapping[Unit, Vote], seconds: float) -> None:
        if votes and self.first_answer_seconds is None:
            self.first_answer_seconds = self.clock.elapsed()
        self.timers.seconds["write (vote, submission.json)"] += seconds

    def engine_failed(self, why: str) -> None:
        self.failure_times.append(time.monotonic())


class _Watched:
    """A run (airv.run.pipeline.Run) and what `_Timed` saw of it."""

    def __init__(self, cfg: RunConfig, clock: Clock, lanes: LaneStarter):
        self.timed = _Timed(clock)
        self.run = Run(cfg, clock=clock, lanes=lanes, observer=self.timed)
        self.cfg = cfg
        self.clock = clock

    def execute(self) -> int:
        return self.run.execute()

    @property
    def summary(self) -> RunSummary:
        return self.run.summary

    @property
    def asked(self) -> list[GenerateRequest]:
        """Every generation request planned, in order."""
        return [v.request for v in self.timed.views]

    @property
    def arrivals(self) -> list[float]:
        return self.timed.arrivals

    @property
    def failure_times(self) -> list[float]:
        return self.timed.failure_times

    @property
    def first_answer_seconds(self) -> float | None:
        return self.timed.first_answer_seconds

    @property
    def timers(self) -> Timers:
        return self.timed.timers


class SyntheticRun(_Watched):
    """The real pipeline (plan, fit prompts, the shared queue, parse, reverse, log, vote, write
    on its cadence) with an engine in this process that answers instantly from the
    solutions."""

    def __init__(
        self, cfg: RunConfig, *, solutions: Mapping[TaskId, Sequence[Grid]], seed: int
    ) -> None:
        clock = Clock.for_run(cfg)
        super().__init__(cfg, clock, self._lane)
        self.solutions = solutions
        self.rng = np.random.default_rng(seed)
        self._views: dict[GenerateRequest, View] = {}

    def _lane(self, engine: EngineConfig, sampling: Decoding, index: int, **_: Any) -> Lane:
        return LocalLane(cast(Engine, SyntheticEngine(self)), name=f"synthetic-{index}")

    def view(self, request: GenerateRequest) -> View:
        """The view an engine request asks for (requests are values: prompt ids, tokens)."""
        if len(self._views) < len(self.timed.views):
            self._views.update((v.request, v) for v in self.timed.views[len(self._views) :])
        return self._views[request]


class _Lent:
    """A LaneStarter whose lane 0 is, in its first life, a live engine worker lent by the
    caller: the run's closing leaves it up. A kill (a failure, or a stop with work in flight)
    ends it as any lane's."""

    def __init__(self, worker: EngineWorker, then: LaneStarter):
        self.worker = worker
        self.then = then
        self.killed = False

    def __call__(
        self, engine: EngineConfig, sampling: Decoding, index: int, *, life: int = 0, **kw: Any
    ) -> Lane:
        if index == 0 and life == 0:
            return cast(Lane, _LentLane(self))
        return self.then(engine, sampling, index, life=life, **kw)


class _LentLane:
    """The lent worker as the pool sees it: everything but close passes through."""

    def __init__(self, lent: _Lent):
        self._lent = lent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lent.worker, name)

    def kill(self) -> None:
        self._lent.killed = True
        self._lent.worker.kill()

    def close(self) -> None:
        pass  # the caller's to close


class TimedRun(_Watched):
    """The real pipeline, noting when submission.json first holds an answer and when each
    completion arrives. With `worker`, its first lane is that live engine worker, which it
    never closes: the caller takes it back (`kept`) unless the run had to kill it."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        clock: Clock,
        worker: EngineWorker | None = None,
        faults: Faults | None = None,
    ):
        lanes: LaneStarter = FaultyLanes(faults) if faults else start_lane
        self._lent = _Lent(worker, lanes) if worker is not None else None
        super().__init__(cfg, clock, self._lent or lanes)

    @property
    def kept(self) -> EngineWorker | None:
        lent = self._lent
        return lent.worker if lent is not None and not lent.killed else None


def check_done(r: Run, exit_code: int) -> None:
    """A measured run must have finished its work: a failed one measures nothing."""
    s = r.summary
    if exit_code != 0 or s.stopped_by != "done":
        raise RuntimeError(f"the bench's run ended by {s.stopped_by} (exit {exit_code}): {s.error}")


def run_result(r: Run, wall: float) -> dict[str, object]:
    """A finished run's figures: wall time, engine start-up, engine time and the rest."""
    s = r.summary
    start = sum(s.engine_start_seconds)
    overhead = wall - start - s.engine_seconds
    return {
        "tasks": len(r.task_ids),
        "prompts": s.prompts,
        "tokens_in": s.tokens_in,
        "tokens_out": s.tokens_out,
        "wall_seconds": wall,
        "engine_start_seconds": start,
        "engine_seconds": s.engine_seconds,
        "overhead_seconds": overhead,
        "overhead_fraction": overhead / (wall - start) if wall > start else 0.0,
        "overhead_ms_per_task": 1000 * overhead / max(1, len(r.task_ids)),
        "seconds_per_task": (wall - start) / max(1, len(r.task_ids)),
        "writes": s.writes,
        "answered_test_inputs": s.answered_test_inputs,
    }
