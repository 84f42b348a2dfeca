"""The round planner: which views each test input is owed, and in what order.

Round 1 gives every test input `first_round` views; each later round adds `per_round` more, up
to `max_augmentations`. A test input whose vote is settled (its leader ahead by
`settle_margin`) gets no later round, and the views it would have had are counted as skipped.
Rounds are priorities, not barriers: the run plans the next one while the last is running.
With `cheapest_first`, a round's views go whole tasks together, cheapest task first, so most
tasks have answers early.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from airv.core.augment import Augmentation, plan_views
from airv.core.prompts import FittedPrompt, PromptTooLong
from airv.core.tasks import Task
from airv.core.types import TaskId, Unit
from airv.core.voting import Vote
from airv.engines.base import GenerateRequest
from airv.run.config import RunConfig

FitPrompt = Callable[[Task, int], FittedPrompt | PromptTooLong]


@dataclass(frozen=True)
class Board:
    """What a planner reads of the run, and how it hands the run its views."""

    units: Sequence[Unit]  # every test input, in the run's order
    closed: Callable[[TaskId], bool]  # failed, capped, or waiting for its adapter
    have: Callable[[Unit], set[str]]  # augmentations answered or on their way
    adapter: Callable[[TaskId], str | None]  # the task's served adapter, if any
    fail: Callable[[TaskId, str], None]  # the task's prompts cannot be built: it fails
    push: Callable[[Sequence[View]], int]  # queue views (they count in `have` at once)
    # Whether some task waits for its adapter's verdict: the rounds do not run ahead of it.
    verdicts_due: Callable[[], bool] = lambda: False


@dataclass
class View:
    """One planned prompt: a test input under one augmentation, in its round."""

    unit: Unit
    aug: Augmentation
    prompt: FittedPrompt
    round: int
    adapter: str | None = None  # the task's test-time fine-tuned adapter, if it has one

    @property
    def cost(self) -> int:
        return len(self.prompt.token_ids) + self.prompt.max_answer_tokens

    @property
    def request(self) -> GenerateRequest:
        return GenerateRequest(
            tuple(self.prompt.token_ids), self.prompt.max_answer_tokens, self.adapter
        )


class Rounds:
    """The uniform schedule (`--schedule uniform`); airv.run.gain.Gain plans by gain."""

    def __init__(
        self,
        cfg: RunConfig,
        tasks: Mapping[TaskId, Task],
        fit: FitPrompt,
        board: Board | None = None,  # None: targets only (the simulation)
    ):
        self.cfg = cfg
        self.tasks = tasks
        self.fit = fit
        self.board = board
        self.planned = 0  # the last round planned
        # The next round to plan again for tasks released behind the others (0: none behind).
        self._behind = 0
        self._skips: dict[Unit, int] = {}  # views not planned because the vote was settled

    def refill(self, room: int, votes: Mapping[Unit, Vote], *, final: bool = False) -> int:
        """Plan until `room` views are queued (a round's views at most past it): first the
        rounds owed to tasks released behind the others (catch_up), then rounds ahead until
        the last is planned; with `final` (nothing queued or in flight), look once more at the
        last round (a vote that came unsettled). Returns the views queued."""
        b = self._board
        pushed = 0
        while pushed < room and 0 < self._behind <= self.planned:
            pushed += b.push(self.plan_round(self._behind, votes))
            self._behind += 1
        if self._behind > self.planned:
            self._behind = 0
        # Past round 1, no round is planned ahead of a task waiting for its adapter's verdict:
        # a task released first, alone, once had 64 rounds in the engine before the others.
        while pushed < room and self.planned < self.last:
            if self.planned >= 1 and b.verdicts_due():
                break
            self.planned += 1
            pushed += b.push(self.plan_round(self.planned, votes))
        if final:
            pushed += b.push(self.plan_round(max(1, self.planned), votes))
        return pushed

    def catch_up(self, votes: Mapping[Unit, Vote]) -> int:
        """Tasks just released (their adapter's verdict in) are owed the rounds planned so
        far: the next refills plan those rounds again from round 1, within their room and
        ahead of new rounds, so that their first views are round 1's as everyone else's were
        (the rounds label the views: which come first in the queue, what `airv report` and the
        benches read as AIRV-8); for the other tasks the earlier rounds owe nothing. Planned
        here at once, a late verdict after 64 rounds planned ahead (one task released, 1,024
        views asked) built 512 prompts per task in the run's loop: 19 verdicts held it 106 s,
        past the deadline by 50 s. Returns 0: nothing is planned here."""
        if self.planned:
            self._behind = 1
        return 0

    def over(self, unit: Unit, vote: Vote | None, asked: int) -> bool:
        """Whether a test input (`asked`: its views answered) will be planned nothing more."""
        if self.planned < self.last:
            return False
        return asked >= self.target(self.last) or self.settled(vote)

    def plan_round(self, round_no: int, votes: Mapping[Unit, Vote]) -> list[View]:
        b = self._board
        return self.plan(
            round_no, b.units, votes, closed=b.closed, have=b.have, adapter=b.adapter, fail=b.fail
        )

    @property
    def _board(self) -> Board:
        assert self.board is not None, "a planner without a board plans no views"
        return self.board

    def target(self, round_no: int) -> int:
        """Views per test input once `round_no` is done."""
        cfg = self.cfg
        return min(cfg.first_round + (round_no - 1) * cfg.per_round, cfg.max_augmentations)

    @property
    def last(self) -> int:
        cfg = self.cfg
        return 1 + -(-(cfg.max_augmentations - cfg.first_round) // cfg.per_round)

    def settled(self, v: Vote | None) -> bool:
        m = self.cfg.settle_margin
        return m > 0 and v is not None and v.margin >= m and len(v.tallies) >= 1

    @property
    def skipped(self) -> int:
        """Views not run because the test input's vote was settled."""
        return sum(self._skips.values())

    def plan(
        self,
        round_no: int,
        units: Sequence[Unit],
        votes: Mapping[Unit, Vote],
        *,
        closed: Callable[[TaskId], bool],
        have: Callable[[Unit], set[str]],
        adapter: Callable[[TaskId], str | None],
        fail: Callable[[TaskId, str], None],
    ) -> list[View]:
        """The views still owed to reach this round's target for each of `units`, but those of
        `closed` tasks (failed, capped, or waiting for their adapter); `have`: the
        augmentations a test input has, answered or on their way. A task whose prompts cannot
        be built is reported to `fail` (which closes it)."""
        target = self.target(round_no)
        views: list[View] = []
        for unit in units:
            if closed(unit[0]):
                continue
            done = have(unit)
            if len(done) >= target:
                continue
            if round_no > 1 and self.settled(votes.get(unit)):
                self._skips[unit] = target - len(done)  # what the rounds up to this one add
                continue
            self._skips.pop(unit, None)
            try:
                planned = self._views(unit, target - len(done), done, round_no, adapter)
            except Exception as exc:  # one task's bug must not cost the others their answers
                fail(unit[0], f"{type(exc).__name__}: {exc}")
                continue
            if isinstance(planned, PromptTooLong):
                fail(unit[0], f"prompt too long: {planned}")
                continue
            views.extend(planned)
        if self.cfg.cheapest_first:
            task_cost: Counter[TaskId] = Counter()
            for v in views:
                task_cost[v.unit[0]] += v.cost
            views.sort(key=lambda v: (task_cost[v.unit[0]], v.unit, v.aug.key))
        return views

    def _views(
        self,
        unit: Unit,
        k: int,
        done: set[str],
        round_no: int,
        adapter: Callable[[TaskId], str | None],
    ) -> list[View] | PromptTooLong:
        task = self.tasks[unit[0]]
        # Seeded per test input and excluding what is done: a resumed run plans the same views.
        out = []
        for aug in plan_views(task, unit[1], k, self.cfg.views, exclude=done):
            view = self._view(unit, aug, round_no, adapter)
            if not isinstance(view, View):
                return view
            out.append(view)
        return out

    def _view(
        self,
        unit: Unit,
        aug: Augmentation,
        round_no: int,
        adapter: Callable[[TaskId], str | None],
    ) -> View | PromptTooLong:
        """One view: the test input's prompt under `aug`, fitted to the context."""
        task_id, test_index = unit
        fitted = self.fit(aug.apply_task(self.tasks[task_id]), test_index)
        if not isinstance(fitted, FittedPrompt):
            return fitted
        return View(unit, aug, fitted, round_no, adapter(task_id))

    def late(self, view: View, vote: Vote | None, have: int) -> bool:
        """Whether a later round's view is for a test input settled since it was planned
        (`have`: its views answered or on their way, this one included); its shortfall is
        then counted as skipped."""
        if view.round <= 1 or not self.settled(vote):
            return False
        short = self.target(view.round) - (have - 1)
        self._skips[view.unit] = max(self._skips.get(view.unit, 0), short)
        return True
