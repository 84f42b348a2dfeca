"""Challenge and solution files: every failure mode names the file, the task id and the place."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airv.core.errors import InputError
from airv.core.tasks import (
    GridError,
    Pair,
    Task,
    dump_challenges,
    dump_solutions,
    load_challenges,
    load_solutions,
    parse_grid,
)
from airv.core.types import Grid

GOOD = {"train": [{"input": [[1, 2], [3, 4]], "output": [[4]]}], "test": [{"input": [[5]]}]}


def write(tmp_path: Path, data: object, name: str = "challenges.json") -> Path:
    path = tmp_path / name
    path.write_bytes(orjson.dumps(data))
    return path


def with_train_output(grid: object) -> dict[str, object]:
    return {"train": [GOOD["train"][0], {"input": [[0]], "output": grid}], "test": GOOD["test"]}


# (task value, a fragment the message must contain)
BAD_TASKS = {
    "ragged": (
        with_train_output([[1, 2, 3], [4, 5]]),
        "train[1].output row 1 has 2 cells, row 0 has 3",
    ),
    "wide": (with_train_output([[0] * 31]), "train[1].output row 0 has 31 cells, more than 30"),
    "tall": (with_train_output([[0]] * 31), "train[1].output has 31 rows, more than 30"),
    "cell10": (with_train_output([[0, 10]]), "train[1].output row 0 cell 1 is 10"),
    "cellneg": (with_train_output([[-1]]), "train[1].output row 0 cell 0 is -1"),
    "cellstr": (with_train_output([[0], ["3"]]), "train[1].output row 1 cell 0 is a string"),
    "bool": (with_train_output([[True]]), "train[1].output row 0 cell 0 is a boolean"),
    "float": (with_train_output([[3.0]]), "train[1].output row 0 cell 0 is a float"),
    "emptygrid": (with_train_output([]), "train[1].output has no rows"),
    "emptyrow": (with_train_output([[]]), "train[1].output row 0 is empty"),
    "rownotlist": (with_train_output([7]), "train[1].output row 0 is an int"),
    "gridnotlist": (with_train_output("[[1]]"), "train[1].output is a string"),
    "notrain": ({"train": [], "test": GOOD["test"]}, "has no train pairs"),
    "trainmissing": ({"test": GOOD["test"]}, "'train' is missing"),
    "notest": ({"train": GOOD["train"], "test": []}, "has no test inputs"),
    "testmissing": ({"train": GOOD["train"]}, "'test' is missing"),
    "testnoinput": (
        {"train": GOOD["train"], "test": [{"output": [[1]]}]},
        "test[0] has no 'input'",
    ),
    "badtestinput": ({"train": GOOD["train"], "test": [{"input": [[11]]}]}, "test[0].input row 0"),
    "pairnooutput": (
        {"train": [{"input": [[1]]}], "test": GOOD["test"]},
        "train[0] has no 'output'",
    ),
    "tasknotobject": ([1, 2], "is a list, not an object"),
}


@pytest.mark.parametrize("case", sorted(BAD_TASKS))
def test_strict_rejects_each_failure_mode_naming_file_task_and_place(
    tmp_path: Path, case: str
) -> None:
    value, fragment = BAD_TASKS[case]
    path = write(tmp_path, {"good1": GOOD, f"bad-{case}": value})
    with pytest.raises(InputError) as info:
        load_challenges(path, strict=True)
    message = str(info.value)
    assert str(path) in message
    assert f"task bad-{case}" in message
    assert fragment in message
    assert info.value.task_id == f"bad-{case}"
    assert info.value.path == path


@pytest.mark.parametrize("case", sorted(BAD_TASKS))
def test_lenient_keeps_good_tasks_and_records_the_bad_one(tmp_path: Path, case: str) -> None:
    value, fragment = BAD_TASKS[case]
    path = write(tmp_path, {"good1": GOOD, f"bad-{case}": value, "good2": GOOD})
    ch = load_challenges(path, strict=False)
    assert list(ch.tasks) == ["good1", "good2"]
    assert list(ch.rejected) == [f"bad-{case}"]
    assert fragment in ch.rejected[f"bad-{case}"]
    assert str(path) in ch.rejected[f"bad-{case}"]
    assert ch.task_ids == ("good1", f"bad-{case}", "good2")
    assert ch.n_tests["good1"] == 1 and ch.n_tests["good2"] == 1


def test_rejected_task_test_count_uses_its_test_list_else_one(tmp_path: Path) -> None:
    three_tests_bad_train = {"train": [], "test": [{"input": [[1]]}] * 3}
    path = write(
        tmp_path,
        {"a": three_tests_bad_train, "b": "nonsense", "c": {"train": GOOD["train"], "test": {}}},
    )
    ch = load_challenges(path, strict=False)
    assert ch.tasks == {}
    assert ch.n_tests == {"a": 3, "b": 1, "c": 1}


def test_a_rejected_tasks_guessed_test_count_is_capped(tmp_path: Path) -> None:
    """2 MB of junk in a rejected task's test list once made a 38 MB submission.json."""
    from airv.core.submission import build_submission
    from airv.core.tasks import MAX_GUESSED_TESTS

    huge = {"train": [], "test": [{"input": [[1]]}] * 100_000}
    junk = {"train": [], "test": [0] * 100_000 + [{"input": [[1]]}] * 2}
    path = write(tmp_path, {"huge": huge, "junk": junk, "good": GOOD})
    ch = load_challenges(path, strict=False)
    assert ch.n_tests == {"huge": MAX_GUESSED_TESTS, "junk": 2, "good": 1}
    sub = build_submission(ch, {})
    assert len(sub["huge"]) == MAX_GUESSED_TESTS and len(sub["junk"]) == 2


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"[1, 2]", "must be a JSON object at the top level, not a list"),
        (b'"text"', "not a string"),
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
    ],
)
@pytest.mark.parametrize("strict", [True, False])
def test_file_level_problems_raise_in_both_modes(
    tmp_path: Path, content: bytes, fragment: str, strict: bool
) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=fragment) as info:
        load_challenges(path, strict=strict)
    assert str(path) in str(info.value)


