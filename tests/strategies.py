"""Hypothesis strategies shared by the test suite."""

from __future__ import annotations

from hypothesis import strategies as st

from airv.core.types import MAX_SIDE, N_COLOURS, Grid


@st.composite
def grids(
    draw: st.DrawFn,
    *,
    min_side: int = 1,
    max_side: int = MAX_SIDE,
    colours: st.SearchStrategy[int] | None = None,
) -> Grid:
    """Rectangular grids of min_side..max_side rows and columns, cells 0-9 by default."""
    cells = st.integers(0, N_COLOURS - 1) if colours is None else colours
    h = draw(st.integers(min_side, max_side))
    w = draw(st.integers(min_side, max_side))
    flat = draw(st.lists(cells, min_size=h * w, max_size=h * w))
    return tuple(tuple(flat[r * w : (r + 1) * w]) for r in range(h))
