"""Test-time fine-tuning in a run: its tasks' adapters trained, then answered, in waves whose
adapters fit the scratch limit (adapt.waves; one wave when they all fit).

Each wave's share of the time left is its share of the tasks left, and of it the stage's share
goes to training. Between waves the engines are stopped (on one device the trainer needs the
memory the engine holds) and started again: each wave after the first costs an engine
start-up. airv.run.simulate walks the same split on its virtual clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from airv.adapt.adapters import Adapters
from airv.adapt.stage import StageJob
from airv.adapt.waves import adapter_bytes, wave_size
from airv.core.tasks import Task
from airv.core.types import TaskId, Unit
from airv.core.units import format_size
from airv.core.voting import Vote
from airv.engines.model import weight_shapes
from airv.run.budget import Clock
from airv.run.config import RunConfig
from airv.run.summary import RunSummary

log = logging.getLogger(__name__)

Votes = dict[Unit, Vote]


def adapt_and_answer(
    cfg: RunConfig,
    clock: Clock,
    summary: RunSummary,
    adapters: Adapters,
    tasks: Mapping[TaskId, Task],
    todo: list[TaskId],
    votes: Votes,
    *,
    answer: Callable[[Votes, float | None], Votes],
    stop: Callable[[], None],
) -> Votes:
    """Train and answer `todo` in waves. `answer(votes, until)` starts the engines and answers
    until the work is done or `until` (a wave's end; None: the deadline); `stop` stops them
    between waves. Returns the last votes."""
    ttt = cfg.ttt
    if cfg.engine.model is None or not todo:  # nothing to train: the engines alone
        return answer(votes, None)
    shapes = weight_shapes(cfg.engine.model)
    per_adapter = adapter_bytes(shapes, ttt, dtype_bytes=2 if cfg.devices else 4)
    limit = cfg.scratch_bytes()
    stage_seconds = cfg.stage_seconds
    adapters.waiting |= set(todo)
    n_tasks, start = len(todo), clock.start
    while todo and clock.left() > 0:
        size = wave_size(max(per_adapter, adapters.largest), limit, ttt)
        wave, todo = (todo, []) if size is None else (todo[:size], todo[size:])
        if todo or summary.waves:
            log.info(
                "wave %d: %d task(s), %d after it (adapters of about %s each, %s at once)",
                len(summary.waves) + 1, len(wave), len(todo),
                format_size(per_adapter), format_size(limit),
            )  # fmt: skip
        summary.waves.append(len(wave))
        # Each task's training gets its share of the stage's seconds (the first wave's
        # counted from the clock's start, as a run without waves counts its stage).
        stage_end = min(clock.deadline, start + stage_seconds * len(wave) / n_tasks)
        finetune(cfg, adapters, [tasks[t] for t in wave], stage_end)
        adapters.waiting -= set(wave)
        if clock.left() <= 0:
            break
        # The wave answers in its tasks' share of the time left, less the training the
        # later waves are owed; the last wave answers until the deadline.
        wave_end = None
        if todo:
            owed = stage_seconds * len(todo) / n_tasks
            share = len(wave) / (len(wave) + len(todo))
            wave_end = time.monotonic() + max(0.0, clock.left() - owed) * share
        votes = answer(votes, wave_end)
        if todo:
            stop()
            adapters.end_wave(wave)
        start = time.monotonic()
    return votes


def finetune(cfg: RunConfig, adapters: Adapters, tasks: Sequence[Task], stage_end: float) -> None:
    """Train these tasks' adapters by `stage_end` (processes of their own, ended before the
    engine starts); a task whose adapter is not ready keeps the base model."""
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
    adapters.train(
        tasks, job, deadline=stage_end, devices=cfg.devices or (None,), progress=cfg.progress
    )
