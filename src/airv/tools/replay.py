"""Replay a recorded run's answers under other settings and budgets, and score each: which
schedule, settle margin, view count and task cap score most in the seconds you have.

A run's predictions.jsonl keeps every answer and the engine seconds it took. `airv replay RUN`
runs the run's own planners again on a virtual clock (no model, no engine: well under a second
per replay), each view answered with the recorded answer to it, for every combination of the
budgets, schedules, settle margins, view counts and task caps given, and prints the Kaggle
score of each against --solutions. The views are planned from the recorded run's seed and rounds
(run_summary.json), so a replay asks for the recorded augmentations.

Record once with every view answered: `airv run ... --settle-margin 0` at the most
--max-augmentations you will replay, with no deadline. A replay that asks for more views than
the recording has says so (`unanswered`). Budgets are engine seconds on the recording's
machine ('20m', '90s') or shares of the whole recording ('50%'): the clock counts engine time
alone, no start-up and no fine-tuning.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import tempfile
from pathlib import Path
from typing import Any

import orjson

from airv.core.augment import ViewPolicy
from airv.core.errors import ConfigError, InputError
from airv.core.jsonio import read_json_object
from airv.core.tasks import load_challenges, load_solutions
from airv.core.units import format_duration, parse_duration
from airv.core.voting import DEFAULT_VOTE_MODE, VoteMode
from airv.run.config import PREDICTIONS_FILE, SUMMARY_FILE, RunConfig
from airv.run.option import parse_task_cap
from airv.run.replay import Recording, replay, score
from airv.run.schedule import DEFAULT_SCHEDULE, ViewSchedule

HELP = "replay a recorded run's answers under other budgets and settings, and score each"
DESCRIPTION = __doc__

DEFAULT_BUDGETS = ("25%", "50%", "100%")


def _budget(text: str) -> str:
    """A share ('50%') or a duration, checked here, resolved against the recording later."""
    if text.endswith("%"):
        try:
            share = float(text[:-1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"cannot read share {text!r}: use e.g. 50%") from None
        if not share > 0:
            raise argparse.ArgumentTypeError(f"a share must be above 0%: {text!r}")
        return text
    try:
        parse_duration(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _task_cap(text: str) -> str:
    try:
        parse_task_cap(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("run", type=Path, metavar="RUN", help="the recorded run's output folder")
    p.add_argument(
        "--solutions", type=Path, required=True, metavar="FILE",
        help="the solution file, {task_id: [grid, ...]}",
    )  # fmt: skip
    p.add_argument(
        "--challenges", type=Path, metavar="FILE",
        help="the challenge file (default: the one run_summary.json names)",
    )  # fmt: skip
    p.add_argument(
        "--budget", type=_budget, nargs="+", default=list(DEFAULT_BUDGETS), metavar="B",
        help="engine seconds ('20m', '90s') or shares of the recording's ('50%'); "
        f"default: {' '.join(DEFAULT_BUDGETS)}".replace("%", "%%"),
    )  # fmt: skip
    p.add_argument(
        "--schedule", nargs="+", choices=[s.value for s in ViewSchedule],
        default=[s.value for s in sorted(ViewSchedule, key=lambda s: s != DEFAULT_SCHEDULE)],
        metavar="S", help="uniform, gain, or both (the default)",
    )  # fmt: skip
    p.add_argument(
        "--settle-margin", type=int, nargs="+", metavar="N",
        help=f"settle margins to replay (default: {RunConfig.settle_margin}, as `airv run`)",
    )  # fmt: skip
    p.add_argument(
        "--max-augmentations", type=int, nargs="+", metavar="N",
        help="views per test input at most (default: the recorded run's)",
    )  # fmt: skip
    p.add_argument(
        "--task-cap", type=_task_cap, nargs="+", metavar="CAP",
        help="per-task caps to replay: engine seconds ('90s') or tokens ('20000tok') "
        f"(default: {RunConfig.task_cap_shares:g} fair shares of the budget, as `airv run`)",
    )  # fmt: skip
    p.add_argument(
        "--inflight", type=int, metavar="N",
        help=f"prompts in flight (default: {RunConfig.inflight}, as `airv run`)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the rows as JSON, nothing else")


@dataclasses.dataclass(frozen=True)
class _Recorded:
    """What the replay needs of the recorded run's settings (run_summary.json)."""

    challenges: Path | None
    views: ViewPolicy
    rounds: tuple[int, int, int]  # first round, per round, most views
    vote: VoteMode  # a re-scoring vote is replayed as the grid vote (scoring needs the model)


