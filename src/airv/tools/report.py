"""`airv report`: one self-contained static HTML page about a run, for deciding what to change.

Reads a run's output directory (submission.json, predictions.jsonl, run_summary.json and,
where the gain schedule wrote it, schedule.jsonl), the challenge file and, where known, the
solutions; recomputes the votes from the predictions log; and writes report.html: per task
the train pairs, test inputs, both attempts, the top candidates with their votes and
logprobs, the truth and whether it was solved, its engine seconds and tokens, and from
schedule.jsonl why each test input stopped (settled, views, cap, failed, or deadline: the run
ended first) and the gain estimates of its picks (first and last, and how many views were
planned); filters and sorting; summary charts (time and tokens per task, rejections by
reason, accuracy per round).

The page is the template data/report.html with the data embedded as JSON; its inline
JavaScript draws grids on canvases and charts as SVG, and renders only one page of task
cards at a time, so that 400 tasks stay light. No network, no external libraries.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import html
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import orjson

from airv.core.errors import InputError
from airv.core.jsonio import read_json_object, write_atomic
from airv.core.submission import ATTEMPT_KEYS, build_submission, load_submission, score_submission
from airv.core.tasks import (
    Challenges,
    GridError,
    Task,
    load_challenges,
    load_solutions,
    parse_grid,
    solutions_beside,
)
from airv.core.types import Grid, TaskId, Unit
from airv.core.voting import DEFAULT_VOTE_MODE, Vote, VoteMode, vote
from airv.run.config import (
    PREDICTIONS_FILE,
    SCHEDULE_FILE,
    SCORES_FILE,
    SUBMISSION_FILE,
    SUMMARY_FILE,
)
from airv.run.predictions import Prediction, group_candidates, read_predictions
from airv.run.schedule import UnitSchedule, read_journal
from airv.run.scores import Scores, read_scores

REPORT_FILE = "report.html"
DEADLINE = "deadline"  # a test input the journal knows with no stop: the run ended first
TOP_TALLIES = 5  # candidates shown per test input
_TEMPLATE = "report.html"  # in airv/data
_DATA_MARK = "/*AIRV_DATA*/"
_TITLE_MARK = "AIRV_TITLE"

# JSON-ready nested data, as orjson takes it.
Json = dict[str, object]


class Status(enum.StrEnum):
    """A task's standing, as the page filters on it."""

    SOLVED = "solved"  # every test output right (either attempt)
    UNSOLVED = "unsolved"
    UNKNOWN = "unknown"  # no solution known


@dataclass(frozen=True, slots=True)
class ReportInputs:
    """Everything the report is built from, loaded and validated."""

    out_dir: Path
    challenges: Challenges
    solutions: dict[TaskId, tuple[Grid, ...]] | None
    solutions_note: str  # where the solutions came from, or why there are none
    predictions: tuple[Prediction, ...]
    damaged_lines: int
    scores: Scores  # scores.jsonl: what the likelihood-based voting modes rank by
    has_scores: bool  # scores.jsonl exists
    submission: Mapping[str, object] | None  # None when the run wrote none (yet)
    summary: Mapping[str, object] | None  # run_summary.json, None when absent
    # schedule.jsonl per task and test input; empty when absent (older or uniform runs)
    schedule: Mapping[TaskId, Mapping[int, UnitSchedule]]


@dataclass(frozen=True, slots=True)
class Written:
    """What `write_report` wrote."""

    path: Path
    tasks: int
    solutions_note: str
    data: Json  # the embedded JSON


def _challenges_path(out_dir: Path, summary: Mapping[str, object]) -> Path:
    recorded = summary.get("challenges")
    if not isinstance(recorded, str) or not recorded:
        raise InputError(
            f"{SUMMARY_FILE} names no challenge file; pass --challenges FILE", path=out_dir
        )
    path = Path(recorded)
    if not path.is_file():
        raise InputError(
            f"the challenge file recorded in {SUMMARY_FILE} ({path}) is not there; "
            "pass --challenges FILE",
            path=out_dir,
        )
    return path


