"""The gain schedule: each next view goes to the test input where it is expected to change the
final top-2 most, per second of its price.

What the run knows of a test input (`Evidence`): the views answered, how many failed to parse,
the votes of its distinct answers, the views on their way, and what a view of its task costs.

- **answer**: the chance that the next view parses, (valid + 1) / (answered + 2): a test input
  whose views keep failing is worth less.
- A test input with no answer that parsed keeps the fallback, which is wrong: its gain is
  that chance alone (0.5 before any view).
- Else the gain is answer x open x stake x repeat:
  - **open**: that the boundary of the top 2 is not yet decided. Kaggle counts either attempt,
    so only the race between the second answer and the third (or the next new answer) can
    change the score: a normal approximation of the chance that the third is truly ahead,
    Phi(-(c2 - c3) / sqrt(c2 + c3 + 1)). A tie is 0.5; (3, 3, 0) is 0.07;
  - **stake**: the share of the answers that race is about, (c2 + c3 + 1) / (valid + 2);
  - **repeat**: that the next answer repeats one already seen, 1 - N1 / (valid + 1) with N1
    the answers seen once (Good-Turing): a test input whose views never agree is worth less
    than one that is close to settling.

Views already queued or in flight answer first: the gain is divided by 1 + their number. An
answered test input's gain is below 0.5, so at equal prices every test input gets a first view
before an answered one gets more. The price of a view is the measured engine seconds
per view of its task's earlier views, else its tokens at the run's measured seconds per token;
the next view goes to the best gain per second.

The first round's views (`--first-round`, the eight rotations and flips by default) are a
floor: a test input below it goes before every test input at or above it, cheapest view first
and its first round whole (as the rounds order a round), and a vote that settles within it
still gets the rest of it. A gain read from one or two answers is noise, and so is a vote of
four or five: on the replayed schedule bench (bench/schedule-notes.md, 10 seeds), picking the
first round by gain per second spread it thin over every test input (3 to 5 views each where
the rounds gave 8) and stopping a vote settled within it lost its second attempt: 18 test
outputs behind the rounds at 20% of the work, 6 at 30%; with the floor whole and cheapest
first, none. Nor does the floor go in layers (every test input's first view, or first 2 or 4,
before anyone's next; replayed on the same 10 seeds): 17, 20 and 22 test outputs behind at
20% (the whole floor: none); uniform's final score reached by 70% of the budget in 2 or 3 of
10 seeds at 20% (the whole floor: 0), in 3 or 4 at 30% (the whole floor: 8). Nor is the floor
cut short by a probe (a test input's first 2 views sent alone, and the rest of its floor put
after every other floor when their answers differ: right after 8 views in 27% of the
recordings' test inputs, against 66% when they agree): at 20% it reached uniform's final score
by 70% in 5 of 10 seeds (the whole floor: 0) but ended 1 test output behind in all, and 2 in
one seed; ordering the floor by price over the probe's promise instead, 6 behind. The gain
decides where everything after the first round goes.

What orders the floor besides price is a signal that needs no view: each task's promise
(airv.run.promise), how likely the model finds its own last demonstration given the one before,
scored before the first round where that is cheap beside the time left. The floor goes by
price over promise: a task the model cannot follow waits behind those it can.

A test input stops when its vote is settled (`--settle-margin`, as the uniform rounds stop),
at `--max-augmentations` views, or when its task reaches its cap; the deadline stops what is
left. Each decision and each stop is a line of schedule.jsonl in the run folder
(`Journal`), which `airv report` reads.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

from airv.core.types import Grid, TaskId, Unit


class ViewSchedule(enum.StrEnum):
    GAIN = "gain"  # each view to the test input where it gains most per second
    UNIFORM = "uniform"  # rounds: the same number of new views per unsettled test input


# Gain: with its promises it met the bar set for the default at 20% of the work on the
# schedule bench, and is ahead of the rounds at 15% to 50% in the replays (README, *Where the
# seconds go*: which to choose).
DEFAULT_SCHEDULE = ViewSchedule.GAIN


class Stop(enum.StrEnum):
    """Why a test input gets no more views."""

    SETTLED = "settled"  # its leader is --settle-margin votes ahead
    VIEWS = "views"  # it has --max-augmentations views
    CAP = "cap"  # its task reached its cap
    FAILED = "failed"  # its task failed (its prompts could not be built, the engine refused)


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the run knows of one test input."""

    answered: int  # views answered, parsed or not
    failed: int  # of those, answers that did not parse
    votes: tuple[int, ...]  # votes of each distinct answer (they sum to the parsed ones)
    owed: int = 0  # views queued or in flight

    def __post_init__(self) -> None:
        if not 0 <= self.failed <= self.answered or self.owed < 0:
            raise ValueError(f"inconsistent evidence: {self}")
        if sum(self.votes) != self.answered - self.failed:
            raise ValueError(f"votes do not count the parsed answers: {self}")


def evidence_of(grids: Sequence[Grid | None], owed: int = 0) -> Evidence:
    """A test input's evidence from its answers so far (None: an answer that did not parse)
    and its views on their way."""
    counts = Counter(g for g in grids if g is not None)
    votes = tuple(sorted(counts.values(), reverse=True))
    return Evidence(len(grids), len(grids) - counts.total(), votes, owed)


def view_price(spent: float, views: int, tokens: int, seconds_per_token: float) -> float:
    """Seconds of one view of a task: the mean of its `views` earlier views (`spent` engine
    seconds in all), else its `tokens` at the run's measured seconds per token (at 1 s per
    token before anything is measured, which orders the views by their tokens alone)."""
    if spent > 0 and views:
        return spent / views
    return tokens * (seconds_per_token if seconds_per_token > 0 else 1.0)