def _settings(run: Path) -> _Recorded:
    path = run / SUMMARY_FILE
    if not path.is_file():
        raise InputError(f"{path}: no run summary: the replay needs the run's seed and rounds")
    summary = read_json_object(path, "run summary")
    settings = summary.get("settings")
    unreadable = InputError(
        f"{path}: the run summary has no views and rounds in its settings (written by an older "
        "airv?)"
    )
    if not isinstance(settings, dict):
        raise unreadable
    try:
        views = ViewPolicy(**settings["views"])
        first, per, most = (int(n) for n in settings["augmentations"])
    except (KeyError, TypeError, ValueError):
        raise unreadable from None
    try:
        vote = VoteMode(settings.get("vote", DEFAULT_VOTE_MODE))
    except ValueError:
        raise InputError(f"{path}: unknown vote mode {settings.get('vote')!r}") from None
    challenges = summary.get("challenges")
    return _Recorded(Path(challenges) if isinstance(challenges, str) else None, views,
                     (first, per, most), VoteMode.GRID if vote.needs_scores else vote)  # fmt: skip


def main(args: argparse.Namespace) -> int:
    run: Path = args.run
    recording = Recording.read(run / PREDICTIONS_FILE)
    recorded = _settings(run)
    challenges_path = args.challenges or recorded.challenges
    if challenges_path is None:
        raise InputError(f"{run / SUMMARY_FILE}: names no challenge file: give --challenges FILE")
    if not challenges_path.is_file():
        raise InputError(
            f"{challenges_path}: the recorded run's challenge file is not there: give "
            "--challenges FILE"
        )
    challenges = load_challenges(challenges_path, strict=False)
    solutions = load_solutions(args.solutions)
    first, per, most = recorded.rounds
    whole = recording.seconds
    budgets = [
        (b, whole * float(b[:-1]) / 100 if b.endswith("%") else parse_duration(b))
        for b in args.budget
    ]
    margins = args.settle_margin or [RunConfig.settle_margin]
    views = args.max_augmentations or [most]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = RunConfig(
            challenges=challenges_path,
            out_dir=Path(tmp),
            views=recorded.views,
            vote_mode=recorded.vote,
            first_round=min(first, min(views)),
            per_round=per,
            **({"inflight": args.inflight} if args.inflight else {}),
        )
        caps = args.task_cap or [None]
        combos = itertools.product(budgets, args.schedule, margins, views, caps)
        for k, ((label, seconds), schedule, margin, n, cap) in enumerate(combos):
            cap_seconds, cap_tokens = parse_task_cap(cap) if cap else (None, None)
            cfg = dataclasses.replace(
                base,
                out_dir=Path(tmp) / str(k),
                schedule=ViewSchedule(schedule),
                settle_margin=margin,
                max_augmentations=n,
                first_round=min(first, n),
                time_budget=seconds,
                reserve=0.0,
                task_cap_seconds=cap_seconds,
                task_cap_tokens=cap_tokens,
            )
            r = replay(cfg, challenges, recording, seconds)
            s = score(challenges, r.answers(), solutions)
            rows.append(
                {
                    "budget": label,
                    "budget_seconds": round(seconds, 3),
                    "schedule": schedule,
                    "settle_margin": margin,
                    "max_augmentations": n,
                    "task_cap": cap or f"{cfg.task_cap_shares:g} shares",
                    "score": round(s.kaggle, 4),
                    "correct": s.n_correct,
                    "outputs": s.n_outputs,
                    "prompts": len({(p.task_id, p.test_index, p.aug) for _, p in r.done}),
                    "engine_seconds": round(r.seconds, 3),
                    "stopped_by": r.stopped_by,
                    "substituted": r.substituted,
                    "unanswered": r.unanswered,
                }
            )
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return 0
    lo, hi = recording.views
    print(
        f"recording: {recording.source}: {len(recording.in_order)} test inputs, {lo}-{hi} "
        f"views each, {format_duration(whole)} of engine time ({whole:.1f} s); views seed "
        f"{recorded.views.seed}, rounds of {first}/{per} up to {most}; "
        f"{recorded.vote.value} vote"
    )
    print(_table(rows))
    short = sum(r["unanswered"] for r in rows)
    if short:
        print(
            f"note: {short} views asked for more than the recording has (unanswered): record "
            "with --settle-margin 0 and no deadline, at the most views you replay"
        )
    return 0


def _table(rows: list[dict[str, Any]]) -> str:
    head = ["budget", "schedule", "settle", "views", "task cap", "score", "correct", "prompts",
            "engine s", "stopped by"]  # fmt: skip
    body = [
        [
            f"{r['budget']} ({r['budget_seconds']:.1f} s)" if r["budget"].endswith("%")
            else r["budget"],
            r["schedule"], str(r["settle_margin"]), str(r["max_augmentations"]), r["task_cap"],
            f"{r['score']:.3f}", f"{r['correct']}/{r['outputs']}", str(r["prompts"]),
            f"{r['engine_seconds']:.1f}", r["stopped_by"],
        ]
        for r in rows
    ]  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    return "\n".join(lines)


__all__ = ["DESCRIPTION", "HELP", "add_arguments", "main"]
