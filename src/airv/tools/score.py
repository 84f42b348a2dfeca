"""Score SUBMISSION against a solution file. Prints the Kaggle score (correct test outputs /
all test outputs, a test output being correct if either attempt matches exactly) and the task
average (mean over tasks of each task's fraction correct). Tasks missing from the submission
count as wrong."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson

from airv.core.errors import InputError
from airv.core.submission import load_submission, score_submission
from airv.core.tasks import load_solutions

HELP = "score a submission.json against known solutions"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def main(args: argparse.Namespace) -> int:
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
