"""`airv prompt`: the exact text airv sends a model for one task, so a user can check that
airv speaks their model's language.

It prints the prompt of the identity view (original colours and orientation, every train
pair in file order) as the pipeline renders it; with --model, through the model's tokenizer
(its chat template for the `default` preset, its EOS text) and only the train pairs the
pipeline keeps after fitting the context. With --answer it prints instead the text the
model is trained to emit after that prompt, end marker included. Nothing is added: no
trailing newline, and no BOS that the tokenizer adds by itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from airv.core.errors import ConfigError, InputError
from airv.core.prompt_format import answer_text, preset_names, resolve_format
from airv.core.prompts import (
    PromptTooLong,
    fit_prompt,
    for_tokenizer,
    probe_text,
    render_prompt,
)
from airv.core.tasks import (
    GridError,
    load_challenges,
    load_solutions,
    parse_grid,
    solutions_beside,
)
from airv.core.types import Grid
from airv.engines.config import EngineConfig
from airv.engines.model import check_round_trip, default_max_model_len, load_tokenizer

HELP = "print the exact prompt (or answer) text airv sends a model for one task"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter  # the description's own line breaks
    p.add_argument("--challenges", type=Path, required=True, metavar="FILE", help="challenge file")
    p.add_argument("--task", required=True, metavar="ID", help="the task id")
    p.add_argument(
        "--test-index",
        type=int,
        default=0,
        metavar="I",
        help="which test input (default %(default)s)",
    )
    f = p.add_argument_group("the format (at least one; precedence as in `airv run`)")
    f.add_argument("--format", type=Path, metavar="FILE", dest="format_file", help="format file")
    f.add_argument(
        "--format-preset",
        metavar="NAME",
        help=f"a preset shipped with airv: {', '.join(preset_names())}",
    )
    f.add_argument(
        "--model",
        type=Path,
        metavar="DIR",
        help="the model: its airv.json (if no --format/--format-preset), its tokenizer and "
        "context length",
    )
    p.add_argument(
        "--answer",
        metavar="GRID_JSON|solution",
        help="print the answer text for this grid (JSON, e.g. '[[1,2],[3,4]]'), or for the "
        "solution in the *_solutions.json beside the challenge file",
    )


def _answer_grid(spec: str, challenges: Path, task_id: str, test_index: int) -> Grid:
    if spec == "solution":
        path = solutions_beside(challenges)
        if path is None:
            raise InputError("--answer solution: no *_solutions.json beside it", path=challenges)
        solutions = load_solutions(path)
        if task_id not in solutions or not 0 <= test_index < len(solutions[task_id]):
            raise InputError("no solution for this test input", path=path, task_id=task_id)
        return solutions[task_id][test_index]
    try:
        value = orjson.loads(spec)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"--answer: not JSON, nor 'solution': {exc}") from None
    try:
        return parse_grid(value, "--answer")
    except GridError as exc:
        raise ConfigError(str(exc)) from None


def main(args: argparse.Namespace) -> int:
    if args.model is None and args.format_preset is None and args.format_file is None:
        raise ConfigError("give --format-preset NAME, --format FILE or --model DIR")
    challenges = load_challenges(args.challenges, strict=False)
    task = challenges.tasks.get(args.task)
    if task is None:
        why = challenges.rejected.get(args.task, "no such task in the file")
        raise InputError(why, path=args.challenges, task_id=args.task)
    if not 0 <= args.test_index < len(task.test):
        raise InputError(
            f"--test-index {args.test_index}: the task has {len(task.test)} test input(s)",
            path=args.challenges,
            task_id=args.task,
        )
    fmt = resolve_format(model=args.model, preset=args.format_preset, format_file=args.format_file)
    tokenizer = None
    if args.model is not None:
        tokenizer = load_tokenizer(args.model)
        fmt = for_tokenizer(fmt, tokenizer)
        check_round_trip(args.model, tokenizer, probe_text(fmt, tokenizer))
    if args.answer is not None:
        grid = _answer_grid(args.answer, args.challenges, args.task, args.test_index)
        sys.stdout.write(answer_text(grid, fmt) + fmt.eos)
        return 0
    if tokenizer is None:
        text = render_prompt(task, args.test_index, fmt, None)
    else:
        max_len = default_max_model_len(args.model) or EngineConfig().max_model_len
        fitted = fit_prompt(task, args.test_index, fmt, tokenizer, max_len)
        if isinstance(fitted, PromptTooLong):
            raise InputError(
                f"the prompt cannot fit {max_len} tokens even with one train pair "
                f"({fitted.needed} needed): the run gives this task [[0]]",
                path=args.challenges,
                task_id=args.task,
            )
        text = fitted.text
    sys.stdout.write(text)
    return 0
