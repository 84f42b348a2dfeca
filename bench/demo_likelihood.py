"""The likelihood of a task's demonstrations as a sign that some view will answer it: each
task's last train output scored given the pair before it (one prefill-only request a task),
against whether any recorded view answers its test inputs right; and what that scoring costs
beside generating each test input's first view on the same warm engine. Part of
bench.schedule_replay: a first-round signal for the gain schedule that needs no view (README,
*Where the seconds go*).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from airv.core.prompts import PromptTooLong
from airv.core.tasks import Task
from airv.core.types import TaskId
from airv.engines.base import GenerateRequest, scores_of
from airv.engines.config import Decoding, EngineConfig
from airv.engines.pool import run_lane
from airv.engines.worker import EngineWorker
from airv.run.config import RunConfig
from airv.run.promise import Scored, demonstration
from airv.run.prompting import Prompter
from airv.run.replay import Recording
from bench.common import Solutions
from bench.harness import NO_DEADLINE, blocking
from bench.view_worth import unanswerable

REPEATS = 3  # the scoring pass and the first views, timed in turn this many times


@dataclass(frozen=True)
class Likelihood:
    loglik: dict[TaskId, float]  # the last train output's log-likelihood given the pair before
    score_seconds: float  # the whole pass (median of REPEATS)
    view_seconds: float  # each test input's first view, generated (median of REPEATS)
    views: int
    tokens: dict[TaskId, int] = field(default_factory=dict)  # each task's request


def measure(worker: EngineWorker, cfg: RunConfig, tasks: Sequence[Task]) -> Likelihood:
    prompter = Prompter(cfg)
    scored = [
        (t.id, r)
        for t in tasks
        if (r := demonstration(t, prompter.fit, prompter.answer_ids)) is not None
    ]
    views = []
    for t in tasks:
        for i in range(len(t.test)):
            fitted = prompter.fit(t, i)
            if not isinstance(fitted, PromptTooLong):
                views.append(GenerateRequest(tuple(fitted.token_ids), fitted.max_answer_tokens))
    requests = [r for _, r in scored]

    def score() -> list[float]:
        return scores_of(run_lane(worker, requests, time.monotonic() + NO_DEADLINE))

    score()  # the first calls pay one-off warm-up
    blocking(worker, views[:2])
    score_times, view_times = [], []
    values: list[float] = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        values = score()
        score_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        blocking(worker, views)
        view_times.append(time.perf_counter() - t0)
    return Likelihood(
        {task_id: v for (task_id, _), v in zip(scored, values, strict=True)},
        statistics.median(score_times),
        statistics.median(view_times),
        len(views),
        {t: r.tokens for t, r in scored},
    )


def auc(
    loglik: Mapping[TaskId, float],
    recordings: Mapping[int, Recording],
    solutions: Solutions,
) -> float:
    """The chance that a test input some recorded view answers right has a higher likelihood
    than one that none does (each seed's recording, each test input; ties count half)."""
    right: list[float] = []
    never: list[float] = []
    for recording in recordings.values():
        dead = unanswerable(recording, solutions)
        for unit in recording.in_order:
            if unit[0] in loglik:
                (never if unit in dead else right).append(loglik[unit[0]])
    if not right or not never:
        return float("nan")
    wins = sum((r > n) + 0.5 * (r == n) for r in right for n in never)
    return wins / (len(right) * len(never))


def render(lk: Likelihood, area: float, seeds: int) -> list[str]:
    ratio = lk.score_seconds / lk.view_seconds
    return [
        "",
        "## A first-round signal that needs no view",
        "",
        f"Each task's last train output scored given the pair before it (one prefill-only request "
        f"a task, {len(lk.loglik)} in all): its log-likelihood tells the test inputs some "
        f"recorded view answers right from those none does with an AUC of {area:.2f} over the "
        f"{seeds} recordings. On one warm engine the pass took {lk.score_seconds:.2f} s against "
        f"{lk.view_seconds:.2f} s for each test input's first view ({lk.views} views; medians "
        f"of {REPEATS}): {ratio:.2f} of their cost.",
    ]


def promises(lk: Likelihood, recording: Recording) -> dict[TaskId, Scored]:
    """The promises a gain run would have scored before this recording's views, in its
    seconds: the pass at its measured share of every test input's first view, each task's
    part in proportion to its request's tokens (a prefill-only request costs by its tokens;
    spread by each task's first view, whose seconds are a share of a batch, a sample of eight
    tasks read the pass's rate 0.34 to 1.15 times, and the replay asked a pass that cost 28%
    of a budget of 10% of the work). Every task then has the same rate, so the replay's sample
    reads it exactly, where a real run's overstated it 1.2 to 1.3 times: a replay asks the
    pass a little more readily than a run does."""
    first = 0.0
    for unit, augs in recording.in_order.items():
        first += sum(p.seconds for p in recording.by_aug[(unit, augs[0])])
    whole = first * lk.score_seconds / lk.view_seconds
    tokens = {t: lk.tokens.get(t, 0) for t in lk.loglik}
    total = sum(tokens.values()) or 1
    return {t: Scored(lk.loglik[t], whole * n / total, n) for t, n in tokens.items()}


def section(
    engine: EngineConfig,
    challenges: Path,
    tasks: Sequence[Task],
    recordings: Mapping[int, Recording],
    solutions: Solutions,
) -> tuple[list[str], Likelihood]:
    """The report's section and what it measured, on a worker of its own, started and closed
    here."""
    worker = EngineWorker(engine, Decoding())
    try:
        cfg = RunConfig(challenges=challenges, out_dir=challenges.parent, engine=engine)
        lk = measure(worker, cfg, tasks)
    finally:
        worker.close()
    return render(lk, auc(lk.loglik, recordings, solutions), len(recordings)), lk
