"""What a view is worth on the schedule bench's set, read off recordings with every view
answered (bench.schedule_replay's): each group's test outputs right after its first n views,
and what 4 more views past the first round did to the top 2 of the test inputs still unsettled.

A schedule can only move views. Past the first round, the second table says what moving them
can gain: at most the steps that brought the right answer into a top 2, and, for a schedule
that cannot tell those in advance from the steps that took it out, their difference. The
test inputs no view answers right (`unanswerable`) are what a schedule loses its seconds on
whatever it does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from airv.core.tasks import Task
from airv.core.types import Grid, Unit
from airv.core.voting import Vote, vote
from airv.run.option import RUN_DEFAULTS
from airv.run.replay import Recording
from bench.common import Solutions, table

VIEW_COUNTS = (1, 2, 4, 8, 16, 32)  # views per test input the first table reads
STEP = 4  # views added per step past the first round in the second table


@dataclass
class Steps:
    """STEP more views past the first round for test inputs whose vote was not settled."""

    steps: int = 0
    gained: int = 0  # the right answer entered the top 2
    lost: int = 0  # it left it


@dataclass
class Worth:
    seeds: int
    tests: dict[str, int] = field(default_factory=dict)  # test inputs per group
    right: dict[str, dict[int, int]] = field(default_factory=dict)  # group -> n -> over seeds
    steps: dict[str, Steps] = field(default_factory=dict)


def _vote_of(recording: Recording, unit: Unit, n: int) -> Vote | None:
    """The vote over a test input's first n recorded views."""
    cands = [
        c
        for aug in recording.in_order.get(unit, [])[:n]
        for p in recording.by_aug[(unit, aug)]
        if (c := p.candidate) is not None
    ]
    return vote(cands) if cands else None


def _right(v: Vote | None, truth: Grid) -> bool:
    return v is not None and truth in (v.attempt_1, v.attempt_2)


def unanswerable(recording: Recording, solutions: Solutions) -> set[Unit]:
    """The test inputs that no view of the recording answers right: what a schedule spends
    on them is lost whatever it does."""
    right = {
        unit
        for (unit, _), preds in recording.by_aug.items()
        if any(p.grid == solutions[unit[0]][unit[1]] for p in preds)
    }
    return set(recording.in_order) - right


def worth(
    recordings: Mapping[int, Recording],
    groups: Mapping[str, Sequence[Task]],
    solutions: Solutions,
) -> Worth:
    first, margin = RUN_DEFAULTS.first_round, RUN_DEFAULTS.settle_margin
    out = Worth(len(recordings))
    for name, tasks in groups.items():
        out.tests[name] = sum(len(solutions[t.id]) for t in tasks)
        right: dict[int, int] = defaultdict(int)
        steps = Steps()
        for recording in recordings.values():
            most = recording.views[1]
            for task in tasks:
                for i, truth in enumerate(solutions[task.id]):
                    unit = (task.id, i)
                    for n in VIEW_COUNTS:
                        right[n] += _right(_vote_of(recording, unit, n), truth)
                    for n in range(first, most - STEP + 1, STEP):
                        v = _vote_of(recording, unit, n)
                        if v is not None and v.margin >= margin:
                            continue  # settled: neither schedule gives it more
                        before, after = (
                            _right(v, truth),
                            _right(_vote_of(recording, unit, n + STEP), truth),
                        )
                        steps.steps += 1
                        steps.gained += after and not before
                        steps.lost += before and not after
        out.right[name], out.steps[name] = dict(right), steps
    return out


def render(w: Worth) -> list[str]:
    first, margin = RUN_DEFAULTS.first_round, RUN_DEFAULTS.settle_margin
    per = [
        (name, w.tests[name], *(w.right[name][n] / w.seeds for n in VIEW_COUNTS))
        for name in w.tests
    ]
    total = sum(s.gained - s.lost for s in w.steps.values())
    views = STEP * sum(s.steps for s in w.steps.values())
    return [
        "",
        "## What a view is worth here",
        "",
        f"From the recordings above ({w.seeds} seeds, every view answered, in the order the "
        f"augmentation planner gives them): test outputs right after each test input's first "
        f"n views (mean over seeds).",
        "",
        *table(
            ["group", "test inputs", *(f"{n} view{'s' if n > 1 else ''}" for n in VIEW_COUNTS)],
            per,
        ),
        f"Past the first round ({first} views), {STEP} more views at a time for each test input "
        f"whose vote was not settled (a lead under {margin} votes), over all seeds:",
        "",
        *table(
            ["group", "steps", "right answer into the top 2", "out of it", "net"],
            [(n, s.steps, s.gained, s.lost, s.gained - s.lost) for n, s in w.steps.items()],
        ),
        f"Net over every step: {total:+d} test outputs in {views:,} views past the first "
        f"round. A schedule moves views between test inputs: past the first round, it can win "
        f"more than the rounds only by telling in advance whose next views move the right "
        f"answer into the top 2 rather than out of it.",
    ]
