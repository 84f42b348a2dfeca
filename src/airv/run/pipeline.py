"""The anytime pipeline: challenge file + model directory -> submission.json, under a deadline.

Work runs in rounds. Round 1 gives every test input a few augmentations; later rounds add more
where time remains and the vote is not settled. Each round is cut into engine calls of at most
`batch_prompts` prompts; after every call the completions are appended to the predictions log,
the votes recomputed and submission.json rewritten atomically. So a valid, improving submission
exists from the first minute, and a deadline, crash or hang costs only the call in flight.

The engine lives in worker processes (one per device); this process owns the clock.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airv.adapt.config import TTTMode
from airv.adapt.lora import check_adapter
from airv.adapt.stage import ADAPTERS_DIR, TTT_LOG, StageJob, run_stage
from airv.core.augment import Augmentation, plan_views
from airv.core.errors import EngineError
from airv.core.formats import Rejection
from airv.core.prompt_format import PromptFormat, parse_answer
from airv.core.prompts import (
    FittedPrompt,
    PromptTooLong,
    answer_token_ids,
    fit_prompt,
    for_tokenizer,
)
from airv.core.submission import build_submission, write_submission
from airv.core.tasks import Challenges, Task, load_challenges
from airv.core.types import Grid, TaskId, Unit
from airv.core.voting import Vote, vote
from airv.engines.base import Completion, GenerateRequest
from airv.engines.worker import EngineWorker, Faults, WorkerDied, WorkerTimeout, fan_out
from airv.run.budget import Clock, format_duration, process_start_time
from airv.run.config import ENGINE_START_SECONDS, RunConfig
from airv.run.predictions import (
    Prediction,
    append_predictions,
    group_candidates,
    read_predictions,
)
from airv.run.rescore import Rescorer
from airv.run.summary import RunSummary

log = logging.getLogger(__name__)


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


class Run:
    """State of one run: candidates so far, per-task accounting, workers."""

    def __init__(self, cfg: RunConfig, *, faults: Faults | None = None, clock: Clock | None = None):
        self.cfg = cfg
        self.faults = faults
        self.clock = clock or Clock(process_start_time(), cfg.time_budget, cfg.reserve_seconds)
        self.challenges: Challenges = load_challenges(cfg.challenges, strict=False)
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        self.summary = RunSummary(
            challenges=str(cfg.challenges.resolve()),
            tasks=len(self.challenges.task_ids),
            rejected_tasks=dict(self.challenges.rejected),
        )
        ids = [t for t in self.challenges.task_ids if t in self.challenges.tasks]
        self.task_ids = ids[: cfg.max_tasks] if cfg.max_tasks is not None else ids
        self.units: list[Unit] = [
            (t, i) for t in self.task_ids for i in range(len(self.challenges.tasks[t].test))
        ]
        self.predictions: dict[Unit, list[Prediction]] = defaultdict(list)
        self.failed: dict[TaskId, str] = {}  # task id -> why it gets the fallback
        self.workers: list[EngineWorker] = []
        self.worker_pids: list[int] = []  # every worker ever started (each leads its own group)
        self.restarts = 0
        self._tokenizer: Any = None
        self._format: PromptFormat | None = None
        self.rescorer = Rescorer(cfg, self.challenges.tasks, self.fit, self.answer_ids)
        self.adapters: dict[TaskId, str] = {}  # test-time fine-tuned adapters by task
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
        self.summary.resumed_predictions = len(kept)
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

    def _spent(self) -> dict[TaskId, tuple[float, int]]:
        """Engine seconds and tokens (prompt + completion) per task, resumed work included."""
        spent: dict[TaskId, tuple[float, int]] = {}
        for (task_id, _), preds in self.predictions.items():
            s, t = spent.get(task_id, (0.0, 0))
            spent[task_id] = (
                s + sum(p.seconds for p in preds),
                t + sum(p.prompt_tokens + p.tokens for p in preds),
            )
        return spent

    def _capped(self, spent: tuple[float, int]) -> bool:
        seconds, tokens = spent
        cap_s, cap_t = self.task_cap_s, self.cfg.task_cap_tokens
        return (cap_s is not None and seconds >= cap_s) or (cap_t is not None and tokens >= cap_t)

    def _settled(self, v: Vote | None) -> bool:
        m = self.cfg.settle_margin
        return m > 0 and v is not None and v.margin >= m and len(v.tallies) >= 1

    # -- planning ------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.cfg.engine.model)
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
        """The prompts still owed to reach this round's target augmentations per test input."""
        cfg = self.cfg
        target = self._target(round_no)
        requests: list[_Request] = []
        spent = self._spent()
        for unit in self.units:
            task_id = unit[0]
            if task_id in self.failed or self._capped(spent.get(task_id, (0.0, 0))):
                continue
            done = {p.aug for p in self.predictions.get(unit, [])}
            if len(done) >= target:
                continue
            if round_no > 1 and self._settled(votes.get(unit)):
                # What this round would have added; earlier rounds counted their own share.
                self.summary.settled_skips += target - max(len(done), self._target(round_no - 1))
                continue
            try:
                requests.extend(self._plan_unit(unit, target - len(done), done, round_no))
            except Exception as exc:  # one task's bug must not cost the others their answers
                self._fail(task_id, f"{type(exc).__name__}: {exc}")
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
            out_dir=cfg.out_dir / ADAPTERS_DIR,
            # Default per-task cap: three fair shares, so one slow task cannot eat the stage.
            task_cap=ttt.task_cap_seconds or 3 * fair,
        )
        devices: tuple[str | None, ...] = cfg.devices or (None,)
        log.info("test-time fine-tuning %d task(s), %s", len(tasks), ttt.mode.value)
        report = run_stage(
            tasks, job, deadline=stage_end, log_path=cfg.out_dir / TTT_LOG, devices=devices
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
        bad: dict[str, str] = {}
        for task_id, path in report.adapters.items():
            why = bad.get(path) or check_adapter(Path(path), ttt.rank)
            if why is None:
                self.adapters[task_id] = path
                continue
            bad[path] = why
            log.warning("task %s keeps the base model: %s", task_id, why)
            entry = self.summary.ttt.setdefault(task_id, {"steps": 0, "seconds": 0.0})
            entry["error"] = f"adapter not served: {why}"

    # -- engine --------------------------------------------------------------------------

    def start_workers(self) -> None:
        cfg = self.cfg
        n_gpus = 1 if cfg.devices else 0
        engine = cfg.engine
        if self.adapters:  # serve the adapters test-time fine-tuning trained
            engine = dataclasses.replace(engine, max_lora_rank=cfg.ttt.rank)
        self.workers = [
            EngineWorker(
                engine,
                cfg.sampling,
                device=cfg.devices[i] if cfg.devices else None,
                n_gpus=n_gpus,
                faults=self.faults if self.faults and self.restarts < self.faults.lives else None,
                name=f"worker-{i}",
            )
            for i in range(cfg.workers)
        ]
        self.worker_pids.extend(w.pid for w in self.workers if w.pid is not None)
        t0 = time.monotonic()
        for w in self.workers:
            w.wait_ready(self.clock.deadline)
        self.summary.engine_start_seconds.append(time.monotonic() - t0)

    def stop_workers(self) -> None:
        for w in self.workers:
            w.close()
        self.workers = []

    def run_batch(self, batch: Sequence[_Request]) -> None:
        t0 = time.monotonic()
        for share, results in fan_out(
            self.workers,
            "generate",
            batch,
            request_of=lambda r: r.request,
            task_of=lambda r: r.unit[0],
            cost_of=lambda r: r.cost,
            deadline=self.clock.deadline,
        ):
            self._record(share, results, time.monotonic() - t0)

    def _record(
        self, share: Sequence[_Request], results: Sequence[Sequence[Completion]], wall: float
    ) -> None:
        total_cost = (
            sum(
                len(r.prompt.token_ids) + sum(len(c.token_ids) for c in cs)
                for r, cs in zip(share, results, strict=True)
            )
            or 1
        )
        new: list[Prediction] = []
        for req, completions in zip(share, results, strict=True):
            cost = len(req.prompt.token_ids) + sum(len(c.token_ids) for c in completions)
            seconds = wall * cost / total_cost
            self.summary.add_prompt(req.unit[0], len(req.prompt.token_ids), seconds)
            for c in completions:
                new.append(self._prediction(req, c, seconds / len(completions)))
        append_predictions(self.cfg.log_path, new)
        for p in new:
            self.predictions[(p.task_id, p.test_index)].append(p)
            self.summary.add_prediction(p)

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

    # -- the loop ------------------------------------------------------------------------

    def execute(self) -> int:
        """Run rounds until the work is done or time is up. Returns the exit code."""
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
        try:
            if self.cfg.ttt.enabled:
                self.finetune()
            self._start_with_retry()
            round_no = 1
            while self.clock.left() > 0:
                requests = self.plan(round_no, votes)
                if not requests:
                    if self._target(round_no) >= self.cfg.max_augmentations:
                        break
                    round_no += 1
                    continue
                votes, finished = self._run_round(round_no, requests)
                if finished:
                    votes = self._rescore(votes)
                    round_no += 1
            votes = self._rescore(votes)  # a resumed run may have candidates not yet scored
        except WorkerTimeout:
            self.summary.stopped_by = "deadline"
            log.warning("deadline reached: stopping the engine; the last submission stands")
        except EngineError as exc:
            self.summary.stopped_by = "engine failure"
            self.summary.error = str(exc).splitlines()[0]
            log.error("engine failed after %d restart(s): %s", self.restarts, exc)
            exit_code = exc.exit_code
        finally:
            self.stop_workers()
            votes = self.write()
        if self.summary.stopped_by is None:
            self.summary.stopped_by = "deadline" if self.clock.left() <= 0 else "done"
        self._finish_summary(votes)
        return exit_code

    def _rescore(self, votes: dict[Unit, Vote]) -> dict[Unit, Vote]:
        """With --vote rescore: score the owed candidates (one engine call), then vote again."""
        if not self.cfg.vote_mode.needs_scores or self.clock.left() <= 0:
            return votes
        items = self.rescorer.pending(votes)
        if not items:
            return votes
        t0 = time.monotonic()
        for share, values in fan_out(
            self.workers,
            "score",
            items,
            request_of=lambda i: dataclasses.replace(
                i.request, adapter=self.adapters.get(i.unit[0])
            ),
            task_of=lambda i: i.unit[0],
            cost_of=lambda i: i.cost,
            deadline=self.clock.deadline,
        ):
            self.rescorer.record(share, values)
        self.summary.scoring_requests += len(items)
        self.summary.scoring_seconds += time.monotonic() - t0
        return self.write()

    def _target(self, round_no: int) -> int:
        cfg = self.cfg
        return min(cfg.first_round + (round_no - 1) * cfg.per_round, cfg.max_augmentations)

    def _start_with_retry(self) -> None:
        try:
            self.start_workers()
        except WorkerTimeout:
            raise
        except WorkerDied as exc:
            self._restart(exc)

    def _restart(self, exc: WorkerDied) -> None:
        """Restart the engine, up to cfg.max_restarts times per run while time remains; one
        failure more ends the run."""
        self.stop_workers()
        if self.restarts >= self.cfg.max_restarts or self.clock.left() <= 0:
            raise exc
        self.restarts += 1
        self.summary.restarts = self.restarts
        log.warning(
            "engine died (%s); restart %d of at most %d",
            str(exc).splitlines()[0],
            self.restarts,
            self.cfg.max_restarts,
        )
        self.start_workers()

    def _run_round(self, round_no: int, requests: list[_Request]) -> tuple[dict[Unit, Vote], bool]:
        """Run one round's requests in engine calls; False if the engine had to be restarted
        (the round is then planned again: what was logged is not asked for twice)."""
        t0 = time.monotonic()
        size = self.cfg.batch_prompts * len(self.workers)
        bar = _progress(self.cfg.progress, len(requests), round_no)
        votes: dict[Unit, Vote] = {}
        try:
            for start in range(0, len(requests), size):
                if self.clock.left() <= 0:
                    raise WorkerTimeout("deadline reached between engine calls")
                batch = requests[start : start + size]
                try:
                    self.run_batch(batch)
                except WorkerDied as exc:
                    self._restart(exc)
                    return self.write(), False
                votes = self.write()
                if bar is not None:
                    bar.update(len(batch))
                    bar.set_postfix_str(self._postfix(votes))
        finally:
            if bar is not None:
                bar.close()
            self.summary.add_round(round_no, time.monotonic() - t0, len(requests))
        return votes, True

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
        s.failed_tasks = dict(self.failed)
        for unit in self.units:
            preds = self.predictions.get(unit, [])
            if preds and unit not in votes:
                s.failed_tasks.setdefault(unit[0], "every answer failed to parse")
        s.skipped_tasks = len(self.challenges.tasks) - len(self.task_ids)
        s.answered_test_inputs = len(votes)
        s.test_inputs = sum(self.challenges.n_tests.values())
        s.write(self.cfg.summary_path)


def _progress(enabled: bool, total: int, round_no: int) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"round {round_no}", unit="prompt", dynamic_ncols=True)


def run(cfg: RunConfig, *, faults: Faults | None = None, clock: Clock | None = None) -> int:
    """Run the pipeline; returns the process exit code. submission.json exists whatever happens
    after the challenge file has been read."""
    r = Run(cfg, faults=faults, clock=clock)
    code = r.execute()
    print(r.summary.render())
    return code
