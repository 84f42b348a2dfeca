"""The gain schedule against uniform rounds at a tight, equal budget, with the demo model. Part
of `make bench` (never a timed test).

    python -m bench.schedule [--shares 0.2 0.3 0.5] [--seeds 0 1 2] [--out bench/schedule.md]

The set mixes the easy synthetic tasks the demo model solves (its easy corner, held out), the
20 smallest ARC-AGI-1 evaluation tasks (it solves none) and the ARC-AGI-1 training tasks in its
family (one D8 transform and a colour map: it solves some). One vLLM engine (eager, on CPU) is
lent to every run, so no run pays a start-up; each run's clock starts at its creation.

1. Calibration: a uniform run with no deadline (seed 0) measures the whole work's seconds.
   Every run gets a warm engine: a new one (the first, or after a run stopped with work in
   flight killed the last) first answers the whole set once, unmeasured.
2. For each budget share and each seed of the augmentation planner, a uniform run and a gain
   run, one after the other, each with that share of the whole work's seconds. Both keep the
   defaults (8 views in round 1, rounds of 8, 32 at most, settle margin 4, greedy, grid vote)
   but hold 64 prompts in flight, not 512: with 512 this set's whole first round is planned
   before any answer is known, and neither schedule could choose.
3. Scores: the Kaggle rule on the final submission.json; and the gain run's predictions log
   replayed in completion order (each prediction at the time its result was taken) for the
   first time its score reaches the uniform run's final score, as a share of the budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from airv.core.augment import ViewPolicy
from airv.core.tasks import Challenges, Task, dump_challenges, load_challenges
from airv.core.types import Grid, TaskId
from airv.engines.config import Decoding, EngineConfig
from airv.engines.pool import await_ready
from airv.engines.worker import EngineWorker
from airv.kaggle.local import default_tasks
from airv.run.budget import Clock
from airv.run.config import RunConfig
from airv.run.predictions import Prediction, read_predictions
from airv.run.replay import attempts, score
from airv.run.schedule import ViewSchedule
from bench.common import (
    Solutions,
    easy_corner,
    in_family_training,
    machine_info,
    table,
    utc_now,
    write_markdown,
)
from bench.harness import DEMO_MODEL, NO_DEADLINE
from bench.runs import TimedRun

EASY_TASKS = 30
ARC_TASKS = 20
INFLIGHT = 64
REACH_TARGET = 0.7  # the gain run reaches uniform's final score by this share of the budget


@dataclass(frozen=True)
class Outcome:
    schedule: str
    seed: int
    budget: float
    score: float  # Kaggle score of the final submission
    n_correct: int  # test outputs right (either attempt)
    prompts: int
    stopped_by: str
    # (seconds since the run's start, Kaggle score) after each result, in completion order
    curve: tuple[tuple[float, float], ...]
    engine_seconds: float = 0.0  # the completed requests' shares of batch time
    # replays only: engine seconds on test inputs that no recorded view answers right
    dead_seconds: float = 0.0
    # gain: the promises scored, their engine seconds, and whether the rest of the pass was
    # asked (None: no verdict)
    promises: tuple[int, float, bool | None] = (0, 0.0, None)

    def reached(self, score: float) -> float | None:
        """When the replayed score first reached `score` (seconds), None if never."""
        return next((t for t, s in self.curve if s >= score - 1e-12), None)


def task_groups() -> tuple[dict[str, list[Task]], Solutions]:
    """The set's three groups by name, and their solutions."""
    easy, easy_sol = easy_corner(EASY_TASKS)
    arc, arc_sol = default_tasks(ARC_TASKS)
    fam, fam_sol = in_family_training()
    groups = {"easy synthetic": easy, "ARC-AGI-1 evaluation": arc, "in-family training": fam}
    return groups, {**easy_sol, **arc_sol, **fam_sol}


def task_set() -> tuple[list[Task], Solutions]:
    groups, solutions = task_groups()
    return [t for tasks in groups.values() for t in tasks], solutions


def engine_config() -> EngineConfig:
    return EngineConfig(model=DEMO_MODEL, enforce_eager=True, max_model_len=4096)


