"""submission.json: builder, atomic writer, validator (one case per rule) and scorer."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from airv.core.errors import InputError
from airv.core.submission import (
    build_submission,
    score_submission,
    validate_submission,
    write_submission,
)
from airv.core.tasks import Challenges, load_challenges
from airv.core.types import Grid

PAIR = {"input": [[1]], "output": [[2]]}


@pytest.fixture
def challenges(tmp_path: Path) -> Challenges:
    """Three tasks with 1, 2 and 1 test inputs; task "c" is invalid (no train pairs)."""
    data = {
        "a": {"train": [PAIR], "test": [{"input": [[1]]}]},
        "b": {"train": [PAIR], "test": [{"input": [[1]]}, {"input": [[3, 3]]}]},
        "c": {"train": [], "test": [{"input": [[1]]}]},
    }
    path = tmp_path / "challenges.json"
    path.write_bytes(orjson.dumps(data))
    return load_challenges(path, strict=False)


G1: Grid = ((1, 2), (3, 4))
G2: Grid = ((5,),)


def test_build_fills_every_task_and_test_with_fallback(challenges: Challenges) -> None:
    sub = build_submission(challenges, {("b", 1): (G1, G2)})
    assert list(sub) == ["a", "b", "c"]
    assert sub == {
        "a": [{"attempt_1": [[0]], "attempt_2": [[0]]}],
        "b": [
            {"attempt_1": [[0]], "attempt_2": [[0]]},
            {"attempt_1": [[1, 2], [3, 4]], "attempt_2": [[5]]},
        ],
        "c": [{"attempt_1": [[0]], "attempt_2": [[0]]}],
    }
    cells = [
        c for entries in sub.values() for e in entries for g in e.values() for r in g for c in r
    ]
    assert all(type(c) is int for c in cells)
    # Fallback grids are separate objects, so editing one entry cannot change another.
    sub["a"][0]["attempt_1"][0][0] = 7
    assert sub["c"][0]["attempt_1"] == [[0]]


def test_build_rejects_unknown_answer_and_bad_grid(challenges: Challenges) -> None:
    with pytest.raises(ValueError, match="task a test 1: no such test input"):
        build_submission(challenges, {("a", 1): (G1, G1)})
    with pytest.raises(ValueError, match="task zz test 0"):
        build_submission(challenges, {("zz", 0): (G1, G1)})
    with pytest.raises(ValueError, match="attempt_2 for task a test 0 row 0 cell 0 is 12"):
        build_submission(challenges, {("a", 0): (G1, ((12,),))})


def test_write_is_atomic_replaces_and_leaves_no_temp(
    tmp_path: Path, challenges: Challenges
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    path = out / "submission.json"
    path.write_text("old content")
    sub = build_submission(challenges, {("a", 0): (G1, G2)})
    write_submission(path, sub)
    assert os.listdir(out) == ["submission.json"]
    assert orjson.loads(path.read_bytes()) == sub
    assert validate_submission(path, challenges) == []
    write_submission(path, build_submission(challenges, {}))
    assert os.listdir(out) == ["submission.json"]
    assert orjson.loads(path.read_bytes())["a"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]


def test_write_failure_keeps_old_file_and_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "submission.json"
    path.write_text("old content")
    with pytest.raises(TypeError):
        write_submission(path, {"a": [{"attempt_1": object()}]})  # orjson cannot serialise it

    def fail_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    # A failure after the temp file exists (here: at the rename) must remove it.
    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError, match="disk full"):
        write_submission(path, {"a": []})
    assert path.read_text() == "old content"
    assert os.listdir(tmp_path) == ["submission.json"]


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "submission.json"
    path.write_bytes(orjson.dumps(data))
    return path


def valid() -> dict[str, object]:
    ok = {"attempt_1": [[1]], "attempt_2": [[2, 3]]}
    return {"a": [dict(ok)], "b": [dict(ok), dict(ok)], "c": [dict(ok)]}


def broken(change: str) -> dict[str, object]:
    sub = valid()
    entries = sub["b"]
    assert isinstance(entries, list)
    match change:
        case "missing task":
            del sub["a"]
        case "extra task":
            sub["zz"] = [{"attempt_1": [[1]], "attempt_2": [[1]]}]
        case "too few entries":
            sub["b"] = entries[:1]
        case "too many entries":
            sub["a"] = [*entries, entries[0]]
        case "task not a list":
            sub["b"] = {"attempt_1": [[1]], "attempt_2": [[1]]}
        case "entry not an object":
            entries[1] = [[1]]
        case "missing key":
            del entries[1]["attempt_2"]
        case "extra key":
            entries[1]["attempt_3"] = [[1]]
        case "bool cell":
            entries[1]["attempt_1"] = [[True]]
        case "float cell":
            entries[1]["attempt_1"] = [[1.0]]
        case "string cell":
            entries[1]["attempt_1"] = [["1"]]
        case "cell 10":
            entries[1]["attempt_1"] = [[10]]
        case "negative cell":
            entries[1]["attempt_1"] = [[-1]]
        case "ragged":
            entries[1]["attempt_1"] = [[1, 2], [3]]
        case "too wide":
            entries[1]["attempt_1"] = [[0] * 31]
        case "too tall":
            entries[1]["attempt_1"] = [[0]] * 31
        case "empty grid":
            entries[1]["attempt_1"] = []
        case "grid not a list":
            entries[1]["attempt_1"] = 5
    return sub


RULES = {
    "missing task": "task a: missing",
    "extra task": "task zz: not in the challenge file",
    "too few entries": "task b: 1 test entries, expected 2",
    "too many entries": "task a: 3 test entries, expected 1",
    "task not a list": "task b: is not a list of test entries",
    "entry not an object": "task b: test entry 1 is not an object",
    "missing key": "task b: test entry 1 has no 'attempt_2'",
    "extra key": "task b: test entry 1 has unknown key(s) 'attempt_3'",
    "bool cell": "task b: test entry 1 attempt_1 row 0 cell 0 is a boolean",
    "float cell": "task b: test entry 1 attempt_1 row 0 cell 0 is a float",
    "string cell": "task b: test entry 1 attempt_1 row 0 cell 0 is a string",
    "cell 10": "task b: test entry 1 attempt_1 row 0 cell 0 is 10",
    "negative cell": "task b: test entry 1 attempt_1 row 0 cell 0 is -1",
    "ragged": "task b: test entry 1 attempt_1 row 1 has 1 cells, row 0 has 2",
    "too wide": "task b: test entry 1 attempt_1 row 0 has 31 cells, more than 30",
    "too tall": "task b: test entry 1 attempt_1 has 31 rows, more than 30",
    "empty grid": "task b: test entry 1 attempt_1 has no rows",
    "grid not a list": "task b: test entry 1 attempt_1 is an int",
}


def test_valid_submission_has_no_problems(tmp_path: Path, challenges: Challenges) -> None:
    assert validate_submission(write(tmp_path, valid()), challenges) == []


@pytest.mark.parametrize("rule", sorted(RULES))
def test_validate_catches_each_rule(tmp_path: Path, challenges: Challenges, rule: str) -> None:
    problems = validate_submission(write(tmp_path, broken(rule)), challenges)
    assert len(problems) == 1, problems
    assert problems[0].startswith(RULES[rule]), problems


def test_validate_reports_every_problem(tmp_path: Path, challenges: Challenges) -> None:
    sub = broken("missing task")
    sub["zz"] = []
    entries = sub["b"]
    assert isinstance(entries, list)
    entries[0] = {"attempt_1": [[11]]}
    problems = validate_submission(write(tmp_path, sub), challenges)
    assert sorted(problems) == sorted(
        [
            "task a: missing",
            "task b: test entry 0 attempt_1 row 0 cell 0 is 11, not a colour 0-9",
            "task b: test entry 0 has no 'attempt_2'",
            "task zz: not in the challenge file",
        ]
    )


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"{oops", "not valid JSON"), (b"[]", "must be an object of task ids, not a list")],
)
def test_validate_bad_json_and_top_level(
    tmp_path: Path, challenges: Challenges, content: bytes, fragment: str
) -> None:
    path = tmp_path / "submission.json"
    path.write_bytes(content)
    problems = validate_submission(path, challenges)
    assert len(problems) == 1
    assert fragment in problems[0] and str(path) in problems[0]


def test_validate_unreadable_file_raises(tmp_path: Path, challenges: Challenges) -> None:
    with pytest.raises(InputError, match="cannot read submission"):
        validate_submission(tmp_path / "absent.json", challenges)


def attempts(a1: list[list[int]], a2: list[list[int]]) -> dict[str, list[list[int]]]:
    return {"attempt_1": a1, "attempt_2": a2}


def test_score_exact_fractions() -> None:
    solutions: dict[str, tuple[Grid, ...]] = {
        "a": (((1,),),),
        "b": (((2,),), ((3, 3),), ((4,),)),
        "c": (((5,),),),
    }
    submission = {
        "a": [attempts([[0]], [[1]])],  # right by attempt_2
        "b": [
            attempts([[2]], [[0]]),  # right by attempt_1
            attempts([[3], [3]], [[3, 3, 3]]),  # wrong shapes
            attempts([[4]], [[4]]),  # right
        ],
        "c": [attempts([[True]], [[5.0]])],  # type: ignore[list-item]  # bool, float: wrong
        "extra": [attempts([[1]], [[1]])],  # no solution: ignored
    }
    score = score_submission(submission, solutions)
    assert score.per_task == {"a": [True], "b": [True, False, True], "c": [False]}
    assert (score.n_correct, score.n_outputs) == (3, 5)
    assert score.kaggle == 3 / 5
    assert score.task_average == (1 + 2 / 3 + 0) / 3
    data = score.to_json()
    assert orjson.loads(orjson.dumps(data)) == {
        "kaggle": 3 / 5,
        "task_average": (1 + 2 / 3 + 0) / 3,
        "n_outputs": 5,
        "n_correct": 3,
        "n_tasks": 3,
        "per_task": {"a": [True], "b": [True, False, True], "c": [False]},
    }


def test_score_missing_tasks_and_entries_are_wrong() -> None:
    solutions: dict[str, tuple[Grid, ...]] = {
        "a": (((1,),), ((2,),)),
        "b": (((3,),),),
        "c": (((4,),),),
        "d": (((5,),),),
    }
    submission = {
        "a": [attempts([[1]], [[0]])],  # second entry missing
        "b": [{"attempt_2": [[3]]}],  # attempt_1 missing, attempt_2 right
        "d": "garbage",
    }
    score = score_submission(submission, solutions)
    assert score.per_task == {"a": [True, False], "b": [True], "c": [False], "d": [False]}
    assert score.kaggle == 2 / 5
    assert score.task_average == (1 / 2 + 1 + 0 + 0) / 4


def test_score_three_of_four() -> None:
    solutions: dict[str, tuple[Grid, ...]] = {"a": (((1,),), ((2,),)), "b": (((3,),), ((4,),))}
    submission = {
        "a": [attempts([[1]], [[1]]), attempts([[2]], [[2]])],
        "b": [attempts([[3]], [[3]]), attempts([[0]], [[0]])],
    }
    score = score_submission(submission, solutions)
    assert score.kaggle == 0.75
    assert score.task_average == 0.75
    assert score.n_correct == 3 and score.n_outputs == 4