def load_inputs(
    out_dir: Path, *, challenges: Path | None = None, solutions: Path | None = None
) -> ReportInputs:
    """Read a run directory. `challenges` overrides the path run_summary.json records;
    `solutions` defaults to the `*_solutions.json` beside the challenge file, if any."""
    if not out_dir.is_dir():
        raise InputError("run directory not found", path=out_dir)
    summary_path = out_dir / SUMMARY_FILE
    summary = read_json_object(summary_path, "run summary") if summary_path.is_file() else None
    if challenges is None:
        if summary is None:
            raise InputError(f"no {SUMMARY_FILE}; pass --challenges FILE", path=out_dir)
        challenges = _challenges_path(out_dir, summary)
    loaded = load_challenges(challenges, strict=False)
    if solutions is None:
        solutions = solutions_beside(challenges)
        note = (
            f"solutions: {solutions} (found beside the challenge file)"
            if solutions is not None
            else f"no solutions: none given and no *_solutions.json beside {challenges}"
        )
    else:
        note = f"solutions: {solutions}"
    truths = load_solutions(solutions) if solutions is not None else None
    predictions, damaged = read_predictions(out_dir / PREDICTIONS_FILE)
    scores_path = out_dir / SCORES_FILE
    submission_path = out_dir / SUBMISSION_FILE
    submission = load_submission(submission_path) if submission_path.is_file() else None
    return ReportInputs(
        out_dir=out_dir,
        challenges=loaded,
        solutions=truths,
        solutions_note=note,
        predictions=tuple(predictions),
        damaged_lines=damaged,
        scores=read_scores(scores_path),
        has_scores=scores_path.exists(),
        submission=submission,
        summary=summary,
        schedule=read_journal(out_dir / SCHEDULE_FILE),
    )


def _rows(grid: Grid) -> list[str]:
    # One string of digits per row: a third of the size of nested JSON lists.
    return ["".join(map(str, row)) for row in grid]


