"""Grid <-> text for a format spec, and the strict parser that reads a model's answer back.

The format is data (`FormatSpec`, shipped next to a model in `airv.json`) because a
model only answers well in the format it was trained on. `parse_grid` runs on every
completion, never raises, and says why it rejected a text, so rejections can be counted.
"""

from __future__ import annotations

import enum
import functools
import re
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from types import MappingProxyType
from typing import Any, TypeVar

from airv.core.errors import ConfigError
from airv.core.types import MAX_SIDE, Grid

FENCE = "```"
SHAPE_SEP = "x"
_DIGITS = frozenset("0123456789")
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

    The other public ARC models' grids need a few more knobs (see the presets):

    - `fence_info`: text after the opening ``` (arc24: "grid");
    - `shape_prefix`: text before `<rows>x<cols>` (arc24: " shape: "), and `shape_in_fence`:
      the header ends the opening fence line instead of being a line of its own (arc24:
      ```` ```grid shape: 2x3 ````);
    - `row_number_sep`: between a row's number and its cells (default "|"; arc24: " ");
    - `alphabet`: the symbol written for colours 0-9 (default the digits), one character each;
    - `grid_open`/`grid_close` around all rows and `row_open`/`row_close` around each row
      (numpy's printout, as MIT's marc writes grids: `[[0 1 2]\\n [3 4 5]]`).
    """

    shape_header: bool = False
    row_numbers: bool = False
    cell_sep: str = ""
    row_sep: str = "\n"
    fence: bool = False
    fence_info: str = ""
    shape_prefix: str = ""
    shape_in_fence: bool = False
    row_number_sep: str = "|"
    alphabet: str = "0123456789"
    grid_open: str = ""
    grid_close: str = ""
    row_open: str = ""
    row_close: str = ""

    def __post_init__(self) -> None:
        # These rules keep the text unambiguous: a symbol is always a cell (digits may also be
        # row numbers or the header), separators and brackets can be told apart, and the
        # closing fence cannot occur inside the body.
        alphabet = self.alphabet
        if len(alphabet) != 10 or len(set(alphabet)) != 10 or any(c.isspace() for c in alphabet):
            raise ConfigError(
                f"format spec: alphabet {alphabet!r} must be 10 distinct non-space characters"
            )
        if "`" in alphabet:
            raise ConfigError("format spec: the alphabet must not contain a backtick")
        reserved = set(alphabet) | _DIGITS
        parts = (
            ("cell_sep", self.cell_sep),
            ("row_sep", self.row_sep),
            ("row_number_sep", self.row_number_sep),
            ("grid_open", self.grid_open),
            ("grid_close", self.grid_close),
            ("row_open", self.row_open),
            ("row_close", self.row_close),
        )
        for name, sep in parts:
            if any(ch in reserved for ch in sep):
                raise ConfigError(
                    f"format spec: {name} {sep!r} must not contain a digit or an alphabet symbol"
                )
            if "`" in sep:
                raise ConfigError(f"format spec: {name} {sep!r} must not contain a backtick")
        if not self.row_sep:
            raise ConfigError("format spec: row_sep must not be empty")
        if self.row_numbers and not self.row_number_sep:
            raise ConfigError("format spec: row_number_sep must not be empty with row_numbers")
        if self.cell_sep and self.row_sep in self.cell_sep:
            raise ConfigError(
                f"format spec: cell_sep {self.cell_sep!r} must not contain row_sep {self.row_sep!r}"
            )
        bracketed = bool(self.row_open or self.row_close)
        if self.cell_sep and not bracketed and self.cell_sep in self.row_sep:
            # Without row brackets, a text cut inside row_sep could be a cell separator.
            raise ConfigError(
                f"format spec: cell_sep {self.cell_sep!r} and row_sep {self.row_sep!r} "
                "must differ and neither may contain the other"
            )
        if self.shape_in_fence and not (self.fence and self.shape_header):
            raise ConfigError("format spec: shape_in_fence needs fence and shape_header")
        for name, text in (("fence_info", self.fence_info), ("shape_prefix", self.shape_prefix)):
            if "\n" in text or "`" in text:
                raise ConfigError(f"format spec: {name} {text!r} must be on one line, no backtick")
        if any(ch in _DIGITS for ch in self.shape_prefix):
            raise ConfigError("format spec: shape_prefix must not contain a digit")
        probe = encode_grid(((0, 1), (2, 3)), self)
        if probe != probe.strip():
            # The parser reads answers stripped of surrounding whitespace.
            raise ConfigError(
                f"format spec: a grid's text must not start or end with whitespace: {probe!r}"
            )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object, *, source: str = "format spec") -> FormatSpec:
        return cls(**checked_fields(cls, data, source=source))

    # -- derived, for the parser (cached per spec: specs are few and immutable) --------------

    @property
    def cell_values(self) -> Mapping[str, int]:
        return _cell_values(self.alphabet)

    def header(self, rows: int, cols: int) -> str:
        return f"{self.shape_prefix}{rows}{SHAPE_SEP}{cols}"

    def opening(self, header: str = "") -> str:
        """The opening fence line, without its newline."""
        return FENCE + self.fence_info + (header if self.shape_in_fence else "")

    def row_prefix(self, index: int) -> str:
        """What row `index` (0-based) starts with, before its first cell."""
        number = f"{index + 1}{self.row_number_sep}" if self.row_numbers else ""
        return self.row_open + number


@functools.cache
def _cell_values(alphabet: str) -> Mapping[str, int]:
    return MappingProxyType({symbol: colour for colour, symbol in enumerate(alphabet)})


def encode_grid(grid: Grid, spec: FormatSpec) -> str:
    """The text of `grid` under `spec` (no leading or trailing whitespace, unless the spec's
    own separators put it there).

    Grids larger than 30x30 are encoded too (tests need them); cells must be 0-9.
    """
    if not grid or not grid[0]:
        raise ValueError("cannot encode an empty grid")
    symbols = spec.alphabet
    rows = [
        spec.row_prefix(i) + spec.cell_sep.join(symbols[c] for c in row) + spec.row_close
        for i, row in enumerate(grid)
    ]
    text = spec.grid_open + spec.row_sep.join(rows) + spec.grid_close
    header = spec.header(len(grid), len(grid[0])) if spec.shape_header else ""
    if spec.shape_header and not spec.shape_in_fence:
        text = f"{header}\n{text}"
    if spec.fence:
        text = f"{spec.opening(header)}\n{text}\n{FENCE}"
    return text


class RejectReason(enum.StrEnum):
    EMPTY = "empty"
    TRUNCATED = "truncated"  # the text looks cut off (max_tokens hit): see parse_grid
    RAGGED = "ragged"  # rows of different lengths, or an empty row
    NON_DIGIT = "non_digit"  # a cell that is not exactly one symbol of the alphabet
    TOO_LARGE = "too_large"  # more than 30 rows or columns
    SHAPE_MISMATCH = "shape_mismatch"  # the grid disagrees with its shape header
    BAD_HEADER = "bad_header"
    BAD_ROW_NUMBER = "bad_row_number"
    BAD_FENCE = "bad_fence"  # no opening fence, or text after the closing fence
    BAD_BRACKET = "bad_bracket"  # a row or the grid without its opening or closing bracket


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
    or one followed by no row or by fewer rows than it promises; rows without the grid's
    closing bracket; a last row that is a proper prefix of a valid row of the expected width
    (the header's, else the first row's), or a complete row followed by part of `row_sep`.
    Inside a closed fence (or closed grid brackets) nothing is truncated, so the same defects
    are RAGGED / SHAPE_MISMATCH there. A last row longer than the others is RAGGED. Without a
    header, fence or grid brackets, a text cut at a row boundary cannot be told from a smaller
    grid and is accepted as one.
    """
    t = text.strip()
    if not t:
        return Rejection(RejectReason.EMPTY, "no text")
    closed = False  # a closing fence (or grid bracket) proves the text was not cut off
    header: str | None = None
    if spec.fence:
        opening, newline, rest = t.partition("\n")
        if not newline:
            if _is_cut_opening(opening, spec):
                return Rejection(RejectReason.TRUNCATED, "only (part of) the opening fence")
            return Rejection(RejectReason.BAD_FENCE, f"text does not start with a {FENCE} line")
        expected = spec.opening()
        if not opening.startswith(expected) or (not spec.shape_in_fence and opening != expected):
            return Rejection(RejectReason.BAD_FENCE, f"opening line {opening[:40]!r}")
        if spec.shape_in_fence:
            header = opening[len(expected) :]
        if not rest.endswith("\n" + FENCE) and rest != FENCE:
            if "\n" + FENCE in "\n" + rest:
                return Rejection(RejectReason.BAD_FENCE, "text after the closing fence")
            if header is not None and _parse_header(header, spec) is None:
                return Rejection(RejectReason.BAD_HEADER, f"bad shape header {header[:40]!r}")
            return Rejection(RejectReason.TRUNCATED, "no closing fence")
        t = rest[: -len(FENCE)].removesuffix("\n")
        closed = True
        if not t:
            return Rejection(RejectReason.EMPTY, "nothing inside the fence")

    n_rows: int | None = None
    n_cols: int | None = None
    if spec.shape_header:
        if header is None:
            header, newline, t = t.partition("\n")
            if not newline:
                if not closed and _is_cut_header(header, spec):
                    return Rejection(RejectReason.TRUNCATED, f"shape header {header!r} and no rows")
                return Rejection(RejectReason.BAD_HEADER, f"no rows after header {header[:40]!r}")
        shape = _parse_header(header, spec)
        if shape is None:
            return Rejection(RejectReason.BAD_HEADER, f"bad shape header {header[:40]!r}")
        n_rows, n_cols = shape
        if n_rows > MAX_SIDE or n_cols > MAX_SIDE:
            return Rejection(RejectReason.TOO_LARGE, f"shape header says {header}")

    if spec.grid_open:
        if not t.startswith(spec.grid_open):
            if not closed and spec.grid_open.startswith(t):
                return Rejection(RejectReason.TRUNCATED, "only (part of) the grid's bracket")
            return Rejection(RejectReason.BAD_BRACKET, f"no {spec.grid_open!r} before the rows")
        t = t[len(spec.grid_open) :]
    if spec.grid_close:
        if t.endswith(spec.grid_close) and _closes_grid(t, spec):
            t = t[: -len(spec.grid_close)]
            closed = True
        elif closed:
            return Rejection(RejectReason.BAD_BRACKET, f"no {spec.grid_close!r} after the rows")
        # else: cut off before the grid's closing bracket; the rows below say how

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
    if spec.grid_close and not closed:
        return Rejection(RejectReason.TRUNCATED, f"no {spec.grid_close!r} after the last row")
    return tuple(rows)


