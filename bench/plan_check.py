"""Check `airv plan` against a real run: plan a budget, run with the planned augmentations,
and write predicted vs real wall time and their ratio. Part of `make bench` (never a timed test).

    python -m bench.plan_check [--challenges FILE --model DIR] [--time-budget 6m] [--out FILE]

Without --challenges/--model it uses the 10 smallest ARC-AGI-1 evaluation tasks and the tiny
random-weight model, built on the spot.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from bench.common import utc_now, write_markdown


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--challenges", type=Path)
    p.add_argument("--model", type=Path)
    p.add_argument("--tasks", type=int, default=10, help="default workload size (default 10)")
    p.add_argument("--time-budget", default="6m")
    p.add_argument("--engine", default="vllm")
    p.add_argument("--calibration-tasks", default="4")
    p.add_argument("--out", type=Path, default=Path("bench/plan-check.md"))
    args = p.parse_args(argv)
    airv = [sys.executable, "-m", "airv"]
    with tempfile.TemporaryDirectory() as tmp:
        challenges, model = args.challenges, args.model
        if challenges is None or model is None:
            from airv.core.tasks import dump_challenges
            from airv.demo.tinymodel import build_tiny_model
            from airv.kaggle.local import default_tasks

            tasks, _ = default_tasks(args.tasks)
            challenges = challenges or Path(tmp) / "challenges.json"
            dump_challenges(tasks, challenges)
            model = model or build_tiny_model(Path(tmp) / "model")
        common = ["--challenges", str(challenges), "--model", str(model), "--engine", args.engine]
        plan_dir, run_dir = Path(tmp) / "plan", Path(tmp) / "run"
        subprocess.run(
            [
                *airv,
                "plan",
                *common,
                "--time-budget",
                args.time_budget,
                "--out",
                str(plan_dir),
                "--calibration-tasks",
                args.calibration_tasks,
            ],
            check=True,
        )
        plan = orjson.loads((plan_dir / "plan.json").read_bytes())
        k = max(1, int(plan["augmentations"]))
        predicted = plan["start_seconds"] + k * plan["sweep_seconds"]
        subprocess.run(
            [
                *airv,
                "run",
                *common,
                "--out",
                str(run_dir),
                "--max-augmentations",
                str(k),
                "--first-round",
                str(min(8, k)),
                "--settle-margin",
                "0",
                "--time-budget",
                "1h",
                "--no-progress",
            ],
            check=True,
        )
        summary = orjson.loads((run_dir / "run_summary.json").read_bytes())
    real = float(summary["total_seconds"])
    lines = [
        "# `airv plan` against a real run",
        "",
        f"Written by `bench/plan_check.py` on {utc_now()}; engine {args.engine}, "
        f"budget {args.time_budget}.",
        "",
        "| planned augmentations | predicted s | real s | real / predicted | "
        "predicted start-up s | real engine start s |",
        "|---|---|---|---|---|---|",
        f"| {k} | {predicted:.1f} | {real:.1f} | {real / predicted:.2f} | "
        f"{plan['start_seconds']:.1f} | {sum(summary['engine_start_seconds']):.1f} |",
    ]
    write_markdown(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
