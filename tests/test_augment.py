"""Tests for airv.core.augment: D8 group laws, grid round trips, keys, apply_task, the planner."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airv.core.augment import D8, IDENTITY, Augmentation, plan_augmentations
from airv.core.tasks import Pair, Task
from airv.core.types import Grid, shape
from strategies import grids

d8s = st.sampled_from(list(D8))


@st.composite
def colour_maps(draw: st.DrawFn, *, keep_background: bool = False) -> tuple[int, ...]:
    moved = draw(st.permutations(range(1 if keep_background else 0, 10)))
    return ((0,) if keep_background else ()) + tuple(moved)


@st.composite
def augmentations(draw: st.DrawFn) -> Augmentation:
    colours = draw(colour_maps(keep_background=draw(st.booleans())))
    n = draw(st.integers(0, 12))
    order = tuple(draw(st.permutations(range(n)))) if n else None
    return Augmentation(draw(d8s), colours, order)


def reference(d8: D8, grid: Grid) -> Grid:
    """Each element written out by index arithmetic, independent of the numpy version."""
    h, w = shape(grid)
    g = grid
    cells = {
        D8.IDENTITY: (h, w, lambda i, j: g[i][j]),
        D8.ROT90: (w, h, lambda i, j: g[j][w - 1 - i]),
        D8.ROT180: (h, w, lambda i, j: g[h - 1 - i][w - 1 - j]),
        D8.ROT270: (w, h, lambda i, j: g[h - 1 - j][i]),
        D8.FLIP_LR: (h, w, lambda i, j: g[i][w - 1 - j]),
        D8.FLIP_UD: (h, w, lambda i, j: g[h - 1 - i][j]),
        D8.TRANSPOSE: (w, h, lambda i, j: g[j][i]),
        D8.ANTI_TRANSPOSE: (w, h, lambda i, j: g[h - 1 - j][w - 1 - i]),
    }
    rows, cols, cell = cells[d8]
    return tuple(tuple(cell(i, j) for j in range(cols)) for i in range(rows))


ASYMMETRIC: Grid = ((1, 2, 3), (4, 5, 6))


def make_task(n_train: int = 3, *, colours: tuple[int, ...] = (0, 1, 2)) -> Task:
    """Pairs told apart by their first cell; every grid uses only `colours`."""
    a, b, *_ = colours + colours
    train = tuple(
        Pair(((colours[i % len(colours)], a, b), (b, a, a)), ((a,), (b,))) for i in range(n_train)
    )
    return Task(id="t0", train=train, test=(((a, b), (b, b), (a, a)),))


# ---- D8 ---------------------------------------------------------------------------------------


def test_d8_actions_match_hand_written_examples() -> None:
    assert D8.ROT90.apply(ASYMMETRIC) == ((3, 6), (2, 5), (1, 4))  # counter-clockwise
    assert D8.ROT270.apply(ASYMMETRIC) == ((4, 1), (5, 2), (6, 3))
    assert D8.ROT180.apply(ASYMMETRIC) == ((6, 5, 4), (3, 2, 1))
    assert D8.FLIP_LR.apply(ASYMMETRIC) == ((3, 2, 1), (6, 5, 4))
    assert D8.FLIP_UD.apply(ASYMMETRIC) == ((4, 5, 6), (1, 2, 3))
    assert D8.TRANSPOSE.apply(ASYMMETRIC) == ((1, 4), (2, 5), (3, 6))
    assert D8.ANTI_TRANSPOSE.apply(ASYMMETRIC) == ((6, 3), (5, 2), (4, 1))
    assert D8.IDENTITY.apply(ASYMMETRIC) == ASYMMETRIC


def test_d8_images_of_an_asymmetric_grid_are_all_different() -> None:
    assert len({d.apply(ASYMMETRIC) for d in D8}) == 8


def test_d8_values_and_types() -> None:
    assert [int(d) for d in D8] == list(range(8))
    for x, y in itertools.product(D8, D8):
        assert type(x.then(y)) is D8
        assert type(x.inverse) is D8


@settings(max_examples=200)
@given(d8s, grids())
def test_d8_matches_index_arithmetic(d: D8, g: Grid) -> None:
    out = d.apply(g)
    assert out == reference(d, g)
    assert all(type(c) is int for row in out for c in row)


@settings(max_examples=200)
@given(d8s, d8s, grids(max_side=8))
def test_d8_table_matches_actions(x: D8, y: D8, g: Grid) -> None:
    assert x.then(y).apply(g) == y.apply(x.apply(g))


def test_d8_identity_law() -> None:
    for x in D8:
        assert D8.IDENTITY.then(x) is x
        assert x.then(D8.IDENTITY) is x


def test_d8_inverse_law() -> None:
    for x in D8:
        assert x.then(x.inverse) is D8.IDENTITY
        assert x.inverse.then(x) is D8.IDENTITY
        assert x.inverse.inverse is x
    assert D8.ROT90.inverse is D8.ROT270
    assert D8.ROT180.inverse is D8.ROT180


def test_d8_closure_each_row_is_a_permutation() -> None:
    for x in D8:
        assert sorted(x.then(y) for y in D8) == list(D8)
        assert sorted(y.then(x) for y in D8) == list(D8)


def test_d8_associativity() -> None:
    for x, y, z in itertools.product(D8, D8, D8):
        assert x.then(y).then(z) is x.then(y.then(z))


def test_d8_orders() -> None:
    def order(x: D8) -> int:
        power, n = x, 1
        while power is not D8.IDENTITY:
            power, n = power.then(x), n + 1
        return n

    assert order(D8.IDENTITY) == 1
    assert order(D8.ROT90) == order(D8.ROT270) == 4
    assert order(D8.ROT180) == 2
    for flip in (D8.FLIP_LR, D8.FLIP_UD, D8.TRANSPOSE, D8.ANTI_TRANSPOSE):
        assert order(flip) == 2
    # The group is not abelian.
    assert D8.ROT90.then(D8.FLIP_LR) is not D8.FLIP_LR.then(D8.ROT90)


@settings(max_examples=200)
@given(d8s, grids())
def test_d8_shape(d: D8, g: Grid) -> None:
    h, w = shape(g)
    swaps = d in (D8.ROT90, D8.ROT270, D8.TRANSPOSE, D8.ANTI_TRANSPOSE)
    assert shape(d.apply(g)) == ((w, h) if swaps else (h, w))


def test_d8_rejects_bad_grids() -> None:
    with pytest.raises(ValueError):
        D8.ROT90.apply(((1, 2), (3,)))
    with pytest.raises(ValueError):
        D8.ROT90.apply(())
    with pytest.raises(ValueError):
        IDENTITY.apply_grid(((10,),))
    with pytest.raises(ValueError):
        IDENTITY.reverse_grid(((-1,),))


# ---- grid round trips -------------------------------------------------------------------------


@settings(max_examples=200)
@given(d8s, st.booleans().flatmap(lambda keep: colour_maps(keep_background=keep)), grids())
def test_reverse_undoes_apply(d: D8, colours: tuple[int, ...], g: Grid) -> None:
    aug = Augmentation(d, colours)
    assert aug.reverse_grid(aug.apply_grid(g)) == g
    assert aug.apply_grid(aug.reverse_grid(g)) == g


@settings(max_examples=200)
@given(d8s, colour_maps(), grids(max_side=10))
def test_apply_grid_is_d8_then_colour_map(d: D8, colours: tuple[int, ...], g: Grid) -> None:
    expected = tuple(tuple(colours[c] for c in row) for row in d.apply(g))
    assert Augmentation(d, colours).apply_grid(g) == expected


def test_colour_map_direction() -> None:
    swap_1_2 = (0, 2, 1, 3, 4, 5, 6, 7, 8, 9)
    aug = Augmentation(colours=swap_1_2)
    assert aug.apply_grid(((1, 2, 3),)) == ((2, 1, 3),)
    cycle = (1, 2, 3, 4, 5, 6, 7, 8, 9, 0)  # c -> c + 1
    assert Augmentation(colours=cycle).apply_grid(((0, 9),)) == ((1, 0),)
    assert Augmentation(colours=cycle).reverse_grid(((1, 0),)) == ((0, 9),)


# ---- construction and keys --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"d8": 1},
        {"colours": (0, 1, 2)},
        {"colours": (0, 0, 2, 3, 4, 5, 6, 7, 8, 9)},
        {"colours": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]},
        {"colours": (0, True, 2, 3, 4, 5, 6, 7, 8, 9)},
        {"train_order": ()},
        {"train_order": (0, 2)},
        {"train_order": (1, 1)},
        {"train_order": [1, 0]},
    ],
)
def test_invalid_augmentations_raise(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Augmentation(**kwargs)  # type: ignore[arg-type]


def test_keys_examples() -> None:
    assert IDENTITY.key == "id"
    aug = Augmentation(D8.ROT90, (0, 2, 3, 1, 4, 5, 6, 7, 8, 9), (2, 0, 1))
    assert aug.key == "r1.c0231456789.o2,0,1"
    assert Augmentation(D8.FLIP_LR).key == "r4"
    assert Augmentation(train_order=(1, 0)).key == "o1,0"
    # An explicit file order leaves a task unchanged but is a different value with its own key.
    explicit = Augmentation(train_order=(0, 1, 2))
    assert explicit.key == "o0,1,2"
    assert explicit != IDENTITY


@settings(max_examples=200)
@given(augmentations())
def test_key_round_trip(aug: Augmentation) -> None:
    assert Augmentation.from_key(aug.key) == aug
    assert Augmentation.from_key(aug.key).key == aug.key


@settings(max_examples=200)
@given(augmentations(), augmentations())
def test_keys_are_unique(a: Augmentation, b: Augmentation) -> None:
    assert (a.key == b.key) == (a == b)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "ID",
        "id.r1",
        "r1.id",
        "r8",
        "r0",  # identity parts are left out, not spelled
        "r",
        "r01",
        "r1.r2",
        "c0231456789.r1",  # out of order
        "r1..o1,0",
        "r1.",
        ".r1",
        "x1",
        "c023145678",  # 9 digits
        "c02314567899",  # 11 digits
        "c0031456789",  # not a permutation
        "c0123456789",  # identity colours
        "o",
        "o1,,0",
        "o1,0,",
        "o01,0",
        "o0,2",
        "o1, 0",
        "o-1,0",
        "r1 ",
        "r١",  # a non-ASCII digit
    ],
)
def test_malformed_keys_raise(key: str) -> None:
    with pytest.raises(ValueError, match="key"):
        Augmentation.from_key(key)


# ---- apply_task -------------------------------------------------------------------------------


def test_apply_task_reorders_and_transforms() -> None:
    task = make_task(3)
    aug = Augmentation(D8.ROT90, (0, 2, 1, 3, 4, 5, 6, 7, 8, 9), (2, 0, 1))
    out = aug.apply_task(task)
    assert out.id == task.id
    assert len(out.train) == 3
    for new_i, old_i in enumerate((2, 0, 1)):
        assert out.train[new_i].input == aug.apply_grid(task.train[old_i].input)
        assert out.train[new_i].output == aug.apply_grid(task.train[old_i].output)
        assert out.train[new_i].input[-1][0] == (0, 2, 1)[old_i]  # top-left cell, rotated
    assert out.test == tuple(aug.apply_grid(g) for g in task.test)
    assert shape(out.test[0]) == (2, 3)
    assert shape(out.train[0].output) == (1, 2)
    # Reversing every grid gives back the original task with the pairs reordered.
    assert tuple(aug.reverse_grid(g) for g in out.test) == task.test


def test_apply_task_identity_and_plain_order() -> None:
    task = make_task(2)
    assert IDENTITY.apply_task(task) == task
    assert Augmentation(D8.TRANSPOSE).apply_task(task).train[1].input == D8.TRANSPOSE.apply(
        task.train[1].input
    )
    swapped = Augmentation(train_order=(1, 0)).apply_task(task)
    assert swapped.train == (task.train[1], task.train[0])
    assert swapped.test == task.test


def test_apply_task_rejects_order_of_wrong_length() -> None:
    with pytest.raises(ValueError, match="train pairs"):
        Augmentation(train_order=(1, 0)).apply_task(make_task(3))


# ---- planner ----------------------------------------------------------------------------------


def keys(plan: list[Augmentation]) -> list[str]:
    return [a.key for a in plan]


@pytest.mark.parametrize("k", [0, 1, 5, 8, 30])
def test_plan_gives_k_distinct_identity_first(k: int) -> None:
    plan = plan_augmentations(make_task(3), k, np.random.default_rng(0))
    assert len(plan) == k
    assert len(set(keys(plan))) == k
    if k:
        assert plan[0] == IDENTITY


def test_plan_first_eight_cover_d8_in_order() -> None:
    plan = plan_augmentations(make_task(3), 20, np.random.default_rng(1))
    assert [a.d8 for a in plan[:8]] == list(D8)
    assert sorted(a.d8 for a in plan[8:16]) == list(D8)


def test_plan_is_deterministic_per_seed() -> None:
    task = make_task(3)
    a = plan_augmentations(task, 16, np.random.default_rng(7))
    b = plan_augmentations(task, 16, np.random.default_rng(7))
    c = plan_augmentations(task, 16, np.random.default_rng(8))
    assert keys(a) == keys(b)
    assert keys(a) != keys(c)


def test_plan_varies_colours_and_train_order() -> None:
    plan = plan_augmentations(make_task(3), 16, np.random.default_rng(2))
    assert any(a.train_order is not None for a in plan)
    assert any(a.colours != IDENTITY.colours for a in plan)


def test_plan_keep_background_keeps_zero() -> None:
    task = make_task(3, colours=(0, 4, 7))
    for seed in range(5):
        plan = plan_augmentations(task, 40, np.random.default_rng(seed))
        assert all(a.colours[0] == 0 for a in plan)
    free = plan_augmentations(task, 40, np.random.default_rng(0), keep_background=False)
    assert any(a.colours[0] != 0 for a in free)


def test_plan_moves_only_colours_present_freely() -> None:
    # Colours absent from the task keep ascending order among themselves, so keys differ only
    # where prompts differ.
    task = make_task(2, colours=(0, 4, 7))
    for aug in plan_augmentations(task, 40, np.random.default_rng(3)):
        rest = [aug.colours[c] for c in range(1, 10) if c not in (4, 7)]
        assert rest == sorted(rest)


def test_plan_respects_switches() -> None:
    task = make_task(3)
    plain = plan_augmentations(
        task, 30, np.random.default_rng(0), permute_colours=False, shuffle_train=False
    )
    assert keys(plain) == ["id", "r1", "r2", "r3", "r4", "r5", "r6", "r7"]
    no_colour = plan_augmentations(task, 30, np.random.default_rng(0), permute_colours=False)
    assert all(a.colours == IDENTITY.colours for a in no_colour)
    assert len(no_colour) == 30
    no_shuffle = plan_augmentations(task, 30, np.random.default_rng(0), shuffle_train=False)
    assert all(a.train_order is None for a in no_shuffle)


def test_plan_small_space_terminates_with_everything() -> None:
    one_pair = make_task(1)
    plan = plan_augmentations(
        one_pair, 100, np.random.default_rng(0), permute_colours=False, shuffle_train=True
    )
    assert sorted(a.d8 for a in plan) == list(D8)
    # 2 pairs, colours 1 and 2 free among 1-9 (9 * 8 maps), 2 orders: 8 * 72 * 2 in all.
    task = make_task(2, colours=(1, 2))
    plan = plan_augmentations(task, 5000, np.random.default_rng(0))
    assert len(plan) == len(set(keys(plan))) == 8 * 72 * 2
    assert plan_augmentations(task, 10, np.random.default_rng(0), exclude=keys(plan)) == []


def test_plan_only_background_colour() -> None:
    task = make_task(1, colours=(0,))
    plan = plan_augmentations(task, 50, np.random.default_rng(0))
    assert keys(plan) == ["id", "r1", "r2", "r3", "r4", "r5", "r6", "r7"]
    plan = plan_augmentations(task, 100, np.random.default_rng(0), keep_background=False)
    assert len(plan) == 8 * 10


def test_plan_exclude_honoured_and_continues_d8_cycle() -> None:
    task = make_task(3)
    first = plan_augmentations(task, 4, np.random.default_rng(0))
    second = plan_augmentations(task, 8, np.random.default_rng(0), exclude=keys(first))
    assert not set(keys(first)) & set(keys(second))
    assert len(set(keys(second))) == 8
    assert IDENTITY not in second
    assert [a.d8 for a in second] == [4, 5, 6, 7, 0, 1, 2, 3]


def test_plan_exclude_identity_only() -> None:
    plan = plan_augmentations(make_task(3), 8, np.random.default_rng(0), exclude={"id"})
    assert "id" not in keys(plan)
    # The excluded identity counts as a use of D8.IDENTITY, so the cycle starts one further on.
    assert [a.d8 for a in plan] == [1, 2, 3, 4, 5, 6, 7, 0]


def test_plan_rejects_negative_k_and_bad_exclude() -> None:
    with pytest.raises(ValueError):
        plan_augmentations(make_task(2), -1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="key"):
        plan_augmentations(make_task(2), 3, np.random.default_rng(0), exclude=["nonsense"])


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 4),
    st.sampled_from([(0,), (0, 5), (3, 1, 2), tuple(range(10))]),
    st.integers(0, 40),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_plan_properties(
    n_train: int,
    colours: tuple[int, ...],
    k: int,
    keep_background: bool,
    permute_colours: bool,
    shuffle_train: bool,
    seed: int,
) -> None:
    task = make_task(n_train, colours=colours)
    plan = plan_augmentations(
        task,
        k,
        np.random.default_rng(seed),
        keep_background=keep_background,
        permute_colours=permute_colours,
        shuffle_train=shuffle_train,
    )
    assert len(set(keys(plan))) == len(plan) <= k
    if k:
        assert plan[0] == IDENTITY
    for aug in plan:
        aug.apply_task(task)  # orders always fit the task
        assert aug.train_order is None or (shuffle_train and n_train > 1)
        assert permute_colours or aug.colours == IDENTITY.colours
        assert not keep_background or aug.colours[0] == 0
    assert [a.d8 for a in plan[:8]] == list(D8)[: len(plan[:8])]