def _is_number(s: str) -> bool:
    # str.isdigit alone accepts non-ASCII digits such as "²".
    return s.isascii() and s.isdigit()


def _parse_header(header: str, spec: FormatSpec) -> tuple[int, int] | None:
    """(rows, cols) of a canonical header (no zero sides, no leading zeros), else None."""
    if not header.startswith(spec.shape_prefix):
        return None
    rows_text, x, cols_text = header[len(spec.shape_prefix) :].partition(SHAPE_SEP)
    if not (x and _is_number(rows_text) and _is_number(cols_text)):
        return None
    n_rows, n_cols = int(rows_text), int(cols_text)
    if n_rows == 0 or n_cols == 0 or header != spec.header(n_rows, n_cols):
        return None
    return n_rows, n_cols


def _is_cut_header(text: str, spec: FormatSpec) -> bool:
    """Whether `text` is a prefix of some header `<prefix><rows>x<cols>` (a complete one too:
    the rows that should follow it are missing)."""
    prefix = spec.shape_prefix
    if len(text) <= len(prefix):
        return prefix.startswith(text)
    return text.startswith(prefix) and bool(_HEADER_PREFIX.fullmatch(text[len(prefix) :]))


def _is_cut_opening(text: str, spec: FormatSpec) -> bool:
    """Whether `text` is a prefix of an opening fence line (with its header, if it has one)."""
    expected = spec.opening()
    if len(text) <= len(expected):
        return expected.startswith(text)
    return (
        spec.shape_in_fence
        and text.startswith(expected)
        and _is_cut_header(text[len(expected) :], spec)
    )


