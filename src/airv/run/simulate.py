"""A run on paper: the whole run's structure on a virtual clock, priced by rates
(airv.run.rates), with no model and no engine.

The clock starts at process start, as the run's does, and ends at the budget less the reserve.
It walks the run's own structure with its own parts: the waves whose adapters fit the scratch
limit (airv.adapt.waves), each training for its tasks' share of the stage and answering for
its share of the time left after the later waves' training (the split of
airv.run.adapting.adapt_and_answer), an engine start-up per wave; the run's view
schedule (`--schedule`): the round planner's targets (airv.run.rounds.Rounds), or the gain
planner's picks (airv.run.schedule.best, `inflight` x `workers` views planned ahead); the
ledger's per-task caps (airv.run.ledger.Ledger); and `workers` lanes, one per GPU, pulling
from one queue, best first: re-scoring ahead of generation, then by round, cheapest task
first (gain: the tasks' promises first by the run's rule, a sample and then the rest if cheap
(airv.run.promise), each one scoring request of its demonstration (UnitCost.promise_tokens;
unpriced, a view's prompt), and no view planned until
those asked are in; then in pick order, by price alone, as no promise's value is known on
paper). A request's seconds are its prompt tokens at the prefill rate plus
its answer tokens at the decode rate (times the search's cost for DFS); a scoring request's,
its tokens at the prefill rate times the scoring cost; with adapters in the batch, times
LoRA's cost. Each engine runs up to its batch of requests together (the rates'
batch_requests, at most `inflight`), sharing its rate, and what is in flight at its wave's end
or the deadline is lost, as vLLM's running batch is.

Without a model the votes are unknown, so no test input settles early and every distinct
candidate the vote re-scores is assumed found: the prediction is the no-early-settle bound,
the most work the run can be asked to do. The gain schedule orders that same work by gain per
second (each test input's evidence: its views so far, every answer distinct), so its totals
match uniform's unless the deadline (or a task cap) cuts; then it differs in which views are
cut: a test input gets a second view before another's first only if that one's views cost at
least twice as much.

Prompt and answer lengths come from airv.run.costs; the result, its timeline and plan.json's
prediction, is airv.run.timeline's `Simulation`.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from airv.core.prompts import FittedPrompt
from airv.core.tasks import Task
from airv.core.types import TaskId, Unit
from airv.run.config import RunConfig
from airv.run.costs import Costs, UnitCost
from airv.run.ledger import Ledger
from airv.run.paper_waves import WavesOnPaper
from airv.run.promise import PromisePass, Scored
from airv.run.rates import Rates
from airv.run.rounds import Rounds
from airv.run.schedule import Evidence, Open, ViewSchedule, best
from airv.run.timeline import Simulation, Wave


@dataclass(order=True)
class _Job:
    priority: tuple[int, float, int]
    unit: Unit = field(compare=False)
    key: str = field(compare=False)
    seconds: float = field(compare=False)
    tokens: int = field(compare=False)
    score: bool = field(compare=False)
    promise: bool = field(default=False, compare=False)  # a task's promise (gain)


@dataclass
class _Lane:
    """One engine: its requests in flight, each with the seconds of work it has left, and when
    it last answered (or started work)."""

    running: list[list[Any]] = field(default_factory=list)  # [seconds left, _Job]
    mark: float = 0.0


class _Simulator(WavesOnPaper):
    def __init__(self, cfg: RunConfig, costs: Costs, rates: Rates, adapter_bytes: int | None):
        self.cfg, self.rates = cfg, rates
        self.units = {(u.task_id, u.test_index): u for u in costs.units}
        self.by_task: dict[TaskId, list[Unit]] = {}
        for unit in self.units:
            self.by_task.setdefault(unit[0], []).append(unit)
        self.task_ids = list(self.by_task)
        self.rounds = Rounds(cfg, {}, fit=_no_prompts)  # targets only: no prompt is built
        self.ledger = Ledger(cfg.task_cap(len(self.task_ids)), cfg.task_cap_tokens)
        eager = cfg.engine.enforce_eager
        self.sim = Simulation(
            budget=cfg.time_budget,
            reserve=cfg.reserve_seconds,
            workers=cfg.workers,
            test_inputs=len(costs.units),
            target_views=self.rounds.target(self.rounds.last),
            engine_start_seconds=rates.engine_start_seconds(eager),
            too_long=costs.too_long,
            adapter_bytes=adapter_bytes if cfg.ttt.enabled else None,
            scratch_limit=cfg.scratch_limit,
            schedule=cfg.schedule,
        )
        self.sim.views = dict.fromkeys(self.units, 0)
        self.queue: list[_Job] = []
        self.generation_queued = 0
        self.dry = False  # gain: nothing to plan (until a view ends or is lost)
        self.scored: set[Unit] = set()
        self.adapted: set[TaskId] = set()  # tasks with an adapter (trained in full or part)
        self.promised: set[TaskId] = set()  # gain: tasks whose promise was scored
        self.promising = 0  # gain: promise requests queued or in flight
        self.promise_pass = PromisePass(cfg.inflight)  # gain: the pass's rule
        self.measured: list[Scored] = []  # gain: the promises scored, for the pass's rate
        self.now = 0.0  # the clock, for the pass's verdict
        self.until = 0.0
        self.seq = itertools.count()

    # -- costs --------------------------------------------------------------------------

    def _view_seconds(self, u: UnitCost) -> float:
        r, sampling = self.rates, self.cfg.sampling
        search = r.dfs_cost if sampling.decode == "dfs" else 1.0
        answer = sampling.n * u.answer_tokens * r.answer_fill * search
        seconds = (
            u.prompt_tokens / r.prefill_tokens_per_second + answer / r.decode_tokens_per_second
        )
        return seconds

    def _score_seconds(self, u: UnitCost) -> float:
        r = self.rates
        tokens = u.prompt_tokens + u.answer_tokens * r.answer_fill
        return tokens * r.score_cost / r.prefill_tokens_per_second

    def _promise_seconds(self, tokens: float) -> float:
        """A task's promise: its demonstration request's tokens, scored."""
        r = self.rates
        return tokens * r.score_cost / r.prefill_tokens_per_second

    def _lora(self, tasks: Sequence[TaskId]) -> float:
        """What serving adapters costs a request now, over the base model (1: no adapter in
        the batch). Every adapted task of the wave with views still to reach is in every batch
        (the run keeps every open task's views in flight together), each one adapter more; the
        base model's requests pay as the adapted ones do (the rates' lora_cost)."""
        if not self.adapted:
            return 1.0
        target = self.sim.target_views
        k = sum(
            1
            for t in tasks
            if t in self.adapted
            and t not in self.ledger.cut
            and any(self.sim.views[u] < target for u in self.by_task[t])
        )
        r = self.rates
        return r.lora_cost + (k - 1) * r.lora_cost_per_adapter if k else 1.0

    def _seconds_per_token(self) -> float:
        spent = [self.ledger.spent(t) for t in self.task_ids]
        tokens = sum(t for _, t in spent)
        return sum(sec for sec, _ in spent) / tokens if tokens else 0.0

    # -- the queue -----------------------------------------------------------------------

    def _plan(self, round_no: int, tasks: Sequence[TaskId]) -> None:
        """The views owed to reach the round's target, queued cheapest task first (as the
        run's round planner orders them) or in file order."""
        target = self.rounds.target(round_no)
        spt = self._seconds_per_token()
        owed: list[tuple[Unit, int]] = []
        for task_id in tasks:
            if task_id in self.ledger.cut or self.ledger.capped(task_id, spt):
                continue
            for unit in self.by_task[task_id]:
                have = self.sim.views[unit] + len(self.ledger.owed(unit))
                owed += [(unit, k) for k in range(have, target)]
        cost: dict[TaskId, float] = defaultdict(float)
        for unit, _ in owed:
            u = self.units[unit]
            cost[unit[0]] += u.prompt_tokens + u.answer_tokens
        if self.cfg.cheapest_first:
            owed.sort(key=lambda x: (cost[x[0][0]], x[0], x[1]))
        for unit, k in owed:
            u = self.units[unit]
            tokens = math.ceil(u.prompt_tokens + self.cfg.sampling.n * u.answer_tokens)
            job = _Job((round_no, 0.0, next(self.seq)), unit, f"v{k}",
                       self._view_seconds(u), tokens, score=False)  # fmt: skip
            heapq.heappush(self.queue, job)
            self.ledger.owe(unit, job.key, tokens)
            self.generation_queued += 1

    def _plan_gain(self, tasks: Sequence[TaskId]) -> int:
        """Up to `inflight` x `workers` views (what the run keeps planned ahead), those short
        of the first round first, then best gain per second (airv.run.schedule.best), queued
        in pick order. Votes are unknown on paper: a test input's evidence is its views so
        far, every answer distinct (none settles). Returns the views queued."""
        target = self.sim.target_views
        lora = self._lora(tasks)  # a view's price as it would run now (its job's: the base)
        candidates: dict[Unit, Open] = {}
        for task_id in tasks:
            # The cap on what was spent (the run's gain planner, as its dispatch check).
            if task_id in self.ledger.cut or self.ledger.capped(task_id):
                continue
            for unit in self.by_task[task_id]:
                n, k = self.sim.views[unit], len(self.ledger.owed(unit))
                ev = Evidence(answered=n, failed=0, votes=(1,) * n, owed=k)
                floor = self.cfg.first_round - n - k
                price = self._view_seconds(self.units[unit]) * lora
                candidates[unit] = Open(ev, price, target - n - k, floor)
        picks = best(candidates, self.cfg.inflight * self.cfg.workers)
        for pick in picks:
            u = self.units[pick.unit]
            tokens = math.ceil(u.prompt_tokens + self.cfg.sampling.n * u.answer_tokens)
            seq = next(self.seq)
            seconds = self._view_seconds(u)
            job = _Job((1, 0.0, seq), pick.unit, f"v{seq}", seconds, tokens, score=False)
            heapq.heappush(self.queue, job)
            self.ledger.owe(pick.unit, job.key, tokens)
            self.generation_queued += 1
        return len(picks)

    def _push_scores(self, unit: Unit) -> None:
        """A test input's candidates, scored once its generation is over: the vote's top M,
        each under J augmentations (M: at most the distinct answers its views can give)."""
        cfg = self.cfg
        if not cfg.vote_mode.needs_scores or unit in self.scored or not self.sim.views[unit]:
            return
        self.scored.add(unit)
        per_view = 1 if cfg.sampling.decode == "dfs" else cfg.sampling.n
        found = math.inf if cfg.sampling.decode == "dfs" else self.sim.views[unit] * per_view
        candidates = int(min(cfg.rescore_top, found))
        u = self.units[unit]
        for c in range(candidates * cfg.rescore_augmentations):
            job = _Job((0, -1.0, next(self.seq)), unit, f"s{c}",
                       self._score_seconds(u), 0, score=True)  # fmt: skip
            heapq.heappush(self.queue, job)

    def _push_promises(self) -> None:
        """Gain: the tasks' promises, ahead of all else, as the run's rule (PromisePass) asks
        them."""
        if self.cfg.schedule is not ViewSchedule.GAIN or not self.promise_pass.wants(False):
            return
        tokens: dict[TaskId, int] = {}
        for t in self.task_ids:
            if t in self.promised:
                continue
            u = self.units[self.by_task[t][0]]
            n = math.ceil(u.prompt_tokens if u.promise_tokens is None else u.promise_tokens)
            if n:
                tokens[t] = n
            else:  # one train pair: no promise, no request (airv.run.promise)
                self.promised.add(t)
        ask = self.promise_pass.ask(tokens, self.measured, self.until - self.now, waiting=False)
        for task_id in ask:
            unit = self.by_task[task_id][0]
            seconds = self._promise_seconds(tokens[task_id])
            job = _Job((0, -2.0, next(self.seq)), unit, "promise", seconds, tokens[task_id],
                       score=True, promise=True)  # fmt: skip
            heapq.heappush(self.queue, job)
            self.promising += 1

    def _next(self, tasks: Sequence[TaskId]) -> _Job | None:
        """The best job still wanted (a capped task's views are dropped, as the run's
        dispatch check drops them); the next round (gain: the next picks) is planned when
        generation runs dry. Gain plans nothing while promises are on their way."""
        while True:
            if self.cfg.schedule is ViewSchedule.GAIN:
                if not self.promising:
                    self._push_promises()
                if not self.generation_queued and not self.dry and not self.promising:
                    self.dry = not self._plan_gain(tasks)
                    continue
            elif not self.generation_queued and self.rounds.planned < self.rounds.last:
                self.rounds.planned += 1
                self._plan(self.rounds.planned, tasks)
                continue
            if not self.queue:
                return None
            job = heapq.heappop(self.queue)
            if job.score:
                return job
            self.generation_queued -= 1
            task_id = job.unit[0]
            if task_id in self.ledger.cut or self.ledger.capped(task_id):
                self.ledger.settle(job.unit, job.key)
                continue
            return job

    def _done(self, job: _Job) -> None:
        sim = self.sim
        if job.promise:
            self.promising -= 1
            self.promised.add(job.unit[0])
            self.measured.append(Scored(0.0, job.seconds, job.tokens))
            sim.promises += 1
            sim.promise_seconds += job.seconds
            return
        if job.score:
            sim.scores += 1
            sim.rescore_seconds += job.seconds
            return
        self.ledger.settle(job.unit, job.key)
        self.ledger.charge(job.unit[0], job.seconds, job.tokens)
        sim.prompts += 1
        sim.decode_seconds += job.seconds
        sim.views[job.unit] += 1
        task_id = job.unit[0]
        if task_id not in self.ledger.cut and self.ledger.capped(task_id):
            self.ledger.cut.add(task_id)
            sim.capped.append(task_id)
        over = task_id in self.ledger.cut or sim.views[job.unit] >= sim.target_views
        if over:
            units = self.by_task[task_id] if task_id in self.ledger.cut else [job.unit]
            for unit in units:
                if not self.ledger.owed(unit):
                    self._push_scores(unit)

    # -- the phases ----------------------------------------------------------------------

    def answer(self, tasks: Sequence[TaskId], start: float, until: float) -> float:
        """The engines from `start` (their start-up first) until the work is done or `until`;
        returns when the last request ended. Each engine runs up to its batch of requests at
        once, sharing its rate (the rates' batch_requests, at most --inflight): a request ends
        after its seconds of the engine's whole time, times the requests beside it. Those in
        flight when the time is up are lost, as vLLM's running batch is."""
        self.rounds.planned = 0
        self.generation_queued = 0
        self.dry = False
        self.queue = []
        self.promising = 0
        self.until = until
        now = end = self.now = start + self.sim.engine_start_seconds
        width = max(1, min(self.cfg.inflight, int(self.rates.batch_requests)))
        lanes = [_Lane() for _ in range(self.cfg.workers)]
        while True:
            lora = self._lora(tasks)  # as the views ended so far leave the batches
            for lane in lanes if now < until else ():
                while len(lane.running) < width and (job := self._next(tasks)) is not None:
                    job.seconds *= lora  # a job's seconds, the base model's until now
                    if not lane.running:
                        lane.mark = now
                    lane.running.append([job.seconds, job])
            busy = [lane for lane in lanes if lane.running]
            if not busy:
                break
            dt = min(min(left for left, _ in lane.running) * len(lane.running) for lane in busy)
            if now + dt > until:  # nothing more ends in time: what is in flight is lost
                for lane in busy:
                    for _, job in lane.running:
                        self._lose(job)
                    lane.running = []
                end = until
                break
            now += dt
            self.now = now
            for lane in busy:
                step = dt / len(lane.running)
                ended: list[_Job] = []
                going: list[list[Any]] = []
                for item in lane.running:
                    item[0] -= step
                    if item[0] <= 1e-9 * max(1.0, item[1].seconds):  # float rounding: ended
                        ended.append(item[1])
                    else:
                        going.append(item)
                lane.running = going
                if ended:
                    self.sim.engine_seconds += now - lane.mark
                    lane.mark = now
                    for job in ended:
                        self._done(job)
                    end = max(end, now)
        return min(end, until)

    def _lose(self, job: _Job) -> None:
        self.sim.lost += 1
        if job.promise:
            self.promising -= 1  # asked again at the next wave's start
        elif not job.score:
            self.ledger.settle(job.unit, job.key)
            self.dry = False  # gain: its view may be planned again

    def run(self) -> Simulation:
        cfg, sim = self.cfg, self.sim
        if not self.task_ids:
            return sim
        if not cfg.ttt.enabled:
            sim.end = self.answer(self.task_ids, 0.0, sim.deadline)
            sim.waves.append(Wave(len(self.task_ids), 0.0, 0.0, 0.0, sim.end, sim.end, 0, 0, 0))
        else:
            self._waves()
        self._close()
        return sim

    def _close(self) -> None:
        sim = self.sim
        target = sim.target_views
        short = {u[0] for u, n in sim.views.items() if n < target}
        # A task that reached its cap with every view answered lost nothing: not listed.
        sim.capped = [t for t in sim.capped if t in short]
        sim.cut = [t for t in self.task_ids if t in short and t not in self.ledger.cut]
        if sim.cut and sim.stopped_by == "done":
            sim.stopped_by = "deadline"
        if self.cfg.vote_mode.needs_scores:
            sim.unscored = sum(1 for u, n in sim.views.items() if n and u not in self.scored)


def _no_prompts(task: Task, test_index: int) -> FittedPrompt:
    raise AssertionError("the simulation builds no prompt: it uses the rounds' targets only")


def simulate(
    cfg: RunConfig, costs: Costs, rates: Rates, *, adapter_bytes: int | None = None
) -> Simulation:
    """The run `cfg` describes, on a virtual clock, its requests priced by `rates` from
    `costs` (one entry per test input). `adapter_bytes`: one adapter's size, for the waves
    (None with TTT: one wave)."""
    return _Simulator(cfg, costs, rates, adapter_bytes).run()