def start_worker(cfg: EngineConfig) -> EngineWorker:
    w = EngineWorker(cfg, Decoding())
    await_ready(w, time.monotonic() + NO_DEADLINE)
    return w


def _score(
    challenges: Challenges, preds: Sequence[Prediction], solutions: Mapping[TaskId, Sequence[Grid]]
) -> tuple[float, int]:
    s = score(challenges, attempts(preds), solutions)
    return s.kaggle, s.n_correct


def run_once(
    challenges: Path,
    out: Path,
    worker: EngineWorker,
    solutions: Solutions,
    *,
    engine: EngineConfig,
    schedule: ViewSchedule,
    seed: int,
    budget: float,
    settle_margin: int | None = None,  # None: the run's default
) -> tuple[Outcome, EngineWorker | None]:
    cfg = RunConfig(
        challenges=challenges,
        out_dir=out,
        engine=engine,
        schedule=schedule,
        views=ViewPolicy(seed=seed),
        inflight=INFLIGHT,
        time_budget=budget,
        reserve=1.0,
        progress=False,
    )
    if settle_margin is not None:
        cfg = dataclasses.replace(cfg, settle_margin=settle_margin)
    t0 = time.monotonic()
    r = TimedRun(cfg, clock=Clock.for_run(cfg, t0), worker=worker)
    r.execute()
    preds, _ = read_predictions(cfg.log_path)
    ch = load_challenges(challenges, strict=True)
    # Replay: each prediction at its result's arrival (greedy: one prediction per result).
    times = [t - t0 for t in r.arrivals][: len(preds)]
    curve = []
    checkpoints = sorted(set(range(0, len(times), max(1, len(times) // 60))) | {len(times) - 1})
    for k in checkpoints if times else []:
        curve.append((times[k], _score(ch, preds[: k + 1], solutions)[0]))
    score, n_correct = _score(ch, preds, solutions)
    outcome = Outcome(
        schedule.value,
        seed,
        budget,
        score,
        n_correct,
        r.summary.prompts,
        r.summary.stopped_by or "?",
        tuple(curve),
        r.summary.engine_seconds,
        promises=(r.summary.promises, r.summary.promise_seconds, r.summary.promise_pass),
    )
    return outcome, r.kept


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--shares", type=float, nargs="+", default=[0.2, 0.3, 0.5],
        help="budgets, as shares of the whole work's seconds",
    )  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("bench/schedule.md"))
    args = p.parse_args(argv)
    tasks, solutions = task_set()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        challenges = tmp / "challenges.json"
        dump_challenges(tasks, challenges)
        ecfg = engine_config()
        worker: EngineWorker | None = start_worker(ecfg)

        def lend() -> EngineWorker:
            """The engine, warm: a run stopped with work in flight kills its engine, and a new
            one's first requests are slow (the first whole run took twice the next's), so a
            new engine answers the whole set once before it is lent."""
            nonlocal worker
            if worker is None:
                _, worker = run_once(
                    challenges, tmp / f"warm-{time.monotonic()}", start_worker(ecfg), solutions,
                    engine=ecfg, schedule=ViewSchedule.UNIFORM, seed=99, budget=NO_DEADLINE,
                )  # fmt: skip
                assert worker is not None, "a run with no deadline keeps its engine"
            w, worker = worker, None
            return w

        full, worker = run_once(
            challenges, tmp / "full", lend(), solutions, engine=ecfg,
            schedule=ViewSchedule.UNIFORM, seed=0, budget=NO_DEADLINE,
        )  # fmt: skip
        whole = full.curve[-1][0] if full.curve else 0.0
        print(f"whole work: {whole:.1f}s, score {full.score:.3f}", flush=True)
        # Not lent again: its prefix cache holds seed 0's uniform prompts, which made the first
        # measured run (uniform, seed 0) answer about a quarter more prompts than its pair.
        # Every measured run gets an engine warmed the same way (lend).
        if worker is not None:
            worker.close()
            worker = None
        for share, seed in itertools.product(args.shares, args.seeds):
            for schedule in (ViewSchedule.UNIFORM, ViewSchedule.GAIN):
                o, worker = run_once(
                    challenges, tmp / f"{schedule.value}-{share}-{seed}", lend(), solutions,
                    engine=ecfg, schedule=schedule, seed=seed, budget=share * whole,
                )  # fmt: skip
                outcomes.append(o)
                print(
                    f"share {share} seed {seed} {schedule.value}: score {o.score:.3f} "
                    f"({o.n_correct} right), {o.prompts} prompts, stopped by {o.stopped_by}",
                    flush=True,
                )
        if worker is not None:
            worker.close()
    write_markdown(args.out, render(tasks, full, whole, outcomes))
    return 0


def pass_cell(o: Outcome) -> str:
    """A gain run's promise pass: how many were scored in how long, and whether the rest was
    asked after the sample."""
    n, seconds, asked = o.promises
    verdict = {True: "all", False: "the sample only", None: "no verdict"}[asked]
    return f"{n} in {seconds:.2f} s ({verdict})"


def render(
    tasks: Sequence[Task], full: Outcome, whole: float, outcomes: Sequence[Outcome]
) -> list[str]:
    by = {(o.budget, o.schedule, o.seed): o for o in outcomes}
    budgets = sorted({o.budget for o in outcomes})
    seeds = sorted({o.seed for o in outcomes})
    rows = []
    verdicts = []
    for budget in budgets:
        reach_shares: list[float | None] = []
        worst = 0
        for seed in seeds:
            u, g = by[(budget, "uniform", seed)], by[(budget, "gain", seed)]
            t = g.reached(u.score)
            reach = None if t is None else t / budget
            reach_shares.append(reach)
            worst = min(worst, g.n_correct - u.n_correct)
            rows.append(
                (
                    f"{budget / whole:.0%} ({budget:.1f} s)",
                    seed,
                    u.score,
                    g.score,
                    g.n_correct - u.n_correct,
                    u.prompts,
                    g.prompts,
                    "never" if reach is None else f"{reach:.0%}",
                    pass_cell(g),
                )
            )
        us = [by[(budget, "uniform", s)].score for s in seeds]
        gs = [by[(budget, "gain", s)].score for s in seeds]
        mean_u, mean_g = statistics.fmean(us), statistics.fmean(gs)
        reached = all(r is not None and r <= REACH_TARGET for r in reach_shares)
        verdicts.append(
            f"- {budget / whole:.0%} of the work: mean score uniform {mean_u:.3f} (spread "
            f"{min(us):.3f}-{max(us):.3f}), gain {mean_g:.3f} (spread {min(gs):.3f}-"
            f"{max(gs):.3f}). Gain's mean at least uniform's: "
            f"{'yes' if mean_g >= mean_u - 1e-12 else 'no'}; no seed more than one test output "
            f"worse: {'yes' if worst >= -1 else 'no'}; uniform's final score reached by "
            f"{REACH_TARGET:.0%} of the budget in every seed: {'yes' if reached else 'no'}."
        )
    m = machine_info()
    n_tests = sum(len(t.test) for t in tasks)
    return [
        "# The gain schedule against uniform rounds",
        "",
        f"Measured {utc_now()} on {m['cpu']} ({m['cores']} cores), vLLM on CPU (eager), the demo "
        f"model, {len(tasks)} tasks ({n_tests} test inputs): {EASY_TASKS} easy synthetic, the "
        f"{ARC_TASKS} smallest ARC-AGI-1 evaluation tasks, the ARC-AGI-1 training tasks in the "
        f"model's family. The whole work (uniform, no deadline, seed 0, a warm engine) "
        f"took {whole:.1f} s for a score of {full.score:.3f}; each run below had a share of it, "
        f"with {INFLIGHT} prompts in flight and the run's other defaults.",
        "",
        *table(
            [
                "budget",
                "seed",
                "uniform score",
                "gain score",
                "gain - uniform (test outputs)",
                "uniform prompts",
                "gain prompts",
                "gain reaches uniform's score at",
                "gain's promises",
            ],
            rows,
        ),
        *verdicts,
        "",
        "Written by `python -m bench.schedule` (part of `make bench`).",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
