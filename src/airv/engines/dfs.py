"""Depth-first search decoding: every answer whose probability stays above a threshold.

The two strongest public ARC solutions decode so (the ARChitects in 2024, thresholds of 7 to
20%; NVARC in 2025, 20%). A prefix is expanded only while its cumulative probability is at
least the threshold P; an answer (a sequence ending in EOS within max_tokens) with probability
at least P is a candidate. Probabilities only shrink along a path, so this finds exactly the
answers with p >= P, and every one of them.

Both engines implement it, on the pieces here:
- transformers (hf_engine): the prompts' searches side by side, one forward pass per step,
  each prompt expanding its own next node, best token first, over a KV cache that only grows
  (a prompt that backtracks masks out the positions it left).
- vLLM (vllm_engine): a *branch* is a greedy request that returns the top-k logprobs at every
  step, k = floor(1/P): at most that many tokens can have p >= P after any prefix, so the
  alternatives that keep a path above P are all among them. `walk` reads one branch's answer:
  the answers it ends in, and a new branch for every alternative token that stays above P
  (a request from that prefix; prefix caching makes its prompt cheap). The branches of every
  prompt run in vLLM's continuous batch, side by side.
The caps (answers and nodes per prompt, and a deadline) stop a search early; it then keeps
what it has found.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from airv.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Leaf:
    """One answer found: its tokens (EOS last) and their summed logprob."""

    tokens: tuple[int, ...]
    logprob: float


@dataclass(frozen=True, slots=True)
class Branch:
    """A path still above the threshold, to be continued: its answer tokens so far and their
    summed logprob."""

    prefix: tuple[int, ...]
    logprob: float


@dataclass(frozen=True, slots=True)
class Limits:
    """One prompt's search: the threshold and the caps."""

    threshold: float
    max_candidates: int
    max_nodes: int
    deadline: float | None = None  # time.monotonic()

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"the DFS threshold must be in (0, 1), got {self.threshold}")

    @property
    def floor(self) -> float:
        """The threshold as a logprob."""
        return math.log(self.threshold)

    @property
    def top_k(self) -> int:
        """How many of the likeliest next tokens can be above the threshold: floor(1/P)."""
        return max(1, math.floor(1.0 / self.threshold + 1e-9))

    def done(self, leaves: int, nodes: int) -> bool:
        """Whether the search must stop: a cap reached or the deadline passed."""
        return (
            leaves >= self.max_candidates
            or nodes >= self.max_nodes
            or (self.deadline is not None and time.monotonic() >= self.deadline)
        )


def expansions(
    logprobs: Mapping[int, float], score: float, floor: float
) -> list[tuple[int, float]]:
    """The next tokens that keep a path of logprob `score` at or above `floor`, with the
    path's new logprob, best first (ties by token id)."""
    out = [(tok, score + lp) for tok, lp in logprobs.items() if score + lp >= floor]
    return sorted(out, key=lambda x: (-x[1], x[0]))


def walk(
    branch: Branch,
    tokens: Sequence[int],
    top: Sequence[Mapping[int, float]],
    floor: float,
    eos: int,
) -> tuple[list[Leaf], list[Branch], int]:
    """Read one branch: its greedy continuation `tokens` and, at each position, the logprobs
    of the likeliest tokens there (the chosen one among them). Returns the answers found, the
    branches the alternatives start (each above `floor`), and the nodes explored (positions
    whose next-token distribution was read while the path was above `floor`)."""
    leaves: list[Leaf] = []
    branches: list[Branch] = []
    score = branch.logprob
    nodes = 0
    for i, (tok, alts) in enumerate(zip(tokens, top, strict=False)):
        nodes += 1
        prefix = branch.prefix + tuple(tokens[:i])
        for alt, s in expansions(alts, score, floor):
            if alt == tok:
                continue
            if alt == eos:
                leaves.append(Leaf((*prefix, alt), s))
            else:
                branches.append(Branch((*prefix, alt), s))
        score += alts[tok]
        if score < floor:
            break
        if tok == eos:
            leaves.append(Leaf((*prefix, tok), score))
            break
    return leaves, branches, nodes


def ranked(leaves: Sequence[Leaf], max_candidates: int) -> list[Leaf]:
    """The answers best first (ties by their tokens), at most max_candidates."""
    return sorted(leaves, key=lambda x: (-x.logprob, x.tokens))[:max_candidates]
