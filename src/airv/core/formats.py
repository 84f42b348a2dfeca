"""Grid <-> text for a format spec, and the strict parser that reads a model's answer back.

The format is data (`FormatSpec`, shipped next to a model in `airv.json`) because a
model only answers well in the format it was trained on. `parse_grid` runs on every
completion, never raises, and says why it rejected a text, so rejections can be counted.
"""

from __future__ import annotations

import enum
import re
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from airv.core.errors import ConfigError
from airv.core.jsonio import read_json, write_json
from airv.core.types import MAX_SIDE, Grid

FENCE = "```"
ROW_NUMBER_SEP = "|"
SHAPE_SEP = "x"
_DIGITS = frozenset("0123456789")
_CELL_VALUE = {str(d): d for d in range(10)}
# Any prefix of a shape header `<rows>x<cols>`: what a completion cut inside the header looks like.
_HEADER_PREFIX = re.compile(r"[0-9]+(?:x[0-9]*)?")

_T = TypeVar("_T")


def checked_fields(cls: type[_T], data: object, *, source: str) -> dict[str, Any]:
    """Check a JSON object against the fields of the frozen dataclass `cls` (str/bool fields only).

    Returns the constructor keyword arguments; missing keys keep their defaults. Raises
    ConfigError naming `source` and the offending key for unknown keys or wrong value types.
    Shared by every JSON-serialisable spec (FormatSpec, prompts.PromptTemplate).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(
                f"{source}: unknown key {key!r} (known keys: {', '.join(sorted(known))})"
            )
        want = hints[key]
        # Exact type: JSON true/false for a bool, never 0/1 or "yes".
        if type(value) is not want:
            raise ConfigError(
                f"{source}: key {key!r} must be a {getattr(want, '__name__', want)}, "
                f"got {type(value).__name__}"
            )
        kwargs[key] = value
    return kwargs


@dataclass(frozen=True, slots=True)
class FormatSpec:
    """How a grid is written as text.

    The default, `FormatSpec()`, is the compact format of arc24's `MinimalGridEncoder`: one line
    per row, one digit per cell, nothing else. A 2x3 grid reads::

        012
        345

    Optional parts, in text order (the header and fence lines always end with "\\n", whatever
    `row_sep` is):

    - `fence`: a line "```" before and a line "```" after everything else.
    - `shape_header`: a first line `<rows>x<cols>`, e.g. `2x3`.
    - `row_numbers`: each row starts with its 1-based number and "|", e.g. `1|012`.
    - `cell_sep` between the cells of a row (default "", e.g. " " gives `0 1 2`).
    - `row_sep` between rows (default "\\n"; no trailing separator after the last row).

    All options on, with `cell_sep=" "`::

        ```
        2x3
        1|0 1 2
        2|3 4 5
        ```
    """

    shape_header: bool = False
    row_numbers: bool = False
    cell_sep: str = ""
    row_sep: str = "\n"
    fence: bool = False

    def __post_init__(self) -> None:
        # These rules keep the text unambiguous: a digit is always a cell (or a row number /
        # header), the two separators can be told apart, and the closing fence cannot occur
        # inside the body.
        for name, sep in (("cell_sep", self.cell_sep), ("row_sep", self.row_sep)):
            if any(ch in _DIGITS for ch in sep):
                raise ConfigError(f"format spec: {name} {sep!r} must not contain a digit")
            if "`" in sep:
                raise ConfigError(f"format spec: {name} {sep!r} must not contain a backtick")
        if not self.row_sep:
            raise ConfigError("format spec: row_sep must not be empty")
        if self.cell_sep and (self.cell_sep in self.row_sep or self.row_sep in self.cell_sep):
            raise ConfigError(
                f"format spec: cell_sep {self.cell_sep!r} and row_sep {self.row_sep!r} "
                "must differ and neither may contain the other"
            )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object, *, source: str = "format spec") -> FormatSpec:
        return cls(**checked_fields(cls, data, source=source))

    @classmethod
    def load(cls, path: Path | str) -> FormatSpec:
        return cls.from_dict(read_json(path, "format file", error=ConfigError), source=str(path))

    def save(self, path: Path | str) -> None:
        write_json(path, self.to_dict(), indent=True)


def encode_grid(grid: Grid, spec: FormatSpec) -> str:
    """The text of `grid` under `spec` (no leading or trailing whitespace).

    Grids larger than 30x30 are encoded too (tests need them); cells must be 0-9.
    """
    if not grid or not grid[0]:
        raise ValueError("cannot encode an empty grid")
    if spec.row_numbers:
        rows = [
            f"{i}{ROW_NUMBER_SEP}{spec.cell_sep.join(map(str, row))}"
            for i, row in enumerate(grid, start=1)
        ]
    else:
        rows = [spec.cell_sep.join(map(str, row)) for row in grid]
    text = spec.row_sep.join(rows)
    if spec.shape_header:
        text = f"{len(grid)}{SHAPE_SEP}{len(grid[0])}\n{text}"
    if spec.fence:
        text = f"{FENCE}\n{text}\n{FENCE}"
    return text


class RejectReason(enum.StrEnum):
    EMPTY = "empty"
    TRUNCATED = "truncated"  # the text looks cut off (max_tokens hit): see parse_grid
    RAGGED = "ragged"  # rows of different lengths, or an empty row
    NON_DIGIT = "non_digit"  # a cell that is not exactly one digit 0-9
    TOO_LARGE = "too_large"  # more than 30 rows or columns
    SHAPE_MISMATCH = "shape_mismatch"  # the grid disagrees with its shape header
    BAD_HEADER = "bad_header"
    BAD_ROW_NUMBER = "bad_row_number"
    BAD_FENCE = "bad_fence"  # no opening fence, or text after the closing fence


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: RejectReason
    detail: str


def parse_grid(text: str, spec: FormatSpec) -> Grid | Rejection:
    """Read a grid written exactly as `encode_grid(grid, spec)` writes it; never raises.

    Only whitespace around the whole text is tolerated. The result is a Grid of 1-30 rows of
    1-30 cells, all rows equally long, or a Rejection saying why not.

    TRUNCATED means the text could be a proper prefix of a valid encoding (a completion cut
    off by max_tokens): an opening fence without a closing one; an incomplete shape header,
    or one followed by no row or by fewer rows than it promises; a last row that is a proper
    prefix of a valid row of the expected width (the header's, else the first row's), or a
    complete row followed by part of `row_sep`. Inside a closed fence nothing is truncated,
    so the same defects are RAGGED / SHAPE_MISMATCH there. A last row longer than the others
    is RAGGED. Without a header or fence, a text cut at a row boundary cannot be told from
    a smaller grid and is accepted as one.
    """
    t = text.strip()
    if not t:
        return Rejection(RejectReason.EMPTY, "no text")
    closed = False  # a closing fence proves the text was not cut off
    if spec.fence:
        if not t.startswith(FENCE + "\n"):
            if (FENCE + "\n").startswith(t):
                return Rejection(RejectReason.TRUNCATED, "only (part of) the opening fence")
            return Rejection(RejectReason.BAD_FENCE, "text does not start with a ``` line")
        if not t.endswith("\n" + FENCE):
            if "\n" + FENCE in t:
                return Rejection(RejectReason.BAD_FENCE, "text after the closing fence")
            return Rejection(RejectReason.TRUNCATED, "no closing fence")
        t = t[len(FENCE) + 1 : -len(FENCE) - 1]
        closed = True
        if not t:
            return Rejection(RejectReason.EMPTY, "nothing inside the fence")

    n_rows: int | None = None
    n_cols: int | None = None
    if spec.shape_header:
        header, newline, t = t.partition("\n")
        if not newline:
            if not closed and _HEADER_PREFIX.fullmatch(header):
                return Rejection(RejectReason.TRUNCATED, f"shape header {header!r} and no rows")
            return Rejection(RejectReason.BAD_HEADER, f"no rows after header {header[:40]!r}")
        rows_text, x, cols_text = header.partition(SHAPE_SEP)
        if not (x and _is_number(rows_text) and _is_number(cols_text)):
            return Rejection(RejectReason.BAD_HEADER, f"bad shape header {header[:40]!r}")
        n_rows, n_cols = int(rows_text), int(cols_text)
        if n_rows == 0 or n_cols == 0 or header != f"{n_rows}{SHAPE_SEP}{n_cols}":
            # Zero sides and leading zeros: only the canonical header is accepted.
            return Rejection(RejectReason.BAD_HEADER, f"bad shape header {header!r}")
        if n_rows > MAX_SIDE or n_cols > MAX_SIDE:
            return Rejection(RejectReason.TOO_LARGE, f"shape header says {header}")

    lines = t.split(spec.row_sep)
    if len(lines) > MAX_SIDE:
        return Rejection(RejectReason.TOO_LARGE, f"{len(lines)} rows")
    if n_rows is not None and len(lines) > n_rows:
        return Rejection(
            RejectReason.SHAPE_MISMATCH, f"{len(lines)} rows but the header says {n_rows}"
        )

    rows: list[tuple[int, ...]] = []
    for i, line in enumerate(lines[:-1]):
        row = _parse_row(line, i, spec)
        if isinstance(row, Rejection):
            return row
        if rows and len(row) != len(rows[0]):
            return Rejection(
                RejectReason.RAGGED, f"row {i + 1} has {len(row)} cells, row 1 has {len(rows[0])}"
            )
        rows.append(row)
    if rows and n_cols is not None and len(rows[0]) != n_cols:
        return Rejection(
            RejectReason.SHAPE_MISMATCH,
            f"rows have {len(rows[0])} cells but the header says {n_cols}",
        )

    width = n_cols if n_cols is not None else (len(rows[0]) if rows else None)
    last_index = len(lines) - 1
    last = _parse_row(lines[-1], last_index, spec)
    if isinstance(last, Rejection) or (width is not None and len(last) != width):
        if not closed and _is_cut_row(lines[-1], last_index, width, spec):
            return Rejection(RejectReason.TRUNCATED, f"row {last_index + 1} is cut off")
        if isinstance(last, Rejection):
            return last
        if rows:
            return Rejection(
                RejectReason.RAGGED,
                f"row {last_index + 1} has {len(last)} cells, row 1 has {width}",
            )
        return Rejection(
            RejectReason.SHAPE_MISMATCH, f"row has {len(last)} cells but the header says {width}"
        )
    rows.append(last)
    if n_rows is not None and len(rows) < n_rows:
        reason = RejectReason.SHAPE_MISMATCH if closed else RejectReason.TRUNCATED
        return Rejection(reason, f"{len(rows)} rows but the header says {n_rows}")
    return tuple(rows)


def _is_number(s: str) -> bool:
    # str.isdigit alone accepts non-ASCII digits such as "²".
    return s.isascii() and s.isdigit()


def _parse_row(line: str, index: int, spec: FormatSpec) -> tuple[int, ...] | Rejection:
    cells = line
    if spec.row_numbers:
        number, sep, cells = line.partition(ROW_NUMBER_SEP)
        if not sep or number != str(index + 1):
            return Rejection(
                RejectReason.BAD_ROW_NUMBER,
                f"row {index + 1} does not start with '{index + 1}{ROW_NUMBER_SEP}'",
            )
    if not cells:
        return Rejection(RejectReason.RAGGED, f"row {index + 1} is empty")
    parts: list[str] | str = cells.split(spec.cell_sep) if spec.cell_sep else cells
    try:
        # A dict lookup per cell is several times cheaper than int() and rejects "12" or "a".
        row = tuple(map(_CELL_VALUE.__getitem__, parts))
    except KeyError:
        return Rejection(RejectReason.NON_DIGIT, f"row {index + 1} has a non-digit cell")
    if len(row) > MAX_SIDE:
        return Rejection(RejectReason.TOO_LARGE, f"row {index + 1} has {len(row)} cells")
    return row


def _is_cut_row(line: str, index: int, width: int | None, spec: FormatSpec) -> bool:
    """Whether `line` is a proper prefix of a valid row number `index` with `width` cells
    (any width if None), or a complete such row followed by a proper prefix of row_sep."""
    prefix = f"{index + 1}{ROW_NUMBER_SEP}" if spec.row_numbers else ""
    if len(line) <= len(prefix):
        return prefix.startswith(line)
    if not line.startswith(prefix):
        return False
    sep, end, limit = spec.cell_sep, len(line), MAX_SIDE if width is None else width
    pos, n_cells = len(prefix), 0
    while True:
        if pos == end:
            return True  # cut right after the row number or a cell separator
        if line[pos] not in _DIGITS:
            return False
        pos += 1
        n_cells += 1
        if pos == end:
            return width is None or n_cells < width
        tail = line[pos:]
        complete = width is None or n_cells == width
        if complete and len(tail) < len(spec.row_sep) and spec.row_sep.startswith(tail):
            return True
        if n_cells >= limit:
            return False
        if sep:
            if not line.startswith(sep, pos):
                return sep.startswith(tail)  # cut inside a cell separator, or not a row
            pos += len(sep)
