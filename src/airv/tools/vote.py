"""`airv vote`: vote again over a run's predictions log, offline, in any voting mode."""

from __future__ import annotations

import argparse
from pathlib import Path

from airv.core.errors import InputError
from airv.core.submission import build_submission, write_submission
from airv.core.tasks import load_challenges
from airv.core.voting import VoteMode, vote
from airv.run.config import SCORES_FILE
from airv.run.predictions import group_candidates, read_predictions
from airv.run.rescore import attach_scores, read_scores


def add_vote_arguments(p: argparse.ArgumentParser) -> None:
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
        help="voting mode (default grid); rescore uses the scores.jsonl beside the log",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FILE",
        help="where to write the new submission.json",
    )


def vote_command(args: argparse.Namespace) -> int:
    challenges = load_challenges(args.challenges, strict=False)
    if not args.predictions.exists():
        raise InputError("predictions log not found", path=args.predictions)
    records, damaged = read_predictions(args.predictions)
    mode = VoteMode.GRID if args.mode is None else VoteMode(args.mode)
    known = {(t, i) for t in challenges.task_ids for i in range(challenges.n_tests[t])}
    answers = {}
    ignored = 0
    scores = read_scores(args.predictions.parent / SCORES_FILE)
    for unit, cands in group_candidates(records).items():
        if unit not in known:
            ignored += 1
            continue
        if mode is VoteMode.RESCORE:
            cands = attach_scores(scores.get(unit, {}), cands)
        v = vote(cands, mode)
        if v is not None:
            answers[unit] = (v.attempt_1, v.attempt_2)
    write_submission(args.out, build_submission(challenges, answers))
    print(
        f"{args.out}: {len(answers)}/{len(known)} test inputs answered by {mode.value} vote "
        f"from {len(records)} predictions"
        + (f"; {damaged} damaged log lines skipped" if damaged else "")
        + (f"; {ignored} test inputs not in the challenge file ignored" if ignored else "")
    )
    return 0
