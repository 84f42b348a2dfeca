"""Synthetic ARC-style tasks: random grids and a hidden rule the solver must infer from the pairs.

The rule family is the one airv's own augmentations live in: one of the 8 D8 transforms
(rotations, flips, transposes) followed by a colour permutation of the non-background colours.
The no-op rule (identity transform, identity colours) is never drawn. Each task's train pairs
determine its rule: every colour of the test input occurs in some train input, and a task whose
train pairs are also explained by another rule of the family giving a different test answer
is redrawn. Used by the demo model's training (`airv.demo.train`), by its test and by benchmarks;
everything is drawn from the one numpy Generator passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from airv.core.augment import D8, Augmentation
from airv.core.errors import ConfigError
from airv.core.tasks import Pair, Task
from airv.core.types import MAX_SIDE, N_COLOURS, Grid, TaskId

BACKGROUND = 0
# Redraws of a task whose train pairs do not pin down its rule; with sides >= 2 and at least
# two train pairs a redraw is rare, so hitting this means the spec is degenerate.
_MAX_REDRAWS = 200

_Array = npt.NDArray[np.intp]


@dataclass(frozen=True, slots=True)
class Rule:
    """A hidden task rule: the D8 transform, then `colours[c]` for a cell of colour c."""

    d8: D8
    colours: tuple[int, ...]

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(self.d8, self.colours)

    @property
    def has_colour_map(self) -> bool:
        return self.colours != tuple(range(N_COLOURS))

    @property
    def name(self) -> str:
        """E.g. "FLIP_LR" or "ROT90+colours": the family member, for per-rule accuracy tables."""
        return self.d8.name + ("+colours" if self.has_colour_map else "")

    def apply(self, grid: Grid) -> Grid:
        return self.augmentation.apply_grid(grid)


@dataclass(frozen=True, slots=True)
class SyntheticSpec:
    """How tasks are drawn. Sides are drawn independently per grid, uniformly in
    [min_side, max_side]; a task uses `n_colours` non-background colours (drawn uniformly in
    [min_colours, max_colours]); each cell is non-background with a probability drawn per grid
    in [min_density, max_density]. `d8_weights[d]` weights transform d (index = D8 value);
    `colour_map_prob` is the chance of a colour map on top (always one on the identity)."""

    min_side: int = 2
    max_side: int = 6
    min_train: int = 2
    max_train: int = 3
    n_tests: int = 1
    min_colours: int = 2
    max_colours: int = 4
    min_density: float = 0.3
    max_density: float = 0.8
    d8_weights: tuple[float, ...] = (1.0,) * 8
    colour_map_prob: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.min_side <= self.max_side <= MAX_SIDE:
            raise ConfigError(f"synthetic spec: need 1 <= min_side <= max_side <= {MAX_SIDE}")
        if not 1 <= self.min_train <= self.max_train:
            raise ConfigError("synthetic spec: need 1 <= min_train <= max_train")
        if self.n_tests < 1:
            raise ConfigError("synthetic spec: n_tests must be >= 1")
        if not 1 <= self.min_colours <= self.max_colours <= N_COLOURS - 1:
            raise ConfigError("synthetic spec: need 1 <= min_colours <= max_colours <= 9")
        if not 0.0 < self.min_density <= self.max_density <= 1.0:
            raise ConfigError("synthetic spec: need 0 < min_density <= max_density <= 1")
        if len(self.d8_weights) != len(D8) or any(w < 0 for w in self.d8_weights):
            raise ConfigError("synthetic spec: d8_weights needs 8 non-negative weights")
        if sum(self.d8_weights) <= 0:
            raise ConfigError("synthetic spec: d8_weights must not all be zero")
        if not 0.0 <= self.colour_map_prob <= 1.0:
            raise ConfigError("synthetic spec: colour_map_prob must be in [0, 1]")


# The corner of the family a small model learns first (a colour map on small grids, no
# transform): the demo model's end-to-end test and its benchmark draw from it.
EASY_SPEC = SyntheticSpec(max_side=4, d8_weights=(1.0,) + (0.0,) * 7, colour_map_prob=1.0)
# Its simplest tasks: one non-background colour, recoloured. The demo model's end-to-end test
# draws from it (the model solves most of these; with more colours it solves fewer).
RECOLOUR_SPEC = replace(EASY_SPEC, min_colours=1, max_colours=1)


def n_colours(task: Task) -> int:
    """Non-background colours of a task's inputs (its palette size)."""
    grids = [p.input for p in task.train] + list(task.test)
    return len({c for g in grids for row in g for c in row} - {BACKGROUND})


@dataclass(frozen=True, slots=True)
class SyntheticTask:
    task: Task
    solutions: tuple[Grid, ...]  # one output per test input
    rule: Rule


def make_tasks(
    n: int, spec: SyntheticSpec, rng: np.random.Generator, *, prefix: str = "syn"
) -> list[SyntheticTask]:
    """`n` tasks with ids `{prefix}{i:05d}`."""
    return [make_task(f"{prefix}{i:05d}", spec, rng) for i in range(n)]


