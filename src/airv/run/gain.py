"""The gain planner (`--schedule gain`): the round planner's views, each given to the test
input where it gains most per second (airv.run.schedule has the rule and the journal).

It keeps the rounds' labels, so that the summary, the report and the benches read the same
rounds: a view is in the round in which the uniform schedule would have planned the test
input's view of that number (views 1 to --first-round are round 1, and so on).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass

from airv.core.augment import Augmentation, plan_views
from airv.core.prompts import PromptTooLong
from airv.core.tasks import Task
from airv.core.types import TaskId, Unit
from airv.core.voting import Vote
from airv.run.config import RunConfig
from airv.run.ledger import Ledger
from airv.run.rounds import Board, FitPrompt, Rounds, View
from airv.run.schedule import Evidence, Journal, Open, Stop, ViewSchedule, best


def task_stop(task_id: TaskId, failed: Container[TaskId], ledger: Ledger) -> Stop | None:
    """Why the gain planner gives a task nothing more: it failed, or reached its cap. The cap
    counts what the task spent, not its work on the way (as the dispatch check does): the
    planner weighs every test input at each refill, and counting the views in flight at a
    tight budget's tiny caps starved the engine (79 prompts where uniform's round 1, planned
    before anything was measured, ran 413)."""
    if task_id in failed:
        return Stop.FAILED
    if task_id in ledger.cut or ledger.capped(task_id):
        return Stop.CAP
    return None


@dataclass(frozen=True)
class Ledgers:
    """What the gain planner reads of the run beyond the board."""

    evidence: Callable[[Unit], Evidence]  # what the run knows of a test input
    price: Callable[[TaskId, int], float]  # seconds of one view of this task, this many tokens
    stopped: Callable[[TaskId], Stop | None]  # the task failed or reached its cap
    held: Callable[[TaskId], bool]  # the task waits for its adapter's verdict
    elapsed: Callable[[], float]  # seconds since the run's start, for the journal
    # The task's promise (airv.run.promise), which orders the first round; None: not known.
    promise: Callable[[TaskId], float | None] = lambda task_id: None


def planner(
    cfg: RunConfig,
    tasks: Mapping[TaskId, Task],
    fit: FitPrompt,
    board: Board,
    ledgers: Ledgers,
    journal: Journal,
) -> Rounds:
    """The view planner `--schedule` names: the gain planner over the run's ledgers and
    journal, or the uniform rounds (which read neither)."""
    if cfg.schedule is ViewSchedule.GAIN:
        return Gain(cfg, tasks, fit, board, ledgers, journal)
    return Rounds(cfg, tasks, fit, board)


class Gain(Rounds):
    """The planner of `--schedule gain`: Rounds' contract (refill, catch_up, over, late) with
    each refill's views picked by airv.run.schedule.best over every open test input."""

    def __init__(
        self,
        cfg: RunConfig,
        tasks: Mapping[TaskId, Task],
        fit: FitPrompt,
        board: Board,
        ledgers: Ledgers,
        journal: Journal,
    ):
        super().__init__(cfg, tasks, fit, board)
        self.ledgers = ledgers
        self.journal = journal
        self._tokens: dict[Unit, int] = {}  # tokens of one view, from the first one built
        self._next: dict[Unit, View] = {}  # a test input's next view, built to price it
        self._augs: dict[Unit, list[Augmentation]] = {}  # its next augmentations, planned

    def round_of(self, nth: int) -> int:
        """The round label of a test input's `nth` view (counted from 0)."""
        cfg = self.cfg
        if nth < cfg.first_round:
            return 1
        return 2 + (nth - cfg.first_round) // cfg.per_round

    def stop(self, unit: Unit, vote: Vote | None, asked: int) -> Stop | None:
        why = self.ledgers.stopped(unit[0])
        if why is not None:
            return why
        # The first round is a floor, as the rounds' is: a vote settled within it still gets
        # its first-round views (the second attempt is often one of them).
        if self.settled(vote) and asked >= self.cfg.first_round:
            return Stop.SETTLED
        if asked >= self.cfg.max_augmentations:
            return Stop.VIEWS
        return None

    def refill(self, room: int, votes: Mapping[Unit, Vote], *, final: bool = False) -> int:
        """Up to `room` views: test inputs short of the first round first (by price over their
        task's promise), then best gain per second (schedule.best). Each refill weighs every
        test input, so it waits until an eighth of an engine's prompts in flight can be planned
        at once (`final`: nothing queued or in flight, it plans what it can). Half, as it once
        was, left the engine's batch between half and full for no gain: the same prompts in
        the same seconds on the schedule bench, and no worse a score."""
        if room < max(1, self.cfg.inflight // 8) and not final:
            return 0
        b, led = self._board, self.ledgers
        due = b.verdicts_due()
        candidates: dict[Unit, Open] = {}
        asked: dict[Unit, int] = {}  # views answered (a view may give several answers, or none)
        for unit in b.units:
            have = b.have(unit)
            ev = led.evidence(unit)
            views = asked[unit] = len(have) - ev.owed
            why = self.stop(unit, votes.get(unit), views)
            if why is not None:
                if self.journal.stop_of(unit) is None:
                    self.journal.stopped(led.elapsed(), unit, why, views)
                    if why is Stop.SETTLED:
                        self._skips[unit] = self.cfg.max_augmentations - views
                continue
            if led.held(unit[0]):
                continue
            tokens = self._tokens.get(unit)
            if tokens is None:
                first = self._peek(unit, have)
                if first is None:
                    continue
                tokens = self._tokens[unit] = first.cost
            limit = self.cfg.max_augmentations - len(have)
            floor = self.cfg.first_round - len(have)
            # Nothing past the first round ahead of an adapter's verdict (Rounds too), nor for
            # a vote already settled.
            if due or self.settled(votes.get(unit)):
                limit = min(limit, floor)
            promise = led.promise(unit[0])
            candidates[unit] = Open(
                ev, led.price(unit[0], tokens), limit, floor, 1.0 if promise is None else promise
            )
        pushed = 0
        for pick in best(candidates, room):
            unit = pick.unit
            if led.stopped(unit[0]) is Stop.FAILED:
                continue
            have = b.have(unit)
            view = self._peek(unit, have)
            if view is None:
                continue
            del self._next[unit]
            pushed += b.push([view])
            self.journal.picked(led.elapsed(), pick, asked[unit], len(have) - asked[unit])
        self.journal.flush()
        return pushed

    def catch_up(self, votes: Mapping[Unit, Vote]) -> int:
        """Nothing: a task just released is planned by the next refill, first views first."""
        return 0

    def over(self, unit: Unit, vote: Vote | None, asked: int) -> bool:
        return self.stop(unit, vote, asked) is not None

    def late(self, view: View, vote: Vote | None, have: int) -> bool:
        """Whether a view past the first round is for a test input settled since it was
        planned (the first round's views are a floor)."""
        return view.round > 1 and self.settled(vote)

    def _peek(self, unit: Unit, have: set[str]) -> View | None:
        """The test input's next view (seeded, excluding what it has, labelled with its
        round); None when its task fails here (reported to the board). Augmentations are
        planned a round's worth at a time (planning one costs about what planning eight
        does) and each is fitted when it is needed."""
        ready = self._next.get(unit)
        if ready is not None and ready.aug.key not in have:
            return ready
        b = self._board
        try:
            augs = [a for a in self._augs.get(unit, []) if a.key not in have]
            if not augs:
                augs = plan_views(
                    self.tasks[unit[0]], unit[1], self.cfg.per_round, self.cfg.views, exclude=have
                )
            if not augs:
                return None
            aug, self._augs[unit] = augs[0], augs[1:]
            view = self._view(unit, aug, self.round_of(len(have)), b.adapter)
        except Exception as exc:  # one task's bug must not cost the others their answers
            b.fail(unit[0], f"{type(exc).__name__}: {exc}")
            return None
        if isinstance(view, PromptTooLong):
            b.fail(unit[0], f"prompt too long: {view}")
            return None
        self._next[unit] = view
        return view
