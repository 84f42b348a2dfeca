"""ARC tasks: the data classes, and reading/validating Kaggle-format challenge and solution files.

A challenge file is
`{task_id: {"train": [{"input": g, "output": g}, ...], "test": [{"input": g}, ...]}}`,
a solution file is `{task_id: [g, ...]}`, one grid per test input. Every problem found is
reported with the file, the task id and where inside the task, e.g.
`arc.json: task 00576224: train[2].output row 3 has 4 cells, row 0 has 5`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from airv.core.errors import InputError
from airv.core.jsonio import json_kind, read_json_object
from airv.core.types import MAX_SIDE, N_COLOURS, Grid, TaskId, to_lists

# A rejected task still needs one submission entry per test input, counted from its "test"
# list as far as that list can be read; never more than this many (ARC tasks have 1-4), so a
# damaged file cannot blow up submission.json. The kernel's fallback (stdlib only) repeats it.
MAX_GUESSED_TESTS = 10


def guess_test_count(value: object) -> int:
    """Test inputs of a task that failed validation: its "test" entries that are objects with
    an "input", at least 1 and at most MAX_GUESSED_TESTS."""
    test = value.get("test") if isinstance(value, dict) else None
    n = sum(isinstance(t, dict) and "input" in t for t in test) if isinstance(test, list) else 1
    return min(max(n, 1), MAX_GUESSED_TESTS)


@dataclass(frozen=True, slots=True)
class Pair:
    input: Grid
    output: Grid


@dataclass(frozen=True, slots=True)
class Task:
    id: TaskId
    train: tuple[Pair, ...]
    test: tuple[Grid, ...]  # test inputs, in file order


@dataclass(frozen=True, slots=True)
class Challenges:
    """A loaded challenge file. `task_ids` and `n_tests` cover every task in the file, rejected
    ones too, because the submission must hold an entry for each of them."""

    path: Path
    tasks: dict[TaskId, Task]  # the valid tasks
    rejected: dict[TaskId, str]  # task id -> the full problem message
    task_ids: tuple[TaskId, ...]  # all ids, in file order
    n_tests: dict[TaskId, int]  # test inputs per task id, for every id


class GridError(ValueError):
    """Parsed JSON is not a valid grid (or task entry); the message says where, e.g.
    `test[0].input row 2 cell 1 is 10, not a colour 0-9`.

    Not an AirvError: callers add the file and the task id, or count it as a rejection.
    """


def parse_grid(value: object, where: str) -> Grid:
    """Check that parsed JSON `value` is a grid and return it as a Grid.

    A grid is a list of 1-30 rows, each a list of 1-30 cells, all rows equally long, each cell
    an int 0-9 (booleans and floats such as 3.0 are refused). Raises GridError naming `where`.
    """
    if not isinstance(value, list):
        raise GridError(f"{where} is {json_kind(value)}, not a list of rows")
    if not value:
        raise GridError(f"{where} has no rows")
    if len(value) > MAX_SIDE:
        raise GridError(f"{where} has {len(value)} rows, more than {MAX_SIDE}")
    width = -1
    rows: list[tuple[int, ...]] = []
    for r, row in enumerate(value):
        if not isinstance(row, list):
            raise GridError(f"{where} row {r} is {json_kind(row)}, not a list of cells")
        if not row:
            raise GridError(f"{where} row {r} is empty")
        if r == 0:
            width = len(row)
            if width > MAX_SIDE:
                raise GridError(f"{where} row 0 has {width} cells, more than {MAX_SIDE}")
        elif len(row) != width:
            raise GridError(f"{where} row {r} has {len(row)} cells, row 0 has {width}")
        # Fast path in C (whole real datasets are validated in tests); exact `type` because
        # bool is a subclass of int and True == 1. The cell loop only runs to name the culprit.
        if set(map(type, row)) != {int} or min(row) < 0 or max(row) >= N_COLOURS:
            for c, cell in enumerate(row):
                if type(cell) is not int:
                    raise GridError(
                        f"{where} row {r} cell {c} is {json_kind(cell)} ({cell!r}), not an int"
                    )
                if not 0 <= cell < N_COLOURS:
                    raise GridError(
                        f"{where} row {r} cell {c} is {cell}, not a colour 0-{N_COLOURS - 1}"
                    )
        rows.append(tuple(row))
    return tuple(rows)


def _parse_task(task_id: TaskId, value: object) -> Task:
    """One challenge entry -> Task; GridError names the first problem (file/id added by caller)."""
    if not isinstance(value, dict):
        raise GridError(f"is {json_kind(value)}, not an object with 'train' and 'test'")
    train = value.get("train")
    test = value.get("test")
    if not isinstance(train, list):
        raise GridError("'train' is missing" if train is None else f"'train' is {json_kind(train)}")
    if not isinstance(test, list):
        raise GridError("'test' is missing" if test is None else f"'test' is {json_kind(test)}")
    if not train:
        raise GridError("has no train pairs")
    if not test:
        raise GridError("has no test inputs")
    pairs: list[Pair] = []
    for i, pair in enumerate(train):
        if not isinstance(pair, dict):
            raise GridError(f"train[{i}] is {json_kind(pair)}, not an object")
        for key in ("input", "output"):
            if key not in pair:
                raise GridError(f"train[{i}] has no '{key}'")
        pairs.append(
            Pair(
                parse_grid(pair["input"], f"train[{i}].input"),
                parse_grid(pair["output"], f"train[{i}].output"),
            )
        )
    inputs: list[Grid] = []
    for i, entry in enumerate(test):
        if not isinstance(entry, dict):
            raise GridError(f"test[{i}] is {json_kind(entry)}, not an object")
        if "input" not in entry:
            raise GridError(f"test[{i}] has no 'input'")
        # A test "output" (present in local copies of public data) is deliberately ignored.
        inputs.append(parse_grid(entry["input"], f"test[{i}].input"))
    return Task(task_id, tuple(pairs), tuple(inputs))


def load_challenges(path: Path | str, *, strict: bool) -> Challenges:
    """Read and validate a challenge file.

    strict=True raises InputError at the first invalid task; strict=False keeps the valid tasks
    and records each invalid one in `rejected`. An unreadable file, bad JSON or a top level that
    is not an object raise in both modes.
    """
    path = Path(path)
    raw = read_json_object(path, "challenge file")
    tasks: dict[TaskId, Task] = {}
    rejected: dict[TaskId, str] = {}
    n_tests: dict[TaskId, int] = {}
    for task_id, value in raw.items():
        try:
            task = _parse_task(task_id, value)
        except GridError as e:
            error = InputError(str(e), path=path, task_id=task_id)
            if strict:
                raise error from None
            rejected[task_id] = str(error)
            n_tests[task_id] = guess_test_count(value)
            continue
        tasks[task_id] = task
        n_tests[task_id] = len(task.test)
    return Challenges(path, tasks, rejected, tuple(raw), n_tests)


def load_solutions(path: Path | str) -> dict[TaskId, tuple[Grid, ...]]:
    """Read and validate a solution file `{task_id: [grid, ...]}`.

    Raises InputError at the first problem.
    """
    path = Path(path)
    raw = read_json_object(path, "solution file")
    solutions: dict[TaskId, tuple[Grid, ...]] = {}
    for task_id, value in raw.items():
        try:
            if not isinstance(value, list):
                raise GridError(f"is {json_kind(value)}, not a list of grids")
            if not value:
                raise GridError("has no test outputs")
            solutions[task_id] = tuple(parse_grid(g, f"[{i}]") for i, g in enumerate(value))
        except GridError as e:
            raise InputError(str(e), path=path, task_id=task_id) from None
    return solutions


def dump_challenges(tasks: Iterable[Task], path: Path | str) -> None:
    """Write tasks as a Kaggle challenge file (test entries carry only their input)."""
    data = {
        task.id: {
            "train": [
                {"input": to_lists(p.input), "output": to_lists(p.output)} for p in task.train
            ],
            "test": [{"input": to_lists(g)} for g in task.test],
        }
        for task in tasks
    }
    Path(path).write_bytes(orjson.dumps(data))


def dump_solutions(solutions: Mapping[TaskId, Sequence[Grid]], path: Path | str) -> None:
    """Write `{task_id: [grid, ...]}` as a Kaggle solution file."""
    data = {task_id: [to_lists(g) for g in grids] for task_id, grids in solutions.items()}
    Path(path).write_bytes(orjson.dumps(data))


def solutions_beside(challenges_path: Path) -> Path | None:
    """The solution file Kaggle's naming pairs with a challenge file, if it exists:
    `arc-agi_evaluation_challenges.json` -> `arc-agi_evaluation_solutions.json`."""
    name = challenges_path.name
    stem = "challenges.json"
    if not name.endswith(stem):
        return None
    candidate = challenges_path.with_name(name[: -len(stem)] + "solutions.json")
    return candidate if candidate.is_file() else None
