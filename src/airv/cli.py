"""The `airv` command line: a table of subcommands, each a module of one shape (`Command`).

`main` is the one place that turns an AirvError into `airv: error: ...` on stderr and the
error's exit code. To add a subcommand, write its module in airv.tools and list it in
`COMMANDS`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn, Protocol

from airv import __version__
from airv.core import errors
from airv.tools import (
    evaluate,
    plan,
    prompt,
    recipe,
    replay,
    report,
    run,
    score,
    validate,
    vote,
)


class Command(Protocol):
    """A subcommand's module: its line in `airv --help`, the description `airv NAME --help`
    prints, its options, and what it does with them (returning the exit code)."""

    # Read-only (properties), so that a module's `str` constant fits `str | None`.
    @property
    def HELP(self) -> str: ...

    @property
    def DESCRIPTION(self) -> str | None: ...  # None: docstrings stripped (python -OO)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def main(self, args: argparse.Namespace) -> int: ...


COMMANDS: tuple[tuple[str, Command], ...] = (
    ("run", run),
    ("recipe", recipe),
    ("prompt", prompt),
    ("vote", vote),
    ("validate", validate),
    ("score", score),
    ("report", report),
    ("eval", evaluate),
    ("plan", plan),
    ("replay", replay),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airv",
        description="airv: augment, infer, reverse, vote — an offline Kaggle submission "
        "package for LLM-based ARC-AGI solvers.",
    )
    parser.add_argument("--version", action="version", version=f"airv {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS:
        p = subparsers.add_parser(name, help=command.HELP, description=command.DESCRIPTION)
        command.add_arguments(p)
        p.set_defaults(func=command.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse usage errors exit 2 itself)."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except errors.AirvError as e:
        return errors.report(e)
    return code


def entry() -> NoReturn:
    """The `airv` script and `python -m airv`: main(), then the process ends at once, its
    output flushed. Python's own teardown would follow: with torch and transformers loaded (a
    run's tokenizer) it took 1.6 s on the test machine and several under load, after the run
    had written everything, and a run's process must end before its --time-budget does. It
    would also join any child process still alive (an engine the run failed to end), where the
    ended process leaves it to its parent-death signal."""
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to flush to
            stream.flush()
    os._exit(code)
