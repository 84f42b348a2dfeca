"""Tests for airv.core.voting: grid-wise, cell-wise and re-scoring selection."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airv.core.errors import ConfigError
from airv.core.types import Grid, shape
from airv.core.voting import (
    SELECTORS,
    Candidate,
    Tally,
    VoteMode,
    cell_majority,
    rescore_select,
    score_means,
    score_totals,
    select_cell,
    select_grid,
    tally,
    views_nll_select,
    vote,
)
from strategies import grids

MODES = list(VoteMode)

# Voting needs many *equal* answers: tiny grids (1-3 per side) of 3 colours make collisions common.
small_grids = grids(max_side=3, colours=st.integers(0, 2))

candidates_st = st.builds(
    Candidate,
    grid=small_grids,
    aug_key=st.sampled_from(["id", "rot90", "flip", "t"]),
    logprob=st.floats(-50.0, 0.0),
    n_tokens=st.integers(0, 20),
)
candidate_lists = st.lists(candidates_st, min_size=1, max_size=25)


def cand(grid: Grid, logprob: float = -1.0, n_tokens: int = 1, key: str = "id") -> Candidate:
    return Candidate(grid=grid, aug_key=key, logprob=logprob, n_tokens=n_tokens)


A: Grid = ((1, 2), (3, 4))
B: Grid = ((5, 6), (7, 8))
C: Grid = ((9,),)


# -- Candidate -----------------------------------------------------------------------------


def test_mean_logprob_is_per_token_and_safe_for_zero_tokens() -> None:
    assert cand(A, logprob=-6.0, n_tokens=3).mean_logprob == -2.0
    assert cand(A, logprob=-6.0, n_tokens=0).mean_logprob == -6.0


def test_nan_logprob_ranks_last_instead_of_poisoning_the_sort() -> None:
    assert cand(A, logprob=math.nan).mean_logprob == -math.inf
    v = vote([cand(A, logprob=math.nan), cand(B, logprob=-100.0)])
    assert v is not None and v.attempt_1 == B


def test_negative_token_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="n_tokens"):
        cand(A, n_tokens=-1)


# -- tally ------------------------------------------------------------------------------------


def test_tally_groups_counts_and_averages() -> None:
    ts = tally(
        [
            cand(A, -2.0, 1, "b"),
            cand(B, -1.0, 1, "x"),
            cand(A, -4.0, 2, "a"),
            cand(A, -3.0, 1, "b"),
        ]
    )
    assert ts == (
        Tally(grid=A, votes=3, mean_logprob=-7.0 / 3, aug_keys=("a", "b", "b")),
        Tally(grid=B, votes=1, mean_logprob=-1.0, aug_keys=("x",)),
    )


def test_tally_of_nothing_is_empty() -> None:
    assert tally([]) == ()


@settings(max_examples=200, deadline=None)
@given(candidate_lists)
def test_tally_is_sorted_and_accounts_for_every_candidate(cs: list[Candidate]) -> None:
    ts = tally(cs)
    assert sum(t.votes for t in ts) == len(cs)
    assert len({t.grid for t in ts}) == len(ts) == len({c.grid for c in cs})
    keys = [(-t.votes, -t.mean_logprob, t.grid) for t in ts]
    assert keys == sorted(keys)


# -- grid-wise --------------------------------------------------------------------------------


def test_majority_wins_over_better_logprob() -> None:
    v = vote([cand(B, -0.01), cand(A, -9.0), cand(A, -9.0), cand(C, -0.01)])
    assert v is not None
    assert v.attempt_1 == A
    assert v.attempt_2 in (B, C)
    assert v.mode is VoteMode.GRID
    assert v.n_candidates == 4


def test_tie_goes_to_higher_mean_logprob() -> None:
    # B has the lower *cumulative* logprob but the higher per-token mean.
    v = vote([cand(A, -4.0, 2), cand(B, -6.0, 6), cand(A, -4.0, 2), cand(B, -6.0, 6)])
    assert v is not None
    assert (v.attempt_1, v.attempt_2) == (B, A)


def test_full_tie_is_broken_by_the_grid_itself() -> None:
    v1 = vote([cand(A), cand(B)])
    v2 = vote([cand(B), cand(A)])
    assert v1 is not None and v2 is not None
    assert v1.attempt_1 == v2.attempt_1 == min(A, B)


def test_second_attempt_is_runner_up() -> None:
    cs = [cand(A)] * 5 + [cand(B)] * 3 + [cand(C)] * 2
    v = vote(cs)
    assert v is not None
    assert (v.attempt_1, v.attempt_2) == (A, B)
    assert [t.grid for t in v.tallies] == [A, B, C]


def test_margin_is_leader_minus_runner_up() -> None:
    v = vote([cand(A)] * 5 + [cand(B)] * 3 + [cand(C)] * 2)
    assert v is not None and v.margin == 2
    v = vote([cand(A)] * 4 + [cand(B)] * 4)
    assert v is not None and v.margin == 0


@pytest.mark.parametrize("mode", MODES)
def test_margin_of_a_lone_grid_is_its_votes(mode: VoteMode) -> None:
    v = vote([cand(A)] * 3, mode)
    assert v is not None and v.margin == 3


@pytest.mark.parametrize("mode", MODES)
def test_single_distinct_grid_fills_both_attempts(mode: VoteMode) -> None:
    v = vote([cand(A, -1.0), cand(A, -2.0, key="rot90")], mode)
    assert v is not None
    assert v.attempt_1 == v.attempt_2 == A


@pytest.mark.parametrize("mode", MODES)
def test_no_candidates_gives_none(mode: VoteMode) -> None:
    assert vote([], mode) is None
    assert SELECTORS[mode]([]) is None


def test_unknown_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="vote mode"):
        vote([cand(A)], "majority")  # type: ignore[arg-type]


def test_registry_covers_every_mode() -> None:
    assert set(SELECTORS) == set(VoteMode)
    assert SELECTORS[VoteMode.GRID] is select_grid
    assert SELECTORS[VoteMode.CELL] is select_cell


# -- properties shared by every mode ----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=200, deadline=None)
@given(cs=candidate_lists, data=st.data())
def test_order_of_candidates_does_not_matter(
    mode: VoteMode, cs: list[Candidate], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(cs))
    assert vote(cs, mode) == vote(shuffled, mode)


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=200, deadline=None)
@given(cs=candidate_lists)
def test_second_attempt_differs_whenever_possible(mode: VoteMode, cs: list[Candidate]) -> None:
    v = vote(cs, mode)
    assert v is not None
    distinct = {c.grid for c in cs}
    if len(distinct) >= 2:
        assert v.attempt_2 != v.attempt_1
        assert v.attempt_2 in distinct
    else:
        assert v.attempt_1 == v.attempt_2 == next(iter(distinct))


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=200, deadline=None)
@given(cs=candidate_lists)
def test_vote_to_json_is_orjson_serialisable(mode: VoteMode, cs: list[Candidate]) -> None:
    v = vote(cs, mode)
    assert v is not None
    data = orjson.loads(orjson.dumps(v.to_json()))
    assert data["mode"] == mode.value
    assert data["n_candidates"] == len(cs)
    assert data["margin"] == v.margin
    assert [tuple(map(tuple, t["grid"])) for t in data["tallies"]] == [t.grid for t in v.tallies]
    assert tuple(map(tuple, data["attempt_1"])) == v.attempt_1
    assert tuple(map(tuple, data["attempt_2"])) == v.attempt_2


def test_to_json_writes_non_finite_logprob_as_null() -> None:
    v = vote([cand(A, logprob=-math.inf)])
    assert v is not None
    data = v.to_json()
    assert data["tallies"] == [{"grid": [[1, 2], [3, 4]], "votes": 1, "mean_logprob": None,
                                "aug_keys": ["id"]}]  # fmt: skip
    assert orjson.loads(orjson.dumps(data)) == data


def test_attempts_are_plain_lists() -> None:
    v = vote([cand(A), cand(A), cand(B)])
    assert v is not None
    assert v.attempts() == {"attempt_1": [[1, 2], [3, 4]], "attempt_2": [[5, 6], [7, 8]]}


# -- cell-wise --------------------------------------------------------------------------------

TRUE: Grid = ((1, 1, 1), (2, 2, 2), (3, 3, 3))


def with_cell(grid: Grid, r: int, c: int, value: int) -> Grid:
    return tuple(
        tuple(value if (i, j) == (r, c) else x for j, x in enumerate(row))
        for i, row in enumerate(grid)
    )


def test_cell_wise_builds_a_grid_no_candidate_had() -> None:
    wrong = [with_cell(TRUE, 0, 0, 9), with_cell(TRUE, 1, 1, 9), with_cell(TRUE, 2, 2, 9)]
    # The first wrong answer has the most votes, so it is the grid-wise winner.
    cs = [cand(wrong[0]), cand(wrong[0]), cand(wrong[1]), cand(wrong[2])]
    assert TRUE not in {c.grid for c in cs}
    v = vote(cs, VoteMode.CELL)
    assert v is not None
    assert v.attempt_1 == TRUE
    assert v.attempt_2 == wrong[0]
    assert v.mode is VoteMode.CELL
    assert v.tallies == tally(cs)
    assert v.margin == 1


def test_cell_wise_second_attempt_is_runner_up_when_it_agrees_with_grid_wise() -> None:
    other = with_cell(TRUE, 0, 0, 9)
    v = vote([cand(TRUE)] * 3 + [cand(other)], VoteMode.CELL)
    assert v is not None
    assert (v.attempt_1, v.attempt_2) == (TRUE, other)


def test_cell_wise_respects_the_shape_majority() -> None:
    small = ((4, 4), (4, 4))
    # Three 2x2 answers against two 3x3 ones, even though one 3x3 grid has the most votes.
    cs = [cand(TRUE), cand(TRUE), cand(small), cand(with_cell(small, 0, 0, 5))]
    cs += [cand(with_cell(small, 1, 1, 6))]
    v = vote(cs, VoteMode.CELL)
    assert v is not None
    assert v.attempt_1 == small
    assert v.attempt_2 == TRUE  # the grid-wise winner


def test_cell_wise_shape_tie_goes_to_best_grid_wise_tally() -> None:
    small = ((4, 4), (4, 4))
    # Two votes each way; the 3x3 answer wins grid-wise on logprob.
    cs = [cand(TRUE, -0.1), cand(TRUE, -0.1), cand(small, -5.0), cand(small, -5.0)]
    v = vote(cs, VoteMode.CELL)
    assert v is not None
    assert v.attempt_1 == TRUE
    assert v.attempt_2 == small


def test_cell_tie_goes_to_higher_summed_logprob_then_smaller_value() -> None:
    # One cell, votes tied 1-1: the better-scored value wins...
    assert cell_majority(tally([cand(((7,),), -1.0), cand(((3,),), -2.0)])) == ((7,),)
    # ...and with scores tied too, the smaller value.
    assert cell_majority(tally([cand(((7,),), -1.0), cand(((3,),), -1.0)])) == ((3,),)


def test_cell_weights_survive_infinite_logprobs() -> None:
    cs = [cand(((7,),), -math.inf), cand(((3,),), -math.inf), cand(((5,),), -1.0)]
    assert cell_majority(tally(cs)) == ((5,),)
    assert cell_majority(tally(cs[:2])) == ((3,),)


def test_cell_majority_needs_a_tally() -> None:
    with pytest.raises(ValueError):
        cell_majority(())


@settings(max_examples=200, deadline=None)
@given(cs=candidate_lists)
def test_cell_wise_cells_come_from_candidates_of_the_majority_shape(cs: list[Candidate]) -> None:
    v = select_cell(cs)
    assert v is not None
    out = v.attempt_1
    shape_votes: dict[tuple[int, int], int] = {}
    for c in cs:
        shape_votes[shape(c.grid)] = shape_votes.get(shape(c.grid), 0) + 1
    assert shape_votes[shape(out)] == max(shape_votes.values())
    same = [c.grid for c in cs if shape(c.grid) == shape(out)]
    for i, row in enumerate(out):
        for j, x in enumerate(row):
            column = [g[i][j] for g in same]
            # The chosen value is a most frequent one at that cell.
            assert column.count(x) == max(column.count(y) for y in column)


@settings(max_examples=200, deadline=None)
@given(cs=candidate_lists)
def test_cell_wise_agrees_with_grid_wise_when_unanimous(cs: list[Candidate]) -> None:
    same = [Candidate(cs[0].grid, c.aug_key, c.logprob, c.n_tokens) for c in cs]
    v = select_cell(same)
    assert v is not None and v.attempt_1 == cs[0].grid == v.attempt_2


# -- re-scoring -------------------------------------------------------------------------------


def test_rescore_ranks_by_total_score() -> None:
    assert rescore_select({A: -5.0, B: -1.0, C: -3.0}) == (B, C, A)


def test_rescore_ignores_votes_without_a_weight_except_for_ties() -> None:
    votes = {A: 9, B: 1, C: 2}
    assert rescore_select({A: -5.0, B: -1.0, C: -3.0}, votes) == (B, C, A)
    assert rescore_select({A: -1.0, B: -1.0, C: -1.0}, votes) == (A, C, B)
    assert rescore_select({A: -1.0, B: -1.0}) == (min(A, B), max(A, B))


def test_rescore_vote_weight_adds_log_votes() -> None:
    totals = {A: -3.0, B: -2.0}
    votes = {A: 10, B: 1}
    assert rescore_select(totals, votes, vote_weight=0.0) == (B, A)
    # -3 + log(10) = -0.70 beats -2 + log(1) = -2.
    assert rescore_select(totals, votes, vote_weight=1.0) == (A, B)


def test_rescore_nan_total_ranks_last() -> None:
    assert rescore_select({A: math.nan, B: -100.0}) == (B, A)


def test_rescore_weight_without_votes_is_an_error() -> None:
    with pytest.raises(ValueError, match="votes"):
        rescore_select({A: -1.0}, vote_weight=1.0)
    with pytest.raises(ValueError, match="vote count"):
        rescore_select({A: -1.0, B: -2.0}, {A: 1}, vote_weight=1.0)


def test_rescore_of_nothing_is_empty() -> None:
    assert rescore_select({}) == ()


def test_score_totals_sum_scores_and_do_not_grow_with_votes() -> None:
    cs = [
        Candidate(A, "id", -1.0, 1, scores=(-1.0, -2.0)),
        Candidate(A, "t", -1.0, 1, scores=(-1.0, -2.0)),
        Candidate(B, "id", -1.0, 1, scores=(-0.5,)),
        Candidate(C, "id", -1.0, 1),  # never scored: left out
    ]
    totals = score_totals(cs)
    assert totals == {A: -3.0, B: -0.5}
    assert rescore_select(totals, {t.grid: t.votes for t in tally(cs)}) == (B, A)


# -- re-scoring ----------------------------------------------------------------------------


def scored(grid: Grid, scores: tuple[float, ...], key: str = "id") -> Candidate:
    return Candidate(grid=grid, aug_key=key, logprob=-1.0, n_tokens=1, scores=scores)


def test_rescore_prefers_the_likelier_grid_over_the_majority() -> None:
    majority = [scored(((1,),), (-30.0, -30.0), key=f"k{i}") for i in range(3)]
    likely = [scored(((2,),), (-2.0, -3.0))]
    v = vote([*majority, *likely], VoteMode.RESCORE)
    assert v is not None
    assert v.mode is VoteMode.RESCORE
    assert v.attempt_1 == ((2,),)
    assert v.attempt_2 == ((1,),)
    assert v.margin == 2  # still the grid-wise margin: 3 votes against 1


def test_rescore_vote_weight_breaks_near_ties_towards_votes() -> None:
    a = [scored(((1,),), (-5.0,), key=f"k{i}") for i in range(3)]  # -5 + log 3 = -3.9
    b = [scored(((2,),), (-4.5,))]  # -4.5 + log 1 = -4.5
    v = vote([*a, *b], VoteMode.RESCORE)
    assert v is not None and v.attempt_1 == ((1,),)


def test_rescore_without_scores_is_the_grid_vote() -> None:
    cands = [cand(((1,),)), cand(((1,),)), cand(((2,),), logprob=-0.1)]
    r = vote(cands, VoteMode.RESCORE)
    g = vote(cands, VoteMode.GRID)
    assert r is not None and g is not None
    assert (r.attempt_1, r.attempt_2) == (g.attempt_1, g.attempt_2)


def test_rescore_puts_unscored_grids_after_scored_ones() -> None:
    cands = [cand(((1,),)), cand(((1,),)), cand(((1,),)), scored(((2,),), (-50.0,))]
    v = vote(cands, VoteMode.RESCORE)
    assert v is not None
    assert v.attempt_1 == ((2,),)
    assert v.attempt_2 == ((1,),)


# -- views-nll (NVARC's selection rule) ----------------------------------------------------


def test_views_nll_is_views_minus_mean_nll() -> None:
    # A: 3 views, mean NLL 4 -> -1; B: 1 view, mean NLL 0.5 -> 0.5; C: 2 views, NLL 1.5 -> 0.5.
    cands = [
        *(scored(A, (-3.0, -5.0), key=k) for k in ("id", "t", "flip")),
        scored(B, (-0.5, -0.5)),
        *(scored(C, (-1.0, -2.0), key=k) for k in ("id", "t")),
    ]
    assert score_means(cands) == {A: -4.0, B: -0.5, C: -1.5}
    v = vote(cands, VoteMode.VIEWS_NLL)
    assert v is not None and v.mode is VoteMode.VIEWS_NLL
    assert (v.attempt_1, v.attempt_2) == (C, B)  # the tie on 0.5 goes to more views


def test_views_nll_counts_distinct_views_not_candidates() -> None:
    """Four completions of one view (sampling, DFS) are one view, not four votes."""
    many = [scored(A, (-1.0,), key="id") for _ in range(4)]
    two = [scored(B, (-1.5,), key=k) for k in ("id", "t")]
    assert views_nll_select(score_means([*many, *two]), {A: 1, B: 2}) == (B, A)
    v = vote([*many, *two], VoteMode.VIEWS_NLL)
    assert v is not None and v.attempt_1 == B


def test_views_nll_without_scores_is_the_grid_vote() -> None:
    cands = [cand(((1,),)), cand(((1,),)), cand(((2,),), logprob=-0.1)]
    r = vote(cands, VoteMode.VIEWS_NLL)
    g = vote(cands, VoteMode.GRID)
    assert r is not None and g is not None
    assert (r.attempt_1, r.attempt_2) == (g.attempt_1, g.attempt_2)


def test_views_nll_nan_score_ranks_last() -> None:
    v = vote([scored(A, (math.nan,)), scored(B, (-100.0,))], VoteMode.VIEWS_NLL)
    assert v is not None and v.attempt_1 == B


@given(st.lists(st.tuples(candidates_st, st.lists(st.floats(-60.0, 0.0), max_size=3))))
def test_views_nll_ranks_every_grid_once_scored_first(
    pairs: list[tuple[Candidate, list[float]]],
) -> None:
    cands = [Candidate(c.grid, c.aug_key, c.logprob, c.n_tokens, tuple(s)) for c, s in pairs]
    v = vote(cands, VoteMode.VIEWS_NLL)
    if not cands:
        assert v is None
        return
    assert v is not None
    means = score_means(cands)
    grids_ = {c.grid for c in cands}
    ranked = views_nll_select(means, {t.grid: len(set(t.aug_keys)) for t in tally(cands)})
    assert set(ranked) == set(means) <= grids_
    if means:
        assert v.attempt_1 == ranked[0]
        best = ranked[0]
        views = len({c.aug_key for c in cands if c.grid == best})
        for g in ranked[1:]:
            other = len({c.aug_key for c in cands if c.grid == g})
            assert views + means[best] >= other + means[g] - 1e-9
