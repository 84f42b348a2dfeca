"""The `airv` command line: one function per subcommand registers its parser and handler.

`main` is the one place that turns an AirvError into `airv: error: ...` on stderr and the
error's exit code. To add a subcommand, write `_add_<name>(subparsers)` and list it in
`_SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

import orjson

from airv import __version__
from airv.errors import AirvError, InputError
from airv.submission import load_submission, score_submission, validate_submission
from airv.tasks import load_challenges, load_solutions

# A string: argparse only makes _SubParsersAction subscriptable at type-check time.
_Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _validate(args: argparse.Namespace) -> int:
    # Lenient load: a task the challenge file itself gets wrong still needs a submission entry.
    challenges = load_challenges(args.challenges, strict=False)
    problems = validate_submission(args.submission, challenges)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{args.submission}: INVALID, {len(problems)} problem(s)")
        return 1
    n_outputs = sum(challenges.n_tests.values())
    print(f"{args.submission}: OK, {len(challenges.task_ids)} tasks, {n_outputs} test outputs")
    return 0


def _add_validate(subparsers: _Subparsers) -> None:
    p = subparsers.add_parser(
        "validate",
        help="check a submission.json against its challenge file",
        description="Check that SUBMISSION has exactly the tasks and test entries of the "
        "challenge file, both attempts each, and valid grids. Prints every problem; exits 0 "
        "if valid, 1 if not.",
    )
    p.add_argument(
        "submission", metavar="SUBMISSION", type=Path, help="the submission.json to check"
    )
    p.add_argument(
        "--challenges",
        required=True,
        type=Path,
        metavar="FILE",
        help="the Kaggle challenge file the submission answers (e.g. arc-agi_test_challenges.json)",
    )
    p.set_defaults(func=_validate)


def _score(args: argparse.Namespace) -> int:
    submission = load_submission(args.submission)
    solutions = load_solutions(args.solutions)
    score = score_submission(submission, solutions)
    print(f"kaggle score: {score.kaggle:.4f} ({score.n_correct}/{score.n_outputs} test outputs)")
    print(f"task average: {score.task_average:.4f} (over {len(score.per_task)} tasks)")
    if args.out is not None:
        try:
            args.out.write_bytes(orjson.dumps(score.to_json(), option=orjson.OPT_INDENT_2))
        except OSError as e:
            raise InputError(
                f"cannot write per-task results: {e.strerror or e}", path=args.out
            ) from e
    return 0


def _add_score(subparsers: _Subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="score a submission.json against known solutions",
        description="Score SUBMISSION against a solution file. Prints the Kaggle score (correct "
        "test outputs / all test outputs, a test output being correct if either attempt matches "
        "exactly) and the task average (mean over tasks of each task's fraction correct). Tasks "
        "missing from the submission count as wrong.",
    )
    p.add_argument(
        "submission", metavar="SUBMISSION", type=Path, help="the submission.json to score"
    )
    p.add_argument(
        "--solutions",
        required=True,
        type=Path,
        metavar="FILE",
        help="the solution file, {task_id: [grid, ...]} (e.g. arc-agi_evaluation_solutions.json)",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        default=None,
        help="also write the scores and each task's per-test-output results to FILE as JSON",
    )
    p.set_defaults(func=_score)


def _add_run(subparsers: _Subparsers) -> None:
    from airv import runopts

    p = subparsers.add_parser(
        "run",
        help="run the pipeline: challenge file + model -> submission.json",
        description=runopts.RUN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    runopts.add_run_arguments(p)
    p.set_defaults(func=runopts.run_command)


def _add_vote(subparsers: _Subparsers) -> None:
    from airv import runopts

    p = subparsers.add_parser(
        "vote",
        help="redo the voting offline from a predictions log",
        description="Recompute the votes from a predictions log (predictions.jsonl of a run) "
        "with another voting mode, and write a new submission.json. No model is needed.",
    )
    runopts.add_vote_arguments(p)
    p.set_defaults(func=runopts.vote_command)


def _report(args: argparse.Namespace) -> int:
    from airv.report import DEFAULT_MODE, write_report
    from airv.voting import VoteMode

    mode = DEFAULT_MODE if args.mode is None else VoteMode(args.mode)
    written = write_report(
        args.out_dir,
        out=args.out,
        challenges=args.challenges,
        solutions=args.solutions,
        mode=mode,
    )
    print(f"{written.path}: {written.tasks} tasks; {written.solutions_note}")
    return 0


def _add_report(subparsers: _Subparsers) -> None:
    from airv.report import DEFAULT_MODE
    from airv.voting import VoteMode

    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a run",
        description="Write one static HTML file (no network needed to view it) about the run in "
        "OUT_DIR: per task the train pairs, test inputs, both attempts and the top candidates "
        "with their votes and logprobs, the truth and whether it was solved where solutions "
        "are known; filters and sorting; charts of time and tokens per task, rejected outputs "
        "by reason and accuracy per round. Reads OUT_DIR/submission.json, predictions.jsonl "
        "and run_summary.json.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="the output directory of a run")
    p.add_argument(
        "--challenges",
        type=Path,
        metavar="FILE",
        default=None,
        help="the challenge file (default: the one run_summary.json records)",
    )
    p.add_argument(
        "--solutions",
        type=Path,
        metavar="FILE",
        default=None,
        help="the solution file (default: *_solutions.json beside *_challenges.json, if there)",
    )
    p.add_argument(
        "--mode",
        choices=[m.value for m in VoteMode],
        default=None,
        help="voting mode for the candidates shown and accuracy per round "
        f"(default {DEFAULT_MODE.value})",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        default=None,
        help="where to write the page (default OUT_DIR/report.html)",
    )
    p.set_defaults(func=_report)


_SUBCOMMANDS: tuple[Callable[[_Subparsers], None], ...] = (
    _add_run,
    _add_vote,
    _add_validate,
    _add_score,
    _add_report,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="airv",
        description="airv: augment, infer, reverse, vote — an offline Kaggle submission "
        "package for LLM-based ARC-AGI solvers.",
    )
    parser.add_argument("--version", action="version", version=f"airv {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse usage errors exit 2 itself)."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except AirvError as e:
        print(f"airv: error: {e}", file=sys.stderr)
        return e.exit_code
    return code
