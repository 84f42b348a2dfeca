"""Voting: turn the candidate answers for one test input into attempt_1 and attempt_2.

Candidates arrive already reversed to the task's original frame, so identical answers
from different augmentations are equal `Grid`s and can be counted directly. Selection
rules are registered per `VoteMode` behind one `Selector` protocol:

- GRID: the most-voted distinct grid; ties go to the higher mean token logprob.
- CELL: among candidates of the most-voted shape, each cell takes its majority value.
  This can build an answer no single candidate had (several answers each wrong in a
  different cell).
- RESCORE: distinct grids ranked by their likelihood under other augmentations
  (`Candidate.scores`, log p(grid | another augmentation), which a re-scoring pass fills),
  plus a small weight on their votes.
- VIEWS_NLL: NVARC's selection rule: the number of distinct views (augmentations) that
  produced a grid minus its mean negative log-likelihood over the re-scoring augmentations.

Every result is independent of the order of the candidates: groups are keyed by grid,
float sums are exact (`math.fsum`) or run in a canonical order, and every ranking ends
on the grid itself as a final key.
"""

from __future__ import annotations

import enum
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Protocol

import numpy as np

from airv.core.errors import ConfigError
from airv.core.types import N_COLOURS, Attempts, Grid, shape, to_lists


def _sane(x: float) -> float:
    """NaN or +inf (an fp16 overflow in the engine) count as -inf: the value still takes
    part but ranks last, and cannot poison a sort or a sum."""
    return -math.inf if math.isnan(x) or x == math.inf else x


@dataclass(frozen=True, slots=True)
class Candidate:
    """One parsed answer, mapped back to the original frame."""

    grid: Grid
    aug_key: str  # which augmentation produced it, for the log and the report
    logprob: float  # cumulative logprob of the answer tokens
    n_tokens: int
    # log p(grid | prompt under another augmentation), one per scoring augmentation;
    # filled only by a re-scoring pass, empty otherwise.
    scores: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.n_tokens < 0:
            raise ValueError(f"n_tokens must be >= 0, got {self.n_tokens}")

    @property
    def mean_logprob(self) -> float:
        # Per token, so that large and small answers compare on one scale.
        return _sane(self.logprob) / max(self.n_tokens, 1)


@dataclass(frozen=True, slots=True)
class Tally:
    """All candidates that gave one distinct grid."""

    grid: Grid
    votes: int
    mean_logprob: float  # mean over its candidates of Candidate.mean_logprob
    aug_keys: tuple[str, ...]  # sorted, with repeats (one per candidate)


class VoteMode(enum.StrEnum):
    GRID = "grid"
    CELL = "cell"
    RESCORE = "rescore"
    VIEWS_NLL = "views-nll"

    @property
    def needs_scores(self) -> bool:
        """The mode ranks by likelihood scores, which a re-scoring pass must supply."""
        return self in (VoteMode.RESCORE, VoteMode.VIEWS_NLL)


DEFAULT_VOTE_MODE: Final = VoteMode.GRID


def _json_float(x: float) -> float | None:
    # JSON has no infinities; orjson would write null anyway, the stdlib would not.
    return x if math.isfinite(x) else None


@dataclass(frozen=True, slots=True)
class Vote:
    """The outcome for one test input."""

    attempt_1: Grid
    attempt_2: Grid
    tallies: tuple[Tally, ...]  # best first under the grid-wise rule, whatever the mode
    n_candidates: int
    # Grid-wise consensus in every mode: leader's votes minus runner-up's (the leader's
    # votes if it is alone). Round planning reads it to find unsettled inputs.
    margin: int
    mode: VoteMode

    def attempts(self) -> Attempts:
        return {"attempt_1": to_lists(self.attempt_1), "attempt_2": to_lists(self.attempt_2)}

    def to_json(self) -> dict[str, object]:
        """Plain JSON-ready data (lists, ints, floats or None, strings) for the log/report."""
        return {
            "mode": self.mode.value,
            "n_candidates": self.n_candidates,
            "margin": self.margin,
            "attempt_1": to_lists(self.attempt_1),
            "attempt_2": to_lists(self.attempt_2),
            "tallies": [
                {
                    "grid": to_lists(t.grid),
                    "votes": t.votes,
                    "mean_logprob": _json_float(t.mean_logprob),
                    "aug_keys": list(t.aug_keys),
                }
                for t in self.tallies
            ],
        }


class Selector(Protocol):
    """A voting rule. Returns None when there are no candidates (the caller falls back).

    Rules that need more than the candidates (e.g. a weight) are objects or partials
    built with that data, so that every rule is called the same way.
    """

    def __call__(self, candidates: Sequence[Candidate]) -> Vote | None: ...


