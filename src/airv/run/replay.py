"""A recorded run's answers under other settings, on a virtual clock (`airv replay`).

A run's predictions log holds, for each view it answered, the answer and the engine seconds it
took (its share of its batch). A replay runs the run's own planners (`Rounds`, `Gain`), its
ledger and task caps, its dispatch check and its vote as a run does, with another budget,
schedule, settle margin or view count, and answers each view it asks for with the recorded
answer to that augmentation, after the recorded seconds. No model is loaded and no engine
runs: a replay of a few thousand views takes a second, and with the answers fixed, two
settings compare without the machine's noise.

What a replay cannot know is an answer the recording does not have. Views are planned from
the recorded run's seed, so a replay asks for the recorded augmentations, in their order; an
augmentation asked out of that order is answered by the test input's next unused recorded
view (`substituted`), and a view past the test input's recorded ones has no answer (as a
search that finds nothing: `unanswered`). Record with `--settle-margin 0` and no deadline, at
the most views you will replay, and every view is there.

A gain run's promises (promise.jsonl beside its log, airv.run.promise) are asked first by the
run's rule (a sample, then the rest if the sample's rate says it is cheap), charged at once at
their recorded seconds, and order the first round as they did; a recording without them (a
uniform run's) replays the gain schedule's first round by price alone.

The engine is one lane that ends its views one after another in queue order, each after its
recorded seconds: answers come back one at a time (a batch returns many together), and votes
are recounted at each answer (a run recounts every few seconds). The clock counts engine
seconds alone: no start-up, no fine-tuning (a recording made with adapters replays their
answers).
"""

from __future__ import annotations

import heapq
import itertools
import math
import statistics
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from airv.core.errors import InputError
from airv.core.prompts import FittedPrompt
from airv.core.submission import Score, build_submission, score_submission
from airv.core.tasks import Challenges, Task
from airv.core.types import Grid, TaskId, Unit
from airv.core.voting import Vote, VoteMode, vote
from airv.run.config import PROMISE_FILE, RunConfig
from airv.run.gain import Ledgers, planner, task_stop
from airv.run.ledger import Ledger
from airv.run.predictions import Prediction, group_candidates, read_predictions
from airv.run.promise import PromisePass, Scored, read_promises, weight
from airv.run.rounds import Board, View
from airv.run.schedule import Evidence, Journal, ViewSchedule, evidence_of, view_price


class Recording:
    """A run's answers: each test input's views by augmentation (a view's completions: one,
    or n when sampling gave several), in the order it was answered, and their size; and the
    tasks' promises where the run scored them (a gain run's promise.jsonl)."""

    def __init__(
        self,
        preds: Sequence[Prediction],
        source: str = "predictions",
        promises: Mapping[TaskId, Scored] | None = None,
    ):
        if not preds:
            raise InputError(f"{source}: no predictions to replay")
        self.source = source
        self.promises: dict[TaskId, Scored] = dict(promises or {})
        self.by_aug: dict[tuple[Unit, str], list[Prediction]] = defaultdict(list)
        self.in_order: dict[Unit, list[str]] = defaultdict(list)  # augmentation keys
        for p in preds:
            unit = (p.task_id, p.test_index)
            if (unit, p.aug) not in self.by_aug:
                self.in_order[unit].append(p.aug)
            self.by_aug[(unit, p.aug)].append(p)

    @classmethod
    def read(cls, log: Path) -> Recording:
        if not log.is_file():
            raise InputError(f"{log}: no predictions log to replay")
        preds, _ = read_predictions(log)
        return cls(preds, str(log), read_promises(log.parent / PROMISE_FILE))

    @property
    def seconds(self) -> float:
        """The engine seconds of every recorded view."""
        return sum(p.seconds for ps in self.by_aug.values() for p in ps)

    @property
    def views(self) -> tuple[int, int]:
        """The fewest and the most views a test input has."""
        counts = [len(keys) for keys in self.in_order.values()]
        return min(counts), max(counts)

    def answer(self, unit: Unit, aug: str, used: set[str]) -> tuple[list[Prediction], bool]:
        """The recorded completions of `aug` (True), else those of the test input's next view
        that `used` lacks (False), else none."""
        preds = self.by_aug.get((unit, aug))
        if preds is not None:
            return preds, True
        spare = next((k for k in self.in_order.get(unit, []) if k not in used), None)
        return ([] if spare is None else self.by_aug[(unit, spare)]), False

    def fitted(self, unit: Unit, n_train: int) -> FittedPrompt:
        """A view's size as recorded: the replay builds no prompt (its tokens are blanks)."""
        preds = [p for k in self.in_order.get(unit, []) for p in self.by_aug[(unit, k)]]
        prompt = int(statistics.median(p.prompt_tokens for p in preds)) if preds else 0
        answer = max((p.tokens for p in preds), default=1)
        return FittedPrompt("", [0] * prompt, n_train, answer, ())


