"""Recompute the votes from a predictions log (predictions.jsonl of a run) with another voting
mode, and write a new submission.json. No model is needed."""

from __future__ import annotations

import argparse
from pathlib import Path

from airv.core.submission import build_submission, write_submission
from airv.core.tasks import load_challenges
from airv.core.voting import DEFAULT_VOTE_MODE, VoteMode, vote
from airv.run.predictions import read_logged_candidates

HELP = "redo the voting offline from a predictions log"
DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--predictions",
        type=Path,
        required=True,
        metavar="LOG",
        help="predictions.jsonl written by airv run",
    )
    p.add_argument(
        "--challenges",
        type=Path,
        required=True,
        metavar="FILE",
        help="the challenge file of that run",
    )
    p.add_argument(
        "--mode",
        choices=[m.value for m in VoteMode],
        default=None,
        help=f"voting mode (default {DEFAULT_VOTE_MODE.value}); rescore uses the "
        "scores.jsonl beside the log",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FILE",
        help="where to write the new submission.json",
    )


def main(args: argparse.Namespace) -> int:
    challenges = load_challenges(args.challenges, strict=False)
    logged = read_logged_candidates(args.predictions)
    mode = DEFAULT_VOTE_MODE if args.mode is None else VoteMode(args.mode)
    known = {(t, i) for t in challenges.task_ids for i in range(challenges.n_tests[t])}
    answers = {}
    ignored = 0
    for unit, cands in logged.pools.items():
        if unit not in known:
            ignored += 1
            continue
        v = vote(cands, mode)
        if v is not None:
            answers[unit] = (v.attempt_1, v.attempt_2)
    write_submission(args.out, build_submission(challenges, answers))
    damaged = logged.damaged_lines
    print(
        f"{args.out}: {len(answers)}/{len(known)} test inputs answered by {mode.value} vote "
        f"from {len(logged.records)} predictions"
        + (f"; {damaged} damaged log lines skipped" if damaged else "")
        + (f"; {ignored} test inputs not in the challenge file ignored" if ignored else "")
    )
    if mode.needs_scores and not logged.has_scores:
        print(
            f"note: {logged.scores_path} not found: no candidate has a likelihood score, so "
            f"{mode.value} ranked them as the grid vote does (the run needs --vote {mode.value})"
        )
    return 0