def _finite(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


def _submitted(submission: Mapping[str, object] | None, task_id: TaskId, i: int) -> list[Grid]:
    """The submitted attempts for one test input, as far as they are valid grids."""
    entries = submission.get(task_id) if submission is not None else None
    if not isinstance(entries, list) or i >= len(entries) or not isinstance(entries[i], dict):
        return []
    out: list[Grid] = []
    for key in ATTEMPT_KEYS:
        try:
            out.append(parse_grid(entries[i].get(key), key))
        except GridError:
            continue
    return out


def _schedule_data(u: UnitSchedule | None) -> Json | None:
    """One test input's schedule: views planned, the gain of its first and last pick, and
    why it stopped (None: the run ended first)."""
    return None if u is None else dataclasses.asdict(u)


def _stopped(schedule: Mapping[int, UnitSchedule]) -> str | None:
    """The distinct stop reasons of a task's test inputs, in test order, "deadline" for one
    the run ended first; None when the journal knows none of them."""
    reasons = [schedule[i].stop or DEADLINE for i in sorted(schedule)]
    return ", ".join(dict.fromkeys(reasons)) if reasons else None


def _test_data(
    test_input: Grid | None,
    attempts: list[Grid],
    truth: Grid | None,
    v: Vote | None,
    schedule: UnitSchedule | None = None,
) -> Json:
    vote_attempts = [] if v is None else [v.attempt_1, v.attempt_2]
    top = [] if v is None else list(v.tallies[:TOP_TALLIES])
    d: Json = {
        "input": None if test_input is None else _rows(test_input),
        "attempts": [_rows(g) for g in attempts],
        "truth": None if truth is None else _rows(truth),
        "correct": None if truth is None else truth in attempts,
        "n_candidates": 0 if v is None else v.n_candidates,
        "n_distinct": 0 if v is None else len(v.tallies),
        "margin": None if v is None else v.margin,
        "top": [
            {
                "grid": _rows(t.grid),
                "votes": t.votes,
                "lp": _finite(t.mean_logprob),
                "ok": None if truth is None else t.grid == truth,
            }
            for t in top
        ],
        "schedule": _schedule_data(schedule),
    }
    # The recomputed vote (another --mode, or a log newer than submission.json) may differ.
    if vote_attempts and vote_attempts[: len(attempts)] != attempts:
        d["vote_attempts"] = [_rows(g) for g in vote_attempts]
        d["vote_correct"] = None if truth is None else truth in vote_attempts
    return d


def _task_cost(
    task_id: TaskId, summary: Mapping[str, object] | None, preds: Sequence[Prediction]
) -> tuple[float, int, int]:
    """(seconds, tokens in, tokens out): run_summary.json's figures, else the log's."""
    per_task = summary.get("per_task") if summary is not None else None
    stats = per_task.get(task_id) if isinstance(per_task, dict) else None
    if isinstance(stats, dict):
        try:
            return (
                float(stats.get("seconds", 0.0)),
                int(stats.get("tokens_in", 0)),
                int(stats.get("tokens_out", 0)),
            )
        except (TypeError, ValueError):
            pass  # a hand-edited summary: fall back to the log
    return (
        math.fsum(p.seconds for p in preds),
        sum(p.prompt_tokens for p in preds),
        sum(p.tokens for p in preds),
    )


def _votes(predictions: Sequence[Prediction], scores: Scores, mode: VoteMode) -> dict[Unit, Vote]:
    pools = group_candidates(predictions, scores)
    return {unit: v for unit, cs in pools.items() if (v := vote(cs, mode)) is not None}


def accuracy_by_round(
    challenges: Challenges,
    predictions: Sequence[Prediction],
    solutions: Mapping[TaskId, Sequence[Grid]],
    mode: VoteMode,
    scores: Scores | None = None,
) -> list[Json]:
    """For each round r: the Kaggle score of the vote over the predictions of rounds <= r
    (fallback [[0]] where there is none), i.e. what submission.json held after round r.
    With a likelihood mode, every round's candidates carry the run's final scores (the log
    does not say which round scored them). Cost: one full vote per round."""
    known = {(t, i) for t in challenges.task_ids for i in range(challenges.n_tests[t])}
    out: list[Json] = []
    for r in sorted({p.round for p in predictions}):
        upto = [p for p in predictions if p.round <= r]
        answers = {
            u: (v.attempt_1, v.attempt_2)
            for u, v in _votes(upto, scores or {}, mode).items()
            if u in known
        }
        score = score_submission(build_submission(challenges, answers), solutions)
        out.append(
            {
                "round": r,
                "predictions": len(upto),
                "n_correct": score.n_correct,
                "n_outputs": score.n_outputs,
                "score": score.kaggle,
            }
        )
    return out


def _task_data(
    task_id: TaskId,
    inputs: ReportInputs,
    votes: Mapping[Unit, Vote],
    preds: Sequence[Prediction],
) -> Json:
    ch = inputs.challenges
    task: Task | None = ch.tasks.get(task_id)
    truths = inputs.solutions.get(task_id) if inputs.solutions is not None else None
    tests: list[Json] = []
    n_correct = 0
    margins: list[int] = []
    # Only the test inputs of the challenge file: a foreign test index says nothing here.
    schedule = {
        i: u for i, u in inputs.schedule.get(task_id, {}).items() if 0 <= i < ch.n_tests[task_id]
    }
    for i in range(ch.n_tests[task_id]):
        attempts = _submitted(inputs.submission, task_id, i)
        v = votes.get((task_id, i))
        if inputs.submission is None and v is not None:
            attempts = [v.attempt_1, v.attempt_2]
        truth = truths[i] if truths is not None and i < len(truths) else None
        n_correct += truth is not None and truth in attempts
        if v is not None:
            margins.append(v.margin)
        tests.append(
            _test_data(task.test[i] if task else None, attempts, truth, v, schedule.get(i))
        )
    if truths is None:
        status = Status.UNKNOWN
    else:
        status = Status.SOLVED if n_correct == len(tests) else Status.UNSOLVED
    seconds, tokens_in, tokens_out = _task_cost(task_id, inputs.summary, preds)
    rejects = Counter(p.reject for p in preds if p.reject is not None)
    failed = inputs.summary.get("failed_tasks") if inputs.summary is not None else None
    return {
        "id": task_id,
        "status": status.value,
        "n_correct": None if truths is None else n_correct,
        "n_tests": len(tests),
        # The least settled test input speaks for the task.
        "margin": min(margins) if margins else None,
        "seconds": round(seconds, 3),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "tokens": tokens_in + tokens_out,
        "completions": len(preds),
        "rejects": dict(rejects.most_common()),
        "stopped": _stopped(schedule),
        "invalid": ch.rejected.get(task_id),
        "failed": failed.get(task_id) if isinstance(failed, dict) else None,
        "train": [] if task is None else [[_rows(p.input), _rows(p.output)] for p in task.train],
        "tests": tests,
    }


def _run_facts(inputs: ReportInputs) -> Json:
    s = inputs.summary or {}
    keys = (
        "stopped_by",
        "error",
        "total_seconds",
        "engine_seconds",
        "tokens_in",
        "tokens_out",
        "tokens_per_second",
        "prompts",
        "completions",
        "restarts",
        "settled_skips",
    )
    return {k: s.get(k) for k in keys if s.get(k) is not None}


def report_data(inputs: ReportInputs, mode: VoteMode = DEFAULT_VOTE_MODE) -> Json:
    """The JSON the page is drawn from: run facts, one entry per task id of the challenge
    file (in file order), rejections by reason and accuracy per round."""
    ch = inputs.challenges
    by_task: defaultdict[TaskId, list[Prediction]] = defaultdict(list)
    for p in inputs.predictions:
        by_task[p.task_id].append(p)
    if mode.needs_scores and not inputs.has_scores:
        raise InputError(
            f"--mode {mode.value}: no {SCORES_FILE} in the run directory "
            f"(a run with --vote {mode.value} writes it)",
            path=inputs.out_dir,
        )
    votes = _votes(inputs.predictions, inputs.scores, mode)
    tasks = [_task_data(t, inputs, votes, by_task.get(t, [])) for t in ch.task_ids]
    score: Json | None = None
    if inputs.solutions is not None and inputs.submission is not None:
        s = score_submission(inputs.submission, inputs.solutions)
        score = {"kaggle": s.kaggle, "n_correct": s.n_correct, "n_outputs": s.n_outputs}
    rejections = Counter(p.reject for p in inputs.predictions if p.reject is not None)
    known = set(ch.task_ids)
    return {
        "out_dir": str(inputs.out_dir),
        "challenges": str(ch.path),
        "solutions_note": inputs.solutions_note,
        "has_solutions": inputs.solutions is not None,
        "has_submission": inputs.submission is not None,
        "has_schedule": bool(inputs.schedule),
        "mode": mode.value,
        "n_predictions": len(inputs.predictions),
        "damaged_lines": inputs.damaged_lines,
        "foreign_predictions": sum(p.task_id not in known for p in inputs.predictions),
        "run": _run_facts(inputs),
        "score": score,
        "rejections": dict(rejections.most_common()),
        "rounds": (
            accuracy_by_round(ch, inputs.predictions, inputs.solutions, mode, inputs.scores)
            if inputs.solutions is not None
            else []
        ),
        "tasks": tasks,
    }


def render_report(data: Json) -> str:
    """The HTML page with `data` embedded."""
    template = resources.files("airv").joinpath("data", _TEMPLATE).read_text(encoding="utf-8")
    # "<" only occurs inside JSON strings, where \u003c means the same: no "</script>" or
    # "<!--" can end the script element early.
    payload = orjson.dumps(data).replace(b"<", b"\\u003c").decode("utf-8")
    title = html.escape(f"airv report: {data.get('out_dir', '')}")
    # Data first: the title mark comes earlier in the template than any data could.
    return template.replace(_DATA_MARK, payload, 1).replace(_TITLE_MARK, title, 1)


def write_report(
    out_dir: Path,
    *,
    out: Path | None = None,
    challenges: Path | None = None,
    solutions: Path | None = None,
    mode: VoteMode = DEFAULT_VOTE_MODE,
) -> Written:
    """Build and write the report (OUT_DIR/report.html by default)."""
    inputs = load_inputs(out_dir, challenges=challenges, solutions=solutions)
    data = report_data(inputs, mode)
    path = out if out is not None else out_dir / REPORT_FILE
    try:
        write_atomic(path, render_report(data).encode("utf-8"))
    except OSError as e:
        raise InputError(f"cannot write the report: {e.strerror or e}", path=path) from e
    return Written(path, len(inputs.challenges.task_ids), inputs.solutions_note, data)


HELP = "write a self-contained HTML report of a run"
DESCRIPTION = (
    "Write one static HTML file (no network needed to view it) about the run in OUT_DIR: per "
    "task the train pairs, test inputs, both attempts and the top candidates with their votes "
    "and logprobs, the truth and whether it was solved where solutions are known; filters and "
    "sorting; charts of time and tokens per task, rejected outputs by reason and accuracy per "
    "round; from schedule.jsonl, why each test input stopped and its gain estimates. Reads "
    "OUT_DIR/submission.json, predictions.jsonl, run_summary.json and schedule.jsonl."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
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
        f"(default {DEFAULT_VOTE_MODE.value})",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        default=None,
        help="where to write the page (default OUT_DIR/report.html)",
    )


def main(args: argparse.Namespace) -> int:
    mode = DEFAULT_VOTE_MODE if args.mode is None else VoteMode(args.mode)
    written = write_report(
        args.out_dir,
        out=args.out,
        challenges=args.challenges,
        solutions=args.solutions,
        mode=mode,
    )
    print(f"{written.path}: {written.tasks} tasks; {written.solutions_note}")
    return 0
