"""Fidelity of `airv plan --simulate`: the simulation of a run from rates `airv plan` measures on
this machine, against the real run, cut short by its deadline. Part of `make bench` (never a
timed test).

    python -m bench.fidelity [--tasks 20] [--time-budget 4m] [--out bench/fidelity.md]

The demo model on vLLM (eager) answers the 20 smallest ARC-AGI-1 evaluation tasks with up to
1,024 views per test input, more than the budget allows, and no early settling (the simulation
cannot know the votes, so both sides run every view they reach). Compared: completed prompts,
engine seconds and views per test input; the targets are within 20%, 20% and 25%.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from bench.common import machine_info, table, utc_now, write_markdown

DEMO = Path(__file__).resolve().parents[1] / "models" / "airv-demo"
# The calibration at about the batch a run keeps in flight on this machine: vLLM on CPU decodes
# faster in larger batches (a run keeps 512 requests in flight), and `airv plan`'s default (4
# tasks x 4 views a call) is a small one.
CALIBRATION = ("--calibration-tasks", "16", "--calibration-augmentations", "32")
# The runs compared: plain; per-task TTT as the budget cuts it (a third of the adapters
# trained, so vLLM's batches mix adapted and base-model requests); and with steps few enough
# that every task gets its adapter (no base-model request).
RUNS = (
    ("plain", ("--ttt", "off")),
    ("per-task TTT", ("--ttt", "per-task")),
    ("per-task TTT, 8 steps", ("--ttt", "per-task", "--ttt-steps", "8")),
)
# What must come within how much of the real run (the ratio simulated / real).
TARGETS = {"prompts": 0.20, "engine seconds": 0.20, "views per test input": 0.25}


def _ratio_row(name: str, simulated: float, real: float) -> tuple[object, ...]:
    ratio = simulated / real if real else float("nan")
    ok = abs(ratio - 1) <= TARGETS[name]
    return (name, simulated, real, ratio, f"within {TARGETS[name]:.0%}: {'yes' if ok else 'no'}")


def _compare(
    airv: list[str], run_opts: list[str], tmp: Path, name: str
) -> tuple[list[tuple[object, ...]], dict[str, object]]:
    """The simulation from rates measured here (the run's own start only), then the run."""
    plan_out, run_out = tmp / f"plan-{name}", tmp / f"run-{name}"
    subprocess.run(
        [
            *airv,
            "plan",
            "--simulate",
            "--one-start",
            *CALIBRATION,
            *run_opts,
            "--out",
            str(plan_out),
        ],
        check=True,
    )
    plan = orjson.loads((plan_out / "plan.json").read_bytes())
    sim = plan["simulation"]
    subprocess.run([*airv, "run", *run_opts, "--out", str(run_out), "--no-progress"], check=True)
    real = orjson.loads((run_out / "run_summary.json").read_bytes())
    rows = [
        _ratio_row("prompts", float(sim["predicted_prompts"]), float(real["prompts"])),
        _ratio_row(
            "engine seconds", float(sim["predicted_engine_seconds"]), real["engine_seconds"]
        ),
        _ratio_row(
            "views per test input",
            float(sim["views_per_test_input"]["mean"]),
            real["prompts"] / max(1, real["test_inputs"]),
        ),
    ]
    if "--ttt" in run_opts and run_opts[run_opts.index("--ttt") + 1] != "off":
        real["lora"] = (
            f"{plan['lora_cost']:.1f}x with one adapter in a batch, "
            f"+{plan['lora_cost_per_adapter']:.2f}x per further adapter"
        )
    return [(name, *row) for row in rows], real


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument(
        "--time-budget", default="4m",
        help="each run's budget: long enough that the fine-tuned runs answer after the stage "
        "and the engine's start (on a 2-core AMD EPYC, 2m left them none)",
    )  # fmt: skip
    p.add_argument(
        "--views", type=int, default=1024,
        help="views asked per test input: more than the budget allows (256 no longer were)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("bench/fidelity.md"))
    args = p.parse_args(argv)
    airv = [sys.executable, "-m", "airv"]
    rows: list[tuple[object, ...]] = []
    stopped: list[str] = []
    lora: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        from airv.core.tasks import dump_challenges
        from airv.kaggle.local import default_tasks

        tasks, _ = default_tasks(args.tasks)
        challenges = Path(tmp) / "challenges.json"
        dump_challenges(tasks, challenges)
        base = [
            *("--challenges", str(challenges), "--model", str(DEMO)),
            *("--time-budget", args.time_budget, "--enforce-eager", "--settle-margin", "0"),
            *("--first-round", "8", "--per-round", "8", "--max-augmentations", str(args.views)),
        ]
        for key, (name, opts) in enumerate(RUNS):
            got, real = _compare(airv, [*base, *opts], Path(tmp), str(key))
            rows += [(name, *row[1:]) for row in got]
            stopped.append(f"{name}: {real['stopped_by']}")
            if "lora" in real:
                lora.append(f"{name}: {real['lora']}")
    m = machine_info()
    lines = [
        "# `airv plan --simulate` against a real run",
        "",
        f"Measured {utc_now()} on {m['cpu']} ({m['cores']} cores), vLLM on CPU (eager), the "
        f"demo model, the {args.tasks} smallest ARC-AGI-1 evaluation tasks, budget "
        f"{args.time_budget}, up to {args.views} views per test input, no early settling; "
        f"the simulation from the rates `airv plan` measured just before each run. The real "
        f"runs stopped by: {', '.join(stopped)}. LoRA as `airv plan` priced it: "
        f"{'; '.join(lora) or 'no run with adapters'}.",
        "",
        *table(["run", "", "simulated", "real", "simulated / real", "target"], rows),
        "Written by `python -m bench.fidelity` (part of `make bench`).",
    ]
    write_markdown(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