@dataclass
class Replayed:
    """What one replay did: each answer with the engine seconds at its end, why it stopped,
    and the views the recording could not answer as asked."""

    mode: VoteMode = VoteMode.GRID
    done: list[tuple[float, Prediction]] = field(default_factory=list)
    stopped_by: str = "done"  # or "deadline"
    substituted: int = 0
    unanswered: int = 0
    votes: dict[Unit, Vote] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.done[-1][0] if self.done else 0.0

    def answers(self, upto: int | None = None) -> dict[Unit, tuple[Grid, Grid]]:
        """Each test input's two attempts by the replay's vote, over the first `upto` answers."""
        return attempts([p for _, p in self.done[:upto]], self.mode)


def attempts(
    preds: Sequence[Prediction], mode: VoteMode = VoteMode.GRID
) -> dict[Unit, tuple[Grid, Grid]]:
    """Each test input's two attempts by the vote over these predictions."""
    out = {}
    for unit, cands in group_candidates(preds).items():
        v = vote(cands, mode)
        if v is not None:
            out[unit] = (v.attempt_1, v.attempt_2)
    return out


def score(
    challenges: Challenges,
    answers: Mapping[Unit, tuple[Grid, Grid]],
    solutions: Mapping[TaskId, Sequence[Grid]],
) -> Score:
    """The Kaggle score of these attempts (the fallback where a test input has none)."""
    return score_submission(build_submission(challenges, answers), solutions)