def tally(candidates: Sequence[Candidate]) -> tuple[Tally, ...]:
    """Distinct grids, by votes desc, then mean logprob desc, then the grid itself."""
    groups: defaultdict[Grid, list[Candidate]] = defaultdict(list)
    for c in candidates:
        groups[c.grid].append(c)
    tallies = [
        Tally(
            grid=grid,
            votes=len(group),
            # fsum is exactly rounded, hence independent of candidate order.
            mean_logprob=math.fsum(c.mean_logprob for c in group) / len(group),
            aug_keys=tuple(sorted(c.aug_key for c in group)),
        )
        for grid, group in groups.items()
    ]
    tallies.sort(key=lambda t: (-t.votes, -t.mean_logprob, t.grid))
    return tuple(tallies)


def _runner_up(attempt_1: Grid, ranking: Sequence[Grid]) -> Grid:
    """The best-ranked grid other than attempt_1; attempt_1 itself if there is none."""
    return next((g for g in ranking if g != attempt_1), attempt_1)


def _vote(
    attempt_1: Grid, ranking: Sequence[Grid], tallies: tuple[Tally, ...], n: int, mode: VoteMode
) -> Vote:
    second = tallies[1].votes if len(tallies) > 1 else 0
    return Vote(
        attempt_1=attempt_1,
        attempt_2=_runner_up(attempt_1, ranking),
        tallies=tallies,
        n_candidates=n,
        margin=tallies[0].votes - second,
        mode=mode,
    )


def select_grid(candidates: Sequence[Candidate]) -> Vote | None:
    """Grid-wise majority: attempt_1/attempt_2 are the two best tallies."""
    tallies = tally(candidates)
    if not tallies:
        return None
    ranking = [t.grid for t in tallies]
    return _vote(ranking[0], ranking, tallies, len(candidates), VoteMode.GRID)


def _majority_shape(tallies: Sequence[Tally]) -> tuple[int, int]:
    """The shape with the most votes; among tied shapes, that of the best-ranked tally."""
    votes: Counter[tuple[int, int]] = Counter()
    for t in tallies:
        votes[shape(t.grid)] += t.votes
    top = max(votes.values())
    return next(shape(t.grid) for t in tallies if votes[shape(t.grid)] == top)


def cell_majority(tallies: Sequence[Tally]) -> Grid:
    """Per-cell majority over the tallies of the majority shape, weighted by votes.

    A cell whose top count is tied takes the tied value with the highest summed
    mean_logprob over its candidates, then the smallest value. Works on distinct grids
    (in the canonical tally order), so the cost is O(distinct grids * cells).
    """
    if not tallies:
        raise ValueError("cell_majority needs at least one tally")
    target = _majority_shape(tallies)
    group = [t for t in tallies if shape(t.grid) == target]
    stack = np.array([t.grid for t in group], dtype=np.int8)  # [D, H, W]
    votes = np.array([t.votes for t in group], dtype=np.float64)  # [D]
    weight = np.array([t.mean_logprob * t.votes for t in group], dtype=np.float64)  # [D]
    n, h, w = stack.shape
    # Scatter-add each grid's votes (and logprob weight) into bin colour * cells + cell:
    # O(D * cells), and no -inf * 0 = NaN as a one-hot product would give.
    bins = (stack.reshape(n, h * w).astype(np.int64) * (h * w) + np.arange(h * w)).ravel()
    size = N_COLOURS * h * w
    counts = np.bincount(bins, np.repeat(votes, h * w), size).reshape(N_COLOURS, h, w)
    weights = np.bincount(bins, np.repeat(weight, h * w), size).reshape(N_COLOURS, h, w)
    tied = counts == counts.max(axis=0)
    masked = np.where(tied, weights, -np.inf)
    best = tied & (masked == masked.max(axis=0))
    cells = best.argmax(axis=0)  # first True = smallest value among the best
    return tuple(tuple(int(v) for v in row) for row in cells)


def select_cell(candidates: Sequence[Candidate]) -> Vote | None:
    """Cell-wise majority as attempt_1; attempt_2 is the grid-wise winner if that differs,
    else the grid-wise runner-up."""
    tallies = tally(candidates)
    if not tallies:
        return None
    ranking = [t.grid for t in tallies]
    return _vote(cell_majority(tallies), ranking, tallies, len(candidates), VoteMode.CELL)


def score_totals(candidates: Sequence[Candidate]) -> dict[Grid, float]:
    """Per distinct grid: the summed `scores` of a candidate, averaged over the grid's
    candidates that carry scores (re-scoring is per distinct grid, so they normally all
    carry the same scores; averaging keeps the total from growing with the votes).
    Grids none of whose candidates were scored are left out."""
    sums: defaultdict[Grid, list[float]] = defaultdict(list)
    for c in candidates:
        if c.scores:
            sums[c.grid].append(math.fsum(_sane(s) for s in c.scores))
    return {grid: math.fsum(s) / len(s) for grid, s in sums.items()}


