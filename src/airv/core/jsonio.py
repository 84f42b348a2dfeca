"""JSON files: the one reader (errors name the file), the one atomic writer, and the
append-only JSON-lines logs (predictions, scores, fine-tuning results).

Every JSON file airv reads goes through `read_json`, so a missing file, bad syntax or the
wrong top level reads the same everywhere; every file a crash must never leave half-written
(submission.json, the run summary, the report) goes through `write_atomic`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import orjson

from airv.core.errors import AirvError, ConfigError, InputError

T = TypeVar("T")


def json_kind(value: object) -> str:
    """How a parsed JSON value is named in messages: "a list", "a boolean", "null", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {
        int: "an int",
        float: "a float",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _error(error: type[AirvError], message: str, path: Path) -> AirvError:
    # InputError carries the path as a field; other errors name it in the text.
    if issubclass(error, InputError):
        return error(message, path=path)
    return error(f"{path}: {message}")


def read_json(path: Path | str, what: str, *, error: type[AirvError] = InputError) -> object:
    """Parse a JSON file. `what` names it in messages ("challenge file", "format file");
    `error` is the class raised: InputError for data, ConfigError for configuration."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _error(error, f"cannot read {what}: {e.strerror or e}", path) from e
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise _error(error, f"{what} is not valid JSON: {e}", path) from e


def read_json_object(
    path: Path | str, what: str, *, error: type[AirvError] = InputError
) -> dict[str, object]:
    """`read_json` for a file whose top level must be an object."""
    parsed = read_json(path, what, error=error)
    if not isinstance(parsed, dict):
        raise _error(
            error,
            f"{what} must be a JSON object at the top level, not {json_kind(parsed)}",
            Path(path),
        )
    return parsed


def read_config_object(path: Path | str, what: str) -> dict[str, object]:
    """`read_json_object` for configuration: errors are ConfigError (exit 2, a usage error)."""
    return read_json_object(path, what, error=ConfigError)


def write_atomic(path: Path | str, data: bytes) -> None:
    """Write atomically: a temp file in the same directory, fsync, then rename over `path`.

    A reader (or Kaggle, after a crash or timeout) sees either the old or the new file, whole.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Also on KeyboardInterrupt: never leave a half-written temp file behind.
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_json(path: Path | str, data: object, *, indent: bool = False) -> None:
    """`write_atomic` of a JSON value (orjson: numpy ints are not accepted, Python ints are)."""
    option = orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS if indent else 0
    write_atomic(path, orjson.dumps(data, option=option) + (b"\n" if indent else b""))


def read_jsonl(path: Path | str, parse: Callable[[Any], T]) -> tuple[list[T], int]:
    """Every line of a JSON-lines log through `parse`, and how many lines were damaged (not
    JSON, or refused by `parse` with KeyError/TypeError/ValueError: a crash mid-write).
    A missing file is an empty log; an unreadable one is an InputError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        raise InputError(f"cannot read the log: {exc.strerror or exc}", path=path) from exc
    out: list[T] = []
    damaged = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            out.append(parse(orjson.loads(line)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            damaged += 1
    return out, damaged


def cut_torn_tail(path: Path | str) -> int:
    """A log whose last line has no newline was cut mid-append (a kill): that line is cut off,
    so the next append starts on a line of its own. Returns the lines cut (0 or 1); a tail that
    is whole JSON only gets its newline."""
    path = Path(path)
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return 0
            f.seek(0)
            data = f.read()
            start = data.rfind(b"\n") + 1
            try:
                orjson.loads(data[start:])
            except orjson.JSONDecodeError:
                f.truncate(start)
                return 1
            f.write(b"\n")
            return 0
    except FileNotFoundError:
        return 0


def append_jsonl(path: Path | str, lines: Iterable[bytes]) -> None:
    """Append JSON lines and fsync, so what was produced survives a crash right after."""
    data = b"".join(line + b"\n" for line in lines)
    if not data:
        return
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
