"""The gain schedule's rule, its picks and its journal (no engine: airv.run.schedule)."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airv.run.schedule import (
    Evidence,
    Journal,
    Open,
    Pick,
    Stop,
    best,
    evidence_of,
    gain,
    read_journal,
    view_price,
)


@st.composite
def evidence(draw: st.DrawFn, max_views: int = 40) -> Evidence:
    votes = draw(st.lists(st.integers(1, 12), max_size=6))
    failed = draw(st.integers(0, max_views))
    owed = draw(st.integers(0, 8))
    return Evidence(sum(votes) + failed, failed, tuple(sorted(votes, reverse=True)), owed)


def _with(e: Evidence, **kw: object) -> Evidence:
    fields = dict(answered=e.answered, failed=e.failed, votes=e.votes, owed=e.owed)
    return Evidence(**{**fields, **kw})  # type: ignore[arg-type]


@given(evidence())
def test_gain_is_a_chance_below_a_first_views(e: Evidence) -> None:
    g = gain(e)
    assert 0 < g <= 0.5
    if e.votes:
        assert g < 0.5  # any answered test input ranks below one with no view yet


@given(evidence())
def test_views_on_their_way_lower_the_gain(e: Evidence) -> None:
    assert gain(_with(e, owed=e.owed + 1)) < gain(e)
    assert gain(e) * (1 + e.owed) == pytest.approx(gain(_with(e, owed=0)))


@given(evidence())
def test_a_failed_answer_lowers_the_gain(e: Evidence) -> None:
    worse = _with(e, answered=e.answered + 1, failed=e.failed + 1)
    assert gain(worse) < gain(e)


@given(st.lists(st.none() | st.sampled_from([((1,),), ((2,),), ((1, 2),)])), st.integers(0, 8))
def test_evidence_counts_each_distinct_answer_and_each_failure(
    grids: list[tuple[tuple[int, ...], ...] | None], owed: int
) -> None:
    e = evidence_of(grids, owed)
    parsed = [g for g in grids if g is not None]
    assert (e.answered, e.failed, e.owed) == (len(grids), len(grids) - len(parsed), owed)
    assert e.votes == tuple(sorted(Counter(parsed).values(), reverse=True))


@given(st.floats(0, 100), st.integers(0, 50), st.integers(1, 5000), st.floats(0, 1))
def test_a_views_price_is_its_tasks_mean_else_its_tokens(
    spent: float, views: int, tokens: int, spt: float
) -> None:
    price = view_price(spent, views, tokens, spt)
    if spent > 0 and views:
        assert price == pytest.approx(spent / views)
    elif spt > 0:
        assert price == pytest.approx(tokens * spt)
    else:
        assert price == tokens  # nothing measured yet: the tokens alone order the views


def test_the_values_the_docstring_quotes() -> None:
    assert gain(Evidence(0, 0, ())) == 0.5
    assert gain(Evidence(8, 8, ())) == pytest.approx(1 / 10)  # eight failures: 0.1
    # open: a tie at the top-2 boundary is 0.5; (3, 3, 0) is 0.07.
    tie = gain(Evidence(3, 0, (1, 1, 1)))
    answer, stake, repeat = 4 / 5, 3 / 5, 1 - 3 / 4
    assert tie == pytest.approx(answer * 0.5 * stake * repeat)
    locked = gain(Evidence(6, 0, (3, 3)))
    open_ = 0.5 * math.erfc(3 / math.sqrt(2 * 4))
    assert open_ == pytest.approx(0.067, abs=0.001)
    assert locked == pytest.approx(7 / 8 * open_ * 4 / 8 * 1.0)


def test_never_agreeing_is_worth_less_than_close_to_settling() -> None:
    """Same views, same parse rate: ten different answers against a 6-3-1 race."""
    scattered = gain(Evidence(10, 0, (1,) * 10))
    close = gain(Evidence(10, 0, (6, 3, 1)))
    assert scattered < close
    # And a race still open beats one decided: 4-4-0 against 4-2-2 at the boundary.
    assert gain(Evidence(8, 0, (4, 2, 2))) > gain(Evidence(8, 0, (4, 4)))


@given(
    st.dictionaries(
        st.tuples(st.sampled_from("abcdef"), st.integers(0, 2)),
        st.tuples(evidence(), st.floats(0.01, 50), st.integers(0, 6)),
        max_size=12,
    ),
    st.integers(0, 40),
)
def test_best_picks_by_rate_within_limits(
    raw: dict[tuple[str, int], tuple[Evidence, float, int]], room: int
) -> None:
    cands = {u: Open(e, p, lim) for u, (e, p, lim) in raw.items()}
    picks = best(cands, room)
    assert len(picks) == min(room, sum(o.limit for o in cands.values()))
    per_unit = Counter(p.unit for p in picks)
    assert all(per_unit[u] <= cands[u].limit for u in per_unit)
    rates = [p.rate for p in picks]
    assert all(a >= b for a, b in itertools.pairwise(rates))  # best first
    # Each pick's gain is its unit's with the earlier picks counted as on their way.
    seen: Counter[tuple[str, int]] = Counter()
    for p in picks:
        e = cands[p.unit].evidence
        assert p.gain == pytest.approx(gain(_with(e, owed=e.owed + seen[p.unit])))
        seen[p.unit] += 1


@given(
    st.dictionaries(
        st.tuples(st.sampled_from("abcdef"), st.integers(0, 2)),
        st.tuples(
            evidence(),
            st.floats(0.01, 50),
            st.integers(0, 8),
            st.integers(-4, 8),
            st.floats(0.01, 1.0),
        ),
        max_size=12,
    ),
    st.integers(0, 60),
)
def test_the_first_round_is_a_floor(
    raw: dict[tuple[str, int], tuple[Evidence, float, int, int, float]], room: int
) -> None:
    """Every view that brings a test input towards the first round's floor goes before any
    view above it, lowest price over promise first, a test input's views together; the rest
    is best gain per second first; no pick passes a limit."""
    cands = {u: Open(e, p, lim, floor, pr) for u, (e, p, lim, floor, pr) in raw.items()}
    picks = best(cands, room)
    assert len(picks) == min(room, sum(max(o.limit, 0) for o in cands.values()))
    seen: Counter[tuple[str, int]] = Counter()
    below = []
    for p in picks:
        below.append(seen[p.unit] < cands[p.unit].floor)
        seen[p.unit] += 1
        assert seen[p.unit] <= cands[p.unit].limit
    assert below == sorted(below, reverse=True)  # all views below a floor, then the rest
    n_below = sum(below)
    floor_part = [(p.price / p.promise, p.price, p.unit) for p in picks[:n_below]]
    assert floor_part == sorted(floor_part)
    assert all(p.promise == cands[p.unit].promise for p in picks)
    rates = [p.rate for p in picks[n_below:]]
    assert all(a >= b for a, b in itertools.pairwise(rates))
    # The floor holds where there is room: nothing goes above it while a view below it waits.
    if n_below < len(picks):
        assert all(seen[u] >= min(o.floor, o.limit) for u, o in cands.items())


def test_a_test_input_whose_first_answer_was_wrong_gets_the_first_round() -> None:
    """One answer (gain 0.056) against a 2-0 lead (0.094): below the floor of 8, the first
    still gets its views first; above it, the lead goes first."""
    wrong, lead = Evidence(1, 0, (1,)), Evidence(2, 0, (2,))
    assert gain(wrong) < gain(lead)
    picks = best({("w", 0): Open(wrong, 1.0, 30, 7), ("l", 0): Open(lead, 1.0, 30, 0)}, 7)
    assert {p.unit for p in picks} == {("w", 0)}
    picks = best({("w", 0): Open(wrong, 1.0, 30, 0), ("l", 0): Open(lead, 1.0, 30, 0)}, 1)
    assert picks[0].unit == ("l", 0)


def test_a_task_the_model_cannot_follow_waits_in_the_first_round() -> None:
    """Below the floor, price over promise: a view at half the price but a quarter of the
    promise goes after the dearer one."""
    e = Evidence(0, 0, ())
    cands = {("sure", 0): Open(e, 2.0, 1, 1, 1.0), ("lost", 0): Open(e, 1.0, 1, 1, 0.25)}
    assert [p.unit[0] for p in best(cands, 2)] == ["sure", "lost"]
    cands[("lost", 0)] = Open(e, 1.0, 1, 1, 0.75)
    assert [p.unit[0] for p in best(cands, 2)] == ["lost", "sure"]


def test_a_cheaper_view_goes_first_at_equal_gain() -> None:
    e = Evidence(0, 0, ())
    picks = best({("dear", 0): Open(e, 4.0, 1), ("cheap", 0): Open(e, 1.0, 1)}, 2)
    assert [p.unit[0] for p in picks] == ["cheap", "dear"]


def test_the_journal_reads_back_per_test_input(tmp_path: Path) -> None:
    path = tmp_path / "schedule.jsonl"
    j = Journal(path)
    j.picked(0.5, Pick(("t1", 0), 0.5, 2.0), views=0, owed=0)
    j.picked(0.6, Pick(("t1", 0), 0.25, 2.0), views=1, owed=1)
    j.stopped(3.0, ("t1", 0), Stop.SETTLED, views=2)
    j.stopped(4.0, ("t1", 0), Stop.VIEWS, views=2)  # the first reason stands
    j.picked(0.7, Pick(("t2", 1), 0.5, 1.0, promise=0.25), views=0, owed=0)
    j.close()
    with path.open("ab") as f:
        f.write(b'{"task": "t3", "te')  # a line torn by a kill
    back = read_journal(path)
    assert set(back) == {"t1", "t2"}
    t1 = back["t1"][0]
    assert (t1.views, t1.first_gain, t1.last_gain, t1.stop) == (2, 0.5, 0.25, "settled")
    assert back["t2"][1].stop is None  # the run ended first
    assert (t1.promise, back["t2"][1].promise) == (1.0, 0.25)
    assert read_journal(tmp_path / "absent.jsonl") == {}