def gain(e: Evidence) -> float:
    """The expected change in a test input's top 2 from one more view (see the module's
    docstring), divided by 1 + the views on their way."""
    valid = e.answered - e.failed
    answer = (valid + 1) / (e.answered + 2)
    if not e.votes:
        return answer / (1 + e.owed)
    votes = sorted(e.votes, reverse=True)
    c2 = votes[1] if len(votes) > 1 else 0
    c3 = votes[2] if len(votes) > 2 else 0
    open_ = 0.5 * math.erfc((c2 - c3) / math.sqrt(2.0 * (c2 + c3 + 1)))
    stake = (c2 + c3 + 1) / (valid + 2)
    singles = sum(1 for v in votes if v == 1)
    repeat = 1.0 - singles / (valid + 1)
    return answer * open_ * stake * repeat / (1 + e.owed)


@dataclass(frozen=True, slots=True)
class Pick:
    """One scheduling decision: a view for `unit`, at this gain and price."""

    unit: Unit
    gain: float
    price: float  # seconds
    promise: float = 1.0  # the task's (airv.run.promise; 1 when it has none)

    @property
    def rate(self) -> float:
        return _rate(self.gain, self.price)


@dataclass(frozen=True, slots=True)
class Open:
    """A test input that may get more views: its evidence, the price of one view (seconds),
    how many more views it may get, and how many of those it still lacks to reach the first
    round's floor (counting the views on their way)."""

    evidence: Evidence
    price: float
    limit: int
    floor: int = 0
    promise: float = 1.0  # the task's promise (airv.run.promise), which orders the floor


def best(candidates: Mapping[Unit, Open], room: int) -> list[Pick]:
    """Up to `room` views: test inputs below the floor first, lowest price over promise first,
    then best gain per second. Each pick counts as one more view on its way for the next pick
    of the same test input, up to its limit. Ties go to the cheaper view, then the unit."""

    def entry(
        unit: Unit, ev: Evidence, o: Open, limit: int, floor: int
    ) -> tuple[bool, float, float, Unit, float, Evidence, Open, int, int]:
        g = gain(ev)
        # Below the floor, by price over promise, a test input's first round together (as the
        # rounds order a round): not by gain, which views on their way divide, and which spread
        # the first round thin over every test input at a tight budget.
        order = o.price / o.promise if floor > 0 else -_rate(g, o.price)
        return (floor <= 0, order, o.price, unit, g, ev, o, limit, floor)

    heap = [entry(u, o.evidence, o, o.limit, o.floor) for u, o in candidates.items() if o.limit > 0]
    heapq.heapify(heap)
    picks: list[Pick] = []
    while heap and len(picks) < room:
        _, _, price, unit, g, ev, o, limit, floor = heapq.heappop(heap)
        picks.append(Pick(unit, g, price, o.promise))
        if limit > 1:
            nxt = Evidence(ev.answered, ev.failed, ev.votes, ev.owed + 1)
            heapq.heappush(heap, entry(unit, nxt, o, limit - 1, floor - 1))
    return picks


def _rate(g: float, price: float) -> float:
    return g / price if price > 0 else math.inf


class Journal:
    """schedule.jsonl: one line per decision ({"t", "task", "test", "gain", "price", "promise",
    "views", "owed"}) and one per stop ({"t", "task", "test", "stop", "views"}); `t` is seconds
    since the run's start. Appended, and flushed after each batch of decisions."""

    def __init__(self, path: Path):
        self.path = path
        self._f: IO[bytes] | None = None
        self._stopped: dict[Unit, Stop] = {}

    def picked(self, t: float, pick: Pick, views: int, owed: int) -> None:
        self._line(
            {
                "t": round(t, 3),
                "task": pick.unit[0],
                "test": pick.unit[1],
                "gain": round(pick.gain, 6),
                "price": round(pick.price, 6),
                "promise": round(pick.promise, 6),
                "views": views,
                "owed": owed,
            }
        )

    def stopped(self, t: float, unit: Unit, why: Stop, views: int) -> None:
        """A test input's stop, once (the first reason found)."""
        if unit in self._stopped:
            return
        self._stopped[unit] = why
        self._line(
            {"t": round(t, 3), "task": unit[0], "test": unit[1], "stop": why.value, "views": views}
        )

    def stop_of(self, unit: Unit) -> Stop | None:
        return self._stopped.get(unit)

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def _line(self, obj: dict[str, object]) -> None:
        if self._f is None:
            self._f = self.path.open("ab")
        self._f.write(orjson.dumps(obj) + b"\n")


@dataclass
class UnitSchedule:
    """One test input's schedule as schedule.jsonl tells it."""

    views: int = 0  # views planned
    first_gain: float | None = None
    last_gain: float | None = None
    stop: str | None = None  # why it stopped; None: the run ended first
    promise: float | None = None  # its task's promise at its picks (older journals: None)


def read_journal(path: Path) -> dict[TaskId, dict[int, UnitSchedule]]:
    """schedule.jsonl read back per task and test input; a torn or foreign line is skipped."""
    out: dict[TaskId, dict[int, UnitSchedule]] = {}
    if not path.is_file():
        return out
    for raw in path.read_bytes().splitlines():
        try:
            line = orjson.loads(raw)
            task, test = str(line["task"]), int(line["test"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        u = out.setdefault(task, {}).setdefault(test, UnitSchedule())
        if "stop" in line:
            u.stop = str(line["stop"])
        elif isinstance(line.get("gain"), (int, float)):
            u.views += 1
            g = float(line["gain"])
            u.first_gain = g if u.first_gain is None else u.first_gain
            u.last_gain = g
            if isinstance(line.get("promise"), (int, float)):
                u.promise = float(line["promise"])
    return out
