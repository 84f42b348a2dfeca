"""Grid-wise vs cell-wise vs likelihood re-scoring, and early stopping on vs off, with a model.

    python bench/vote_modes.py --model models/airv-demo --out bench/vote-modes.md

Task sets: held-out synthetic tasks of the demo model's family (a fresh seed) and the smallest
ARC-AGI-1 evaluation tasks. Runs, each through airv's real pipeline (vLLM by default):
  1. `--vote grid`, 16 augmentations per test input, no early stopping: grid and cell votes are
     read off the same predictions log (the same candidates, the same time);
  2. `--vote rescore` on the same plan: the same generation work plus the scoring calls;
  3. `--vote grid` with early stopping (`--settle-margin 4`).
Accuracy is the Kaggle rule (either attempt right), per test input.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from airv.config import Backend, Dtype, EngineConfig
from airv.local import default_tasks
from airv.pipeline import Run, RunConfig
from airv.predictions import group_candidates, read_predictions
from airv.synthetic import SyntheticSpec, as_files, make_tasks
from airv.tasks import Task, dump_challenges
from airv.types import Grid, TaskId
from airv.voting import VoteMode, vote

AUGS = 16


def _accuracy(log: Path, solutions: dict[TaskId, tuple[Grid, ...]], mode: VoteMode) -> float:
    from airv.rescore import attach_scores, read_scores

    records, _ = read_predictions(log)
    scores = read_scores(log.parent / "scores.jsonl")
    pools = group_candidates(records)
    right = total = 0
    for tid, truths in solutions.items():
        for i, truth in enumerate(truths):
            total += 1
            cands = pools.get((tid, i), [])
            if mode is VoteMode.RESCORE:
                cands = attach_scores(scores.get((tid, i), {}), cands)
            v = vote(cands, mode)
            right += v is not None and truth in (v.attempt_1, v.attempt_2)
    return right / total if total else 0.0


def _run(
    tasks: list[Task], model: Path, work: Path, name: str, backend: Backend, **kw: object
) -> tuple[Path, float, int, int]:
    ch = work / f"{name}.json"
    dump_challenges(tasks, ch)
    engine = EngineConfig(model=model, backend=backend, dtype=Dtype.FLOAT32, max_model_len=8192)
    cfg = RunConfig(
        challenges=ch,
        out_dir=work / name,
        engine=engine,
        first_round=8,
        per_round=8,
        max_augmentations=AUGS,
        progress=False,
        time_budget=3600,
        reserve=0,
        **kw,  # type: ignore[arg-type]
    )
    r = Run(cfg)
    t0 = time.monotonic()
    r.execute()
    engine_start = sum(r.summary.engine_start_seconds)
    wall = time.monotonic() - t0 - engine_start  # engine start-up is the same for every run
    return cfg.log_path, wall, r.summary.completions, r.summary.settled_skips


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--synthetic", type=int, default=40, help="held-out synthetic tasks")
    p.add_argument("--arc", type=int, default=20, help="smallest ARC-AGI-1 evaluation tasks")
    p.add_argument("--engine", default="vllm", choices=[b.value for b in Backend])
    p.add_argument("--out", type=Path, default=Path("bench/vote-modes.md"))
    args = p.parse_args(argv)
    backend = Backend(args.engine)

    synth = make_tasks(args.synthetic, SyntheticSpec(), np.random.default_rng(777), prefix="held")
    s_tasks, s_sols = as_files(synth)
    a_tasks, a_sols = default_tasks(args.arc)
    sets = {
        f"synthetic held-out ({args.synthetic})": (list(s_tasks.values()), s_sols),
        f"ARC-AGI-1 eval, smallest {args.arc}": (a_tasks, a_sols),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # First calls pay one-off warm-up (kernels, allocator): keep that out of the comparison.
        _run(a_tasks[:1], args.model, work, "warmup", backend, max_tasks=1)
        for k, (name, (tasks, sols)) in enumerate(sets.items()):
            log, t_grid, n_grid, _ = _run(
                tasks, args.model, work, f"g{k}", backend, settle_margin=0
            )
            log_r, t_res, _, _ = _run(
                tasks,
                args.model,
                work,
                f"r{k}",
                backend,
                settle_margin=0,
                vote_mode=VoteMode.RESCORE,
            )
            log_s, t_set, n_set, saved = _run(
                tasks, args.model, work, f"s{k}", backend, settle_margin=4
            )
            rows += [
                (name, "grid", _accuracy(log, sols, VoteMode.GRID), t_grid, n_grid),
                (name, "cell", _accuracy(log, sols, VoteMode.CELL), t_grid, n_grid),
                (
                    name,
                    "rescore (M=4, J=4)",
                    _accuracy(log_r, sols, VoteMode.RESCORE),
                    t_res,
                    n_grid,
                ),
                (
                    name,
                    f"grid + early stop (saved {saved} prompts)",
                    _accuracy(log_s, sols, VoteMode.GRID),
                    t_set,
                    n_set,
                ),
            ]
    lines = [
        "# Voting modes and early stopping",
        "",
        f"Written by `bench/vote_modes.py` on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}"
        f" UTC; model `{args.model}`, engine {backend.value}, {AUGS} augmentations per test "
        "input (2 rounds of 8), greedy. Seconds exclude engine start-up. Accuracy: either "
        "attempt right, per test input.",
        "",
        "| tasks | selection | accuracy | seconds | completions |",
        "|---|---|---|---|---|",
        *(f"| {a} | {b} | {c:.3f} | {d:.1f} | {e} |" for a, b, c, d, e in rows),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
