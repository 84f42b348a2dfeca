"""Tests for airv.core.formats: encoding, the strict parser, and FormatSpec JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from airv.core.errors import AirvError, ConfigError
from airv.core.formats import (
    FormatSpec,
    Rejection,
    RejectReason,
    encode_grid,
    parse_grid,
)
from airv.core.types import Grid
from strategies import grids

CELL_SEPS = ["", " ", ",", "|", ", ", " | ", "\t"]
ROW_SEPS = ["\n", ";", "\n\n", " / ", ";\n", "|\n", "\n "]
ALPHABETS = ["0123456789", "abcdefghij"]
# (grid_open, grid_close, row_open, row_close): none, or numpy's printout.
BRACKETS = [("", "", "", ""), ("[", "]", "[", "]")]


@st.composite
def specs(draw: st.DrawFn) -> FormatSpec:
    """Every knob of FormatSpec, in combinations the spec accepts."""
    grid_open, grid_close, row_open, row_close = draw(st.sampled_from(BRACKETS))
    try:
        return FormatSpec(
            shape_header=draw(st.booleans()),
            row_numbers=draw(st.booleans()),
            cell_sep=draw(st.sampled_from(CELL_SEPS)),
            row_sep=draw(st.sampled_from(ROW_SEPS)),
            fence=draw(st.booleans()),
            fence_info=draw(st.sampled_from(["", "grid"])),
            shape_prefix=draw(st.sampled_from(["", " shape: ", "size "])),
            shape_in_fence=draw(st.booleans()),
            row_number_sep=draw(st.sampled_from(["|", " "])),
            alphabet=draw(st.sampled_from(ALPHABETS)),
            grid_open=grid_open,
            grid_close=grid_close,
            row_open=row_open,
            row_close=row_close,
        )
    except ConfigError:
        assume(False)
        raise  # unreachable: assume(False) aborts the example


def is_valid_grid(g: object) -> bool:
    return (
        isinstance(g, tuple)
        and 1 <= len(g) <= 30
        and all(isinstance(r, tuple) and len(r) == len(g[0]) for r in g)
        and 1 <= len(g[0]) <= 30
        and all(type(c) is int and 0 <= c <= 9 for r in g for c in r)
    )


def cell_offset(grid: Grid, spec: FormatSpec, r: int, c: int) -> int:
    """Index in encode_grid(grid, spec) of the symbol of cell (r, c), counted by hand."""
    h, w = len(grid), len(grid[0])
    header = f"{spec.shape_prefix}{h}x{w}" if spec.shape_header else ""
    pos = 0
    if spec.fence:
        pos += len("```" + spec.fence_info + (header if spec.shape_in_fence else "")) + 1
    if spec.shape_header and not spec.shape_in_fence:
        pos += len(header) + 1
    pos += len(spec.grid_open)
    width = w + (w - 1) * len(spec.cell_sep)
    for i in range(r + 1):
        number = f"{i + 1}{spec.row_number_sep}" if spec.row_numbers else ""
        pos += len(spec.row_open) + len(number)
        if i < r:
            pos += width + len(spec.row_close) + len(spec.row_sep)
    return pos + c * (1 + len(spec.cell_sep))


# --- exact texts (the README quotes the default) ---


def test_default_is_compact_digits() -> None:
    assert FormatSpec() == FormatSpec(
        shape_header=False, row_numbers=False, cell_sep="", row_sep="\n", fence=False
    )
    assert encode_grid(((0, 1, 2), (3, 4, 5)), FormatSpec()) == "012\n345"


def test_all_options_match_docstring() -> None:
    spec = FormatSpec(shape_header=True, row_numbers=True, cell_sep=" ", fence=True)
    text = encode_grid(((0, 1, 2), (3, 4, 5)), spec)
    assert text == "```\n2x3\n1|0 1 2\n2|3 4 5\n```"
    assert FormatSpec.__doc__ is not None
    assert "\n".join("        " + line for line in text.split("\n")) in FormatSpec.__doc__


def test_encode_rejects_empty_grid() -> None:
    with pytest.raises(ValueError):
        encode_grid((), FormatSpec())


# --- round trip ---


@settings(max_examples=200)
@given(grid=grids(), spec=specs(), pad=st.sampled_from(["", "\n", " \n", "\n\n  "]))
def test_round_trip(grid: Grid, spec: FormatSpec, pad: str) -> None:
    text = encode_grid(grid, spec)
    assert text == text.strip()
    assert parse_grid(text, spec) == grid
    assert parse_grid(pad + text + pad, spec) == grid


# --- fuzz ---


@settings(max_examples=200)
@given(text=st.text(), spec=specs())
def test_random_text_never_raises(text: str, spec: FormatSpec) -> None:
    result = parse_grid(text, spec)
    assert isinstance(result, Rejection) or is_valid_grid(result)


@settings(max_examples=200)
@given(text=st.text(alphabet="0123456789x|`\n ;,/", max_size=80), spec=specs())
def test_only_the_canonical_text_is_accepted(text: str, spec: FormatSpec) -> None:
    result = parse_grid(text, spec)
    if isinstance(result, Rejection):
        assert isinstance(result.reason, RejectReason)
    else:
        assert is_valid_grid(result)
        assert encode_grid(result, spec) == text.strip()


@settings(max_examples=200)
@given(grid=grids(max_side=8), spec=specs(), data=st.data())
def test_near_valid_text_never_raises(grid: Grid, spec: FormatSpec, data: st.DataObject) -> None:
    text = encode_grid(grid, spec)
    i = data.draw(st.integers(0, len(text)))
    j = data.draw(st.integers(i, len(text)))
    junk = data.draw(st.text(alphabet="0123456789x|`\n ;,a", max_size=5))
    result = parse_grid(text[:i] + junk + text[j:], spec)
    if not isinstance(result, Rejection):
        assert encode_grid(result, spec) == (text[:i] + junk + text[j:]).strip()


# --- truncation ---


@settings(max_examples=150)
@given(grid=grids(max_side=6), spec=specs())
def test_every_prefix_with_header_or_fence_is_truncated(grid: Grid, spec: FormatSpec) -> None:
    assume(spec.shape_header or spec.fence or spec.grid_close)
    text = encode_grid(grid, spec)
    for k in range(1, len(text)):
        result = parse_grid(text[:k], spec)
        assert isinstance(result, Rejection), (text[:k], result)
        assert result.reason is RejectReason.TRUNCATED, (text[:k], result)


@settings(max_examples=150)
@given(grid=grids(max_side=6), spec=specs())
def test_prefix_without_header_or_fence_is_never_a_wrong_grid(grid: Grid, spec: FormatSpec) -> None:
    assume(not (spec.shape_header or spec.fence or spec.grid_close))
    text = encode_grid(grid, spec)
    for k in range(1, len(text)):
        result = parse_grid(text[:k], spec)
        if isinstance(result, Rejection):
            continue
        # Undecidable without a header: a cut at a row boundary, or inside the first row.
        first_row_prefix = len(result) == 1 and grid[0][: len(result[0])] == result[0]
        assert result == grid[: len(result)] or first_row_prefix, (text[:k], result)


@pytest.mark.parametrize(
    ("text", "spec", "reason"),
    [
        ("", FormatSpec(), RejectReason.EMPTY),
        (" \n\n ", FormatSpec(), RejectReason.EMPTY),
        ("012\n34", FormatSpec(), RejectReason.TRUNCATED),
        ("0,1,2\n3,4,", FormatSpec(cell_sep=","), RejectReason.TRUNCATED),
        ("012;\n345;", FormatSpec(row_sep=";\n"), RejectReason.TRUNCATED),
        ("1|012\n2", FormatSpec(row_numbers=True), RejectReason.TRUNCATED),
        ("1|012\n2|", FormatSpec(row_numbers=True), RejectReason.TRUNCATED),
        ("2x", FormatSpec(shape_header=True), RejectReason.TRUNCATED),
        ("2x3", FormatSpec(shape_header=True), RejectReason.TRUNCATED),
        ("2x3\n012", FormatSpec(shape_header=True), RejectReason.TRUNCATED),
        ("1x3\n01", FormatSpec(shape_header=True), RejectReason.TRUNCATED),
        ("```\n012\n345", FormatSpec(fence=True), RejectReason.TRUNCATED),
        ("``", FormatSpec(fence=True), RejectReason.TRUNCATED),
        ("```\n012\n34\n```", FormatSpec(fence=True), RejectReason.RAGGED),
        (
            "```\n2x3\n012\n```",
            FormatSpec(fence=True, shape_header=True),
            RejectReason.SHAPE_MISMATCH,
        ),
        ("01\n345", FormatSpec(), RejectReason.RAGGED),
        ("012\n3456", FormatSpec(), RejectReason.RAGGED),
        ("012\n\n345", FormatSpec(), RejectReason.RAGGED),
        ("0a2", FormatSpec(), RejectReason.NON_DIGIT),
        ("0²2", FormatSpec(), RejectReason.NON_DIGIT),
        ("012 \n345", FormatSpec(), RejectReason.NON_DIGIT),
        ("0,,1", FormatSpec(cell_sep=","), RejectReason.NON_DIGIT),
        ("0,12", FormatSpec(cell_sep=","), RejectReason.NON_DIGIT),
        ("1" * 31, FormatSpec(), RejectReason.TOO_LARGE),
        ("1\n" * 31, FormatSpec(), RejectReason.TOO_LARGE),
        ("31x1\n1", FormatSpec(shape_header=True), RejectReason.TOO_LARGE),
        ("2x3\n012\n345\n678", FormatSpec(shape_header=True), RejectReason.SHAPE_MISMATCH),
        ("2x2\n012\n345", FormatSpec(shape_header=True), RejectReason.SHAPE_MISMATCH),
        ("1x2\n012", FormatSpec(shape_header=True), RejectReason.SHAPE_MISMATCH),
        ("ax3\n012", FormatSpec(shape_header=True), RejectReason.BAD_HEADER),
        ("02x3\n012\n345", FormatSpec(shape_header=True), RejectReason.BAD_HEADER),
        ("0x3\n012", FormatSpec(shape_header=True), RejectReason.BAD_HEADER),
        ("2 x 3\n012\n345", FormatSpec(shape_header=True), RejectReason.BAD_HEADER),
        ("2|012", FormatSpec(row_numbers=True), RejectReason.BAD_ROW_NUMBER),
        ("1|012\n3|345", FormatSpec(row_numbers=True), RejectReason.BAD_ROW_NUMBER),
        ("012", FormatSpec(row_numbers=True), RejectReason.BAD_ROW_NUMBER),
        ("```\n012\n```\nmore", FormatSpec(fence=True), RejectReason.BAD_FENCE),
        ("```grid\n012\n```", FormatSpec(fence=True), RejectReason.BAD_FENCE),
        ("012", FormatSpec(fence=True), RejectReason.BAD_FENCE),
        ("```\n```", FormatSpec(fence=True), RejectReason.EMPTY),
    ],
)
def test_rejections(text: str, spec: FormatSpec, reason: RejectReason) -> None:
    result = parse_grid(text, spec)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result
    assert result.detail


# --- perturbed encodings ---


@settings(max_examples=200)
@given(grid=grids(max_side=8), spec=specs(), data=st.data())
def test_letter_in_a_cell_is_non_digit(grid: Grid, spec: FormatSpec, data: st.DataObject) -> None:
    r = data.draw(st.integers(0, len(grid) - 1))
    c = data.draw(st.integers(0, len(grid[0]) - 1))
    text = encode_grid(grid, spec)
    off = cell_offset(grid, spec, r, c)
    assert text[off] == spec.alphabet[grid[r][c]]
    result = parse_grid(text[:off] + "?" + text[off + 1 :], spec)
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.NON_DIGIT


@settings(max_examples=200)
@given(grid=grids(max_side=8), spec=specs(), data=st.data())
def test_deleted_cell_is_rejected(grid: Grid, spec: FormatSpec, data: st.DataObject) -> None:
    assume(len(grid[0]) >= 2 and (len(grid) >= 2 or spec.shape_header))
    r = data.draw(st.integers(0, len(grid) - 1))
    c = data.draw(st.integers(0, len(grid[0]) - 1))
    text = encode_grid(grid, spec)
    off = cell_offset(grid, spec, r, c)
    sep = len(spec.cell_sep)
    # Remove the digit and one adjacent cell separator, so the row stays well-formed.
    cut = text[:off] + text[off + 1 + sep :] if c == 0 else text[: off - sep] + text[off + 1 :]
    result = parse_grid(cut, spec)
    assert isinstance(result, Rejection), (cut, result)
    allowed = {RejectReason.RAGGED, RejectReason.TRUNCATED, RejectReason.SHAPE_MISMATCH}
    assert result.reason in allowed
    if not spec.shape_header and 0 < r < len(grid) - 1:
        assert result.reason is RejectReason.RAGGED
    # A closing fence or grid bracket proves the text complete: a short last row is ragged.
    closed = spec.fence or spec.grid_close
    if r == len(grid) - 1 and not closed and (len(grid) >= 2 or spec.shape_header):
        assert result.reason is RejectReason.TRUNCATED


@settings(max_examples=200)
@given(grid=grids(max_side=8), spec=specs(), drow=st.sampled_from([-1, 1]), dcol=st.booleans())
def test_changed_header_is_rejected(grid: Grid, spec: FormatSpec, drow: int, dcol: bool) -> None:
    try:
        spec = dataclasses.replace(spec, shape_header=True)
    except ConfigError:  # e.g. a shape prefix that would then start the text with a space
        assume(False)
    h, w = len(grid), len(grid[0])
    new_h, new_w = (h, w + drow) if dcol else (h + drow, w)
    assume(new_h >= 1 and new_w >= 1)
    text = encode_grid(grid, spec).replace(f"{h}x{w}\n", f"{new_h}x{new_w}\n", 1)
    result = parse_grid(text, spec)
    assert isinstance(result, Rejection)
    # A header promising more than is present reads as a cut-off answer, unless a closing
    # fence (or, for columns, a complete earlier row) proves otherwise.
    grows = drow > 0 and not (spec.fence or spec.grid_close) and (not dcol or h == 1)
    expected = RejectReason.TRUNCATED if grows else RejectReason.SHAPE_MISMATCH
    assert result.reason is expected, (text, result)


@pytest.mark.parametrize("dims", [(31, 31), (31, 1), (1, 31), (31, 30)])
@settings(max_examples=20)
@given(spec=specs())
def test_too_large(dims: tuple[int, int], spec: FormatSpec) -> None:
    h, w = dims
    grid = tuple(tuple((r + c) % 10 for c in range(w)) for r in range(h))
    result = parse_grid(encode_grid(grid, spec), spec)
    assert isinstance(result, Rejection)
    assert result.reason is RejectReason.TOO_LARGE


# --- FormatSpec JSON ---


@settings(max_examples=100)
@given(spec=specs())
def test_spec_json_round_trip(spec: FormatSpec) -> None:
    assert FormatSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_partial_dict_keeps_defaults() -> None:
    assert FormatSpec.from_dict({"shape_header": True}) == FormatSpec(shape_header=True)
    assert FormatSpec.from_dict({}) == FormatSpec()


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="row_numbres"):
        FormatSpec.from_dict({"row_numbres": True})


@pytest.mark.parametrize(
    "data",
    [{"shape_header": 1}, {"shape_header": "true"}, {"cell_sep": 0}, {"row_sep": None}, [1]],
)
def test_wrong_types_are_config_errors(data: object) -> None:
    with pytest.raises(ConfigError):
        FormatSpec.from_dict(data)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cell_sep": "1"},
        {"row_sep": ""},
        {"row_sep": "\n0"},
        {"cell_sep": "\n", "row_sep": "\n"},
        {"cell_sep": " ", "row_sep": " / "},
        {"cell_sep": "`"},
    ],
)
def test_invalid_spec(kwargs: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        FormatSpec(**kwargs)  # type: ignore[arg-type]


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    from airv.core.prompt_format import read_format_file

    missing = tmp_path / "missing.json"
    with pytest.raises(AirvError, match=r"missing\.json"):
        read_format_file(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AirvError, match=r"bad\.json"):
        read_format_file(bad)
    odd = tmp_path / "odd.json"
    odd.write_text('{"grid": {"fence": true, "colour": 1}}')
    with pytest.raises(ConfigError, match=r"odd\.json.*colour"):
        read_format_file(odd)
