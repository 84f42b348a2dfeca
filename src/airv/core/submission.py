"""submission.json: build it from answers, write it atomically, validate it, score it.

The file is `{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]}` with one dict per test
input in order, every task id of the challenge file present, and `[[0]]` wherever there is no
answer: a missing task can make the whole submission fail to score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from airv.core.errors import InputError
from airv.core.jsonio import json_kind, read_json_object, write_atomic
from airv.core.tasks import Challenges, GridError, parse_grid
from airv.core.types import FALLBACK_GRID, Attempts, Grid, TaskId, Unit, to_lists

ATTEMPT_KEYS = ("attempt_1", "attempt_2")

Submission = dict[TaskId, list[Attempts]]


def build_submission(
    challenges: Challenges, answers: Mapping[Unit, tuple[Grid, Grid]]
) -> Submission:
    """Every task id of the challenge file in file order, one dict per test input.

    `answers` maps (task id, test index) to (attempt_1, attempt_2); missing ones get `[[0]]`.
    Raises ValueError for an answer that names no test input of the file, or is not a grid:
    both are bugs upstream, better caught at the first write than by Kaggle.
    """
    known = {(t, i) for t in challenges.task_ids for i in range(challenges.n_tests[t])}
    unknown = [key for key in answers if key not in known]
    if unknown:
        raise ValueError(
            f"answer for task {unknown[0][0]} test {unknown[0][1]}: no such test input"
        )
    submission: Submission = {}
    for task_id in challenges.task_ids:
        entries: list[Attempts] = []
        for i in range(challenges.n_tests[task_id]):
            pair = answers.get((task_id, i), (FALLBACK_GRID, FALLBACK_GRID))
            entry = {key: to_lists(grid) for key, grid in zip(ATTEMPT_KEYS, pair, strict=True)}
            for key, lists in entry.items():
                try:
                    parse_grid(lists, f"{key} for task {task_id} test {i}")
                except GridError as e:
                    raise ValueError(str(e)) from None
            entries.append(entry)
        submission[task_id] = entries
    return submission


def write_submission(path: Path | str, submission: Mapping[str, object]) -> None:
    """Write submission.json atomically (`write_atomic`): a crash never leaves half a file."""
    write_atomic(path, orjson.dumps(submission))


def load_submission(path: Path | str) -> dict[str, object]:
    """Read a submission file; InputError if unreadable, not JSON or not an object."""
    return read_json_object(path, "submission")


def _entry_problems(task_id: TaskId, i: int, entry: object) -> list[str]:
    if not isinstance(entry, dict):
        return [f"task {task_id}: test entry {i} is not an object with attempt_1/attempt_2"]
    problems = []
    unknown = sorted(str(k) for k in entry if k not in ATTEMPT_KEYS)
    if unknown:
        problems.append(
            f"task {task_id}: test entry {i} has unknown key(s) {', '.join(map(repr, unknown))};"
            f" Kaggle's format has exactly {' and '.join(ATTEMPT_KEYS)}"
        )
    for key in ATTEMPT_KEYS:
        if key not in entry:
            problems.append(f"task {task_id}: test entry {i} has no '{key}'")
            continue
        try:
            parse_grid(entry[key], f"test entry {i} {key}")
        except GridError as e:
            problems.append(f"task {task_id}: {e}")
    return problems


def validate_submission(submission_path: Path | str, challenges: Challenges) -> list[str]:
    """Every problem that could stop Kaggle scoring the file, one message each; [] means valid.

    An unreadable file raises InputError; a file that is not JSON or not an object is a problem.
    """
    path = Path(submission_path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read submission: {e.strerror or e}", path=path) from e
    try:
        submission = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        return [f"{path}: not valid JSON: {e}"]
    if not isinstance(submission, dict):
        kind = json_kind(submission)
        return [f"{path}: the top level must be an object of task ids, not {kind}"]
    problems: list[str] = []
    for task_id in challenges.task_ids:
        if task_id not in submission:
            problems.append(f"task {task_id}: missing")
            continue
        entries = submission[task_id]
        if not isinstance(entries, list):
            problems.append(f"task {task_id}: is not a list of test entries")
            continue
        expected = challenges.n_tests[task_id]
        if len(entries) != expected:
            problems.append(f"task {task_id}: {len(entries)} test entries, expected {expected}")
        for i, entry in enumerate(entries):
            problems.extend(_entry_problems(task_id, i, entry))
    known = set(challenges.task_ids)
    problems.extend(f"task {t}: not in the challenge file" for t in submission if t not in known)
    return problems


@dataclass(frozen=True, slots=True)
class Score:
    """Scores of a submission against known solutions.

    `kaggle`: correct test outputs / all test outputs (either attempt exactly right counts).
    `task_average`: the mean over tasks of each task's fraction of correct test outputs.
    """

    kaggle: float
    task_average: float
    n_outputs: int
    n_correct: int
    per_task: dict[TaskId, list[bool]]  # one flag per test output, in order

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (orjson.dumps it)."""
        return {
            "kaggle": self.kaggle,
            "task_average": self.task_average,
            "n_outputs": self.n_outputs,
            "n_correct": self.n_correct,
            "n_tasks": len(self.per_task),
            "per_task": {t: list(flags) for t, flags in self.per_task.items()},
        }


def _attempt_grid(entry: object, key: str) -> Grid | None:
    """The attempt as a Grid, or None if absent or malformed (a malformed attempt is wrong)."""
    if not isinstance(entry, dict) or key not in entry:
        return None
    try:
        return parse_grid(entry[key], key)
    except GridError:
        return None


def score_submission(
    submission: Mapping[str, object], solutions: Mapping[TaskId, Sequence[Grid]]
) -> Score:
    """Score against `solutions`; tasks or entries missing from the submission count as wrong,
    tasks in the submission without a solution are ignored."""
    per_task: dict[TaskId, list[bool]] = {}
    for task_id, truths in solutions.items():
        entries = submission.get(task_id)
        if not isinstance(entries, list):
            entries = []
        flags = []
        for i, truth in enumerate(truths):
            entry = entries[i] if i < len(entries) else None
            flags.append(any(_attempt_grid(entry, k) == tuple(truth) for k in ATTEMPT_KEYS))
        per_task[task_id] = flags
    n_outputs = sum(len(f) for f in per_task.values())
    n_correct = sum(sum(f) for f in per_task.values())
    fractions = [sum(f) / len(f) for f in per_task.values() if f]
    return Score(
        kaggle=n_correct / n_outputs if n_outputs else 0.0,
        task_average=sum(fractions) / len(fractions) if fractions else 0.0,
        n_outputs=n_outputs,
        n_correct=n_correct,
        per_task=per_task,
    )
