"""Runs for tests: one fixed-workload RunConfig, and a budget that counts from the run's
creation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airv.core.augment import ViewPolicy
from airv.engines.config import Backend, Dtype, EngineConfig
from airv.run.budget import Clock
from airv.run.config import RunConfig
from airv.run.pipeline import Run
from airv.run.schedule import ViewSchedule


def engine_config(model: Path, backend: Backend = Backend.HF, **kw: Any) -> EngineConfig:
    """The tests' engine: float32 (what CPU runs), eager (no compile on start), 1024 tokens."""
    base: dict[str, Any] = dict(dtype=Dtype.FLOAT32, max_model_len=1024, enforce_eager=True)
    return EngineConfig(model=model, backend=backend, **{**base, **kw})


def workload(
    challenges: Path,
    out: Path,
    engine: EngineConfig,
    *,
    n_views: int = 8,
    per_round: int | None = None,
    **kw: Any,
) -> RunConfig:
    """A run with a fixed workload: `n_views` views per test input, in uniform rounds of
    `per_round` (default: all in round 1), with no settle rule, so every view runs, in the
    rounds' order (the gain schedule's tests ask for it). D8 views only (colours
    kept: reversed answers stay D8 images of the model's), no progress bar, no reserve, and a
    budget long enough never to cut it (fresh_run counts it from the run's creation)."""
    first = per_round or n_views
    base: dict[str, Any] = dict(
        first_round=first,
        per_round=first,
        max_augmentations=n_views,
        settle_margin=0,
        schedule=ViewSchedule.UNIFORM,
        views=ViewPolicy(permute_colours=False),
        progress=False,
        time_budget=3600,
        reserve=0,
    )
    return RunConfig(challenges=challenges, out_dir=out, engine=engine, **{**base, **kw})


def fresh_run(cfg: RunConfig, **kwargs: Any) -> Run:
    """A Run whose budget counts from now. Run's own default counts from the process's start,
    as a real run's must (model loading is part of Kaggle's limit); in the test process that
    would make a test's outcome depend on how long the suite has already run."""
    return Run(cfg, clock=Clock.for_run(cfg), **kwargs)