def _closes_grid(t: str, spec: FormatSpec) -> bool:
    """Whether the grid's closing bracket at the end of `t` closes the grid rather than being
    (part of) the last row's own closing bracket."""
    if not spec.row_close or not spec.grid_close.endswith(spec.row_close):
        return True
    # e.g. numpy: the last row ends "]" and the grid "]", so a complete text ends "]]".
    return t.endswith(spec.row_close + spec.grid_close)


def _parse_row(line: str, index: int, spec: FormatSpec) -> tuple[int, ...] | Rejection:
    cells = line
    if spec.row_open:
        if not cells.startswith(spec.row_open):
            return Rejection(RejectReason.BAD_BRACKET, f"row {index + 1} has no {spec.row_open!r}")
        cells = cells[len(spec.row_open) :]
    if spec.row_numbers:
        number, sep, cells = cells.partition(spec.row_number_sep)
        if not sep or number != str(index + 1):
            return Rejection(
                RejectReason.BAD_ROW_NUMBER,
                f"row {index + 1} does not start with '{index + 1}{spec.row_number_sep}'",
            )
    if spec.row_close:
        if not cells.endswith(spec.row_close):
            return Rejection(
                RejectReason.BAD_BRACKET, f"row {index + 1} does not end with {spec.row_close!r}"
            )
        cells = cells[: -len(spec.row_close)]
    if not cells:
        return Rejection(RejectReason.RAGGED, f"row {index + 1} is empty")
    parts: list[str] | str = cells.split(spec.cell_sep) if spec.cell_sep else cells
    try:
        # A dict lookup per cell is several times cheaper than int() and rejects "12" or "a".
        row = tuple(map(spec.cell_values.__getitem__, parts))
    except KeyError:
        return Rejection(RejectReason.NON_DIGIT, f"row {index + 1} has a non-digit cell")
    if len(row) > MAX_SIDE:
        return Rejection(RejectReason.TOO_LARGE, f"row {index + 1} has {len(row)} cells")
    return row