class _Replay:
    def __init__(self, cfg: RunConfig, challenges: Challenges, recording: Recording):
        self.cfg, self.recording = cfg, recording
        self.tasks = challenges.tasks
        task_ids = [t for t in challenges.task_ids if t in self.tasks]
        self.units = [(t, i) for t in task_ids for i in range(len(self.tasks[t].test))]
        self.ledger = Ledger(cfg.task_cap(len(task_ids)), cfg.task_cap_tokens)
        self.failed: set[TaskId] = set()
        self.preds: dict[Unit, list[Prediction]] = defaultdict(list)
        self.asked: dict[Unit, set[str]] = defaultdict(set)  # augmentations answered
        self.queue: list[tuple[tuple[int, int], View]] = []  # by (round, push order), as a run's
        self.engine: deque[View] = deque()  # in flight, ended in this order
        self.now = 0.0
        self.spent, self.tokens = 0.0, 0
        # The run's vote; one that needs scores (re-scoring) is replayed as the grid vote.
        mode = cfg.vote_mode if not cfg.vote_mode.needs_scores else VoteMode.GRID
        self.out = Replayed(mode)
        self._seq = itertools.count()
        self._sizes: dict[Unit, FittedPrompt] = {}
        self.promise_pass = PromisePass(cfg.inflight)  # gain: the recorded promises, asked
        planned = {u[0] for u in self.units}
        self._recorded = {t: s for t, s in recording.promises.items() if t in planned}
        # Recorded promises the replay asked, from those a run never asks (no request: a task
        # with one train pair).
        self._asked: dict[TaskId, Scored] = {
            t: s for t, s in recording.promises.items() if s.loglik is None and not s.tokens
        }
        board = Board(
            self.units,
            closed=self._closed,
            have=lambda u: self.asked[u] | self.ledger.owed(u),
            adapter=lambda t: None,
            fail=lambda t, why: self.failed.add(t),
            push=self._push,
        )
        self.planner = planner(
            cfg,
            self.tasks,
            self.fit,
            board,
            Ledgers(
                self.evidence,
                self.price,
                lambda t: task_stop(t, self.failed, self.ledger),
                held=lambda t: False,
                elapsed=lambda: self.now,
                promise=self.promise,
            ),
            Journal(cfg.schedule_path),
        )

    # -- what the planners read, as airv.run.pipeline.Run gives it -----------------------

    def fit(self, view: Task, test_index: int) -> FittedPrompt:
        unit = (view.id, test_index)
        fitted = self._sizes.get(unit)
        if fitted is None:
            fitted = self._sizes[unit] = self.recording.fitted(unit, len(view.train))
        return fitted

    def _spt(self) -> float:
        return self.spent / max(1, self.tokens)

    def promise(self, task_id: TaskId) -> float | None:
        s = self._asked.get(task_id) if self.promise_pass.known else None
        return None if s is None or s.loglik is None else weight(s.loglik)

    def _ask_promises(self, deadline: float) -> bool:
        """The gain run's rule (PromisePass) on the recorded promises, charged at once at
        their recorded seconds: a sample, then the rest or none. False: the pass ran past the
        deadline."""
        if self.cfg.schedule is not ViewSchedule.GAIN or not self.promise_pass.wants(False):
            return True
        recorded = self._recorded
        while ask := self.promise_pass.ask(
            {t: s.tokens for t, s in recorded.items() if t not in self._asked},
            self._asked.values(),
            deadline - self.now,
            waiting=False,
        ):
            self._asked.update((t, recorded[t]) for t in ask)
            self.now += math.fsum(recorded[t].seconds for t in ask)
        return self.now <= deadline

    def _closed(self, task_id: TaskId) -> bool:
        return task_id in self.failed or self.ledger.capped(task_id, self._spt())

    def evidence(self, unit: Unit) -> Evidence:
        return evidence_of([p.grid for p in self.preds[unit]], len(self.ledger.owed(unit)))

    def price(self, task_id: TaskId, tokens: int) -> float:
        seconds, _ = self.ledger.spent(task_id)
        n = sum(len(self.asked[(task_id, i)]) for i in range(len(self.tasks[task_id].test)))
        return view_price(seconds, n, tokens, self._spt())

    def _push(self, views: Sequence[View]) -> int:
        for v in views:
            heapq.heappush(self.queue, ((v.round, next(self._seq)), v))
            self.ledger.owe(v.unit, v.aug.key, v.cost)
        return len(views)

    # -- the loop: Run._stream's, on the virtual clock -----------------------------------

    def _wanted(self, v: View) -> bool:
        """The run's dispatch check: the task has not failed or reached its cap, and a later
        round's view is not for a test input settled meanwhile."""
        task_id = v.unit[0]
        if task_id in self.failed or self.ledger.capped(task_id):
            return False
        have = len(self.asked[v.unit] | self.ledger.owed(v.unit))
        return not self.planner.late(v, self.out.votes.get(v.unit), have)

    def _feed(self) -> None:
        while len(self.engine) < self.cfg.inflight and self.queue:
            _, v = heapq.heappop(self.queue)
            if self._wanted(v):
                self.engine.append(v)
            else:
                self.ledger.settle(v.unit, v.aug.key)

    def _cut(self, task_id: TaskId) -> None:
        """A task at its cap: its views queued and in flight are taken back."""
        self.ledger.cut.add(task_id)
        gone = [v for v in self.engine if v.unit[0] == task_id]
        gone += [v for _, v in self.queue if v.unit[0] == task_id]
        for v in gone:
            self.ledger.settle(v.unit, v.aug.key)
        self.engine = deque(v for v in self.engine if v.unit[0] != task_id)
        self.queue = [(k, v) for k, v in self.queue if v.unit[0] != task_id]
        heapq.heapify(self.queue)

    def run(self, deadline: float) -> Replayed:
        out = self.out
        while True:
            if not self._ask_promises(deadline):
                out.stopped_by = "deadline"
                return out
            room = self.cfg.inflight - len(self.queue)
            if room > 0:
                self.planner.refill(room, out.votes)
            self._feed()
            if not self.engine:  # nothing queued either: the feed takes what it can
                if not self.planner.refill(0, out.votes, final=True):
                    return out
                continue
            v = self.engine.popleft()
            preds, hit = self.recording.answer(v.unit, v.aug.key, self.asked[v.unit])
            self.ledger.settle(v.unit, v.aug.key)
            self.asked[v.unit].add(v.aug.key)
            if not preds:  # nothing recorded to answer it: an empty result, as a run keeps
                out.unanswered += 1
                continue
            out.substituted += not hit
            seconds = math.fsum(p.seconds for p in preds)
            if self.now + seconds > deadline:
                out.stopped_by = "deadline"  # in flight at the deadline: lost
                return out
            self.now += seconds
            tokens = len(v.prompt.token_ids) + sum(p.tokens for p in preds)
            self.spent += seconds
            self.tokens += tokens
            self.ledger.charge(v.unit[0], seconds, tokens)
            self.asked[v.unit].add(preds[0].aug)
            self.preds[v.unit].extend(preds)
            out.done.extend((self.now, p) for p in preds)
            cands = [c for q in self.preds[v.unit] if (c := q.candidate) is not None]
            counted = vote(cands, out.mode)
            if counted is not None:
                out.votes[v.unit] = counted
            task_id = v.unit[0]
            if task_id not in self.ledger.cut and self.ledger.capped(task_id):
                self._cut(task_id)


def replay(cfg: RunConfig, challenges: Challenges, recording: Recording, budget: float) -> Replayed:
    """The run `cfg` describes (its schedule, views, settle margin, caps and prompts in
    flight), answered from `recording`, until its work is done or `budget` engine seconds
    have passed. cfg.out_dir receives the gain schedule's journal."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    return _Replay(cfg, challenges, recording).run(budget)


__all__ = ["Recording", "Replayed", "attempts", "replay", "score"]
