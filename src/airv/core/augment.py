"""Task augmentations and their inverses: the 8 symmetries of the square (D8), colour
permutations and train-pair order, composed into one `Augmentation` with a compact string key.

A solver sees each task through several augmentations; its answers are mapped back with
`Augmentation.reverse_grid` and voted on. `plan_augmentations` picks K distinct ones per task.
"""

from __future__ import annotations

import enum
import itertools
import math
import re
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from airv.core.tasks import Pair, Task
from airv.core.types import N_COLOURS, Grid

_Array = npt.NDArray[np.intp]

_IDENTITY_COLOURS: tuple[int, ...] = tuple(range(N_COLOURS))


class D8(enum.IntEnum):
    """The dihedral group of the square acting on grids. Rotations are counter-clockwise,
    as np.rot90; the value is the element's index into the composition table."""

    IDENTITY = 0
    ROT90 = 1
    ROT180 = 2
    ROT270 = 3
    FLIP_LR = 4
    FLIP_UD = 5
    TRANSPOSE = 6
    ANTI_TRANSPOSE = 7

    def apply(self, grid: Grid) -> Grid:
        return _from_array(_ACTIONS[self](_as_array(grid)))

    @property
    def inverse(self) -> D8:
        return _INVERSE[self]

    def then(self, other: D8) -> D8:
        """The element acting as `self` first and `other` second."""
        return _THEN[self][other]


# Indexed by D8 value. Each returns a view, not a copy; ROT90/ROT270/(ANTI_)TRANSPOSE swap h and w.
_ACTIONS: tuple[Callable[[_Array], _Array], ...] = (
    lambda a: a,
    lambda a: np.rot90(a, 1),
    lambda a: np.rot90(a, 2),
    lambda a: np.rot90(a, 3),
    np.fliplr,
    np.flipud,
    lambda a: a.T,
    lambda a: a[::-1, ::-1].T,  # reflection in the anti-diagonal
)


def _derive_tables() -> tuple[tuple[tuple[D8, ...], ...], tuple[D8, ...]]:
    """The composition and inverse tables, read off the actions rather than typed by hand.

    A 2 x 3 grid of distinct cells tells all 8 elements apart: its corners are distinct and its
    shape separates the four shape-keeping elements from the four shape-swapping ones.
    """
    probe: _Array = np.arange(6, dtype=np.intp).reshape(2, 3)
    images = [_ACTIONS[d](probe) for d in D8]

    def which(image: _Array) -> D8:
        matches = [d for d in D8 if np.array_equal(images[d], image)]
        if len(matches) != 1:
            raise RuntimeError(f"D8 actions are not a faithful group action: {matches}")
        return matches[0]

    then = tuple(tuple(which(_ACTIONS[y](_ACTIONS[x](probe))) for y in D8) for x in D8)
    inverse = tuple(next(y for y in D8 if then[x][y] is D8.IDENTITY) for x in D8)
    return then, inverse


_THEN, _INVERSE = _derive_tables()


def _as_array(grid: Grid) -> _Array:
    arr = np.asarray(grid, dtype=np.intp)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"not a non-empty rectangular grid: shape {arr.shape}")
    # Checked because a negative cell would silently wrap round in a colour lookup table.
    if arr.min() < 0 or arr.max() >= N_COLOURS:
        raise ValueError(f"grid cells must be 0-{N_COLOURS - 1}, got {arr.min()}..{arr.max()}")
    return arr


def _from_array(arr: _Array) -> Grid:
    return tuple(tuple(row) for row in arr.tolist())


def _is_permutation(values: object, n: int) -> bool:
    return (
        isinstance(values, tuple)
        and all(type(v) is int for v in values)
        and sorted(values) == list(range(n))
    )


_KEY_PARTS = "rco"  # d8, colours, train order: the order parts appear in a key
_ORDER_BODY = re.compile(r"(0|[1-9][0-9]*)(,(0|[1-9][0-9]*))*")


