"""The anytime pipeline: challenge file + model directory -> submission.json, under a deadline.

Work is planned by the gain schedule (run.gain: each view to the test input where it is
expected to change the top 2 most per second) or in uniform rounds (run.rounds: round 1 gives
every test input a few augmentations; later rounds add more where the vote is not settled and
the task is under its cap). Either way the prompts go into one shared queue (engines.pool),
best first, and more is planned while earlier work is still running, so the queue never
empties while work is owed. The engines, in worker processes, are kept a fixed number of
requests ahead and return each completion as it finishes; each is appended to the predictions
log at once, and the votes and submission.json (atomic rewrite) follow on a cadence, by time
and by count. So a valid, improving submission exists from the first minute, and a deadline,
crash or hang costs only the requests in flight.

With test-time fine-tuning the adapters are trained first, in waves that fit the scratch
disk (adapt.adapters, adapt.waves), each wave answered before the next trains.

`Run` composes the parts, each in a module of its own: the planner (run.gain, run.rounds), the
ledger of what each task spent and is owed (run.ledger), the recorder of results, votes and
submission.json (run.recorder), the adapters (adapt.adapters) and the engines (run.engines).
This process owns the clock; the pool supervises the engines (deaths, stalls, restarts).
Whoever watches a run (the bench, a test) does so through `Observer` and the lane factory.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from airv.adapt.adapters import Adapters, stage_log
from airv.adapt.lora import TrainResult
from airv.adapt.stage import StageJob
from airv.adapt.waves import adapter_bytes, wave_size
from airv.core.errors import EngineError
from airv.core.prompt_format import PromptFormat, parse_answer
from airv.core.prompts import (
    FittedPrompt,
    PromptTooLong,
    answer_token_ids,
    fit_prompt,
    for_tokenizer,
    probe_text,
)
from airv.core.tasks import Challenges, Task, load_challenges
from airv.core.types import Grid, TaskId, Unit
from airv.core.units import format_duration, format_size
from airv.core.voting import Vote
from airv.engines.base import Completion, GenerateRequest, ScoreRequest
from airv.engines.lane import WorkerTimeout
from airv.engines.model import check_round_trip, load_tokenizer, weight_shapes
from airv.engines.pool import (
    Done,
    Job,
    LaneStarter,
    SharedQueue,
    start_lane,
)
from airv.engines.worker import end_child_server
from airv.run.budget import (
    DEADLINE,
    Clock,
    Stopped,
    deadline_alarm,
    process_start_time,
    stop_on_signals,
)
from airv.run.config import ENGINE_START_SECONDS, RunConfig
from airv.run.engines import Engines
from airv.run.gain import Ledgers, planner, task_stop
from airv.run.ledger import Ledger
from airv.run.outdir import RunLock
from airv.run.outdir import prepare as prepare_out_dir
from airv.run.predictions import Prediction
from airv.run.recorder import Recorder
from airv.run.rescore import Rescorer, ScoreItem
from airv.run.rounds import Board, View
from airv.run.schedule import Evidence, Journal, evidence_of, view_price
from airv.run.summary import RunSummary

log = logging.getLogger(__name__)

# Seconds before the run's deadline at which a search (DFS) stops and returns what it found.
SEARCH_DEADLINE_MARGIN = 2.0


@dataclass(frozen=True)
class _Check:
    """The served check of one adapter (airv.adapt.served): its probe, scored by the engine,
    or (`vllm_failed`: why vLLM did not serve it) by the transformers engine it falls back to."""

    result: TrainResult
    vllm_failed: str | None = None


# What the run's shared queue carries: prompts, candidates to score, adapters' probes.
_Payload = View | ScoreItem | _Check


class Observer:
    """What a run tells whoever watches it (the bench's timers and arrival times, a test's
    spy), each after the fact. The default watches nothing."""

    def planned(self, views: Sequence[View], seconds: float) -> None:
        """Views planned and queued (augment, fit, tokenize took `seconds`)."""

    def taken(self, results: int, seconds: float) -> None:
        """Finished results recorded (parse, reverse, log took `seconds`)."""

    def wrote(self, votes: Mapping[Unit, Vote], seconds: float) -> None:
        """submission.json rewritten from `votes`."""

    def engine_failed(self, why: str) -> None:
        """An engine lane's life ended early (the pool restarts it if its policy allows)."""


