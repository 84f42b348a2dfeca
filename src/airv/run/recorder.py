"""The run's recorder: from the engine's results to the predictions log, the votes and
submission.json.

Each completion is parsed, its augmentation reversed, and appended to the predictions log at
once (what a resumed run reads back); each score goes to the scores log (airv.run.rescore). The
votes are recounted only where something new arrived, and submission.json is rewritten
atomically from them.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from airv.core.formats import Rejection
from airv.core.jsonio import cut_torn_tail
from airv.core.submission import build_submission, write_submission
from airv.core.tasks import Challenges
from airv.core.types import Grid, TaskId, Unit
from airv.core.voting import Vote, vote
from airv.engines.base import Completion
from airv.run.budget import Clock, SignalStop
from airv.run.config import RunConfig
from airv.run.ledger import Ledger
from airv.run.predictions import (
    Prediction,
    append_predictions,
    group_candidates,
    read_predictions,
)
from airv.run.rescore import Rescorer, ScoreItem
from airv.run.rounds import View
from airv.run.summary import RunSummary

log = logging.getLogger(__name__)

# A completion's text -> its grid (in the augmented frame), or why it is not one.
Parse = Callable[[str], Grid | Rejection]


class Recorder:
    def __init__(
        self,
        cfg: RunConfig,
        challenges: Challenges,
        summary: RunSummary,
        ledger: Ledger,
        rescorer: Rescorer,
        clock: Clock,
    ):
        self.cfg = cfg
        self.challenges = challenges
        self.summary = summary
        self.ledger = ledger
        self.rescorer = rescorer
        self.clock = clock
        self.parse: Parse | None = None  # set once the model's prompt format is known
        self.signals = SignalStop()  # the run's, while it streams: a stop waits for the log
        self.predictions: dict[Unit, list[Prediction]] = defaultdict(list)
        # Augmentations asked and answered with no completion at all (a search that found
        # nothing above its threshold): not asked again in this run.
        self._empty: dict[Unit, set[str]] = defaultdict(set)
        self._votes: dict[Unit, Vote] = {}
        self._counted: dict[Unit, int] = {}  # predictions each test input's vote has seen
        self._rounds: dict[int, list[float]] = {}  # round -> [views done, first, last time]

    def resume(self, units: Sequence[Unit], *other_logs: Path) -> None:
        """Read back what an earlier run with this fingerprint logged for `units`. A line torn
        by a kill mid-append is cut (in `other_logs` too) before this run appends."""
        records, damaged = read_predictions(self.cfg.log_path)
        known = set(units)
        kept = [p for p in records if (p.task_id, p.test_index) in known]
        for p in kept:
            self.predictions[(p.task_id, p.test_index)].append(p)
            self.ledger.charge(p.task_id, p.seconds, p.prompt_tokens + p.tokens)
        self.summary.resumed_predictions = len(kept)
        cut_torn_tail(self.cfg.log_path)  # counted in `damaged` as it was read
        damaged += cut_torn_tail(self.cfg.scores_path)
        damaged += sum(cut_torn_tail(p) for p in other_logs)
        self.summary.damaged_log_lines = damaged
        if kept:
            log.info("resumed %d predictions from %s", len(kept), self.cfg.log_path)

    def asked(self, unit: Unit) -> set[str]:
        """The augmentations a test input has been answered under (or found nothing for)."""
        return {p.aug for p in self.predictions.get(unit, [])} | self._empty[unit]

    def vote_of(self, unit: Unit) -> Vote | None:
        """A test input's vote as last counted."""
        return self._votes.get(unit)

    def last_votes(self) -> dict[Unit, Vote]:
        """The votes as last counted (nothing recounted)."""
        return dict(self._votes)

    def votes(self) -> dict[Unit, Vote]:
        """The vote of every test input with candidates. Only test inputs with new predictions
        (or new scores) are recounted: submission.json is rewritten all through the run, and
        recounting everything each time would make a run quadratic in its size."""
        rescored = self.rescorer.take_changed()
        for unit, preds in self.predictions.items():
            if self._counted.get(unit) == len(preds) and unit not in rescored:
                continue
            self._counted[unit] = len(preds)
            cands = group_candidates(preds).get(unit, [])
            if self.cfg.vote_mode.needs_scores:
                cands = self.rescorer.attach(unit, cands)
            v = vote(cands, self.cfg.vote_mode)
            if v is None:
                self._votes.pop(unit, None)
            else:
                self._votes[unit] = v
        return dict(self._votes)

    def write(self) -> dict[Unit, Vote]:
        """Vote and rewrite submission.json atomically; returns the votes."""
        votes = self.votes()
        answers = {u: (v.attempt_1, v.attempt_2) for u, v in votes.items()}
        write_submission(self.cfg.submission_path, build_submission(self.challenges, answers))
        self.summary.writes += 1
        if self.summary.first_write_seconds is None:
            self.summary.first_write_seconds = self.clock.elapsed()
        return votes

    def round_planned(self, round_no: int) -> None:
        now = time.monotonic()
        self._rounds.setdefault(round_no, [0, now, now])

    def record(self, items: Sequence[tuple[View, Sequence[Completion], float]]) -> set[TaskId]:
        """Log the completions of finished views (with each one's share of engine seconds);
        returns the tasks they belong to."""
        now = time.monotonic()
        new: list[Prediction] = []
        for view, completions, seconds in items:
            task_id = view.unit[0]
            self.summary.add_prompt(task_id, len(view.prompt.token_ids), seconds)
            tokens = len(view.prompt.token_ids) + sum(len(c.token_ids) for c in completions)
            self.ledger.charge(task_id, seconds, tokens)
            for c in completions:
                new.append(self._prediction(view, c, seconds / max(1, len(completions))))
            if not completions:
                self._empty[view.unit].add(view.aug.key)
            stats = self._rounds.setdefault(view.round, [0, now, now])
            stats[0] += 1
            stats[2] = now
        with self.signals.held():  # the log and the run's memory of it agree
            append_predictions(self.cfg.log_path, new)
            for p in new:
                self.predictions[(p.task_id, p.test_index)].append(p)
                self.summary.add_prediction(p)
        return {view.unit[0] for view, _, _ in items}

    def record_scores(self, items: Sequence[tuple[ScoreItem, float, float]]) -> None:
        """Log finished scores: (item, log-probability, engine seconds)."""
        self.rescorer.record([i for i, _, _ in items], [v for _, v, _ in items])
        self.summary.scoring_requests += len(items)
        self.summary.scoring_seconds += sum(sec for _, _, sec in items)

    def _prediction(self, view: View, c: Completion, seconds: float) -> Prediction:
        assert self.parse is not None, "the prompt format is known before any view is planned"
        parsed = self.parse(c.text)
        grid: Grid | None = None
        reject: str | None = None
        if isinstance(parsed, Rejection):
            reject = str(parsed.reason)
        else:
            grid = view.aug.reverse_grid(parsed)
        task_id, test_index = view.unit
        return Prediction(
            task_id=task_id,
            test_index=test_index,
            aug=view.aug.key,
            text=c.text,
            grid=grid,
            reject=reject,
            logprob=c.logprob,
            tokens=len(c.token_ids),
            prompt_tokens=len(view.prompt.token_ids),
            finish=c.finish_reason,
            round=view.round,
            seconds=seconds,
        )

    def finish(self, units: Sequence[Unit], votes: dict[Unit, Vote]) -> None:
        """The rounds, and the test inputs whose every answer failed to parse, in the summary."""
        s = self.summary
        # Rounds overlap: each one's span runs from its planning to its last completion.
        for r, (n, first, last) in sorted(self._rounds.items()):
            if n:
                s.add_round(r, last - first, int(n))
        for unit in units:
            if self.predictions.get(unit) and unit not in votes:
                s.failed_tasks.setdefault(unit[0], "every answer failed to parse")
