"""Section 2 of bench.run_bench: the cost of everything that is not the model. Each step
driven directly on synthetic completions, and the whole pipeline with an engine that answers
instantly from the solutions."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from airv.core.augment import ViewPolicy, plan_augmentations
from airv.core.formats import parse_grid
from airv.core.prompt_format import DEFAULT_PRESET, load_preset
from airv.core.prompts import Tokenizer, estimate_answer_tokens, prompt_token_ids, render_prompt
from airv.core.submission import build_submission, write_submission
from airv.core.tasks import Task, dump_challenges, load_challenges
from airv.core.types import Grid, TaskId, Unit
from airv.core.voting import Candidate, vote
from airv.run.config import RunConfig
from airv.run.predictions import Prediction, append_predictions
from bench.common import Timers, table
from bench.harness import NO_DEADLINE, Bench, ModelKind, Section
from bench.runs import SyntheticRun, check_done, synthetic_answer


def overhead_steps(
    tasks: Sequence[Task],
    solutions: Mapping[TaskId, Sequence[Grid]],
    augs: int,
    tokenizer: Tokenizer,
    out_dir: Path,
    seed: int,
) -> dict[str, object]:
    """Drive each non-model step directly on synthetic completions; seconds per step."""
    fmt = load_preset(DEFAULT_PRESET)
    spec = fmt.grid
    rng = np.random.default_rng(seed)
    timers = Timers()
    candidates: dict[Unit, list[Candidate]] = {}
    log = out_dir / "predictions.jsonl"
    prompts = 0
    for task in tasks:
        for i in range(len(task.test)):
            t0 = time.perf_counter()
            plan = plan_augmentations(task, augs, rng)
            views = [aug.apply_task(task) for aug in plan]
            timers.add("augment", t0)
            records = []
            for aug, view in zip(plan, views, strict=True):
                prompts += 1
                t0 = time.perf_counter()
                estimate_answer_tokens(view, i, fmt, tokenizer)
                timers.add("budget", t0)
                t0 = time.perf_counter()
                text = render_prompt(view, i, fmt, tokenizer)
                timers.add("encode", t0)
                t0 = time.perf_counter()
                prompt_token_ids(text, fmt, tokenizer)
                timers.add("tokenize", t0)
                answer = synthetic_answer(solutions[task.id][i], aug, spec, rng)
                t0 = time.perf_counter()
                parsed = parse_grid(answer, spec)
                timers.add("parse", t0)
                grid = None
                if not isinstance(parsed, tuple):
                    reject: str | None = str(parsed.reason)
                else:
                    reject = None
                    t0 = time.perf_counter()
                    grid = aug.reverse_grid(parsed)
                    timers.add("reverse", t0)
                    cand = Candidate(grid, aug.key, -float(rng.random()), len(answer) + 1)
                    candidates.setdefault((task.id, i), []).append(cand)
                records.append(
                    Prediction(task.id, i, aug.key, answer, grid, reject, -1.0, 1, 1, "stop", 1, 0)
                )
            t0 = time.perf_counter()
            append_predictions(log, records)
            timers.add("log", t0)
    t0 = time.perf_counter()
    votes = {u: v for u, c in candidates.items() if (v := vote(c)) is not None}
    timers.add("vote", t0)
    challenges_path = out_dir / "challenges.json"
    dump_challenges(tasks, challenges_path)
    challenges = load_challenges(challenges_path, strict=True)
    t0 = time.perf_counter()
    answers = {u: (v.attempt_1, v.attempt_2) for u, v in votes.items()}
    write_submission(out_dir / "submission.json", build_submission(challenges, answers))
    timers.add("write", t0)
    total = sum(timers.seconds.values())
    return {
        "tasks": len(tasks),
        "prompts": prompts,
        "seconds": dict(timers.seconds),
        "total_seconds": total,
        "ms_per_task": 1000 * total / len(tasks),
        "ms_per_prompt": 1000 * total / prompts,
    }


def overhead_pipeline(
    b: Bench, tasks: Sequence[Task], augs: int, out_dir: Path
) -> dict[str, object]:
    """The whole pipeline on `tasks` with the synthetic engine; what is not the engine is
    overhead (the synthetic engine's own time is subtracted)."""
    _, solutions = b.arc()
    challenges_path = out_dir / "challenges.json"
    dump_challenges(tasks, challenges_path)
    cfg = RunConfig(
        challenges=challenges_path,
        out_dir=out_dir / "run",
        engine=b.engine_config(ModelKind.RANDOM),
        first_round=min(8, augs),
        max_augmentations=augs,
        settle_margin=0,  # every test input gets all `augs` prompts
        time_budget=NO_DEADLINE,
        reserve=0.0,
        progress=False,
        views=ViewPolicy(seed=b.seed),
    )
    t0 = time.perf_counter()
    r = SyntheticRun(cfg, solutions=solutions, seed=b.seed)
    check_done(r.run, r.execute())
    wall = time.perf_counter() - t0
    fake = r.timers.seconds["synthetic engine"]
    overhead = wall - fake
    return {
        "tasks": len(tasks),
        "prompts": r.summary.prompts,
        "writes": r.summary.writes,
        "wall_seconds": wall,
        "overhead_seconds": overhead,
        "ms_per_task": 1000 * overhead / len(tasks),
        "ms_per_prompt": 1000 * overhead / max(1, r.summary.prompts),
        "seconds": dict(r.timers.seconds),
        "rejections": dict(r.summary.rejections),
    }


def measure(b: Bench) -> dict[str, object]:
    s = b.settings
    tasks, solutions = b.arc()
    tok = b.tokenizer()
    steps, pipeline = [], []
    for n in s.overhead_tasks:
        chosen = tasks[:n]
        d = b.workdir / f"overhead-{n}"
        d.mkdir()
        # Per step the cost is a loop over prompts, linear by construction: the smallest size
        # tells it; the whole pipeline (whose writes repeat) runs at every size.
        if n == s.overhead_tasks[0]:
            steps.append(overhead_steps(chosen, solutions, s.overhead_augs, tok, d, b.seed))
        pipeline.append(overhead_pipeline(b, chosen, s.overhead_augs, d))
    lo, hi = pipeline[0], pipeline[-1]
    ms_task = [p["ms_per_task"] for p in pipeline]
    # What a run's model time per task must be for the overhead to stay under 2% of the run.
    worst = max(float(m) for m in ms_task)  # type: ignore[arg-type]
    return {
        "augmentations": s.overhead_augs,
        "tokenizer": "tiny model's (one token per character)",
        "steps": steps,
        "pipeline": pipeline,
        "growth_overhead_ratio": float(hi["overhead_seconds"])  # type: ignore[arg-type]
        / float(lo["overhead_seconds"]),  # type: ignore[arg-type]
        "growth_tasks_ratio": int(hi["tasks"]) / int(lo["tasks"]),  # type: ignore[call-overload]
        "model_ms_per_task_for_2_percent": worst * 49,
    }


def render(o: Mapping[str, Any]) -> list[str]:
    steps = list(o["steps"][0]["seconds"])
    return [
        "## 2. Overhead of everything that is not the model",
        "",
        f"{o['augmentations']} augmentations per test input, real ARC tasks, synthetic "
        "completions (right half the time, one cell off 40%, unparseable 10%); "
        f"tokenizer: {o['tokenizer']}.",
        "",
        "Whole pipeline (`Run` with an instant synthetic engine in the parent process: "
        "planning, prompt fitting, the shared queue, parsing, reversing, logging, voting and "
        "rewriting submission.json on its cadence, every 5 s or 256 results):",
        "",
        *table(
            ["tasks", "prompts", "writes", "overhead s", "ms/task", "ms/prompt"],
            [
                (
                    p["tasks"],
                    p["prompts"],
                    p["writes"],
                    p["overhead_seconds"],
                    p["ms_per_task"],
                    p["ms_per_prompt"],
                )
                for p in o["pipeline"]
            ],
        ),
        f"Overhead grows {o['growth_overhead_ratio']:.2f}x for {o['growth_tasks_ratio']:.0f}x"
        " the tasks. For it to stay under 2% of run time, the model must spend at least "
        f"{o['model_ms_per_task_for_2_percent'] / 1000:.1f} s per task "
        f"({o['augmentations']} prompts).",
        "",
        "Per step, driven directly (ms per task):",
        "",
        *table(
            ["tasks", *steps, "total"],
            [
                (
                    st["tasks"],
                    *(1000 * st["seconds"][k] / st["tasks"] for k in steps),
                    st["ms_per_task"],
                )
                for st in o["steps"]
            ],
        ),
    ]


SECTION = Section(
    "overhead",
    "all but the model: per step, and the real pipeline with a synthetic engine",
    measure,
    render,
)
