"""The gain schedule against uniform rounds, replayed on a virtual clock against answers the
demo model gave: the same comparison as `bench.schedule` without the machine's timing noise,
over more seeds. Part of `make bench` (never a timed test).

    python -m bench.schedule_replay [--shares 0.1 0.15 0.2 0.3 0.5 0.7] [--seeds 0 ... 9]
                                    [--recordings DIR] [--out bench/schedule-replay.md]

On the schedule bench, the same seed and budget gave the uniform rounds 22 and then 25 test
outputs in two runs: which views end before a deadline depends on the machine's load, and that
noise is as large as every difference between the schedules. Here:

1. Record: for each seed of the augmentation planner, one real uniform run (vLLM on CPU, one
   warm engine) with no deadline and no settling, so every test input gets all its views
   (`--max-augmentations`, 32). Each completion is kept with the seconds it took there (its
   share of its batch). `--recordings DIR` keeps them for the next replay.
2. Replay (`airv.run.replay`, what `airv replay` runs): the run's own planners, ledger and
   caps, dispatch check and vote choose the views as in a run, with the run's defaults and 64
   prompts in flight (as `bench.schedule`); each view is answered with the recorded answer to
   that augmentation, after the seconds it took. The engine is one lane that ends its views
   one after another in queue order, so answers come back a view at a time (a real batch
   returns many together), and votes are recounted at each answer (a run recounts every 5 s).
3. The whole work is the replayed uniform run with no deadline (seed 0); each budget is a
   share of it. A view still running at the deadline is lost.

A replay answers the question the schedule bench cannot: with the model's answers fixed, which
schedule's choices score more.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from airv.core.augment import ViewPolicy
from airv.core.tasks import Challenges, Task, dump_challenges, load_challenges
from airv.engines.worker import EngineWorker
from airv.run.config import RunConfig
from airv.run.predictions import read_predictions
from airv.run.replay import Recording, replay, score
from airv.run.schedule import ViewSchedule
from bench import demo_likelihood
from bench.common import Solutions, machine_info, table, utc_now, write_markdown
from bench.harness import NO_DEADLINE
from bench.schedule import (
    INFLIGHT,
    REACH_TARGET,
    Outcome,
    engine_config,
    run_once,
    start_worker,
    task_groups,
)
from bench.view_worth import render as render_worth
from bench.view_worth import unanswerable, worth


def replay_once(
    challenges: Challenges,
    recording: Recording,
    solutions: Solutions,
    out: Path,
    *,
    schedule: ViewSchedule,
    seed: int,
    budget: float,
) -> tuple[Outcome, int]:
    """One schedule's replay at one budget: its outcome (as bench.schedule reads a real run)
    and the views the recording could not answer as asked (substituted or unanswered)."""
    cfg = RunConfig(
        challenges=challenges.path,
        out_dir=out,
        engine=engine_config(),
        schedule=schedule,
        views=ViewPolicy(seed=seed),
        inflight=INFLIGHT,
        time_budget=budget,
        reserve=0.0,
        progress=False,
    )
    r = replay(cfg, challenges, recording, budget)
    n = len(r.done)
    curve = [
        (r.done[k][0], score(challenges, r.answers(k + 1), solutions).kaggle)
        for k in (sorted(set(range(0, n, max(1, n // 60))) | {n - 1}) if n else [])
    ]
    s = score(challenges, r.answers(), solutions)
    dead = unanswerable(recording, solutions)
    outcome = Outcome(
        schedule.value, seed, budget, s.kaggle, s.n_correct, n, r.stopped_by, tuple(curve),
        dead_seconds=math.fsum(p.seconds for _, p in r.done if (p.task_id, p.test_index) in dead),
    )  # fmt: skip
    return outcome, r.substituted + r.unanswered


def record(
    challenges: Path, seeds: Sequence[int], solutions: Solutions, keep: Path, tmp: Path
) -> dict[int, Recording]:
    """Each seed's full run (no deadline, no settling), from `keep` where it was recorded
    before, else recorded there by a real run on one warm engine."""
    keep.mkdir(parents=True, exist_ok=True)
    todo = [s for s in seeds if not (keep / f"seed-{s}.jsonl").exists()]
    if todo:
        ecfg = engine_config()
        worker = start_worker(ecfg)
        # A new engine's first requests are slow: it answers the whole set once, unrecorded.
        _, kept = run_once(
            challenges, tmp / "warm", worker, solutions, engine=ecfg,
            schedule=ViewSchedule.UNIFORM, seed=99, budget=NO_DEADLINE,
        )  # fmt: skip
        for seed in todo:
            assert kept is not None, "a run with no deadline keeps its engine"
            t0 = time.monotonic()
            out = tmp / f"record-{seed}"
            _, kept = run_once(
                challenges, out, kept, solutions, engine=ecfg, schedule=ViewSchedule.UNIFORM,
                seed=seed, budget=NO_DEADLINE, settle_margin=0,
            )  # fmt: skip
            (keep / f"seed-{seed}.jsonl").write_bytes((out / "predictions.jsonl").read_bytes())
            print(f"recorded seed {seed} in {time.monotonic() - t0:.0f}s", flush=True)
        if kept is not None:
            kept.close()
    recordings = {}
    for seed in seeds:
        preds, damaged = read_predictions(keep / f"seed-{seed}.jsonl")
        assert not damaged, f"{keep / f'seed-{seed}.jsonl'}: {damaged} damaged lines"
        recordings[seed] = Recording(preds, str(keep / f"seed-{seed}.jsonl"))
    return recordings


CHECK_SHARE = 0.4  # the real run that checks the replay stops at this share of the whole work


def check_against_real_runs(
    path: Path,
    challenges: Challenges,
    recordings: Mapping[int, Recording],
    solutions: Solutions,
    tmp: Path,
) -> list[tuple[Outcome, Outcome]]:
    """The replay against real runs (uniform, the run's defaults, a warm engine): one with no
    deadline, then one stopped at CHECK_SHARE of that one's wall time, each of its own seed
    (the second seed, then the first: a run of the same seed on the same engine would find
    its prompts in vLLM's prefix cache, and cost half); each replayed from its seed's
    recording at the engine seconds the real run spent (no deadline for the first)."""
    ecfg = engine_config()
    seeds = list(recordings)
    whole_seed, cut_seed = seeds[1 % len(seeds)], seeds[0]

    def once(
        name: str, worker: EngineWorker, seed: int, budget: float
    ) -> tuple[Outcome, EngineWorker | None]:
        return run_once(
            path, tmp / f"check-{name}", worker, solutions, engine=ecfg,
            schedule=ViewSchedule.UNIFORM, seed=seed, budget=budget,
        )  # fmt: skip

    # A new engine's first requests are slow: it answers the whole set once, unmeasured.
    _, kept = once("warm", start_worker(ecfg), 99, NO_DEADLINE)
    assert kept is not None, "a run with no deadline keeps its engine"
    whole, kept = once("whole", kept, whole_seed, NO_DEADLINE)
    assert kept is not None, "a run with no deadline keeps its engine"
    cut, kept = once("cut", kept, cut_seed, CHECK_SHARE * whole.curve[-1][0])
    if kept is not None:
        kept.close()
    pairs = []
    for o in (whole, cut):
        budget = o.engine_seconds if o.stopped_by == "deadline" else NO_DEADLINE
        replayed, _ = replay_once(
            challenges, recordings[o.seed], solutions, tmp / f"check-replay-{o.seed}",
            schedule=ViewSchedule.UNIFORM, seed=o.seed, budget=budget,
        )  # fmt: skip
        pairs.append((o, replayed))
    return pairs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--shares", type=float, nargs="+", default=[0.1, 0.15, 0.2, 0.3, 0.5, 0.7],
        help="budgets, as shares of the whole work's replayed seconds",
    )  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    p.add_argument(
        "--recordings", type=Path, default=None,
        help="keep each seed's recorded run here and reuse it (default: a temporary folder)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("bench/schedule-replay.md"))
    args = p.parse_args(argv)
    groups, solutions = task_groups()
    tasks = [t for group in groups.values() for t in group]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "challenges.json"
        dump_challenges(tasks, path)
        challenges = load_challenges(path, strict=True)
        t0 = time.monotonic()
        keep = args.recordings or tmp / "rec"
        reused = all((keep / f"seed-{s}.jsonl").exists() for s in args.seeds)
        recordings = record(path, args.seeds, solutions, keep, tmp)
        recorded = None if reused else time.monotonic() - t0
        t0 = time.monotonic()
        check = check_against_real_runs(path, challenges, recordings, solutions, tmp)
        checked = time.monotonic() - t0
        signal, lk = demo_likelihood.section(engine_config(), path, tasks, recordings, solutions)
        # The gain replays charge and read the promises a gain run would have scored first.
        for recording in recordings.values():
            recording.promises = demo_likelihood.promises(lk, recording)
        t0 = time.monotonic()
        outcomes: list[Outcome] = []
        misses = 0
        # The whole work first (uniform, no deadline, the first seed): the budgets' base.
        jobs = [(args.seeds[0], ViewSchedule.UNIFORM, None)] + [
            (seed, schedule, share)
            for seed in args.seeds
            for share in args.shares
            for schedule in (ViewSchedule.UNIFORM, ViewSchedule.GAIN)
        ]
        whole = 0.0
        full: Outcome | None = None
        for seed, schedule, share in jobs:
            budget = NO_DEADLINE if share is None else share * whole
            out = tmp / f"replay-{seed}-{schedule.value}-{share}"
            o, m = replay_once(
                challenges, recordings[seed], solutions, out,
                schedule=schedule, seed=seed, budget=budget,
            )  # fmt: skip
            misses += m
            if share is None:
                full, whole = o, (o.curve[-1][0] if o.curve else 0.0)
                print(f"whole work (replayed): {whole:.1f}s, score {o.score:.3f}", flush=True)
                continue
            outcomes.append(o)
            print(
                f"seed {seed} {share:.0%} {schedule.value}: {o.n_correct} right, "
                f"{o.prompts} prompts",
                flush=True,
            )
        replayed = time.monotonic() - t0
    assert full is not None
    write_markdown(
        args.out,
        [
            *render(tasks, full, whole, outcomes, misses, recorded, replayed),
            *render_check(check, checked),
            *render_worth(worth(recordings, groups, solutions)),
            *signal,
            "",
            "Written by `python -m bench.schedule_replay` (part of `make bench`).",
        ],
    )
    return 0


def render(
    tasks: Sequence[Task],
    full: Outcome,
    whole: float,
    outcomes: Sequence[Outcome],
    misses: int,
    recorded: float | None,  # None: every recording was read from an earlier run's folder
    replayed: float,
) -> list[str]:
    by = {(o.budget, o.schedule, o.seed): o for o in outcomes}
    budgets = sorted({o.budget for o in outcomes})
    seeds = sorted({o.seed for o in outcomes})
    rows = []
    for budget in budgets:
        pairs = [(by[(budget, "uniform", s)], by[(budget, "gain", s)]) for s in seeds]
        diffs = [g.n_correct - u.n_correct for u, g in pairs]
        reach = [g.reached(u.score) for u, g in pairs]
        reached = sum(1 for t in reach if t is not None and t <= REACH_TARGET * budget)
        own = [u.reached(u.score) for u, _ in pairs]
        self_reached = sum(1 for t in own if t is not None and t <= REACH_TARGET * budget)
        dead = statistics.fmean(u.dead_seconds for u, _ in pairs) / budget
        us = [u.score for u, _ in pairs]
        gs = [g.score for _, g in pairs]
        rows.append(
            (
                f"{budget / whole:.0%} ({budget:.1f} s)",
                f"{statistics.fmean(us):.3f} ({min(us):.3f}-{max(us):.3f})",
                f"{statistics.fmean(gs):.3f} ({min(gs):.3f}-{max(gs):.3f})",
                ", ".join(f"{d:+d}" for d in diffs),
                sum(diffs),
                f"{reached}/{len(seeds)}",
                f"{self_reached}/{len(seeds)}",
                f"{dead:.0%}",
                f"{statistics.fmean(u.prompts for u, _ in pairs):.0f}",
                f"{statistics.fmean(g.prompts for _, g in pairs):.0f}",
            )
        )
    m = machine_info()
    n_tests = sum(len(t.test) for t in tasks)
    return [
        "# The gain schedule against uniform rounds, replayed",
        "",
        f"{'Replayed' if recorded is None else 'Recorded and replayed'} {utc_now()} on "
        f"{m['cpu']} ({m['cores']} cores): vLLM on CPU "
        f"(eager), the demo model, {len(tasks)} tasks ({n_tests} test inputs), the set of "
        f"`bench.schedule`; {len(seeds)} seeds of the augmentation planner, each recorded "
        f"once with every view answered. The whole work (uniform, no deadline, seed "
        f"{seeds[0]}) replays in {whole:.1f} engine seconds for a score of {full.score:.3f}; "
        f"each budget below is a share of it, with {INFLIGHT} prompts in flight and the run's "
        f"other defaults. Views the recording could not answer as asked (another recorded "
        f"augmentation's answer, or none): {misses}.",
        "",
        *table(
            [
                "budget",
                "uniform: mean (spread)",
                "gain: mean (spread)",
                "gain - uniform per seed (test outputs)",
                "sum",
                f"gain reaches uniform's score by {REACH_TARGET:.0%} of the budget",
                f"uniform reaches its own by {REACH_TARGET:.0%}",
                "uniform's seconds on test inputs no recorded view answers right",
                "uniform prompts (mean)",
                "gain prompts (mean)",
            ],
            rows,
        ),
        (
            "The recordings were an earlier run's of this bench (`--recordings`)"
            if recorded is None
            else f"Recording took {recorded:.0f} s"
        )
        + f", the {len(outcomes) + 1} replays {replayed:.0f} s.",
    ]


def render_check(pairs: Sequence[tuple[Outcome, Outcome]], seconds: float) -> list[str]:
    rows = [
        (
            f"seed {real.seed}, "
            + ("no deadline" if real.stopped_by == "done" else f"stopped at {real.budget:.1f} s"),
            real.prompts,
            replayed.prompts,
            f"{real.n_correct} / {replayed.n_correct}",
            f"{real.engine_seconds:.1f}",
            f"{replayed.curve[-1][0] if replayed.curve else 0.0:.1f}",
        )
        for real, replayed in pairs
    ]
    return [
        "",
        "## The replay against real runs",
        "",
        f"Real uniform runs on a warm engine (the run's defaults, {INFLIGHT} prompts in "
        f"flight), one with no deadline and one stopped at {CHECK_SHARE:.0%} of that one's "
        f"wall time, each of a seed of its own (the same prompts again would be found in "
        f"vLLM's prefix cache); each replayed from its seed's recording at the engine seconds "
        f"the real run spent (no deadline for the first). The recording's seconds come from "
        f"another run, so a replay's engine seconds differ from the real run's by the "
        f"machine's noise.",
        "",
        *table(
            [
                "real run",
                "real prompts",
                "replayed prompts",
                "test outputs right, real / replayed",
                "real engine s",
                "replayed engine s",
            ],
            rows,
        ),
        f"The real runs took {seconds:.0f} s, their engine's start and warm-up included.",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
