"""Benchmark test-time fine-tuning with the demo model through airv's real pipeline (vLLM).

    python -m bench.ttt --model models/airv-demo --report bench/ttt.md [--parts ...]

Parts (each rewrites its own section of the report and leaves the others as they are):
- `modes`: no TTT, per-task TTT and joint TTT over three task sets (40 held-out synthetic tasks
  of the whole family, the 11 in-family ARC-AGI-1 training tasks, the 20 smallest ARC-AGI-1
  evaluation tasks), each read as greedy, AIRV-8 and AIRV-32;
- `loss`: per-task TTT with loss on the held-out answer against loss on every output, on the
  two ARC-AGI-1 sets;
- `recipes`: each shipped recipe's TTT and decoding on a few small tasks, in the demo model's
  own prompt format: seconds per task.

The TTT runs train their adapters inside the run, as `airv run --ttt` does. The `modes` and
`loss` runs give every test input 32 augmentations in 4 rounds of 8, no early settling;
greedy, AIRV-8 and AIRV-32 are read off the predictions log as bench.demo_model does
(`score_set`).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import numpy as np
import orjson

from airv.adapt.config import Loss, TTTConfig, TTTMode
from airv.core.prompt_format import resolve_format
from airv.core.submission import score_submission
from airv.core.tasks import Task, dump_challenges
from airv.core.voting import VoteMode
from airv.demo.synthetic import SyntheticSpec
from airv.engines.config import Dtype, EngineConfig
from airv.kaggle.local import default_tasks
from airv.run.budget import Clock
from airv.run.config import RunConfig
from airv.run.options import build_run_config, run_option_parser
from airv.run.pipeline import Run
from airv.run.predictions import Prediction, read_predictions
from airv.run.recipes import recipe_names
from bench.common import Solutions, in_family_training, replace_section, synthetic_set
from bench.demo_model import PER_ROUND, VIEWS, SetResult, score_set

Sets = list[tuple[str, list[Task], Solutions]]


def task_sets(n_synthetic: int, seed: int) -> Sets:
    tasks, sols = synthetic_set(n_synthetic, SyntheticSpec(max_side=6), seed, "s")
    fam, fam_sols = in_family_training()
    small, small_sols = default_tasks(20)
    return [
        (f"synthetic ({n_synthetic}, whole family)", tasks, sols),
        ("ARC-AGI-1 training, in family (11)", fam, fam_sols),
        ("ARC-AGI-1 evaluation, 20 smallest", small, small_sols),
    ]


def run_sets(
    name: str, ttt: TTTConfig, sets: Sets, model: Path, work: Path
) -> tuple[list[Prediction], float, dict[str, dict[str, object]], float]:
    """One pipeline run over every set; its predictions, seconds, TTT results and seconds."""
    out = work / name
    challenges = work / f"{name}-challenges.json"
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
        fresh=True,
        ttt=ttt,
    )
    started = time.monotonic()
    r = Run(cfg, clock=Clock.for_run(cfg))
    if r.execute() != 0:
        raise SystemExit(f"{name}: the pipeline run failed")
    seconds = time.monotonic() - started
    predictions, _ = read_predictions(cfg.log_path)
    return predictions, seconds, dict(r.summary.ttt), r.summary.ttt_seconds


def adapter_seconds(ttt_results: dict[str, dict[str, object]]) -> str:
    per_task = [float(r["seconds"]) for r in ttt_results.values()]  # type: ignore[arg-type]
    if not per_task:
        return "-"
    return f"{np.median(per_task):.1f} s (max {max(per_task):.1f} s, {len(per_task)} adapters)"


def score_rows(
    label: str, preds: list[Prediction], sets: Sets, raw: dict[str, object]
) -> list[str]:
    rows = []
    for name, tasks, sols in sets:
        ids = {t.id for t in tasks}
        r = score_set(name, len(tasks), [p for p in preds if p.task_id in ids], sols, {})
        rows.append(
            f"| {name} | {label} | {pct(r.greedy, r)} | "
            f"{pct(r.airv[(8, VoteMode.GRID)], r)} | {pct(r.airv[(32, VoteMode.GRID)], r)} | "
            f"{pct(r.oracle[32], r)} |"
        )
        raw[f"{name}/{label}"] = dataclasses.asdict(r) | {"airv": None}
    return rows


def pct(n: int, r: SetResult) -> str:
    return f"{n}/{r.n_units} ({100 * n / max(1, r.n_units):.0f}%)"


TITLE = "# Test-time fine-tuning with the demo model"
MACHINE = "this machine (2-core x86-64, no GPU, shared with other work while it ran)"
SCORES = [
    "| set | TTT | greedy (identity view) | AIRV-8 grid | AIRV-32 grid | pass@32 |",
    "| --- | --- | ---: | ---: | ---: | ---: |",
]


def part_modes(args: argparse.Namespace, raw: dict[str, object]) -> list[str]:
    sets = task_sets(args.synthetic, args.seed)
    base = TTTConfig(budget=4 * 3600.0)
    modes = [
        (TTTMode.OFF, base),
        (TTTMode.PER_TASK, base),
        (TTTMode.JOINT, dataclasses.replace(base, steps=args.joint_steps)),
    ]
    rows: list[str] = []
    timing: list[str] = []
    for mode, ttt in modes:
        ttt = dataclasses.replace(ttt, mode=mode)
        preds, seconds, results, ttt_seconds = run_sets(
            mode.value, ttt, sets, args.model, args.work
        )
        timing.append(
            f"| {mode.value} | {seconds:.0f} s | {ttt_seconds:.0f} s | {adapter_seconds(results)} |"
        )
        rows += score_rows(mode.value, preds, sets, raw)
    return [
        "## TTT modes",
        "",
        f"`PYTHONPATH=src python bench/ttt.py --parts modes` (seed {args.seed}); vLLM on CPU, "
        f"{MACHINE}. Recipe: the defaults (LoRA rank {base.rank}, alpha {base.alpha}, lr "
        f"{base.learning_rate}, {base.steps} steps of {base.batch_size} sequences, "
        f"{base.augmentations} views x leave-one-out); the joint adapter trains "
        f"{args.joint_steps} steps on every task's sequences. Best of 2 attempts.",
        "",
        *SCORES,
        *rows,
        "",
        "| TTT | run (all sets) | fine-tuning | per adapter (median) |",
        "| --- | ---: | ---: | ---: |",
        *timing,
    ]


def part_loss(args: argparse.Namespace, raw: dict[str, object]) -> list[str]:
    sets = task_sets(args.synthetic, args.seed)[1:]  # the two ARC-AGI-1 sets
    base = TTTConfig(mode=TTTMode.PER_TASK, budget=4 * 3600.0)
    rows: list[str] = []
    timing: list[str] = []
    for loss in Loss:
        ttt = dataclasses.replace(base, loss=loss)
        name = f"loss-{loss.value}"
        preds, seconds, results, ttt_seconds = run_sets(name, ttt, sets, args.model, args.work)
        label = f"per-task, loss on {loss.value}"
        timing.append(
            f"| {label} | {seconds:.0f} s | {ttt_seconds:.0f} s | {adapter_seconds(results)} |"
        )
        rows += score_rows(label, preds, sets, raw)
    return [
        "## The loss: the held-out answer, or every output",
        "",
        f"`PYTHONPATH=src python bench/ttt.py --parts loss` (seed {args.seed}); vLLM on CPU, "
        f"{MACHINE}, {date.today().isoformat()}. Per-task TTT with the default recipe, "
        "`--ttt-loss answer` (airv's default) against `--ttt-loss outputs` (every output grid "
        "of each leave-one-out sequence carries loss, the train pairs' in the prompt too, as "
        "NVARC and the ARChitects train). Best of 2 attempts.",
        "",
        *SCORES,
        *rows,
        "",
        "| TTT | run (both sets) | fine-tuning | per adapter (median) |",
        "| --- | ---: | ---: | ---: |",
        *timing,
    ]


def part_recipes(args: argparse.Namespace, raw: dict[str, object]) -> list[str]:
    """Each recipe's settings over a few small tasks, with the demo model's own format (the
    recipes' presets are other models' formats): seconds per task on this machine."""
    small, solutions = default_tasks(args.recipe_tasks)
    rows = []
    for name in recipe_names():
        out = args.work / f"recipe-{name}"
        challenges = args.work / "recipe-challenges.json"
        dump_challenges(small, challenges)
        argv = [
            "--challenges",
            str(challenges),
            "--model",
            str(args.model),
            "--out",
            str(out),
            "--recipe",
            name,
            "--fresh",
            "--no-progress",
            "--time-budget",
            "4h",
            "--reserve",
            "0",
        ]
        cfg = build_run_config(run_option_parser().parse_args(argv))
        # The demo model's own format, not the recipe's preset (another model's).
        cfg = dataclasses.replace(cfg, prompt=resolve_format(model=args.model))
        started = time.monotonic()
        r = Run(cfg, clock=Clock.for_run(cfg))
        code = r.execute()  # a recipe that fails here is a row that says so, not a lost part
        seconds = time.monotonic() - started
        s = r.summary
        n = len(small)
        score = score_submission(orjson.loads(cfg.submission_path.read_bytes()), solutions)
        served = sum(str(t.get("served", "")).startswith("verified") for t in s.ttt.values())
        how = (
            "" if code == 0 else f" (exit {code}: {(s.engine_failures or [str(s.stopped_by)])[0]})"
        )
        raw[f"recipe/{name}"] = {
            "seconds": seconds, "ttt_seconds": s.ttt_seconds, "tasks": n, "exit": code,
            "solved": score.n_correct, "outputs": score.n_outputs, "served": served,
        }  # fmt: skip
        rows.append(
            f"| {name} | {cfg.ttt.steps} x {cfg.ttt.batch_size} | {s.ttt_seconds / n:.1f} s | "
            f"{(seconds - s.ttt_seconds) / n:.1f} s | {seconds / n:.1f} s | "
            f"{served}/{len(s.ttt)} | {score.n_correct}/{score.n_outputs}{how} |"
        )
    return [
        "## Each recipe's time per task",
        "",
        f"`PYTHONPATH=src python bench/ttt.py --parts recipes`: `airv run --recipe NAME` over "
        f"the {args.recipe_tasks} smallest ARC-AGI-1 evaluation tasks with the demo model "
        f"(1.8M parameters, its own prompt format in place of the recipe's preset); vLLM on "
        f"CPU, {MACHINE}, {date.today().isoformat()}. At a real checkpoint's size the "
        "fine-tuning column grows with the model; see the GPU section for Qwen3-4B's shapes.",
        "",
        "| recipe | steps x batch | fine-tuning / task | the rest / task | total / task | "
        "adapters verified | solved |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]


PARTS = {"modes": part_modes, "loss": part_loss, "recipes": part_recipes}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/airv-demo"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/airv-ttt-bench"))
    parser.add_argument("--report", type=Path, default=Path("bench/ttt.md"))
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--synthetic", type=int, default=40)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument(
        "--joint-steps", type=int, default=1000, help="steps of the one joint adapter"
    )
    parser.add_argument(
        "--recipe-tasks", type=int, default=5, help="tasks each recipe runs on (`recipes`)"
    )
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        raw: dict[str, object] = {}
        lines = PARTS[part](args, raw)
        text = args.report.read_text() if args.report.exists() else TITLE + "\n\n"
        args.report.write_text(replace_section(text, "\n".join(lines) + "\n"))
        (args.work / f"ttt-{part}.json").write_bytes(
            orjson.dumps(raw, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        )
        print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
