"""Tests for the run's round planner (airv.run.rounds) and ledger (airv.run.ledger): pure
bookkeeping, no engine."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airv.core.augment import plan_views
from airv.core.prompts import FittedPrompt, PromptTooLong
from airv.core.tasks import Pair, Task
from airv.core.types import TaskId, Unit
from airv.core.voting import Tally, Vote, VoteMode
from airv.run.config import RunConfig
from airv.run.ledger import Ledger
from airv.run.rounds import Board, Rounds, View
from airv.run.schedule import ViewSchedule

G1 = ((1, 2), (3, 4))
G2 = ((4, 3), (2, 1))


def _task(task_id: str) -> Task:
    return Task(task_id, train=(Pair(G1, G2), Pair(G2, G1), Pair(G1, G1)), test=(G1,))


def _fit(task: Task, test_index: int) -> FittedPrompt | PromptTooLong:
    return FittedPrompt("p", list(range(10 + len(task.id))), len(task.train), 5, ())


def _keys(task_id: TaskId, n: int, cfg: RunConfig) -> set[str]:
    """n augmentations a test input could have been answered under."""
    return {a.key for a in plan_views(_task(task_id), 0, n, cfg.views)}


def _cfg(**kw: object) -> RunConfig:
    return RunConfig(challenges=Path("c"), out_dir=Path("o"), **kw)  # type: ignore[arg-type]


def _vote(margin: int) -> Vote:
    return Vote(G1, G2, (Tally(G1, margin, -0.1, ()),), margin, margin, VoteMode.GRID)


def _rounds(cfg: RunConfig, ids: list[TaskId]) -> Rounds:
    return Rounds(cfg, {t: _task(t) for t in ids}, _fit)


@given(
    first=st.integers(1, 16), per=st.integers(1, 16), extra=st.integers(0, 64), r=st.integers(1, 20)
)
def test_targets_grow_by_round_to_the_cap_and_the_last_round_reaches_it(
    first: int, per: int, extra: int, r: int
) -> None:
    cfg = _cfg(first_round=first, per_round=per, max_augmentations=first + extra)
    rounds = _rounds(cfg, [])
    assert rounds.target(1) == first
    assert rounds.target(r) <= rounds.target(r + 1) <= first + extra
    assert rounds.target(rounds.last) == first + extra
    assert rounds.last == 1 or rounds.target(rounds.last - 1) < first + extra


@given(st.lists(st.integers(0, 12), min_size=1, max_size=4), st.integers(1, 5))
def test_a_round_plans_each_open_test_input_up_to_its_target(
    have_counts: list[int], round_no: int
) -> None:
    """Views planned = the shortfall to the round's target, new augmentations only, whole
    tasks together and the cheapest task first."""
    ids = [f"t{i:0{i + 1}d}" for i in range(len(have_counts))]  # longer id, dearer prompt
    cfg = _cfg(first_round=4, per_round=2, max_augmentations=12, settle_margin=0)
    rounds = _rounds(cfg, ids)
    have = {(t, 0): _keys(t, n, cfg) for t, n in zip(ids, have_counts, strict=True)}
    views = rounds.plan(
        round_no,
        list(have),
        {},
        closed=lambda t: False,
        have=lambda u: have[u],
        adapter=lambda t: None,
        fail=lambda t, why: None,
    )
    target = rounds.target(round_no)
    for unit, done in have.items():
        mine = [v for v in views if v.unit == unit]
        assert len(mine) == max(0, target - len(done))
        assert all(v.round == round_no and v.aug.key not in done for v in mine)
    # Whole tasks together, the cheapest task (all its views) first.
    order = [v.unit[0] for v in views]
    blocks = [t for k, t in enumerate(order) if k == 0 or order[k - 1] != t]
    assert len(blocks) == len(set(blocks))
    totals = [sum(v.cost for v in views if v.unit[0] == t) for t in blocks]
    assert totals == sorted(totals)


def test_a_settled_test_input_gets_no_later_round_and_its_shortfall_is_counted() -> None:
    cfg = _cfg(first_round=2, per_round=2, max_augmentations=6, settle_margin=3)
    rounds = _rounds(cfg, ["a", "b"])
    votes: dict[Unit, Vote] = {("a", 0): _vote(3), ("b", 0): _vote(1)}
    have = {("a", 0): _keys("a", 2, cfg), ("b", 0): _keys("b", 2, cfg)}
    kw = dict(closed=lambda t: False, have=lambda u: have[u], adapter=lambda t: "ad")
    views = rounds.plan(2, list(have), votes, fail=lambda t, why: None, **kw)  # type: ignore[arg-type]
    assert {v.unit for v in views} == {("b", 0)} and {v.adapter for v in views} == {"ad"}
    assert rounds.skipped == 2
    # A view of round 2 dispatched after its test input settled is late; round 1's never is.
    assert rounds.late(views[0], _vote(5), have=4)
    assert not rounds.late(views[0], _vote(1), have=4)
    assert rounds.skipped == 2 + 1  # b: round 2's target 4, with 3 others answered or owed


def test_a_task_whose_prompt_does_not_fit_fails_alone() -> None:
    cfg = _cfg(first_round=2, settle_margin=0)
    too_long = PromptTooLong("big", 0, 900, 950, 512)
    rounds = Rounds(
        cfg,
        {"big": _task("big"), "ok": _task("ok")},
        lambda task, i: too_long if task.id == "big" else _fit(task, i),
    )
    failed: dict[TaskId, str] = {}
    views = rounds.plan(
        1,
        [("big", 0), ("ok", 0)],
        {},
        closed=lambda t: t in failed,
        have=lambda u: set(),
        adapter=lambda t: None,
        fail=failed.setdefault,
    )
    assert {v.unit for v in views} == {("ok", 0)} and len(views) == 2
    assert "prompt too long" in failed["big"]


@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(1, 50)), max_size=20))
def test_the_ledger_owes_until_settled_and_caps_on_spent_then_on_owed(
    owed: list[tuple[str, int]],
) -> None:
    ledger = Ledger(cap_seconds=None, cap_tokens=100)
    for k, (task, tokens) in enumerate(owed):
        ledger.owe((task, 0), f"v{k}", tokens)
    for task in "ab":
        total = sum(t for name, t in owed if name == task)
        assert not ledger.capped(task)  # nothing spent
        assert ledger.capped(task, seconds_per_token=0.0) == (total >= 100)
    for k, (task, _) in enumerate(owed):
        ledger.settle((task, 0), f"v{k}")
        ledger.settle((task, 0), f"v{k}")  # twice: no double credit
    assert ledger.owed(("a", 0)) == ledger.owed(("b", 0)) == set()
    assert not ledger.capped("a", seconds_per_token=1.0)
    ledger.charge("a", 2.0, 100)
    assert ledger.capped("a") and ledger.spent("a") == (2.0, 100)
    timed = Ledger(cap_seconds=10.0, cap_tokens=None)
    timed.owe(("a", 0), "v", 50)
    assert not timed.capped("a") and timed.capped("a", seconds_per_token=0.2)


def _board(queued: dict[Unit, list[View]], held: set[TaskId], *, verdicts: bool = False) -> Board:
    """A board over `queued` (the views pushed, per test input) whose `held` tasks are closed;
    with `verdicts`, they are held for their adapters' verdicts."""

    def push(views: Sequence[View]) -> int:
        for v in views:
            queued[v.unit].append(v)
        return len(views)

    return Board(
        units=list(queued),
        closed=lambda t: t in held,
        have=lambda u: {v.aug.key for v in queued[u]},
        adapter=lambda t: None,
        fail=lambda t, why: None,
        push=push,
        verdicts_due=lambda: verdicts and bool(held),
    )