@dataclass(frozen=True, slots=True)
class Augmentation:
    """One view of a task: a D8 transform, then a colour map, plus a train-pair order.

    `colours[c]` is the new colour of a cell of colour c. `train_order[i]` is the old index of
    new train pair i; None keeps the file order (and fits a task with any number of pairs).
    """

    d8: D8 = D8.IDENTITY
    colours: tuple[int, ...] = _IDENTITY_COLOURS
    train_order: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.d8, D8):
            raise ValueError(f"d8 must be a D8 member, got {self.d8!r}")
        if not _is_permutation(self.colours, N_COLOURS):
            raise ValueError(f"colours must be a tuple permuting 0-9, got {self.colours!r}")
        if self.train_order is not None and not (
            self.train_order and _is_permutation(self.train_order, len(self.train_order))
        ):
            raise ValueError(
                f"train_order must be None or a non-empty tuple permuting 0..n-1, "
                f"got {self.train_order!r}"
            )

    @property
    def key(self) -> str:
        """Compact and unique: e.g. "r1.c0231456789.o2,0,1"; parts at identity are left out."""
        parts = []
        if self.d8 is not D8.IDENTITY:
            parts.append(f"r{int(self.d8)}")
        if self.colours != _IDENTITY_COLOURS:
            parts.append("c" + "".join(map(str, self.colours)))
        if self.train_order is not None:
            parts.append("o" + ",".join(map(str, self.train_order)))
        return ".".join(parts) or "id"

    @classmethod
    def from_key(cls, key: str) -> Augmentation:
        """Parse a key written by `key`; only that exact spelling is accepted."""
        if key == "id":
            return cls()
        d8, colours, train_order = D8.IDENTITY, _IDENTITY_COLOURS, None
        last = -1
        for part in key.split("."):
            where = _KEY_PARTS.find(part[:1]) if part else -1
            if where < 0:
                raise ValueError(
                    f"malformed augmentation key {key!r}: part {part!r} does not start with "
                    f"r (d8), c (colours) or o (train order)"
                )
            if where <= last:
                raise ValueError(
                    f"malformed augmentation key {key!r}: parts must appear once each, "
                    f"in the order r, c, o"
                )
            last = where
            body = part[1:]
            if part[0] == "r":
                if not re.fullmatch(r"[0-7]", body):
                    raise ValueError(f"malformed augmentation key {key!r}: d8 must be 0-7")
                d8 = D8(int(body))
            elif part[0] == "c":
                if not re.fullmatch(r"[0-9]{10}", body):
                    raise ValueError(f"malformed augmentation key {key!r}: colours need 10 digits")
                colours = tuple(int(c) for c in body)
            else:
                if not _ORDER_BODY.fullmatch(body):
                    raise ValueError(
                        f"malformed augmentation key {key!r}: train order must be "
                        f"comma-separated indices"
                    )
                train_order = tuple(int(i) for i in body.split(","))
        try:
            aug = cls(d8, colours, train_order)
        except ValueError as exc:
            raise ValueError(f"malformed augmentation key {key!r}: {exc}") from exc
        # One spelling per augmentation, so keys can be compared as strings (e.g. in `exclude`).
        if aug.key != key:
            raise ValueError(f"augmentation key {key!r} is not canonical: write {aug.key!r}")
        return aug

    def apply_grid(self, grid: Grid) -> Grid:
        lut = np.asarray(self.colours, dtype=np.intp)
        return _from_array(lut[_ACTIONS[self.d8](_as_array(grid))])

    def reverse_grid(self, grid: Grid) -> Grid:
        """The exact inverse of `apply_grid`: undo the colour map, then the D8 transform."""
        inverse_lut = np.argsort(np.asarray(self.colours, dtype=np.intp))
        return _from_array(_ACTIONS[self.d8.inverse](inverse_lut[_as_array(grid)]))

    def apply_task(self, task: Task) -> Task:
        """Every grid of the task transformed; new train pair i is old pair train_order[i]."""
        train = task.train
        if self.train_order is not None:
            if len(self.train_order) != len(train):
                raise ValueError(
                    f"augmentation {self.key} orders {len(self.train_order)} train pairs, "
                    f"task {task.id} has {len(train)}"
                )
            train = tuple(train[i] for i in self.train_order)
        return Task(
            id=task.id,
            train=tuple(Pair(self.apply_grid(p.input), self.apply_grid(p.output)) for p in train),
            test=tuple(self.apply_grid(g) for g in task.test),
        )


IDENTITY = Augmentation()

# The planner draws at random and rejects repeats; only a nearly used-up space makes it enumerate
# what is left, and only spaces this small (per D8 element) are enumerated at all. A space larger
# than this would need a K in the tens of thousands before random draws start to fail.
_DRAWS_BEFORE_ENUMERATING = 32
_ENUMERATE_UP_TO = 50_000


