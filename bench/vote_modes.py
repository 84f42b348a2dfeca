"""Grid-wise vs cell-wise vs likelihood re-scoring, and early stopping on vs off, with a model.

    python -m bench.vote_modes --model models/airv-demo --out bench/vote-modes.md

Task sets: held-out synthetic tasks of the demo model's whole family and of its easy corner
(fresh seeds, never used in training) and the smallest ARC-AGI-1 evaluation tasks. Three
pipeline runs per set, greedy, rounds of 8 augmentations (the first covers D8 once, identity
first):
  1. generation only, 32 augmentations per test input, no early stopping. Grid- and cell-wise
     votes over the first K rounds are read off its predictions log: the same candidates, and
     the time those rounds took;
  2. `--vote rescore`, 16 augmentations (the same first two rounds, as decoding is greedy) plus
     the scoring calls (top 4 candidates x 4 augmentations);
  3. generation with early stopping (`--settle-margin 4`), 32 augmentations.
"Equal time" rows give grid and cell votes the fewest rounds whose time reaches the rescore
run's. Seconds are engine work (rounds plus scoring), without engine start-up. Accuracy is the
Kaggle rule: either attempt right, per test input.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from airv.core.tasks import Task, dump_challenges
from airv.core.voting import VoteMode
from airv.demo.synthetic import SyntheticSpec
from airv.engines.config import Backend, Dtype, EngineConfig
from airv.kaggle.local import default_tasks
from airv.run.budget import Clock
from airv.run.config import SCORES_FILE, RunConfig
from airv.run.pipeline import Run
from airv.run.predictions import Prediction, group_candidates, read_predictions
from airv.run.scores import attach_scores, read_scores
from airv.run.summary import RunSummary
from airv.tools.evaluate import Source, evaluate_candidates
from bench.common import Solutions, cpus, easy_corner, synthetic_set, utc_now, write_markdown

PER_ROUND = 8
MAX_AUGS = 32
RESCORE_AUGS = 16
SETTLE_MARGIN = 4
WHOLE_SEED = 777  # the whole family's held-out tasks (training never draws from it)


@dataclass(frozen=True)
class Done:
    """One finished run: its predictions, scores file and summary."""

    predictions: list[Prediction]
    scores: Path
    summary: RunSummary

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.summary.rounds) + self.summary.scoring_seconds

    def seconds_of_rounds(self, k: int) -> float:
        return sum(r.seconds for r in self.summary.rounds if r.round <= k)  # rounds count from 1


def accuracy(
    predictions: list[Prediction],
    solutions: Solutions,
    mode: VoteMode,
    *,
    rounds: int | None = None,
    scores: Path | None = None,
) -> float:
    """Share of test inputs whose vote (over rounds 1..`rounds`) has the truth in either
    attempt: `airv eval`'s best-of-2 accuracy."""
    pools = group_candidates([p for p in predictions if rounds is None or p.round <= rounds])
    if mode.needs_scores:
        scored = read_scores(scores) if scores is not None else {}
        pools = {u: attach_scores(scored.get(u, {}), cands) for u, cands in pools.items()}
    evaluation = evaluate_candidates(pools, solutions, mode)
    return evaluation.overall()[Source.BEST_OF_2].accuracy


def run_once(
    tasks: list[Task],
    engine: EngineConfig,
    out: Path,
    *,
    max_augmentations: int,
    settle_margin: int,
    vote_mode: VoteMode = VoteMode.GRID,
) -> Done:
    out.mkdir(parents=True)
    challenges = out / "challenges.json"
    dump_challenges(tasks, challenges)
    cfg = RunConfig(
        challenges=challenges,
        out_dir=out,
        engine=engine,
        first_round=PER_ROUND,
        per_round=PER_ROUND,
        max_augmentations=max_augmentations,
        settle_margin=settle_margin,
        vote_mode=vote_mode,
        progress=False,
        time_budget=4 * 3600,
        reserve=0,
    )
    r = Run(cfg, clock=Clock.for_run(cfg))
    if r.execute() != 0:
        raise SystemExit(f"run in {out} failed: {r.summary.error}")
    predictions, _ = read_predictions(cfg.log_path)
    return Done(predictions, out / SCORES_FILE, r.summary)