def test_a_task_released_late_is_planned_round_by_round_within_the_room() -> None:
    """One task answered alone while the other waits for its adapter's verdict: the rounds
    run ahead. Released, the late task is owed every round planned so far, and gets them from
    round 1 in the refills that follow, each within its room (a round's views at most over
    it), never all at once in the loop; ahead of new rounds."""
    cfg = _cfg(first_round=8, per_round=8, max_augmentations=256, settle_margin=0)
    ids = ["early", "late"]
    rounds = _rounds(cfg, ids)
    queued: dict[Unit, list[View]] = {(t, 0): [] for t in ids}
    held = {"late"}
    rounds.board = _board(queued, held)
    assert rounds.refill(128, {}) == 128 and rounds.planned == 16  # the early task alone
    held.clear()
    assert rounds.catch_up({}) == 0 and queued[("late", 0)] == []
    assert rounds.refill(20, {}) == 24  # rounds 1 to 3: 8 views each, the room passed
    assert [v.round for v in queued[("late", 0)]] == [1] * 8 + [2] * 8 + [3] * 8
    assert rounds.planned == 16  # no new round while a task is behind
    calls = 1
    while len(queued[("late", 0)]) < 128:
        assert rounds.refill(30, {}) <= 30 + 16  # at most a round (8 views each) past it
        calls += 1
    late = [v.round for v in queued[("late", 0)]]
    assert late == sorted(late) and all(late.count(r) == 8 for r in range(1, 17))
    assert calls >= 4  # 128 views in refills of about 30
    # Caught up: the rounds go on for both tasks alike.
    assert len(queued[("late", 0)]) == len(queued[("early", 0)])
    planned = rounds.planned
    assert rounds.refill(8, {}) == 16 and rounds.planned == planned + 1


@pytest.mark.parametrize("schedule", list(ViewSchedule))
def test_no_round_runs_ahead_of_an_adapters_verdict(schedule: ViewSchedule, tmp_path: Path) -> None:
    """While a task waits for its adapter's verdict, the others get their first round and no
    more (under either schedule); the verdict in, the views go on for all, the late task's
    first round first."""
    from airv.run.gain import Gain, Ledgers
    from airv.run.schedule import Evidence, Journal

    cfg = _cfg(first_round=8, per_round=8, max_augmentations=64, settle_margin=0)
    queued: dict[Unit, list[View]] = {("early", 0): [], ("late", 0): []}
    due = {"late"}
    board = _board(queued, due, verdicts=True)
    tasks = {t: _task(t) for t in ("early", "late")}
    rounds = Rounds(cfg, tasks, _fit, board)
    if schedule is ViewSchedule.GAIN:
        ledgers = Ledgers(
            evidence=lambda u: Evidence(answered=0, failed=0, votes=(), owed=len(queued[u])),
            price=lambda t, tokens: 1.0,
            stopped=lambda t: None,
            held=lambda t: t in due,
            elapsed=lambda: 0.0,
        )
        rounds = Gain(cfg, tasks, _fit, board, ledgers, Journal(tmp_path / "s.jsonl"))
    assert rounds.refill(128, {}) == 8 and rounds.refill(128, {}) == 0
    assert len(queued[("early", 0)]) == 8
    due.clear()
    rounds.catch_up({})
    assert rounds.refill(128, {}) >= 24
    assert [v.round for v in queued[("late", 0)][:8]] == [1] * 8
    assert len(queued[("early", 0)]) > 8
