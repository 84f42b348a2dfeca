"""Check that SUBMISSION has exactly the tasks and test entries of the challenge file, both
attempts each, and valid grids. Prints every problem; exits 0 if valid, 1 if not."""

from __future__ import annotations

import argparse
from pathlib import Path

from airv.core.submission import validate_submission
from airv.core.tasks import load_challenges

HELP = "check a submission.json against its challenge file"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
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


def main(args: argparse.Namespace) -> int:
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
