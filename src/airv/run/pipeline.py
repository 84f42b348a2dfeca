"""The anytime pipeline: challenge file + model directory -> submission.json, under a deadline.

Work is planned in rounds. Round 1 gives every test input a few augmentations; later rounds add
more where the vote is not settled and the task is under its cap. Rounds are priorities, not
barriers: their prompts go into one shared queue (engines.pool), best first, and the next round
is planned while the previous one is still running, so the queue never empties while work is
owed. The engines, in worker processes, are kept a fixed number of requests ahead and return
each completion as it finishes; each is appended to the predictions log at once, and the votes
and submission.json (atomic rewrite) follow on a cadence, by time and by count. So a valid,
improving submission exists from the first minute, and a deadline, crash or hang costs only
the requests in flight.

This process owns the clock; the pool supervises the engines (deaths, stalls, restarts).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airv.adapt.config import TTTMode
from airv.adapt.lora import TrainResult, check_adapter
from airv.adapt.served import probe_request, verdict, vllm_refuses
from airv.adapt.stage import TTT_LOG, StageJob, append_result, dir_bytes, run_stage
from airv.core.augment import Augmentation, plan_views
from airv.core.errors import EngineError
from airv.core.formats import Rejection
from airv.core.jsonio import cut_torn_tail
from airv.core.prompt_format import PromptFormat, parse_answer
from airv.core.prompts import (
    FittedPrompt,
    PromptTooLong,
    answer_token_ids,
    fit_prompt,
    for_tokenizer,
    probe_text,
)
from airv.core.submission import build_submission, write_submission
from airv.core.tasks import Challenges, Task, load_challenges
from airv.core.types import Grid, TaskId, Unit
from airv.core.voting import Vote, vote
from airv.engines.base import Completion, GenerateRequest
from airv.engines.config import Backend
from airv.engines.lane import Lane, WorkerTimeout
from airv.engines.model import check_round_trip, load_tokenizer, weight_names
from airv.engines.pool import (
    Done,
    Job,
    LaneStarter,
    Pool,
    SharedQueue,
    Supervision,
    start_lane,
)
from airv.engines.worker import CLOSE_SECONDS
from airv.run.budget import (
    Clock,
    SignalStop,
    Stopped,
    format_duration,
    process_start_time,
    stop_on_signals,
)
from airv.run.config import ENGINE_START_SECONDS, RunConfig
from airv.run.outdir import RunLock
from airv.run.outdir import prepare as prepare_out_dir
from airv.run.predictions import (
    Prediction,
    append_predictions,
    group_candidates,
    read_predictions,
)
from airv.run.rescore import Rescorer, ScoreItem
from airv.run.summary import RunSummary

log = logging.getLogger(__name__)

# Seconds before the run's deadline at which a search (DFS) stops and returns what it found.
SEARCH_DEADLINE_MARGIN = 2.0


@dataclass
class _Request:
    unit: Unit
    aug: Augmentation
    prompt: FittedPrompt
    round: int
    adapter: str | None = None  # the task's test-time fine-tuned adapter, if it has one

    @property
    def cost(self) -> int:
        return len(self.prompt.token_ids) + self.prompt.max_answer_tokens

    @property
    def request(self) -> GenerateRequest:
        return GenerateRequest(
            tuple(self.prompt.token_ids), self.prompt.max_answer_tokens, self.adapter
        )


@dataclass(frozen=True)
class _Check:
    """The served check of one adapter (airv.adapt.served): its probe, scored by the engine,
    or (`vllm_failed`: why vLLM did not serve it) by the transformers engine it falls back to."""

    result: TrainResult
    vllm_failed: str | None = None


# What the run's shared queue carries: prompts, candidates to score, adapters' probes.
_Payload = _Request | ScoreItem | _Check


class Run:
    """State of one run: candidates so far, per-task accounting, workers."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        clock: Clock | None = None,
        lanes: LaneStarter = start_lane,
    ):
        self.cfg = cfg
        self._start = lanes  # how engine lanes start (engines.pool.start_lane, or FaultyLanes)
        self._signals = SignalStop()  # the one stop_on_signals installs while the run streams
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
        self.predictions: dict[Unit, list[Prediction]] = defaultdict(list)
        self.failed: dict[TaskId, str] = {}  # task id -> why it gets the fallback
        # The engines: one shared queue of work owed, and the supervised workers pulling from it.
        self.queue: SharedQueue[_Payload] = SharedQueue()
        self.pool: Pool[_Payload] | None = None
        # The transformers engine, for the tasks whose adapters vLLM does not serve (started
        # when the first one is found): its own queue and lane, beside vLLM's.
        self.fallback_queue: SharedQueue[_Payload] = SharedQueue()
        self.fallback: Pool[_Payload] | None = None
        self._on_fallback: set[TaskId] = set()
        self._round = 0  # the last round planned
        self._seq = itertools.count()  # queue order within a round
        # Work queued or in flight, per test input: augmentation key -> estimated tokens.
        self._owed: dict[Unit, dict[str, int]] = defaultdict(dict)
        # Augmentations asked and answered with no completion at all (a search that found
        # nothing above its threshold): not asked again in this run.
        self._empty: dict[Unit, set[str]] = defaultdict(set)
        self._owed_tokens: Counter[TaskId] = Counter()
        self._scoring: set[tuple[Unit, Grid, str]] = set()  # score requests queued or in flight
        self._spent: dict[TaskId, tuple[float, int]] = {}  # engine seconds, tokens per task
        self._cut: set[TaskId] = set()  # tasks stopped at their cap
        self._skips: dict[Unit, int] = {}  # prompts not run because the vote was settled
        self._rounds: dict[int, list[float]] = {}  # round -> [prompts done, first, last time]
        self._bar: Any = None  # the progress bar, while the run executes
        self._starts_seen = 0  # engine start-ups already in the summary
        self._tokenizer: Any = None
        self._format: PromptFormat | None = None
        self.rescorer = Rescorer(cfg, self.challenges.tasks, self.fit, self.answer_ids)
        self.adapters: dict[TaskId, str] = {}  # test-time fine-tuned adapters by task
        self._trained: dict[str, TrainResult] = {}  # adapter directory -> its training
        self._unchecked: set[TaskId] = set()  # adapters not yet proven served: held back
        self._released: set[TaskId] = set()  # tasks that are over: their adapters deleted
        self.task_cap_s = cfg.task_cap(len(self.task_ids))
        self._votes: dict[Unit, Vote] = {}
        self._counted: dict[Unit, int] = {}  # predictions each test input's vote has seen
        self._resume()

    # -- state ---------------------------------------------------------------------------

    def _resume(self) -> None:
        records, damaged = read_predictions(self.cfg.log_path)
        known = set(self.units)
        kept = [p for p in records if (p.task_id, p.test_index) in known]
        for p in kept:
            self.predictions[(p.task_id, p.test_index)].append(p)
            self._charge(p.task_id, p.seconds, p.prompt_tokens + p.tokens)
        self.summary.resumed_predictions = len(kept)
        # A line torn by a kill mid-append is cut before this run appends (the predictions
        # log's was counted as damaged as it was read).
        cut_torn_tail(self.cfg.log_path)
        damaged += cut_torn_tail(self.cfg.scores_path) + cut_torn_tail(self.cfg.out_dir / TTT_LOG)
        self.summary.damaged_log_lines = damaged
        if kept:
            log.info("resumed %d predictions from %s", len(kept), self.cfg.log_path)

    def votes(self) -> dict[Unit, Vote]:
        """The vote of every test input with candidates. Only test inputs with new predictions
        (or new scores) are recounted: submission.json is rewritten after every engine call,
        and recounting everything each time would make a run quadratic in its size."""
        rescored = self.rescorer.take_changed()
        for unit, preds in self.predictions.items():
            if self._counted.get(unit) == len(preds) and unit not in rescored:
                continue
            self._counted[unit] = len(preds)
            cands = group_candidates(preds).get(unit, [])
            if self.cfg.vote_mode.needs_scores:
                cands = self.rescorer.attach(unit, cands)
            v = vote(cands, self.cfg.vote_mode)
            if v is None:
                self._votes.pop(unit, None)
            else:
                self._votes[unit] = v
        return dict(self._votes)

    def write(self) -> dict[Unit, Vote]:
        """Vote and rewrite submission.json atomically; returns the votes."""
        votes = self.votes()
        answers = {u: (v.attempt_1, v.attempt_2) for u, v in votes.items()}
        write_submission(self.cfg.submission_path, build_submission(self.challenges, answers))
        self.summary.writes += 1
        if self.summary.first_write_seconds is None:
            self.summary.first_write_seconds = self.clock.elapsed()
        return votes

    def _charge(self, task_id: TaskId, seconds: float, tokens: int) -> None:
        s, t = self._spent.get(task_id, (0.0, 0))
        self._spent[task_id] = (s + seconds, t + tokens)

    def _capped(self, task_id: TaskId, *, owed: bool = True) -> bool:
        """Whether a task has reached its cap: engine seconds or tokens spent (resumed work
        included), plus, with `owed`, the estimated cost of its work queued or in flight."""
        seconds, tokens = self._spent.get(task_id, (0.0, 0))
        if owed:
            s = self.summary
            per_token = s.engine_seconds / max(1, s.tokens_in + s.tokens_out)
            tokens += self._owed_tokens[task_id]
            seconds += self._owed_tokens[task_id] * per_token
        cap_s, cap_t = self.task_cap_s, self.cfg.task_cap_tokens
        return (cap_s is not None and seconds >= cap_s) or (cap_t is not None and tokens >= cap_t)

    def _asked(self, unit: Unit) -> set[str]:
        """The augmentations a test input has been answered under (or found nothing for)."""
        return {p.aug for p in self.predictions.get(unit, [])} | self._empty[unit]

    def _settled(self, v: Vote | None) -> bool:
        m = self.cfg.settle_margin
        return m > 0 and v is not None and v.margin >= m and len(v.tallies) >= 1

    # -- planning ------------------------------------------------------------------------

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
            self._format = for_tokenizer(self.cfg.prompt, self.tokenizer)
        return self._format

    def fit(self, view: Task, test_index: int) -> FittedPrompt | PromptTooLong:
        """The prompt of one augmented task's test input, fitted to the context length."""
        cfg = self.cfg
        return fit_prompt(
            view, test_index, self.prompt_format, self.tokenizer, cfg.engine.max_model_len
        )

    def answer_ids(self, grid: Grid) -> list[int]:
        return answer_token_ids(grid, self.prompt_format, self.tokenizer)

    def plan(self, round_no: int, votes: dict[Unit, Vote]) -> list[_Request]:
        """The prompts still owed to reach this round's target augmentations per test input
        (work queued or in flight counts as done)."""
        cfg = self.cfg
        target = self._target(round_no)
        requests: list[_Request] = []
        for unit in self.units:
            task_id = unit[0]
            if task_id in self.failed or task_id in self._unchecked or self._capped(task_id):
                continue
            done = self._asked(unit) | set(self._owed[unit])
            if len(done) >= target:
                continue
            if round_no > 1 and self._settled(votes.get(unit)):
                # What the rounds up to this one would have added.
                self._skips[unit] = target - len(done)
                continue
            self._skips.pop(unit, None)
            try:
                requests.extend(self._plan_unit(unit, target - len(done), done, round_no))
            except Exception as exc:  # one task's bug must not cost the others their answers
                self._fail(task_id, f"{type(exc).__name__}: {exc}")
        self.summary.settled_skips = sum(self._skips.values())
        if cfg.cheapest_first:
            # Whole tasks together, cheapest task first: most tasks get answers early.
            task_cost: Counter[TaskId] = Counter()
            for r in requests:
                task_cost[r.unit[0]] += r.cost
            requests.sort(key=lambda r: (task_cost[r.unit[0]], r.unit, r.aug.key))
        return requests

    def _plan_unit(self, unit: Unit, k: int, done: set[str], round_no: int) -> list[_Request]:
        task_id, test_index = unit
        task = self.challenges.tasks[task_id]
        # Seeded per test input (plan_views), and excluding what is done: a resumed run plans
        # the same views.
        augs = plan_views(task, test_index, k, self.cfg.views, exclude=done)
        out = []
        for aug in augs:
            fitted = self.fit(aug.apply_task(task), test_index)
            if not isinstance(fitted, FittedPrompt):
                self._fail(task_id, f"prompt too long: {fitted}")
                return []
            out.append(_Request(unit, aug, fitted, round_no, self.adapters.get(task_id)))
        return out

    def _fail(self, task_id: TaskId, reason: str) -> None:
        if task_id not in self.failed:
            log.warning("task %s gets the fallback: %s", task_id, reason)
            self.failed[task_id] = reason

    # -- test-time fine-tuning ------------------------------------------------------------

    def finetune(self) -> None:
        """Train the adapters within the stage's share of the budget (processes of their own,
        ended before the engine starts); a task whose adapter is not ready keeps the base."""
        cfg, ttt = self.cfg, self.cfg.ttt
        model = cfg.engine.model
        if model is None:
            return
        available = cfg.time_budget - cfg.reserve_seconds
        stage_end = min(self.clock.deadline, self.clock.start + ttt.budget_seconds(available))
        tasks = [self.challenges.tasks[t] for t in self.task_ids if t not in self.failed]
        if not tasks or stage_end <= time.monotonic():
            return
        left = stage_end - time.monotonic()
        fair = left / (1 if ttt.mode is TTTMode.JOINT else len(tasks))
        job = StageJob(
            model_dir=model,
            fmt=cfg.prompt,
            cfg=ttt,
            policy=cfg.views,
            max_len=cfg.engine.max_model_len,
            out_dir=cfg.adapters_dir,
            task_cap=ttt.task_cap(fair),
        )
        devices: tuple[str | None, ...] = cfg.devices or (None,)
        log.info("test-time fine-tuning %d task(s), %s", len(tasks), ttt.mode.value)
        with _StageProgress(cfg.progress, stage_end) as progress:
            report = run_stage(
                tasks,
                job,
                deadline=stage_end,
                log_path=cfg.out_dir / TTT_LOG,
                devices=devices,
                progress=progress,
            )
        self.summary.ttt_seconds += report.seconds
        for r in report.results:
            self.summary.ttt[r.name] = {
                "steps": r.steps,
                "final_loss": r.final_loss,
                "seconds": r.seconds,
                "examples": r.examples,
                "error": r.error,
            }
        self._measure_scratch()
        self._trained = dict(report.ready)
        bad: dict[str, str] = {}
        weights = weight_names(model) if report.adapters else set()
        for task_id, path in report.adapters.items():
            why = bad.get(path) or check_adapter(Path(path), ttt.rank, weights)
            if why is None:
                self.adapters[task_id] = path
                continue
            bad[path] = why
            log.warning("task %s keeps the base model: %s", task_id, why)
            entry = self.summary.ttt.setdefault(task_id, {"steps": 0, "seconds": 0.0})
            entry["error"] = f"adapter not served: {why}"

    def _measure_scratch(self) -> None:
        s = self.summary
        s.scratch_peak_bytes = max(s.scratch_peak_bytes, dir_bytes(self.cfg.adapters_dir))

    def _task_over(self, task_id: TaskId, votes: dict[Unit, Vote]) -> bool:
        """Whether a task will send the engine nothing more: failed or cut at its cap with
        nothing in flight, or every test input planned to the last round (or settled), with
        no generation or re-scoring owed."""
        units = [(task_id, i) for i in range(len(self.challenges.tasks[task_id].test))]
        if any(self._owed[u] or any(k[0] == u for k in self._scoring) for u in units):
            return False
        if task_id in self.failed or task_id in self._cut:
            return True
        if self._round < self._last_round():
            return False
        target = self._target(self._last_round())
        for u in units:
            if len(self._asked(u)) < target and not self._settled(votes.get(u)):
                return False
            v = votes.get(u)
            if self.cfg.vote_mode.needs_scores and v is not None and self.rescorer.pending({u: v}):
                return False
        return True

    def _release_adapters(self, votes: dict[Unit, Vote], *, final: bool = False) -> None:
        """Delete the adapters of tasks that are over (all of them with `final`), unless
        --keep-adapters: the scratch disk holds only what is still to be served."""
        if self.cfg.keep_adapters or not self.adapters:
            return
        live = {t: p for t, p in self.adapters.items() if t not in self._released}
        for task_id in live:
            if final or self._task_over(task_id, votes):
                self._released.add(task_id)
        for path in set(live.values()):  # a joint adapter goes with the last task it serves
            if all(t in self._released for t, p in live.items() if p == path):
                shutil.rmtree(path, ignore_errors=True)
                self.summary.adapters_deleted += 1

    # -- engine --------------------------------------------------------------------------

    def start_lane(self, index: int, life: int) -> Lane:
        """Start engine lane `index` for its `life`-th time (0 first): a worker process of its
        own pinned to its device, or an endpoint (engines.pool.start_lane)."""
        cfg = self.cfg
        engine = cfg.engine
        if self.adapters:  # serve the adapters test-time fine-tuning trained
            engine = dataclasses.replace(engine, max_lora_rank=cfg.ttt.rank)
        return self._start(engine, cfg.sampling, index, life=life, devices=cfg.devices)

    def start_fallback_lane(self, index: int, life: int) -> Lane:
        """The transformers engine with LoRA, on the first worker's device (on a GPU it needs
        the memory vLLM leaves: --gpu-memory-utilization)."""
        cfg = self.cfg
        engine = dataclasses.replace(
            cfg.engine,
            backend=Backend.HF,
            max_lora_rank=max(cfg.ttt.rank, cfg.engine.max_lora_rank),
        )
        return self._start(
            engine, cfg.sampling, 0, life=life, devices=cfg.devices[:1], name="fallback-hf"
        )

    def _pools(self) -> list[Pool[_Payload]]:
        return [p for p in (self.pool, self.fallback) if p is not None]

    def _queue_for(self, task_id: TaskId) -> SharedQueue[_Payload]:
        return self.fallback_queue if task_id in self._on_fallback else self.queue

    def start_workers(self) -> None:
        """Start the engines and wait until they are up (failures restarted by the policy)."""
        cfg = self.cfg
        t0 = time.monotonic()
        self.pool = Pool(
            self.start_lane,
            cfg.workers,
            self.queue,
            depth=cfg.inflight,
            policy=Supervision(cfg.max_restarts, cfg.stall_seconds),
            deadline=self.clock.deadline,
        )
        self._push_checks()
        try:
            self._take(self.pool.wait_ready())
        finally:
            self.summary.engine_start_seconds.append(time.monotonic() - t0)
            self._starts_seen = len(self.pool.start_seconds)

    def _push_checks(self) -> None:
        """Each adapter's probe, first in the queue; its tasks wait for the verdict. One vLLM
        would refuse outright goes to the transformers engine (or its tasks to the base
        model) without asking vLLM."""
        for path in sorted(set(self.adapters.values())):
            trained = self._trained.get(path)
            request = None if trained is None else probe_request(trained)
            if trained is None or request is None:
                continue  # trained before probes were recorded: served unchecked
            self._unchecked |= {t for t, p in self.adapters.items() if p == path}
            refused = None
            if self.cfg.engine.backend is Backend.VLLM:
                refused = vllm_refuses(Path(path))
            if refused is None:
                self.queue.push(request, _Check(trained), (0, -2, next(self._seq)))
            elif self.cfg.adapter_fallback:
                self._check_on_fallback(trained, refused)
            else:
                self._release(trained, f"not served, base model: {refused}", refused)

    def _checked(self, check: _Check, score: float | None, error: str | None) -> None:
        """An adapter's verdict. One vLLM does not serve is checked again on the transformers
        engine, which then answers its tasks if it serves it."""
        trained, first = check.result, check.vllm_failed
        backend = Backend.HF if first is not None else self.cfg.engine.backend
        why = verdict(trained, backend.value, score, error)
        if why is not None and backend is Backend.VLLM and self.cfg.adapter_fallback:
            log.warning("vLLM does not serve %s (%s): trying transformers", trained.name, why)
            self._check_on_fallback(trained, why)
        elif why is not None:
            why = why if first is None else f"{first}; {why}"
            self._release(trained, f"not served, base model: {why}", why)
        elif first is not None:
            served = f"verified by {backend.value} (vLLM did not serve it: {first})"
            self._release(trained, served, None, on_fallback=True)
        else:
            self._release(trained, f"verified by {backend.value}", None)

    def _release(
        self, trained: TrainResult, served: str, why: str | None, *, on_fallback: bool = False
    ) -> None:
        """An adapter's tasks are released: with it (`why` None; on the transformers engine
        with `on_fallback`) or with the base model."""
        tasks = sorted(t for t, p in self.adapters.items() if p == trained.path)
        for task_id in tasks:
            self._unchecked.discard(task_id)
            self.summary.ttt.setdefault(task_id, {"steps": trained.steps}).update(served=served)
            if why is not None:
                del self.adapters[task_id]
                self.summary.ttt[task_id]["error"] = f"adapter not served: {why}"
                log.warning("task %s keeps the base model: %s", task_id, why)
            elif on_fallback:
                self._on_fallback.add(task_id)
        append_result(self.cfg.out_dir / TTT_LOG, dataclasses.replace(trained, served=served))
        self._catch_up()

    def _catch_up(self) -> None:
        """Plan the tasks just released (their adapter's verdict in) round by round up to the
        run's, so that their first views are round 1's as everyone else's were (the rounds
        label the views: which come first in the queue, what `airv report` and the benches
        read as AIRV-8); for the other tasks the earlier rounds owe nothing."""
        for round_no in range(1, max(1, self._round) + 1):
            self._push(self.plan(round_no, self._votes))

    def _check_on_fallback(self, trained: TrainResult, why: str) -> None:
        """Start the transformers engine if it is not running, and queue the probe there."""
        if self.fallback is None:
            cfg = self.cfg
            self.fallback = Pool(
                self.start_fallback_lane,
                1,
                self.fallback_queue,
                depth=cfg.inflight,
                policy=Supervision(cfg.max_restarts, cfg.stall_seconds),
                deadline=self.clock.deadline,
            )
        request = probe_request(trained)
        assert request is not None  # only checked adapters reach here
        self.fallback_queue.push(request, _Check(trained, why), (0, -2, next(self._seq)))

    def _fallback_lost(self) -> None:
        """The transformers engine is gone for good (every restart spent): its tasks and the
        adapters still waiting for it keep the base model, on vLLM."""
        fallback = self.fallback
        if fallback is None or fallback.lanes:
            return
        why = fallback.failures[-1] if fallback.failures else "it stopped"
        lost = set(self._on_fallback)
        for job in fallback.abort(lambda j: True):
            self._unowe(job)
            if isinstance(job.payload, _Check):
                path = job.payload.result.path
                lost |= {t for t, p in self.adapters.items() if p == path}
        for task_id in sorted(lost):
            self.adapters.pop(task_id, None)
            self._unchecked.discard(task_id)
            entry = self.summary.ttt.setdefault(task_id, {})
            entry["served"] = f"not served, base model: the transformers engine failed: {why}"
            log.warning("task %s keeps the base model: the transformers engine failed", task_id)
        self._on_fallback.clear()
        self.fallback = None
        self._catch_up()

    def stop_workers(self) -> None:
        """End the engines: a clean shutdown when the run is done with time to spare for one,
        else a kill of their process groups, whose time is bounded (the deadline is a wall:
        an engine still starting would not even hear a request to close)."""
        if self.pool is not None:
            self._sync_pool()
        stopping = self.summary.stopped_by is not None
        for pool in self._pools():
            pool.close(kill=stopping or self.clock.left() < CLOSE_SECONDS)
        self.pool = self.fallback = None

    def _sync_pool(self) -> None:
        """The pool's restarts and start-ups into the summary."""
        pool = self.pool
        if pool is None:
            return
        s = self.summary
        s.restarts = pool.restarts
        s.engine_failures = list(pool.failures)
        s.results_per_worker = pool.finished()
        s.engine_start_seconds.extend(pool.start_seconds[self._starts_seen :])
        self._starts_seen = len(pool.start_seconds)

    # -- the shared queue ---------------------------------------------------------------

    def _push(self, requests: Sequence[_Request]) -> int:
        now = time.monotonic()
        for r in requests:
            queue = self._queue_for(r.unit[0])
            queue.push(self._engine_request(r), r, (r.round, 0, next(self._seq)))
            self._owed[r.unit][r.aug.key] = r.cost
            self._owed_tokens[r.unit[0]] += r.cost
            self._rounds.setdefault(r.round, [0, now, now])
        if requests and self._bar is not None:
            self._bar.total += len(requests)
        return len(requests)

    def _engine_request(self, r: _Request) -> GenerateRequest:
        """What the engine is asked. A search (DFS) gets the run's deadline, a little early so
        that what it found comes back before the engine is stopped, and the task's time cap."""
        request = r.request
        if self.cfg.sampling.decode != "dfs":
            return request
        return dataclasses.replace(
            request,
            deadline=self.clock.deadline - SEARCH_DEADLINE_MARGIN,
            max_seconds=self.task_cap_s,
        )

    def _push_scores(self, votes: dict[Unit, Vote]) -> int:
        """With --vote rescore: score the candidates of test inputs whose generation work is
        done for now (nothing queued or in flight), ahead of any generation."""
        if not self.cfg.vote_mode.needs_scores:
            return 0
        ready = {u: v for u, v in votes.items() if not self._owed[u]}
        n = 0
        for item in self.rescorer.pending(ready):
            key = (item.unit, item.grid, item.aug)
            if key in self._scoring:
                continue
            self._scoring.add(key)
            request = dataclasses.replace(item.request, adapter=self.adapters.get(item.unit[0]))
            self._queue_for(item.unit[0]).push(request, item, (0, -1, next(self._seq)))
            n += 1
        return n

    def _unowe(self, job: Job[_Payload]) -> None:
        p = job.payload
        if isinstance(p, _Check):
            return
        if isinstance(p, ScoreItem):
            self._scoring.discard((p.unit, p.grid, p.aug))
            return
        cost = self._owed[p.unit].pop(p.aug.key, None)
        if cost is not None:
            self._owed_tokens[p.unit[0]] -= cost

    def _wanted(self, job: Job[_Payload]) -> bool:
        """Dispatch-time check (the pool drops what this refuses): the task has not failed or
        hit its cap, and a later round's prompt is not for a test input settled meanwhile."""
        p = job.payload
        if isinstance(p, _Check):
            return True
        task_id = p.unit[0]
        if task_id in self.failed:
            return False
        if isinstance(p, ScoreItem):
            return True
        if self._capped(task_id, owed=False):
            return False
        if p.round > 1 and self._settled(self._votes.get(p.unit)):
            done = len(self._asked(p.unit)) + len(self._owed[p.unit]) - 1
            self._skips[p.unit] = max(self._skips.get(p.unit, 0), self._target(p.round) - done)
            self.summary.settled_skips = sum(self._skips.values())
            return False
        return True

    def _last_round(self) -> int:
        cfg = self.cfg
        return 1 + -(-(cfg.max_augmentations - cfg.first_round) // cfg.per_round)

    def _refill(self, votes: dict[Unit, Vote], *, final: bool = False) -> int:
        """Plan rounds ahead while the queue holds less than the engines take in flight; with
        `final` (nothing queued or in flight), look once more at the last round (a vote that
        came unsettled) and at owed scores. Returns the requests queued."""
        assert self.pool is not None
        pushed = 0
        while len(self.queue) < self.pool.capacity and self._round < self._last_round():
            self._round += 1
            pushed += self._push(self.plan(self._round, votes))
        if final:
            pushed += self._push(self.plan(max(1, self._round), votes))
            pushed += self._push_scores(votes)
        return pushed

    # -- the loop ------------------------------------------------------------------------

    def _stream(self, votes: dict[Unit, Vote]) -> dict[Unit, Vote]:
        """Keep the engines fed until the work is done or time is up; record each result as
        it comes; vote and rewrite submission.json on a cadence (cfg.write_seconds, or
        cfg.write_every new results)."""
        pool = self.pool
        assert pool is not None
        cfg = self.cfg
        last_write, unwritten = time.monotonic(), 0
        while True:
            if self.clock.left() <= 0:
                # What the engines already returned is kept; only requests in flight are lost.
                for p in self._pools():
                    self._take(p.drain())
                self.summary.stopped_by = "deadline"
                log.warning("deadline reached: stopping the engine; the last submission stands")
                break
            self._refill(votes)
            pools = self._pools()
            queued = len(self.queue) + len(self.fallback_queue)
            if not queued and all(p.idle() for p in pools):
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
                self._release_adapters(votes)
                last_write, unwritten = now, 0
                if self._bar is not None:
                    self._bar.set_postfix_str(self._postfix(votes))
            pool.check()  # every restart spent and no engine left: EngineError
            self._fallback_lost()
        return self.write()

    def _take(self, done: Sequence[Done[_Payload]]) -> int:
        """Record finished results: completions to the predictions log, scores to the scores
        log. Returns how many."""
        gens: list[tuple[_Request, Sequence[Completion], float]] = []
        scores: list[tuple[ScoreItem, float, float]] = []
        for d in done:
            if not d.result.finished:
                continue  # the pipeline asks for no partial results
            self._unowe(d.job)
            p = d.job.payload
            if isinstance(p, _Check):
                self._checked(p, d.result.score, d.result.error)
            elif d.result.error is not None:
                self._fail(p.unit[0], f"the engine refused a request: {d.result.error}")
            elif isinstance(p, ScoreItem):
                scores.append((p, float(d.result.score or 0.0), d.seconds))
            else:
                gens.append((p, d.result.completions, d.seconds))
        if gens:
            self._record(gens)
        if scores:
            self.rescorer.record([i for i, _, _ in scores], [v for _, v, _ in scores])
            self.summary.scoring_requests += len(scores)
            self.summary.scoring_seconds += sum(sec for _, _, sec in scores)
        return len(gens) + len(scores)

    def _record(self, items: Sequence[tuple[_Request, Sequence[Completion], float]]) -> None:
        """Log the completions of finished requests (`seconds`: each request's share of
        engine time); stop a task that has reached its cap."""
        now = time.monotonic()
        new: list[Prediction] = []
        for req, completions, seconds in items:
            task_id = req.unit[0]
            self.summary.add_prompt(task_id, len(req.prompt.token_ids), seconds)
            tokens = len(req.prompt.token_ids) + sum(len(c.token_ids) for c in completions)
            self._charge(task_id, seconds, tokens)
            for c in completions:
                new.append(self._prediction(req, c, seconds / max(1, len(completions))))
            if not completions:
                self._empty[req.unit].add(req.aug.key)
            stats = self._rounds.setdefault(req.round, [0, now, now])
            stats[0] += 1
            stats[2] = now
        with self._signals.held():  # the log and the run's memory of it agree
            append_predictions(self.cfg.log_path, new)
            for p in new:
                self.predictions[(p.task_id, p.test_index)].append(p)
                self.summary.add_prediction(p)
        if self._bar is not None:
            self._bar.update(len(items))
        for task_id in {req.unit[0] for req, _, _ in items}:
            if task_id not in self._cut and self._capped(task_id, owed=False):
                self._stop_task(task_id)

    def _stop_task(self, task_id: TaskId) -> None:
        """A task at its cap: its queued and in-flight prompts are taken back."""
        self._cut.add(task_id)
        gone = [
            job
            for pool in self._pools()
            for job in pool.abort(
                lambda j: isinstance(j.payload, _Request) and j.payload.unit[0] == task_id
            )
        ]
        for job in gone:
            self._unowe(job)
        if gone:
            log.info("task %s reached its cap: %d prompt(s) dropped", task_id, len(gone))

    def _prediction(self, req: _Request, c: Completion, seconds: float) -> Prediction:
        parsed = parse_answer(c.text, self.prompt_format)
        grid: Grid | None = None
        reject: str | None = None
        if isinstance(parsed, Rejection):
            reject = str(parsed.reason)
        else:
            grid = req.aug.reverse_grid(parsed)
        task_id, test_index = req.unit
        return Prediction(
            task_id=task_id,
            test_index=test_index,
            aug=req.aug.key,
            text=c.text,
            grid=grid,
            reject=reject,
            logprob=c.logprob,
            tokens=len(c.token_ids),
            prompt_tokens=len(req.prompt.token_ids),
            finish=c.finish_reason,
            round=req.round,
            seconds=seconds,
        )

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
            self._signals = signals
            try:
                if self.task_ids and self.clock.left() > 0:
                    _ = self.prompt_format  # loads and checks the tokenizer: a usage error now
                if self.cfg.ttt.enabled:
                    self.finetune()
                if self.clock.left() > 0:
                    self.start_workers()
                    votes = self._stream(votes)
            except WorkerTimeout:
                self.summary.stopped_by = "deadline"
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
                self._release_adapters(votes, final=True)
            if self.summary.stopped_by is None and signals.received is not None:
                self.summary.stopped_by = signals.received
        if self.summary.stopped_by is None:
            self.summary.stopped_by = "deadline" if self.clock.left() <= 0 else "done"
        self._finish_summary(votes)
        return exit_code

    def release(self) -> None:
        """Unlock the output folder (execute does at its end)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _target(self, round_no: int) -> int:
        cfg = self.cfg
        return min(cfg.first_round + (round_no - 1) * cfg.per_round, cfg.max_augmentations)

    def _postfix(self, votes: dict[Unit, Vote]) -> str:
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
        # Rounds overlap: each one's span runs from its planning to its last completion.
        for r, (n, first, last) in sorted(self._rounds.items()):
            if n:
                s.add_round(r, last - first, int(n))
        s.failed_tasks = dict(self.failed)
        for unit in self.units:
            preds = self.predictions.get(unit, [])
            if preds and unit not in votes:
                s.failed_tasks.setdefault(unit[0], "every answer failed to parse")
        s.skipped_tasks = len(self.challenges.tasks) - len(self.task_ids)
        s.answered_test_inputs = len(votes)
        s.test_inputs = sum(self.challenges.n_tests.values())
        s.write(self.cfg.summary_path)


class _StageProgress:
    """The fine-tuning stage as the user sees it: a bar of adapters (with the progress bar on),
    and a log line per adapter either way (what a hidden Kaggle run keeps): steps, seconds,
    steps per second over the stage, and the stage's time left."""

    def __init__(self, enabled: bool, stage_end: float):
        self.enabled = enabled
        self.stage_end = stage_end
        self.bar: Any = None
        self.steps = 0
        self.seconds = 0.0

    def __enter__(self) -> _StageProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, result: TrainResult, done: int, total: int) -> None:
        self.steps += result.steps
        self.seconds += result.seconds
        rate = self.steps / self.seconds if self.seconds else 0.0
        left = format_duration(self.stage_end - time.monotonic())
        if self.enabled:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc="adapters", unit="adapter", dynamic_ncols=True)
            self.bar.update(1)
            self.bar.set_postfix_str(f"{rate:.1f} steps/s | stage left {left}")
        outcome = f"{result.steps} steps in {result.seconds:.1f}s"
        if result.error is not None:
            outcome = f"failed: {result.error}"
        log.info(
            "adapter %d/%d (%s): %s; %.1f steps/s, stage left %s",
            done, total, result.name, outcome, rate, left,
        )  # fmt: skip


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
