"""Depth-first search decoding (engines.dfs): exactly the answers above the threshold.

The search logic is checked against brute-force enumeration on random bigram tables
(hypothesis); the engines are checked on a test model whose next-token distribution is set by
its weights, so the probability of every answer is known: both backends return exactly the
answers brute force finds above the threshold, with the same log-probabilities."""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airv.core.errors import ConfigError
from airv.engines import Engine, GenerateRequest
from airv.engines.config import Backend, Decoding
from airv.engines.dfs import Branch, Leaf, Limits, expansions, ranked, walk
from airv.engines.pool import LaneStarter
from conftest import Engines
from runs import engine_config, fresh_run, workload

Table = Mapping[int, Mapping[int, float]]  # current token -> next token -> probability
EOS = 0


def brute_force(
    table: Table, start: int, threshold: float, max_tokens: int, eos: int = EOS
) -> dict[tuple[int, ...], float]:
    """Every sequence ending in EOS within max_tokens whose probability is at least the
    threshold, by trying every next token after every prefix still above it."""
    floor = math.log(threshold)
    out: dict[tuple[int, ...], float] = {}

    def visit(prefix: tuple[int, ...], last: int, score: float) -> None:
        for tok, p in table[last].items():
            s = score + math.log(p)
            if s < floor:
                continue
            seq = (*prefix, tok)
            if tok == eos:
                out[seq] = s
            elif len(seq) < max_tokens:
                visit(seq, tok, s)

    visit((), start, 0.0)
    return out


def by_branches(table: Table, start: int, limits: Limits, max_tokens: int) -> list[Leaf]:
    """The search as the vLLM engine runs it: greedy branches with the top-k logprobs at each
    step, read by `walk`."""
    leaves: list[Leaf] = []
    todo = [Branch((), 0.0)]
    while todo:
        branch = todo.pop()
        last = branch.prefix[-1] if branch.prefix else start
        tokens, tops = [], []
        for _ in range(max_tokens - len(branch.prefix)):
            dist = {t: math.log(p) for t, p in table[last].items()}
            tok = max(dist, key=lambda t: (dist[t], -t))
            top = dict(sorted(dist.items(), key=lambda x: (-x[1], x[0]))[: limits.top_k])
            tokens.append(tok)
            tops.append({**top, tok: dist[tok]})
            if tok == EOS:
                break
            last = tok
        found, more, _ = walk(branch, tokens, tops, limits.floor, EOS)
        leaves += found
        todo += more
    return leaves


@st.composite
def tables(draw: st.DrawFn) -> tuple[Table, float, int]:
    n = draw(st.integers(2, 5))  # tokens 0 (EOS) .. n-1; n is the prompt's last token
    table: dict[int, dict[int, float]] = {}
    for cur in range(1, n + 1):
        weights = draw(st.lists(st.floats(0.01, 1.0), min_size=n, max_size=n))
        total = sum(weights)
        table[cur] = {t: w / total for t, w in enumerate(weights)}
    return table, draw(st.floats(0.04, 0.6)), draw(st.integers(1, 6))


@settings(max_examples=200, deadline=None)
@given(tables())
def test_branch_walking_finds_exactly_what_brute_force_finds(
    case: tuple[Table, float, int],
) -> None:
    table, threshold, max_tokens = case
    start = max(table)
    expected = brute_force(table, start, threshold, max_tokens)
    limits = Limits(threshold, max_candidates=10**6, max_nodes=10**6)
    found = by_branches(table, start, limits, max_tokens)
    assert len({leaf.tokens for leaf in found}) == len(found)  # nothing found twice
    assert {leaf.tokens: leaf.logprob for leaf in found} == pytest.approx(expected)
    for leaf in found:
        assert leaf.tokens[-1] == EOS and len(leaf.tokens) <= max_tokens
        assert leaf.logprob >= limits.floor


@given(
    st.dictionaries(st.integers(0, 30), st.floats(-8.0, 0.0), max_size=12),
    st.floats(-3.0, 0.0),
    st.floats(0.01, 0.9),
)
def test_expansions_are_the_tokens_above_the_floor_best_first(
    logprobs: dict[int, float], score: float, threshold: float
) -> None:
    floor = math.log(threshold)
    out = expansions(logprobs, score, floor)
    assert {t for t, _ in out} == {t for t, lp in logprobs.items() if score + lp >= floor}
    assert [s for _, s in out] == sorted((s for _, s in out), reverse=True)
    assert len(out) <= max(len(logprobs), 0)


def test_at_most_floor_one_over_p_tokens_can_be_above_the_threshold() -> None:
    for p in (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.9):
        limits = Limits(p, 1, 1)
        assert limits.top_k == math.floor(1 / p + 1e-9)
        assert limits.top_k * p <= 1.0 + 1e-9 < (limits.top_k + 1) * p


