"""The small shared vocabulary of airv: grids, task ids, attempts."""

from __future__ import annotations

from typing import TypeAlias

# A grid is immutable and hashable so that identical answers can be counted directly:
# rows of cells, each cell an int 0-9; 1-30 rows of 1-30 cells, all rows equally long.
Grid: TypeAlias = tuple[tuple[int, ...], ...]
TaskId: TypeAlias = str
# One test input of a task: (task id, test index). Votes, predictions and scores are per Unit.
Unit: TypeAlias = tuple[TaskId, int]
# What submission.json holds per test input: {"attempt_1": grid, "attempt_2": grid}.
Attempts: TypeAlias = dict[str, list[list[int]]]

MAX_SIDE = 30
N_COLOURS = 10
FALLBACK_GRID: Grid = ((0,),)


def to_grid(rows: object) -> Grid:
    """Convert nested sequences of ints (e.g. parsed JSON) to a Grid without validating it."""
    return tuple(tuple(int(c) for c in row) for row in rows)  # type: ignore[attr-defined]


def to_lists(grid: Grid) -> list[list[int]]:
    """Plain nested lists of Python ints, as JSON wants them."""
    return [[int(c) for c in row] for row in grid]


def shape(grid: Grid) -> tuple[int, int]:
    return (len(grid), len(grid[0]) if grid else 0)