def measure_set(
    name: str, tasks: list[Task], solutions: Solutions, engine: EngineConfig, work: Path
) -> list[tuple[str, str, float, float, int]]:
    """Rows (set, selection, accuracy, seconds, completions) for one task set."""
    gen = run_once(tasks, engine, work / "gen", max_augmentations=MAX_AUGS, settle_margin=0)
    res = run_once(
        tasks,
        engine,
        work / "rescore",
        max_augmentations=RESCORE_AUGS,
        settle_margin=0,
        vote_mode=VoteMode.RESCORE,
    )
    settled = run_once(
        tasks, engine, work / "settle", max_augmentations=MAX_AUGS, settle_margin=SETTLE_MARGIN
    )
    rows = []

    def completions(k: int) -> int:
        return sum(p.round <= k for p in gen.predictions)

    n_rounds = MAX_AUGS // PER_ROUND
    k_rescore = RESCORE_AUGS // PER_ROUND
    # Fewest rounds of the generation run whose time reaches the rescore run's (all if none).
    k_equal = next(
        (k for k in range(1, n_rounds + 1) if gen.seconds_of_rounds(k) >= res.seconds), n_rounds
    )
    reached = gen.seconds_of_rounds(k_equal) >= res.seconds
    equal = ", rescore's time" if reached else ", less than rescore's time"
    for k, label in ((k_rescore, ""), (k_equal, equal), (n_rounds, "")):
        for mode in (VoteMode.GRID, VoteMode.CELL):
            rows.append(
                (
                    name,
                    f"{mode.value}, {k * PER_ROUND} augs{label}",
                    accuracy(gen.predictions, solutions, mode, rounds=k),
                    gen.seconds_of_rounds(k),
                    completions(k),
                )
            )
    rows.append(
        (
            name,
            f"rescore (top 4 x 4 augs), {RESCORE_AUGS} augs",
            accuracy(res.predictions, solutions, VoteMode.RESCORE, scores=res.scores),
            res.seconds,
            res.summary.completions,
        )
    )
    rows.append(
        (
            name,
            f"grid, {MAX_AUGS} augs, early stop (margin {SETTLE_MARGIN}, "
            f"{settled.summary.settled_skips} prompts saved)",
            accuracy(settled.predictions, solutions, VoteMode.GRID),
            settled.seconds,
            settled.summary.completions,
        )
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--synthetic", type=int, default=40, help="held-out tasks, whole family")
    p.add_argument("--easy", type=int, default=40, help="held-out tasks, easy corner")
    p.add_argument("--arc", type=int, default=20, help="smallest ARC-AGI-1 evaluation tasks")
    p.add_argument("--engine", default="vllm", choices=[b.value for b in Backend])
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--out", type=Path, default=Path("bench/vote-modes.md"))
    args = p.parse_args(argv)
    backend = Backend(args.engine)
    engine = EngineConfig(
        model=args.model, backend=backend, dtype=Dtype.FLOAT32, max_model_len=args.max_model_len
    )
    sets: dict[str, tuple[list[Task], Solutions]] = {}
    if args.synthetic:
        sets[f"synthetic, whole family ({args.synthetic})"] = synthetic_set(
            args.synthetic, SyntheticSpec(), WHOLE_SEED, "w"
        )
    if args.easy:
        sets[f"synthetic, easy corner ({args.easy})"] = easy_corner(args.easy)
    if args.arc:
        a_tasks, a_sols = default_tasks(args.arc)
        sets[f"ARC-AGI-1 eval, smallest {args.arc}"] = (a_tasks, a_sols)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, (tasks, sols)) in enumerate(sets.items()):
            print(f"[vote_modes] {name}", file=sys.stderr, flush=True)
            rows += measure_set(name, tasks, sols, engine, Path(tmp) / f"set{k}")
    lines = [
        "# Voting modes and early stopping",
        "",
        f"Written by `bench/vote_modes.py` on {utc_now()}"
        f" on {platform.machine()} with {cpus()} CPUs; model `{args.model}`, engine "
        f"{backend.value}, greedy, rounds of {PER_ROUND} augmentations. Seconds: engine work "
        "(rounds plus scoring), engine start-up excluded. Accuracy: either attempt right, per "
        "test input.",
        "",
        "| tasks | selection | accuracy | seconds | completions |",
        "|---|---|---:|---:|---:|",
        *(f"| {a} | {b} | {c:.3f} | {d:.1f} | {e} |" for a, b, c, d, e in rows),
    ]
    write_markdown(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