def test_ranked_keeps_the_likeliest_and_limits_stop_a_search() -> None:
    leaves = [Leaf((1, 0), -1.0), Leaf((2, 0), -0.5), Leaf((3, 0), -2.0)]
    assert ranked(leaves, 2) == [leaves[1], leaves[0]]
    limits = Limits(0.1, max_candidates=2, max_nodes=5, deadline=time.monotonic() + 60)
    assert not limits.done(1, 4)
    assert limits.done(2, 0) and limits.done(0, 5)
    assert Limits(0.1, 9, 9, deadline=time.monotonic() - 1).done(0, 0)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError):
            Limits(bad, 1, 1)


def test_the_sampling_config_states_one_decoding() -> None:
    assert Decoding().decode == "greedy"
    assert Decoding(dfs_threshold=0.2).decode == "dfs"
    assert Decoding(temperature=0.7).decode == "sampling"
    assert Decoding(beam_width=3).decode == "beam"
    for bad in (
        dict(dfs_threshold=0.2, temperature=0.5),
        dict(dfs_threshold=0.2, beam_width=2),
        dict(dfs_threshold=1.5),
        dict(dfs_threshold=0.2, dfs_max_nodes=0),
    ):
        with pytest.raises(ConfigError):
            Decoding(**bad)  # type: ignore[arg-type]


# -- the engines, on a model whose every answer's probability is known --------------------

# After the prompt's last newline: "1", "2", "3" or EOS; then by the last character.
SOFT = {
    "\n": {"1": 0.5, "2": 0.3, "3": 0.15, "</s>": 0.05},
    "1": {"1": 0.45, "2": 0.3, "</s>": 0.25},
    "2": {"</s>": 0.6, "1": 0.4},
    "3": {"3": 0.55, "</s>": 0.45},
}
THRESHOLD = 0.01  # floor(1/P) = 100 > the vocabulary (81): the top-k is capped there
MAX_TOKENS = 7
PROMPTS = ["I\n3\nO\n", "I\n12\nO\n1\n\nI\n2\nO\n"]


@pytest.fixture(scope="module")
def soft_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from airv.demo.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("soft") / "model", bigram=SOFT)


SEARCH = Decoding(dfs_threshold=THRESHOLD, dfs_max_candidates=1000, dfs_max_nodes=10**5)


@pytest.fixture
def dfs_engines(engines: Engines, soft_model: Path) -> dict[Backend, Engine]:
    """Engines whose default decoding is the search."""
    return {b: engines.get(soft_model, b, SEARCH) for b in (Backend.HF, Backend.VLLM)}


def _tid(tokenizer: Any, text: str) -> int:
    if text == "</s>":
        return int(tokenizer.eos_token_id)
    return int(tokenizer.encode(text, add_special_tokens=False)[0])


def _expected(tokenizer: Any) -> dict[tuple[int, ...], float]:
    """Brute force over SOFT, in the tokenizer's ids."""
    table = {
        _tid(tokenizer, a): {_tid(tokenizer, b): p for b, p in row.items()}
        for a, row in SOFT.items()
    }
    start = _tid(tokenizer, "\n")
    return brute_force(table, start, THRESHOLD, MAX_TOKENS, eos=tokenizer.eos_token_id)


def _requests(tokenizer: Any) -> list[GenerateRequest]:
    return [
        GenerateRequest(tuple(tokenizer.encode(p, add_special_tokens=False)), MAX_TOKENS)
        for p in PROMPTS
    ]


def _margin_ok(expected: Mapping[tuple[int, ...], float]) -> None:
    """The fixture is well posed: no answer sits within float noise of the threshold."""
    for lp in expected.values():
        assert abs(lp - math.log(THRESHOLD)) > 1e-3


@pytest.mark.engine
@pytest.mark.parametrize("backend", [Backend.HF, Backend.VLLM])
def test_dfs_returns_exactly_the_answers_above_the_threshold(
    dfs_engines: dict[Backend, Engine], backend: Backend
) -> None:
    engine = dfs_engines[backend]
    tok = engine.tokenizer
    expected = _expected(tok)
    _margin_ok(expected)
    assert len(expected) >= 6  # a real search: several branches and depths
    reqs = [
        GenerateRequest(tuple(tok.encode(p, add_special_tokens=False)), MAX_TOKENS) for p in PROMPTS
    ]
    for completions in engine.generate(reqs):
        got = {c.token_ids: c.logprob for c in completions}
        assert got == pytest.approx(expected, abs=1e-3)
        assert [c.logprob for c in completions] == sorted(
            (c.logprob for c in completions), reverse=True
        )
        for c in completions:
            assert c.finish_reason == "stop" and c.text == tok.decode(
                list(c.token_ids), skip_special_tokens=True
            )