def test_missing_file_raises_input_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(InputError, match="cannot read challenge file") as info:
        load_challenges(path, strict=False)
    assert str(path) in str(info.value)


def test_test_output_is_ignored_and_order_kept(tmp_path: Path) -> None:
    task = {
        "train": [{"input": [[1]], "output": [[2]]}, {"input": [[3]], "output": [[4]]}],
        "test": [{"input": [[5]], "output": [[6]]}, {"input": [[7, 7]]}],
    }
    path = write(tmp_path, {"z": task, "a": GOOD})
    ch = load_challenges(path, strict=True)
    assert ch.task_ids == ("z", "a")
    assert ch.tasks["z"] == Task(
        "z", (Pair(((1,),), ((2,),)), Pair(((3,),), ((4,),))), (((5,),), ((7, 7),))
    )
    assert ch.n_tests == {"z": 2, "a": 1}
    assert ch.rejected == {}
    assert ch.path == path


def test_load_solutions_validates_and_names_task(tmp_path: Path) -> None:
    good = write(tmp_path, {"a": [[[1, 2]], [[3]]]}, "s.json")
    assert load_solutions(good) == {"a": (((1, 2),), ((3,),))}
    for value, fragment in [
        ([[[1], [2, 3]]], "[0] row 1 has 2 cells, row 0 has 1"),
        ([], "has no test outputs"),
        ({"x": 1}, "not a list of grids"),
        ([[[1]], [[False]]], "[1] row 0 cell 0 is a boolean"),
    ]:
        bad = write(tmp_path, {"a": [[[1]]], "b": value}, "bad.json")
        with pytest.raises(InputError) as info:
            load_solutions(bad)
        assert str(bad) in str(info.value)
        assert "task b" in str(info.value)
        assert fragment in str(info.value)


def test_parse_grid_accepts_the_limits() -> None:
    assert parse_grid([[9] * 30] * 30, "g") == ((9,) * 30,) * 30
    assert parse_grid([[0]], "g") == ((0,),)
    with pytest.raises(GridError, match=r"^g row 0 cell 0 is a float \(1\.5\)"):
        parse_grid([[1.5]], "g")
    with pytest.raises(GridError, match="is null"):
        parse_grid(None, "g")


grids = (
    # Small grids keep generation fast; the 30x30 limits are tested directly above.
    st.integers(1, 6)
    .flatmap(
        lambda w: st.lists(
            st.lists(st.integers(0, 9), min_size=w, max_size=w), min_size=1, max_size=6
        )
    )
    .map(lambda rows: tuple(tuple(r) for r in rows))
)

tasks = st.builds(
    Task,
    id=st.text(min_size=1, max_size=12),
    train=st.lists(st.builds(Pair, grids, grids), min_size=1, max_size=3).map(tuple),
    test=st.lists(grids, min_size=1, max_size=2).map(tuple),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(tasks, min_size=1, max_size=4, unique_by=lambda t: t.id))
def test_dump_then_load_round_trips(
    tmp_path_factory: pytest.TempPathFactory, ts: list[Task]
) -> None:
    directory = tmp_path_factory.mktemp("rt")
    dump_challenges(ts, directory / "c.json")
    ch = load_challenges(directory / "c.json", strict=True)
    assert ch.task_ids == tuple(t.id for t in ts)
    assert list(ch.tasks.values()) == ts
    solutions: dict[str, tuple[Grid, ...]] = {t.id: t.test for t in ts}
    dump_solutions(solutions, directory / "s.json")
    assert load_solutions(directory / "s.json") == solutions


def test_a_json_lines_log_counts_damaged_and_stray_lines(tmp_path: Path) -> None:
    from airv.core.jsonio import append_jsonl, read_jsonl

    log = tmp_path / "log.jsonl"
    append_jsonl(log, [b'{"a": 1}', b'{"a": 2}'])
    with open(log, "ab") as f:
        f.write(b'5\n[1]\n{"b": 3}\n{"a": 4')  # stray values, a foreign record, a cut line
    records, damaged = read_jsonl(log, lambda d: int(d["a"]) + d.get("pad", 0))
    assert records == [1, 2] and damaged == 4
    assert read_jsonl(tmp_path / "none.jsonl", int) == ([], 0)