def make_task(task_id: TaskId, spec: SyntheticSpec, rng: np.random.Generator) -> SyntheticTask:
    """One task whose train pairs determine its rule (see the module docstring)."""
    for _ in range(_MAX_REDRAWS):
        n_colours = int(rng.integers(spec.min_colours, spec.max_colours + 1))
        palette = tuple(
            int(c) + 1 for c in np.sort(rng.choice(N_COLOURS - 1, n_colours, replace=False))
        )
        rule = _sample_rule(spec, palette, rng)
        n_train = int(rng.integers(spec.min_train, spec.max_train + 1))
        inputs = [_random_grid(spec, palette, rng) for _ in range(n_train + spec.n_tests)]
        train_in, test_in = inputs[:n_train], inputs[n_train:]
        task = Task(
            id=task_id,
            train=tuple(Pair(g, rule.apply(g)) for g in train_in),
            test=tuple(test_in),
        )
        solutions = tuple(rule.apply(g) for g in test_in)
        if _is_determined(task, solutions):
            return SyntheticTask(task, solutions, rule)
    raise ConfigError(f"synthetic spec draws no determined task in {_MAX_REDRAWS} tries: {spec}")


def as_files(
    tasks: Sequence[SyntheticTask],
) -> tuple[dict[TaskId, Task], dict[TaskId, tuple[Grid, ...]]]:
    """The tasks and solutions keyed by id, as `tasks.dump_challenges` / `dump_solutions` take
    them."""
    return {t.task.id: t.task for t in tasks}, {t.task.id: t.solutions for t in tasks}


def _sample_rule(spec: SyntheticSpec, palette: tuple[int, ...], rng: np.random.Generator) -> Rule:
    weights = np.asarray(spec.d8_weights, dtype=np.float64)
    d8 = D8(int(rng.choice(len(D8), p=weights / weights.sum())))
    colours = list(range(N_COLOURS))
    if d8 is D8.IDENTITY or rng.random() < spec.colour_map_prob:
        # The palette's colours go to distinct non-background colours, not all to themselves.
        while True:
            images = [int(c) + 1 for c in rng.choice(N_COLOURS - 1, len(palette), replace=False)]
            if images != list(palette):
                break
        # Complete to a permutation of 0-9: the colours freed up take the unused images in order.
        free_sources = [c for c in range(1, N_COLOURS) if c not in palette]
        free_images = [c for c in range(1, N_COLOURS) if c not in images]
        for src, img in zip(palette, images, strict=True):
            colours[src] = img
        for src, img in zip(free_sources, free_images, strict=True):
            colours[src] = img
    return Rule(d8, tuple(colours))


def _random_grid(spec: SyntheticSpec, palette: tuple[int, ...], rng: np.random.Generator) -> Grid:
    rows, cols = (int(s) for s in rng.integers(spec.min_side, spec.max_side + 1, size=2))
    density = rng.uniform(spec.min_density, spec.max_density)
    cells = rng.choice(np.asarray(palette), size=(rows, cols))
    cells[rng.random((rows, cols)) >= density] = BACKGROUND
    return tuple(tuple(int(c) for c in row) for row in cells)


def _is_determined(task: Task, solutions: tuple[Grid, ...]) -> bool:
    """True if every test colour occurs in a train input and no other D8 transform, with some
    colour map consistent with the train pairs, gives a different answer to a test input."""
    seen = {c for p in task.train for row in p.input for c in row}
    if any(c not in seen for g in task.test for row in g for c in row):
        return False
    for d8 in D8:
        lut = consistent_colour_map(task.train, d8)
        if lut is None:
            continue
        for test, want in zip(task.test, solutions, strict=True):
            got = lut[np.asarray(d8.apply(test), dtype=np.intp)]
            if got.shape != np.asarray(want).shape or not np.array_equal(got, want):
                return False
    return True


def consistent_colour_map(train: Sequence[Pair], d8: D8) -> _Array | None:
    """The colour map that, after `d8`, sends every pair's input to its output, or None if
    none does: a lookup table of N_COLOURS entries (`lut[c]` is colour c's image), colours
    absent from the inputs mapped to themselves. Any map of colours to colours counts, not only
    the family's permutations; pairs whose shapes differ after `d8` have none. Besides this
    module's check that a task's rule is determined, benchmarks use it to ask whether a real
    task lies in the family (bench.common.in_family)."""
    lut: _Array = np.arange(N_COLOURS, dtype=np.intp)
    fixed: dict[int, int] = {}
    for pair in train:
        moved = np.asarray(d8.apply(pair.input), dtype=np.intp)
        out = np.asarray(pair.output, dtype=np.intp)
        if moved.shape != out.shape:
            return None
        for src, dst in zip(moved.ravel().tolist(), out.ravel().tolist(), strict=True):
            if fixed.setdefault(src, dst) != dst:
                return None
    for src, dst in fixed.items():
        lut[src] = dst
    return lut
