"""The predictions log: one JSON line per completion, appended as results arrive.

It is the run's memory: a rerun with the same output directory resumes from it, and
`airv vote` / `airv eval` redo the voting offline from it. A line cut short by a crash is
skipped on reading, never fatal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from airv.core.errors import InputError
from airv.core.jsonio import append_jsonl, read_jsonl
from airv.core.types import Grid, TaskId, Unit, to_grid, to_lists
from airv.core.voting import Candidate
from airv.run.config import SCORES_FILE, SUMMARY_FILE
from airv.run.scores import Scores, attach_scores, read_scores


@dataclass(frozen=True, slots=True)
class Prediction:
    task_id: TaskId
    test_index: int
    aug: str  # Augmentation.key
    text: str  # the raw completion
    grid: Grid | None  # parsed and reversed to the task's own frame; None if rejected
    reject: str | None  # RejectReason value when grid is None
    logprob: float
    tokens: int  # completion tokens
    prompt_tokens: int
    finish: str
    round: int
    seconds: float  # this completion's share of its batch's wall time

    @property
    def candidate(self) -> Candidate | None:
        if self.grid is None:
            return None
        return Candidate(self.grid, self.aug, self.logprob, self.tokens)

    def to_json_bytes(self) -> bytes:
        d = asdict(self)
        d["grid"] = None if self.grid is None else to_lists(self.grid)
        return orjson.dumps(d)

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Prediction:
        grid = d.get("grid")
        return cls(
            task_id=str(d["task_id"]),
            test_index=int(d["test_index"]),  # type: ignore[call-overload]
            aug=str(d["aug"]),
            text=str(d["text"]),
            grid=None if grid is None else to_grid(grid),
            reject=None if d.get("reject") is None else str(d["reject"]),
            logprob=float(d["logprob"]),  # type: ignore[arg-type]
            tokens=int(d["tokens"]),  # type: ignore[call-overload]
            prompt_tokens=int(d.get("prompt_tokens", 0)),  # type: ignore[call-overload]
            finish=str(d.get("finish", "")),
            round=int(d.get("round", 0)),  # type: ignore[call-overload]
            seconds=float(d.get("seconds", 0.0)),  # type: ignore[arg-type]
        )


def read_predictions(path: Path | str) -> tuple[list[Prediction], int]:
    """All well-formed records of a log, and the number of lines skipped as damaged."""
    return read_jsonl(path, Prediction.from_json)


def append_predictions(path: Path | str, predictions: Iterable[Prediction]) -> None:
    """Append records and fsync, so what the engine produced survives a crash right after."""
    append_jsonl(path, (p.to_json_bytes() for p in predictions))


def group_candidates(
    predictions: Iterable[Prediction], scores: Scores | None = None
) -> dict[Unit, list[Candidate]]:
    """The parsed answers of a log as candidates per test input, in log order; with the
    run's `scores`, each candidate carries its likelihood scores (`attach_scores`), which only
    the likelihood-based voting modes read. The one place predictions become candidates."""
    out: dict[Unit, list[Candidate]] = {}
    for p in predictions:
        c = p.candidate
        if c is not None:
            out.setdefault((p.task_id, p.test_index), []).append(c)
    if scores:
        out = {u: attach_scores(scores.get(u, {}), cs) for u, cs in out.items()}
    return out


@dataclass(frozen=True, slots=True)
class LoggedCandidates:
    """A run's candidates read back from its logs: what `airv vote`, `eval` and `report` vote on."""

    records: list[Prediction]
    damaged_lines: int
    pools: dict[Unit, list[Candidate]]  # carrying their scores when the scores log exists
    scores_path: Path
    has_scores: bool  # the scores log exists: likelihood-based modes can be redone


def read_logged_candidates(log: Path) -> LoggedCandidates:
    """The predictions log `log` and the scores log beside it, as candidates per test input.
    InputError if the predictions log is missing: a run that left none says why elsewhere."""
    if not log.exists():
        raise InputError(f"predictions log not found{why_no_predictions(log.parent)}", path=log)
    records, damaged = read_predictions(log)
    scores_path = log.parent / SCORES_FILE
    scores = read_scores(scores_path)
    return LoggedCandidates(
        records, damaged, group_candidates(records, scores), scores_path, scores_path.exists()
    )


def why_no_predictions(run_dir: Path) -> str:
    """What the run directory's summary says about a run that logged nothing ("" if no
    summary): how it stopped, after how long, and whether its engine ever started."""
    path = run_dir / SUMMARY_FILE
    try:
        summary = orjson.loads(path.read_bytes())
        stopped = summary.get("stopped_by") or "unfinished"
        seconds = float(summary.get("total_seconds") or 0.0)
        started = summary.get("engine_start_seconds") or []
        error = summary.get("error")
    except (OSError, orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return ""
    engine = "its engine started" if started else "its engine never started"
    detail = f"; {error}" if error else ""
    return (
        f": the run in {run_dir} stopped ({stopped}) after {seconds:.0f}s and {engine}{detail}"
        + ("" if started else " (a budget too short for the engine's start-up?)")
    )
