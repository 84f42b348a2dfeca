"""The exception hierarchy of airv, and `report`, the one place that turns an error into a
message and an exit code. Everything else raises the most specific class and lets it travel
to a command's entry point (`airv` itself, `python -m airv.kaggle.local`, the kernel build),
which hands it to `report`."""

from __future__ import annotations

import sys
from pathlib import Path


class AirvError(Exception):
    """Base class: an error airv reports to the user without a traceback."""

    exit_code = 1


class InputError(AirvError):
    """A challenge, solution or submission file is missing or malformed.

    Carries the file and, where known, the task id, so that every message names both.
    """

    exit_code = 2

    def __init__(self, message: str, *, path: Path | str | None = None, task_id: str | None = None):
        self.path = None if path is None else Path(path)
        self.task_id = task_id
        self.detail = message
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if task_id is not None:
            where.append(f"task {task_id}")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)


class ConfigError(AirvError):
    """An option or a config file is invalid."""

    exit_code = 2


class EngineError(AirvError):
    """The inference engine failed to start or died."""

    exit_code = 3


def report(error: AirvError, prog: str = "airv") -> int:
    """Print `prog: error: message` on stderr; return the error's exit code."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return error.exit_code