def rescore_select(
    totals: Mapping[Grid, float],
    votes: Mapping[Grid, int] | None = None,
    *,
    vote_weight: float = 0.0,
) -> tuple[Grid, ...]:
    """Rank the grids of `totals` best first by total + vote_weight * log(votes).

    Ties go to more votes, then to the grid itself. `votes` is needed only when
    vote_weight is not 0 (and then for every grid of `totals`).
    """
    if vote_weight != 0.0 and votes is None:
        raise ValueError("rescore_select: vote_weight needs votes")
    counts: Mapping[Grid, int] = votes if votes is not None else {}
    if vote_weight != 0.0:
        bad = [g for g in totals if counts.get(g, 0) < 1]
        if bad:
            raise ValueError(f"rescore_select: {len(bad)} scored grid(s) without a vote count")

    def key(grid: Grid) -> tuple[float, int, Grid]:
        score = _sane(totals[grid])
        if vote_weight != 0.0:
            score += vote_weight * math.log(counts[grid])
        return (-score, -counts.get(grid, 0), grid)

    return tuple(sorted(totals, key=key))


# How much a candidate's vote count adds to its re-scoring total: weight * log(votes). The
# likelihood sums are over J augmentations of tens of tokens each, so 1.0 only breaks near-ties.
RESCORE_VOTE_WEIGHT = 1.0


def select_rescore(candidates: Sequence[Candidate]) -> Vote | None:
    """Rank distinct grids by their summed log-likelihood under other augmentations (the
    candidates' `scores`), plus RESCORE_VOTE_WEIGHT * log(votes). Grids that were not scored
    (e.g. outside the top M by votes) follow in grid-wise order, so without any scores this is
    the grid-wise vote."""
    tallies = tally(candidates)
    if not tallies:
        return None
    totals = score_totals(candidates)
    votes = {t.grid: t.votes for t in tallies}
    ranked = rescore_select(totals, votes, vote_weight=RESCORE_VOTE_WEIGHT)
    ranking = [*ranked, *(t.grid for t in tallies if t.grid not in totals)]
    return _vote(ranking[0], ranking, tallies, len(candidates), VoteMode.RESCORE)


def score_means(candidates: Sequence[Candidate]) -> dict[Grid, float]:
    """Per distinct grid: the mean over the re-scoring augmentations of its summed logprob
    (the negative of its mean NLL), averaged over the grid's scored candidates. Grids none
    of whose candidates were scored are left out."""
    means: defaultdict[Grid, list[float]] = defaultdict(list)
    for c in candidates:
        if c.scores:
            means[c.grid].append(math.fsum(_sane(s) for s in c.scores) / len(c.scores))
    return {grid: math.fsum(m) / len(m) for grid, m in means.items()}


def views_nll_select(means: Mapping[Grid, float], views: Mapping[Grid, int]) -> tuple[Grid, ...]:
    """Rank the grids of `means` best first by views - mean NLL (= views + mean logprob);
    ties go to more views, then to the grid itself."""

    def key(grid: Grid) -> tuple[float, int, Grid]:
        return (-(views[grid] + _sane(means[grid])), -views[grid], grid)

    return tuple(sorted(means, key=key))


def select_views_nll(candidates: Sequence[Candidate]) -> Vote | None:
    """NVARC's rule: distinct views that produced a grid minus the grid's mean NLL under the
    re-scoring augmentations. A candidate found twice by one view (several completions of
    one prompt) counts one view. Unscored grids follow in grid-wise order, so without any
    scores this is the grid-wise vote."""
    tallies = tally(candidates)
    if not tallies:
        return None
    means = score_means(candidates)
    views = {t.grid: len(set(t.aug_keys)) for t in tallies}
    ranked = views_nll_select(means, views)
    ranking = [*ranked, *(t.grid for t in tallies if t.grid not in means)]
    return _vote(ranking[0], ranking, tallies, len(candidates), VoteMode.VIEWS_NLL)


SELECTORS: Final[Mapping[VoteMode, Selector]] = MappingProxyType(
    {
        VoteMode.GRID: select_grid,
        VoteMode.CELL: select_cell,
        VoteMode.RESCORE: select_rescore,
        VoteMode.VIEWS_NLL: select_views_nll,
    }
)


def vote(candidates: Sequence[Candidate], mode: VoteMode = DEFAULT_VOTE_MODE) -> Vote | None:
    """Choose two attempts for one test input; None when there are no candidates."""
    try:
        selector = SELECTORS[mode]
    except KeyError:
        known = ", ".join(m.value for m in SELECTORS)
        raise ConfigError(f"unknown vote mode {mode!r}; known: {known}") from None
    return selector(candidates)