@dataclass(frozen=True, slots=True)
class _Space:
    """The colour maps and train orders the planner may choose for one task.

    Colour maps: only the images of the free colours that occur in the task (`seen`) are
    random; the free colours that do not occur take the remaining free colours in ascending
    order. Two maps that differ only on absent colours give identical prompts, so this makes
    distinct keys distinct in effect, while a seen colour can still become any free colour
    (a task using only colours 0 and 3 still gets 9 colourings, not 1).
    """

    free: tuple[int, ...]  # colours allowed to move, ascending; () when not permuting
    seen: tuple[int, ...]  # free colours occurring in the task, ascending
    n_train: int
    shuffle: bool  # whether train orders vary (never with fewer than 2 pairs)

    @classmethod
    def for_task(
        cls, task: Task, *, keep_background: bool, permute_colours: bool, shuffle_train: bool
    ) -> _Space:
        free: tuple[int, ...] = ()
        if permute_colours:
            free = tuple(range(1 if keep_background else 0, N_COLOURS))
        grids = [g for p in task.train for g in (p.input, p.output)] + list(task.test)
        present = {c for g in grids for row in g for c in row}
        seen = tuple(c for c in free if c in present)
        n_train = len(task.train)
        return cls(free, seen, n_train, shuffle_train and n_train > 1)

    @property
    def size(self) -> int:
        """Distinct augmentations per D8 element."""
        orders = math.factorial(self.n_train) if self.shuffle else 1
        return math.perm(len(self.free), len(self.seen)) * orders

    def colours(self, images: Sequence[int]) -> tuple[int, ...]:
        """The full map sending seen[i] to images[i]; see the class docstring."""
        mapping = list(_IDENTITY_COLOURS)
        rest = iter(c for c in self.free if c not in images)
        for c in self.free:
            mapping[c] = images[self.seen.index(c)] if c in self.seen else next(rest)
        return tuple(mapping)

    @staticmethod
    def order(perm: Sequence[int]) -> tuple[int, ...] | None:
        # The file order is spelled None, so that it has one key only.
        order = tuple(perm)
        return None if order == tuple(range(len(order))) else order

    def sample(self, d8: D8, rng: np.random.Generator) -> Augmentation:
        images: list[int] = []
        if self.seen:
            images = [int(c) for c in rng.permutation(self.free)[: len(self.seen)]]
        order = None
        if self.shuffle:
            order = self.order([int(i) for i in rng.permutation(self.n_train)])
        return Augmentation(d8, self.colours(images), order)

    def everything(self, d8: D8) -> Iterator[Augmentation]:
        orders: Iterator[tuple[int, ...] | None] = iter([None])
        if self.shuffle:
            orders = (self.order(p) for p in itertools.permutations(range(self.n_train)))
        for images, order in itertools.product(
            itertools.permutations(self.free, len(self.seen)), list(orders)
        ):
            yield Augmentation(d8, self.colours(images), order)


def _fresh(space: _Space, d8: D8, taken: set[str], rng: np.random.Generator) -> Augmentation | None:
    """A random augmentation with this D8 element whose key is not taken; None if none is left."""
    for _ in range(_DRAWS_BEFORE_ENUMERATING):
        aug = space.sample(d8, rng)
        if aug.key not in taken:
            return aug
    if space.size > _ENUMERATE_UP_TO:
        return None
    left = [aug for aug in space.everything(d8) if aug.key not in taken]
    return left[int(rng.integers(len(left)))] if left else None


def plan_augmentations(
    task: Task,
    k: int,
    rng: np.random.Generator,
    *,
    keep_background: bool = True,
    permute_colours: bool = True,
    shuffle_train: bool = True,
    exclude: Collection[str] = (),
) -> list[Augmentation]:
    """Up to k augmentations with distinct keys, none in `exclude`; the identity comes first
    unless excluded. Fewer than k only when the task has fewer left to give.

    D8 elements are taken least-used first (counting `exclude`, ties in D8 order), so the first
    8 of a fresh plan cover D8 once and a later round continues where the last one stopped.
    Each gets a random colour map (0 fixed when keep_background) and a random train order.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    space = _Space.for_task(
        task,
        keep_background=keep_background,
        permute_colours=permute_colours,
        shuffle_train=shuffle_train,
    )
    taken = set(exclude)
    uses = [0] * len(D8)
    for key in taken:
        uses[Augmentation.from_key(key).d8] += 1

    plan: list[Augmentation] = []
    if k > 0 and IDENTITY.key not in taken:
        plan.append(IDENTITY)
        taken.add(IDENTITY.key)
        uses[D8.IDENTITY] += 1
    live = set(D8)  # D8 elements that may still have unused augmentations
    while len(plan) < k and live:
        d8 = min(live, key=lambda d: (uses[d], d))
        aug = _fresh(space, d8, taken, rng)
        if aug is None:
            live.discard(d8)
            continue
        plan.append(aug)
        taken.add(aug.key)
        uses[d8] += 1
    return plan


@dataclass(frozen=True, slots=True)
class ViewPolicy:
    """Which augmentations a run may use, and the seed that picks them."""

    keep_background: bool = True  # colour permutations leave 0 (black) in place
    permute_colours: bool = True
    shuffle_train: bool = True
    seed: int = 0


class Stream(enum.IntEnum):
    """Independent seed streams per test input: the views that generate answers, those that
    re-score candidates and those test-time fine-tuning trains on are drawn apart, so none
    shifts another."""

    GENERATE = 0
    RESCORE = 1
    FINETUNE = 2  # test-time fine-tuning's training views


def plan_views(
    task: Task,
    test_index: int,
    k: int,
    policy: ViewPolicy,
    *,
    stream: Stream = Stream.GENERATE,
    exclude: Collection[str] = (),
) -> list[Augmentation]:
    """`plan_augmentations` for one test input, seeded by (seed, task id, test index, stream):
    the same call always plans the same views, so a resumed run, `airv plan` and re-scoring
    agree with the run that came before them."""
    entropy = [policy.seed, zlib.crc32(task.id.encode()), test_index]
    if stream is not Stream.GENERATE:  # the generation stream keeps its historical seed
        entropy.append(int(stream))
    return plan_augmentations(
        task,
        k,
        np.random.default_rng(entropy),
        keep_background=policy.keep_background,
        permute_colours=policy.permute_colours,
        shuffle_train=policy.shuffle_train,
        exclude=exclude,
    )
