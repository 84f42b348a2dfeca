"""The synthetic task generator: rules really map inputs to outputs, tasks pin down their rule,
draws are deterministic under a seed, sizes and colours stay within the spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airv.core.augment import D8
from airv.core.errors import ConfigError
from airv.core.tasks import Pair, dump_challenges, dump_solutions, load_challenges, load_solutions
from airv.core.types import shape
from airv.demo.synthetic import (
    BACKGROUND,
    RECOLOUR_SPEC,
    Rule,
    SyntheticSpec,
    as_files,
    consistent_colour_map,
    make_task,
    make_tasks,
    n_colours,
)

seeds = st.integers(min_value=0, max_value=2**32 - 1)


@settings(max_examples=100)
@given(seed=seeds)
def test_rule_maps_every_train_input_to_its_output_and_test_to_solution(seed: int) -> None:
    t = make_task("t", SyntheticSpec(), np.random.default_rng(seed))
    for pair in t.task.train:
        assert t.rule.apply(pair.input) == pair.output
    assert tuple(t.rule.apply(g) for g in t.task.test) == t.solutions
    # The rule is the D8 transform then the colour map, cell by cell.
    for pair in t.task.train:
        moved = t.rule.d8.apply(pair.input)
        assert pair.output == tuple(tuple(t.rule.colours[c] for c in row) for row in moved)


@settings(max_examples=100)
@given(seed=seeds)
def test_no_task_has_the_no_op_rule_and_background_stays(seed: int) -> None:
    t = make_task("t", SyntheticSpec(), np.random.default_rng(seed))
    assert t.rule.d8 is not D8.IDENTITY or t.rule.has_colour_map
    assert t.rule.colours[BACKGROUND] == BACKGROUND
    assert sorted(t.rule.colours) == list(range(10))
    if t.rule.has_colour_map:
        # A colour map moves at least one colour the task actually uses.
        used = {c for p in t.task.train for row in p.input for c in row}
        assert any(t.rule.colours[c] != c for c in used)


@settings(max_examples=100)
@given(seed=seeds)
def test_train_pairs_determine_the_test_answer(seed: int) -> None:
    t = make_task("t", SyntheticSpec(), np.random.default_rng(seed))
    train_colours = {c for p in t.task.train for row in p.input for c in row}
    assert {c for g in t.task.test for row in g for c in row} <= train_colours
    for d8 in D8:
        lut = consistent_colour_map(t.task.train, d8)
        if lut is None:
            continue
        # Any rule of the family that explains the train pairs gives the same answer.
        answer = tuple(tuple(int(lut[c]) for c in row) for row in d8.apply(t.task.test[0]))
        assert answer == t.solutions[0]


@settings(max_examples=60)
@given(
    seed=seeds,
    sides=st.tuples(st.integers(2, 8), st.integers(0, 4)),
    n_train=st.tuples(st.integers(1, 4), st.integers(0, 2)),
    colours=st.tuples(st.integers(1, 5), st.integers(0, 3)),
    n_tests=st.integers(1, 3),
)
def test_sizes_counts_and_colours_stay_within_the_spec(
    seed: int,
    sides: tuple[int, int],
    n_train: tuple[int, int],
    colours: tuple[int, int],
    n_tests: int,
) -> None:
    spec = SyntheticSpec(
        min_side=sides[0],
        max_side=sides[0] + sides[1],
        min_train=max(2, n_train[0]),
        max_train=max(2, n_train[0]) + n_train[1],
        min_colours=colours[0],
        max_colours=colours[0] + colours[1],
        n_tests=n_tests,
    )
    t = make_task("t", spec, np.random.default_rng(seed))
    assert spec.min_train <= len(t.task.train) <= spec.max_train
    assert len(t.task.test) == len(t.solutions) == n_tests
    inputs = [p.input for p in t.task.train] + list(t.task.test)
    for g in inputs:
        rows, cols = shape(g)
        assert spec.min_side <= rows <= spec.max_side
        assert spec.min_side <= cols <= spec.max_side
    palette = {c for g in inputs for row in g for c in row} - {BACKGROUND}
    assert len(palette) <= spec.max_colours
    swaps = t.rule.d8 in (D8.ROT90, D8.ROT270, D8.TRANSPOSE, D8.ANTI_TRANSPOSE)
    for p in t.task.train:
        rows, cols = shape(p.input)
        assert shape(p.output) == ((cols, rows) if swaps else (rows, cols))


def test_same_seed_same_tasks_other_seed_other_tasks() -> None:
    a = make_tasks(20, SyntheticSpec(), np.random.default_rng(7))
    b = make_tasks(20, SyntheticSpec(), np.random.default_rng(7))
    c = make_tasks(20, SyntheticSpec(), np.random.default_rng(8))
    assert a == b
    assert a != c
    assert [t.task.id for t in a] == [f"syn{i:05d}" for i in range(20)]


def test_d8_weights_select_the_transforms() -> None:
    only_flip = SyntheticSpec(d8_weights=(0, 0, 0, 0, 1, 0, 0, 0), colour_map_prob=0.0)
    tasks = make_tasks(30, only_flip, np.random.default_rng(0))
    assert {t.rule for t in tasks} == {Rule(D8.FLIP_LR, tuple(range(10)))}
    assert all(t.rule.name == "FLIP_LR" for t in tasks)


def test_all_rules_of_the_family_occur() -> None:
    tasks = make_tasks(400, SyntheticSpec(), np.random.default_rng(1))
    names = {t.rule.name for t in tasks}
    assert {d.name + "+colours" for d in D8} <= names
    assert {d.name for d in D8 if d is not D8.IDENTITY} <= names
    assert "IDENTITY" not in names


def test_files_round_trip_through_the_loaders(tmp_path: Path) -> None:
    out = tmp_path
    tasks = make_tasks(5, SyntheticSpec(n_tests=2), np.random.default_rng(3), prefix="x")
    challenges, solutions = as_files(tasks)
    dump_challenges(list(challenges.values()), out / "c.json")
    dump_solutions(solutions, out / "s.json")
    loaded = load_challenges(out / "c.json", strict=True)
    assert loaded.tasks == challenges
    assert load_solutions(out / "s.json") == solutions


def test_consistent_colour_map_rejects_a_non_function() -> None:
    pairs = [Pair(((1, 1),), ((2, 3),))]
    assert consistent_colour_map(pairs, D8.IDENTITY) is None
    lut = consistent_colour_map([Pair(((1, 2),), ((2, 1),))], D8.IDENTITY)
    assert lut is not None and (int(lut[1]), int(lut[2])) == (2, 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_side": 0},
        {"min_side": 5, "max_side": 4},
        {"max_side": 31},
        {"min_train": 0},
        {"n_tests": 0},
        {"max_colours": 10},
        {"min_density": 0.0},
        {"d8_weights": (1.0,) * 7},
        {"d8_weights": (0.0,) * 8},
        {"colour_map_prob": 1.5},
    ],
)
def test_bad_specs_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SyntheticSpec(**kwargs)  # type: ignore[arg-type]


def test_recolour_tasks_recolour_one_colour_in_place() -> None:
    for t in make_tasks(30, RECOLOUR_SPEC, np.random.default_rng(3)):
        assert n_colours(t.task) == 1
        assert t.rule.d8 is D8.IDENTITY and t.rule.has_colour_map
        for pair in t.task.train:
            assert shape(pair.output) == shape(pair.input)
            before = {c for row in pair.input for c in row} - {BACKGROUND}
            after = {c for row in pair.output for c in row} - {BACKGROUND}
            assert len(after) == len(before) <= 1  # a small grid may hold background only
            assert not before or before != after