class Run:
    """One run, composed: the round planner (what each test input is owed), the ledger (spent,
    owed, caps), the recorder (results to the logs, votes, submission.json), the adapters
    (test-time fine-tuning), and the engines' pools, driven by a short loop (`execute`)."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        clock: Clock | None = None,
        lanes: LaneStarter = start_lane,
        observer: Observer | None = None,
    ):
        self.cfg = cfg
        self.observer = observer or Observer()
        self.clock = clock or Clock(process_start_time(), cfg.time_budget, cfg.reserve_seconds)
        self.challenges: Challenges = load_challenges(cfg.challenges, strict=False)
        # One run per output folder, resumed only with the same fingerprint (or --fresh).
        self._lock: RunLock | None = prepare_out_dir(cfg)
        sampling = cfg.sampling
        self.summary = RunSummary(
            challenges=str(cfg.challenges.resolve()),
            decode=sampling.decode
            + (f" (p > {sampling.dfs_threshold:g})" if sampling.decode == "dfs" else ""),
            tasks=len(self.challenges.task_ids),
            rejected_tasks=dict(self.challenges.rejected),
            settings=cfg.settings(),
        )
        ids = [t for t in self.challenges.task_ids if t in self.challenges.tasks]
        self.task_ids = ids[: cfg.max_tasks] if cfg.max_tasks is not None else ids
        self.units: list[Unit] = [
            (t, i) for t in self.task_ids for i in range(len(self.challenges.tasks[t].test))
        ]
        self.failed: dict[TaskId, str] = {}  # task id -> why it gets the fallback
        self.task_cap_s = cfg.task_cap(len(self.task_ids))
        self._tokenizer: Any = None
        self._format: PromptFormat | None = None
        self.ledger = Ledger(self.task_cap_s, cfg.task_cap_tokens)
        board = Board(
            self.units,
            closed=self._closed,
            have=self._have,
            adapter=lambda t: self.adapters.adapter(t),
            fail=self._fail,
            push=self._push,
            verdicts_due=lambda: bool(self.adapters.unchecked),
        )
        self.journal = Journal(cfg.schedule_path)
        self.rounds = planner(
            cfg,
            self.challenges.tasks,
            self.fit,
            board,
            Ledgers(
                self.evidence,
                self.price,
                lambda t: task_stop(t, self.failed, self.ledger),
                held=lambda t: self.adapters.held(t),
                elapsed=lambda: self.clock.elapsed(),
            ),
            self.journal,
        )
        self.rescorer = Rescorer(cfg, self.challenges.tasks, self.fit, self.answer_ids)
        self.recorder = Recorder(
            cfg, self.challenges, self.summary, self.ledger, self.rescorer, self.clock
        )
        self.adapters = Adapters(
            cfg.ttt,
            cfg.out_dir,
            backend=cfg.engine.backend.value,
            fallback=cfg.adapter_fallback,
            keep=cfg.keep_adapters,
            check=self._queue_check,
            released=self._catch_up,
        )
        self.summary.ttt = self.adapters.entries
        self.engines: Engines[_Payload] = Engines(
            cfg,
            self.clock,
            lanes,
            self.summary,
            on_failure=self.observer.engine_failed,
            adapters=self.adapters.serving,
        )
        self._seq = itertools.count()  # queue order within a round
        self._pushed: list[View] = []  # views queued since the observer was last told
        self._evidence: dict[Unit, Evidence] = {}  # counted when its predictions last changed
        self._scoring: set[tuple[Unit, Grid, str]] = set()  # score requests queued or in flight
        self._bar: Any = None  # the progress bar, while the run executes
        self.recorder.resume(self.units, stage_log(cfg.out_dir))

    @property
    def predictions(self) -> dict[Unit, list[Prediction]]:
        return self.recorder.predictions

    def votes(self) -> dict[Unit, Vote]:
        return self.recorder.votes()

    def write(self) -> dict[Unit, Vote]:
        """Vote and rewrite submission.json atomically; returns the votes."""
        t0 = time.perf_counter()
        votes = self.recorder.write()
        self.observer.wrote(votes, time.perf_counter() - t0)
        return votes

    # -- prompts -------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            model = self.cfg.engine.model
            tokenizer = load_tokenizer(model)
            # Before any prompt is built: a tokenizer that loses tokens is a usage error.
            check_round_trip(
                model, tokenizer, probe_text(for_tokenizer(self.cfg.prompt, tokenizer), tokenizer)
            )
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def prompt_format(self) -> PromptFormat:
        """The run's format with the model's own EOS text (see `for_tokenizer`)."""
        if self._format is None:
            fmt = for_tokenizer(self.cfg.prompt, self.tokenizer)
            self._format = fmt
            self.recorder.parse = lambda text: parse_answer(text, fmt)
        return self._format

    def fit(self, view: Task, test_index: int) -> FittedPrompt | PromptTooLong:
        """The prompt of one augmented task's test input, fitted to the context length."""
        cfg = self.cfg
        return fit_prompt(
            view, test_index, self.prompt_format, self.tokenizer, cfg.engine.max_model_len
        )

    def answer_ids(self, grid: Grid) -> list[int]:
        return answer_token_ids(grid, self.prompt_format, self.tokenizer)

    # -- planning ------------------------------------------------------------------------

    def _seconds_per_token(self) -> float:
        s = self.summary
        return s.engine_seconds / max(1, s.tokens_in + s.tokens_out)

    def _closed(self, task_id: TaskId) -> bool:
        """Nothing is planned for a task that failed, waits for its adapter's verdict, or
        reached its cap (owed work counted)."""
        return (
            task_id in self.failed
            or self.adapters.held(task_id)
            or self.ledger.capped(task_id, self._seconds_per_token())
        )

    def _have(self, unit: Unit) -> set[str]:
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
        return view_price(seconds, n, tokens, self._seconds_per_token())

    def _tests(self, task_id: TaskId) -> range:
        return range(len(self.challenges.tasks[task_id].test))

    def plan(self, round_no: int, votes: Mapping[Unit, Vote]) -> list[View]:
        """The views still owed to reach this round's target per test input (work queued or
        in flight counts as done), as the uniform rounds plan them."""
        views = self.rounds.plan_round(round_no, votes)
        self.summary.settled_skips = self.rounds.skipped
        return views

    def _fail(self, task_id: TaskId, reason: str) -> None:
        if task_id not in self.failed:
            log.warning("task %s gets the fallback: %s", task_id, reason)
            self.failed[task_id] = reason

    def _wanted(self, job: Job[_Payload]) -> bool:
        """Dispatch-time check (the pool drops what this refuses): the task has not failed or
        hit its cap, and a later round's view is not for a test input settled meanwhile."""
        p = job.payload
        if isinstance(p, _Check):
            return True
        task_id = p.unit[0]
        if task_id in self.failed:
            return False
        if isinstance(p, ScoreItem):
            return True
        if self.ledger.capped(task_id):
            return False
        if self.rounds.late(p, self.recorder.vote_of(p.unit), len(self._have(p.unit))):
            self.summary.settled_skips = self.rounds.skipped
            return False
        return True

    def _refill(self, votes: Mapping[Unit, Vote], *, final: bool = False) -> int:
        """Plan ahead while the queue holds less than the engines take in flight; with
        `final` (nothing queued or in flight), look once more at every test input (a vote that
        came unsettled) and at owed scores. Returns the requests queued."""
        pool = self.engines.pool
        assert pool is not None
        room = pool.capacity - len(self.engines.queue)
        pushed = 0
        if room > 0 or final:
            t0 = time.perf_counter()
            pushed = self.rounds.refill(max(room, 0), votes, final=final)
            self._planned(time.perf_counter() - t0)
        if final:
            pushed += self._push_scores(votes)
        return pushed

    def _planned(self, seconds: float) -> None:
        self.summary.settled_skips = self.rounds.skipped
        if self._pushed:
            self.observer.planned(self._pushed, seconds)
            self._pushed = []

    def _task_over(self, task_id: TaskId, votes: Mapping[Unit, Vote]) -> bool:
        """Whether a task will send the engine nothing more: failed or cut at its cap with
        nothing in flight, or every test input planned to the last round (or settled), with
        no generation or re-scoring owed."""
        units = [(task_id, i) for i in range(len(self.challenges.tasks[task_id].test))]
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

    # -- test-time fine-tuning ------------------------------------------------------------

    def _adapt_and_answer(self, votes: dict[Unit, Vote]) -> dict[Unit, Vote]:
        """Test-time fine-tuning, then the engines, in waves whose adapters fit the scratch
        limit (adapt.waves; one wave when they all fit). Each wave's share of the time left is
        its share of the tasks left, and of it the stage's share goes to training. Between
        waves the engines are stopped (on one device the trainer needs the memory the engine
        holds) and started again: each wave after the first costs an engine start-up."""
        cfg, ttt = self.cfg, self.cfg.ttt
        todo = [t for t in self.task_ids if t not in self.failed]
        if cfg.engine.model is None or not todo:  # nothing to train: the engines alone
            self.start_workers()
            return self._stream(votes)
        shapes = weight_shapes(cfg.engine.model)
        per_adapter = adapter_bytes(shapes, ttt, dtype_bytes=2 if cfg.devices else 4)
        limit = cfg.scratch_bytes()
        stage_seconds = cfg.stage_seconds
        self.adapters.waiting |= set(todo)
        n_tasks, start = len(todo), self.clock.start
        while todo and self.clock.left() > 0:
            size = wave_size(max(per_adapter, self.adapters.largest), limit, ttt)
            wave, todo = (todo, []) if size is None else (todo[:size], todo[size:])
            if todo or self.summary.waves:
                log.info(
                    "wave %d: %d task(s), %d after it (adapters of about %s each, %s at once)",
                    len(self.summary.waves) + 1, len(wave), len(todo),
                    format_size(per_adapter), format_size(limit),
                )  # fmt: skip
            self.summary.waves.append(len(wave))
            # Each task's training gets its share of the stage's seconds (the first wave's
            # counted from the clock's start, as a run without waves counts its stage).
            stage_end = min(self.clock.deadline, start + stage_seconds * len(wave) / n_tasks)
            self.finetune(wave, stage_end)
            self.adapters.waiting -= set(wave)
            if self.clock.left() <= 0:
                break
            # The wave answers in its tasks' share of the time left, less the training the
            # later waves are owed; the last wave answers until the deadline.
            wave_end = None
            if todo:
                owed = stage_seconds * len(todo) / n_tasks
                share = len(wave) / (len(wave) + len(todo))
                wave_end = time.monotonic() + max(0.0, self.clock.left() - owed) * share
            self.start_workers()
            votes = self._stream(votes, until=wave_end)
            if todo:
                self.stop_workers()
                self.adapters.end_wave(wave)
            start = time.monotonic()
        return votes

    def finetune(self, task_ids: Sequence[TaskId], stage_end: float) -> None:
        """Train these tasks' adapters by `stage_end` (processes of their own, ended before
        the engine starts); a task whose adapter is not ready keeps the base model."""
        cfg = self.cfg
        assert cfg.engine.model is not None
        job = StageJob(
            model_dir=cfg.engine.model,
            fmt=cfg.prompt,
            cfg=cfg.ttt,
            policy=cfg.views,
            max_len=cfg.engine.max_model_len,
            out_dir=cfg.adapters_dir,
            task_cap=0.0,  # set by the stage's fair share
        )
        tasks = [self.challenges.tasks[t] for t in task_ids]
        self.adapters.train(
            tasks, job, deadline=stage_end, devices=cfg.devices or (None,), progress=cfg.progress
        )

    def _queue_check(
        self, trained: TrainResult, probe: ScoreRequest, vllm_failed: str | None
    ) -> None:
        """An adapter's probe, first in its engine's queue: vLLM's, or (`vllm_failed`) the
        transformers engine's, started if it is not running."""
        if vllm_failed is None:
            self.engines.queue.push(probe, _Check(trained), (0, -2, next(self._seq)))
            return
        self.engines.open_fallback()
        check = _Check(trained, vllm_failed)
        self.engines.fallback_queue.push(probe, check, (0, -2, next(self._seq)))

    def _catch_up(self) -> None:
        """Plan the tasks just released (their adapter's verdict in), as the planner does."""
        t0 = time.perf_counter()
        self.rounds.catch_up(self.recorder.last_votes())
        self._planned(time.perf_counter() - t0)

    def _fallback_lost(self) -> None:
        """The transformers engine is gone for good (every restart spent): its tasks and the
        adapters still waiting for it keep the base model, on vLLM."""
        fallback = self.engines.fallback
        if fallback is None or fallback.lanes:
            return
        why = fallback.failures[-1] if fallback.failures else "it stopped"
        pending: list[TrainResult] = []
        for job in fallback.abort(lambda j: True):
            self._unowe(job)
            if isinstance(job.payload, _Check):
                pending.append(job.payload.result)
        self.engines.fallback = None
        self.adapters.fallback_lost(why, pending)

    # -- engines -------------------------------------------------------------------------

    def start_workers(self) -> None:
        """Start the engines, queue the new adapters' checks first, and wait until they are
        up (failures restarted by the policy)."""
        self.engines.open()
        self.adapters.check_new()
        self._take(self.engines.wait_ready())

    def stop_workers(self) -> None:
        self.engines.close()
        # Stopped (a deadline, a signal, an engine failure): no child is coming.
        if self.summary.stopped_by is not None or self.clock.left() <= 0:
            end_child_server()

    # -- the shared queue ---------------------------------------------------------------

    def _queue_for(self, task_id: TaskId) -> SharedQueue[_Payload]:
        return self.engines.queue_for(task_id in self.adapters.on_fallback)

    def _push(self, views: Sequence[View]) -> int:
        for v in views:
            self._queue_for(v.unit[0]).push(
                self._engine_request(v), v, (v.round, 0, next(self._seq))
            )
            self.ledger.owe(v.unit, v.aug.key, v.cost)
            self.recorder.round_planned(v.round)
        self._pushed.extend(views)
        if views and self._bar is not None:
            self._bar.total += len(views)
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

    def _push_scores(self, votes: Mapping[Unit, Vote]) -> int:
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

    def _unowe(self, job: Job[_Payload]) -> None:
        p = job.payload
        if isinstance(p, ScoreItem):
            self._scoring.discard((p.unit, p.grid, p.aug))
        elif isinstance(p, View):
            self.ledger.settle(p.unit, p.aug.key)

    # -- the loop ------------------------------------------------------------------------

    def _stream(self, votes: dict[Unit, Vote], until: float | None = None) -> dict[Unit, Vote]:
        """Keep the engines fed until the work is done or time is up (the deadline, or
        `until`: a wave's end); record each result as it comes; vote and rewrite
        submission.json on a cadence (cfg.write_seconds, or cfg.write_every new results)."""
        pool = self.engines.pool
        assert pool is not None
        cfg = self.cfg
        last_write, unwritten = time.monotonic(), 0
        while True:
            if self.clock.left() <= 0:
                # What the engines already returned is kept; only requests in flight are lost.
                for p in self.engines.pools():
                    self._take(p.drain())
                self.summary.stopped_by = DEADLINE
                log.warning("deadline reached: stopping the engine; the last submission stands")
                break
            if until is not None and time.monotonic() >= until:
                for p in self.engines.pools():
                    self._take(p.drain())
                log.info("the wave's time is up: its work in flight is dropped")
                break
            self._refill(votes)
            pools = self.engines.pools()
            if not self.engines.queued() and all(p.idle() for p in pools):
                votes = self.votes()
                if not self._refill(votes, final=True):
                    break
            for p in pools:
                for job in p.feed(self._wanted):
                    self._unowe(job)
            for p in pools:
                unwritten += self._take(p.poll(min(self.clock.left(), 0.5) / len(pools)))
            now = time.monotonic()
            if unwritten and (
                unwritten >= cfg.write_every or now - last_write >= cfg.write_seconds
            ):
                votes = self.write()
                self._push_scores(votes)
                self.adapters.delete(functools.partial(self._task_over, votes=votes))
                last_write, unwritten = now, 0
                if self._bar is not None:
                    self._bar.set_postfix_str(self._postfix(votes))
            pool.check()  # every restart spent and no engine left: EngineError
            self._fallback_lost()
        return self.write()

    def _take(self, done: Sequence[Done[_Payload]]) -> int:
        """Record finished results: completions to the predictions log, scores to the scores
        log. Returns how many."""
        t0 = time.perf_counter()
        gens: list[tuple[View, Sequence[Completion], float]] = []
        scores: list[tuple[ScoreItem, float, float]] = []
        for d in done:
            if not d.result.finished:
                continue  # the pipeline asks for no partial results
            self._unowe(d.job)
            p = d.job.payload
            if isinstance(p, _Check):
                self.adapters.checked(p.result, p.vllm_failed, d.result.score, d.result.error)
            elif d.result.error is not None:
                self._fail(p.unit[0], f"the engine refused a request: {d.result.error}")
            elif isinstance(p, ScoreItem):
                scores.append((p, float(d.result.score or 0.0), d.seconds))
            else:
                gens.append((p, d.result.completions, d.seconds))
        if gens:
            for task_id in self.recorder.record(gens):
                if task_id not in self.ledger.cut and self.ledger.capped(task_id):
                    self._stop_task(task_id)
            if self._bar is not None:
                self._bar.update(len(gens))
        if scores:
            self.recorder.record_scores(scores)
        n = len(gens) + len(scores)
        if n:
            self.observer.taken(n, time.perf_counter() - t0)
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
            self._unowe(job)
        if gone:
            log.info("task %s reached its cap: %d prompt(s) dropped", task_id, len(gone))

    # -- the run -------------------------------------------------------------------------

    def execute(self) -> int:
        """Run until the work is done or time is up. Returns the exit code. The output folder
        is unlocked at the end, whatever happens."""
        try:
            return self._execute()
        finally:
            self.release()

    def _execute(self) -> int:
        votes = self.write()  # a valid submission exists before the model even loads
        exit_code = 0
        if self.clock.left() < ENGINE_START_SECONDS:
            log.warning(
                "only %s of the budget is left after the %s reserve: an engine start alone "
                "took about %s here, so this run may produce no answers (raise --time-budget "
                "or lower --reserve)",
                format_duration(self.clock.left()),
                format_duration(self.cfg.reserve_seconds),
                format_duration(ENGINE_START_SECONDS),
            )
        self._bar = _progress(self.cfg.progress)
        with stop_on_signals() as signals:
            self.recorder.signals = signals
            try:
                with deadline_alarm(signals, self.clock.deadline):
                    if self.task_ids and self.clock.left() > 0:
                        _ = self.prompt_format  # loads and checks the tokenizer: usage errors
                    if self.cfg.ttt.enabled and self.clock.left() > 0:
                        votes = self._adapt_and_answer(votes)
                    elif self.clock.left() > 0:
                        self.start_workers()
                        votes = self._stream(votes)
            except WorkerTimeout:
                self.summary.stopped_by = DEADLINE
                log.warning(
                    "deadline reached before the engine started; the last submission stands"
                )
            except EngineError as exc:
                self.summary.stopped_by = "engine failure"
                self.summary.error = str(exc).splitlines()[0]
                log.error("%s", exc)
                exit_code = exc.exit_code
            except Stopped as stop:  # as a deadline would: what was answered stands
                self.summary.stopped_by = stop.signal
                log.warning("%s: stopping the engine; the last submission stands", stop.signal)
            finally:
                signals.disarm()  # a signal from here on must not cut the final write
                if self._bar is not None:
                    self._bar.close()
                try:
                    votes = self.write()  # first: the submission stands before any slow step
                finally:  # even on a full disk: a live worker would hold the process at exit
                    self.stop_workers()
                votes = self.write()
                self.adapters.delete(lambda t: True, final=True)
            if self.summary.stopped_by is None and signals.received is not None:
                self.summary.stopped_by = signals.received
        if self.summary.stopped_by is None:
            self.summary.stopped_by = DEADLINE if self.clock.left() <= 0 else "done"
        self._finish_summary(votes)
        return exit_code

    def release(self) -> None:
        """Close the schedule's journal and unlock the output folder (execute does at its
        end)."""
        self.journal.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _postfix(self, votes: Mapping[Unit, Vote]) -> str:
        s = self.summary
        rate = s.tokens_out / s.engine_seconds if s.engine_seconds else 0.0
        answered = len({u[0] for u in votes})
        return (
            f"tasks {answered}/{len(self.task_ids)} | {rate:,.0f} tok/s | "
            f"left {format_duration(self.clock.left())}"
        )

    def _finish_summary(self, votes: dict[Unit, Vote]) -> None:
        s = self.summary
        s.total_seconds = self.clock.elapsed()
        s.failed_tasks = dict(self.failed)
        self.recorder.finish(self.units, votes)
        a = self.adapters
        s.ttt_seconds, s.scratch_peak_bytes, s.adapters_deleted = (
            a.seconds,
            a.scratch_peak,
            a.deleted,
        )
        s.skipped_tasks = len(self.challenges.tasks) - len(self.task_ids)
        s.answered_test_inputs = len(votes)
        s.test_inputs = sum(self.challenges.n_tests.values())
        s.write(self.cfg.summary_path)


def _progress(enabled: bool) -> Any:
    """A progress bar over the prompts planned so far (its total grows as rounds are planned)."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=0, desc="prompts", unit="prompt", dynamic_ncols=True)


def run(cfg: RunConfig, *, clock: Clock | None = None) -> int:
    """Run the pipeline; returns the process exit code. submission.json exists whatever happens
    after the challenge file has been read."""
    r = Run(cfg, clock=clock)
    code = r.execute()
    print(r.summary.render())
    return code