@pytest.mark.engine
def test_both_backends_agree_and_respect_the_caps(
    dfs_engines: dict[Backend, Engine], soft_model: Path
) -> None:
    hf, vl = dfs_engines[Backend.HF], dfs_engines[Backend.VLLM]
    tok = hf.tokenizer
    reqs = [
        GenerateRequest(tuple(tok.encode(p, add_special_tokens=False)), MAX_TOKENS) for p in PROMPTS
    ]
    for a, b in zip(hf.generate(reqs), vl.generate(reqs), strict=True):
        assert [c.token_ids for c in a] == [c.token_ids for c in b]
        assert [c.logprob for c in a] == pytest.approx([c.logprob for c in b], abs=1e-3)
    expected = _expected(tok)
    # Caps and decodings asked per request, of both engines.
    capped = dataclasses.replace(SEARCH, dfs_max_candidates=3)
    for engine in (hf, vl):
        few = engine.generate([dataclasses.replace(reqs[0], decoding=capped)])[0]
        assert len(few) == 3 and all(c.token_ids in expected for c in few)
        # A deadline already past: the search stops at once, with what it has (nothing yet).
        late = GenerateRequest(reqs[0].prompt_ids, MAX_TOKENS, deadline=time.monotonic() - 1)
        assert engine.generate([late])[0] == []
        # A request may ask for greedy on a DFS engine: "1" after "\n" and after "1", to the end.
        greedy = GenerateRequest(reqs[0].prompt_ids, MAX_TOKENS, decoding=Decoding())
        (only,) = engine.generate([greedy])[0]
        assert only.token_ids == (_tid(tok, "1"),) * MAX_TOKENS
        assert only.finish_reason == "length"


@pytest.mark.slow
@pytest.mark.engine
def test_a_deadline_in_the_middle_of_a_search_keeps_what_it_found(
    tmp_path: Path, engines: Engines, lent_lanes: LaneStarter
) -> None:
    """Searches that would run for minutes (every path halves: thousands of answers above a
    low threshold) under a 10 s budget counted from a warm engine (the session's, lent): they
    stop a little before the deadline and return what they found; those answers are logged
    and voted, the submission is valid."""
    from airv.core.submission import validate_submission
    from airv.core.tasks import Pair, Task, dump_challenges, load_challenges
    from airv.demo.tinymodel import build_tiny_model
    from airv.run.budget import Clock
    from airv.run.pipeline import Run
    from airv.run.predictions import read_predictions

    budget = 10
    halves = {"1": 0.45, "2": 0.45, "</s>": 0.1}
    model = build_tiny_model(
        tmp_path / "model", bigram={"\n": {"1": 0.5, "2": 0.5}, "1": halves, "2": halves}
    )
    # 8x8 grids: room for long answers, so the threshold, not max_tokens, bounds the search.
    grid = tuple(tuple((r + c) % 3 for c in range(8)) for r in range(8))
    tasks = [Task(f"t{i}", (Pair(grid, grid),), (grid,)) for i in range(2)]
    ch = tmp_path / "challenges.json"
    dump_challenges(tasks, ch)
    out = tmp_path / "out"
    cfg = workload(
        ch,
        out,
        engine_config(model),
        n_views=2,
        sampling=Decoding(dfs_threshold=1e-6, dfs_max_candidates=10**6, dfs_max_nodes=10**7),
        time_budget=budget,
    )
    engines.of(cfg.engine, cfg.sampling)  # started before the clock: the budget is search
    start = time.monotonic()
    run = Run(cfg, lanes=lent_lanes, clock=Clock(start, budget, 0))
    assert run.execute() == 0
    assert run.summary.decode == "dfs (p > 1e-06)"
    # The four searches ran side by side (one batch) until just before the deadline, and
    # what each had found came back.
    assert budget - 2 - 5 < time.monotonic() - start < budget + 20
    assert run.summary.prompts == 4
    records, _ = read_predictions(out / "predictions.jsonl")
    per_view = Counter((r.task_id, r.aug) for r in records)
    assert len(per_view) == 4 and min(per_view.values()) > 1
    assert all(r.grid is not None for r in records)  # "1212...", EOS: a one-row grid
    assert validate_submission(out / "submission.json", load_challenges(ch, strict=False)) == []


@pytest.mark.engine
def test_a_view_whose_search_finds_nothing_is_not_asked_again(
    tmp_path: Path, soft_model: Path, lent_lanes: LaneStarter
) -> None:
    """No answer of the test model reaches p > 0.6: every view comes back with no completion.
    The run ends (each view asked once, every task on the fallback), it does not re-ask."""
    from airv.core.submission import validate_submission
    from airv.core.tasks import Pair, Task, dump_challenges, load_challenges

    tasks = [Task(f"t{i}", (Pair(((1, 2),), ((2, 1),)),), (((1, 2),),)) for i in range(2)]
    ch = tmp_path / "challenges.json"
    dump_challenges(tasks, ch)
    cfg = workload(
        ch,
        tmp_path / "out",
        engine_config(soft_model, max_model_len=256),
        n_views=4,
        per_round=2,
        sampling=Decoding(dfs_threshold=0.6),
        time_budget=600,
    )
    run = fresh_run(cfg, lanes=lent_lanes)
    assert run.execute() == 0
    assert run.summary.stopped_by == "done" and run.summary.completions == 0
    assert run.summary.prompts == 2 * 4  # every view of every task, once
    assert validate_submission(cfg.submission_path, load_challenges(ch, strict=False)) == []