def _is_cut_row(line: str, index: int, width: int | None, spec: FormatSpec) -> bool:
    """Whether `line` is a proper prefix of a valid row number `index` with `width` cells
    (any width if None), or a complete such row followed by a proper prefix of row_sep (or,
    for a bracketed grid, of the grid's closing bracket)."""
    prefix = spec.row_prefix(index)
    if len(line) <= len(prefix):
        return prefix.startswith(line)
    if not line.startswith(prefix):
        return False
    symbols = spec.cell_values
    sep, end, limit = spec.cell_sep, len(line), MAX_SIDE if width is None else width
    pos, n_cells = len(prefix), 0
    while True:
        if pos == end:
            return True  # cut right after the row's start or a cell separator
        if line[pos] not in symbols:
            return False
        pos += 1
        n_cells += 1
        if pos == end:  # cut after a cell: short of the width, or before the row's bracket
            return width is None or n_cells < width or bool(spec.row_close)
        tail = line[pos:]
        complete = width is None or n_cells == width
        if complete:
            ends = [spec.row_close + s for s in (spec.row_sep, spec.grid_close) if s]
            if not ends:
                ends = [spec.row_close]
            # A complete row, then part of what follows it (its bracket and the separator).
            if any(len(tail) < len(e) and e.startswith(tail) for e in ends):
                return True
            if spec.row_close and tail == spec.row_close:
                return True
        if n_cells >= limit:
            return False
        if sep:
            if not line.startswith(sep, pos):
                return sep.startswith(tail)  # cut inside a cell separator, or not a row
            pos += len(sep)
