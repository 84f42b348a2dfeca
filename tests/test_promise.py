"""A task's promise (airv.run.promise): its request, its weight, its log and what is owed (no
engine: test_pipeline's gain run scores them on one)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from airv.core.prompts import FittedPrompt, PromptTooLong
from airv.core.tasks import Pair, Task
from airv.core.types import Grid
from airv.run.promise import (
    PROMISE_SHARE,
    PromisePass,
    Promises,
    Scored,
    append_promises,
    demonstration,
    read_promises,
    sample,
    weight,
    worth_scoring,
)

A: Grid = ((1, 2),)
B: Grid = ((3,),)
C: Grid = ((4, 4), (5, 5))


def _fit(task: Task, test_index: int) -> FittedPrompt | PromptTooLong:
    """A prompt whose ids spell the train pairs' first cells and the test input's: enough to
    see which pairs went in. A task whose test input is C does not fit."""
    if task.test[test_index] == C:
        return PromptTooLong(task.id, test_index, 99, 120, 100)
    ids = [p.input[0][0] * 10 + p.output[0][0] for p in task.train] + [task.test[test_index][0][0]]
    return FittedPrompt("", ids, len(task.train), 8, ())


def _answer_ids(grid: Grid) -> list[int]:
    return [c for row in grid for c in row]


def test_the_last_train_output_is_scored_given_the_pair_before_it() -> None:
    task = Task("t", (Pair(A, B), Pair(B, A), Pair(A, C)), (B,))
    request = demonstration(task, _fit, _answer_ids)
    assert request is not None
    assert request.prompt_ids == (31, 1)  # pair 2 alone, then pair 3's input
    assert request.continuation_ids == (4, 4, 5, 5)  # pair 3's output


def test_one_pair_or_a_prompt_too_long_has_no_request() -> None:
    assert demonstration(Task("t", (Pair(A, B),), (B,)), _fit, _answer_ids) is None
    too_long = Task("t", (Pair(A, B), Pair(C, A)), (B,))
    assert demonstration(too_long, _fit, _answer_ids) is None


def test_the_pass_goes_on_only_where_its_samples_rate_says_it_is_cheap() -> None:
    measured = [Scored(-1.0, 0.5, 1000), Scored(None, 0.0, 0), Scored(-2.0, 1.5, 1000)]
    share = PROMISE_SHARE * 100.0  # seconds the rest may cost of 100 left
    # 2 s for 2,000 tokens: 1 ms a token (the scored lines without tokens do not count).
    assert worth_scoring(int(share * 1000), measured, 100.0) is True
    assert worth_scoring(int(share * 1000) + 1, measured, 100.0) is False
    assert worth_scoring(10, [Scored(None, 0.0, 0)], 100.0) is None  # nothing measured


def test_the_sample_is_an_eighth_of_the_prompts_in_flight_spread_over_the_sizes() -> None:
    tokens = {"c": 30, "a": 10, "b": 10, "d": 5, "e": 40, "f": 35}  # d a b c f e, a tie by id
    assert sample(tokens, 16) == ["a", "f"]  # the middle of each half
    assert sample(tokens, 24) == ["a", "c", "e"]
    assert sample(tokens, 4) == ["c"]  # at least one
    assert sample(tokens, 512) == ["d", "a", "b", "c", "f", "e"]  # never more than there are


def test_the_pass_asks_a_sample_then_the_rest_or_none_once() -> None:
    owed = {f"t{i}": 100 for i in range(16)}
    rule = PromisePass(inflight=16)  # a sample of 2
    first = rule.ask(owed, [], 100.0, waiting=False)
    assert len(first) == 2 and not rule.known
    assert rule.ask(owed, [], 100.0, waiting=True) == []  # the sample is on its way
    assert not rule.wants(waiting=True) and rule.wants(waiting=False)
    measured = [Scored(-1.0, 0.002, 200)]  # 10 us a token: the rest, 1,400 tokens, is cheap
    rest = {t: n for t, n in owed.items() if t not in first}
    assert rule.ask(rest, measured, 100.0, waiting=False) == list(rest)
    assert rule.known and rule.verdict is True

    dear = PromisePass(inflight=16)
    dear.ask(owed, [], 100.0, waiting=False)
    slow = [Scored(-1.0, 2.0, 200)]  # 10 ms a token: 14 s of 100 left is more than the share
    assert dear.ask(rest, slow, 100.0, waiting=False) == []
    assert dear.verdict is False and not dear.known and not dear.wants(waiting=False)
    assert dear.ask(rest, measured, 1e9, waiting=False) == []  # decided once

    resumed = PromisePass(inflight=16)  # every promise read back from promise.jsonl
    assert resumed.ask({}, [], 100.0, waiting=False) == [] and resumed.known


@given(st.dictionaries(st.text(min_size=1, max_size=3), st.integers(0, 10_000), min_size=1),
       st.integers(0, 4096))  # fmt: skip
def test_a_sample_is_distinct_tasks_in_order_of_size(tokens: dict[str, int], inflight: int) -> None:
    picked = sample(tokens, inflight)
    assert len(picked) == len(set(picked)) == min(len(tokens), max(1, inflight // 8))
    order = sorted(tokens, key=lambda t: (tokens[t], t))
    assert [order.index(t) for t in picked] == sorted(order.index(t) for t in picked)


@given(st.floats(-1e6, 0.0), st.floats(-1e6, 0.0))
def test_a_promise_is_a_share_that_grows_with_the_likelihood(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert 0.0 < weight(lo) <= weight(hi) <= 1.0
    assert weight(0.0) == 1.0 == weight(abs(a))  # a positive value (rounding) counts as 0


@given(
    st.dictionaries(
        st.text("abcdef0123456789", min_size=1, max_size=8),
        st.tuples(st.none() | st.floats(-1e4, 0.0), st.floats(0.0, 1e3), st.integers(0, 10**6)),
        max_size=10,
    )
)
def test_the_log_reads_back_what_was_appended(
    raw: dict[str, tuple[float | None, float, int]],
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "promise.jsonl"
        scored = {t: Scored(ll, round(s, 6), n) for t, (ll, s, n) in raw.items()}
        append_promises(path, list(scored.items())[:3])
        with path.open("ab") as f:
            f.write(b'{"task_id": "torn", "logl\n')  # a line cut by a kill mid-write
        append_promises(path, list(scored.items())[3:])
        assert read_promises(path) == scored


def test_what_is_owed_skips_what_is_known_or_asked(tmp_path: Path) -> None:
    path = tmp_path / "promise.jsonl"
    append_promises(path, [("known", Scored(-2.0, 0.5))])
    two = (Pair(A, B), Pair(B, A))

    def broken(task: Task, test_index: int) -> FittedPrompt | PromptTooLong:
        if task.id == "broken":
            raise ValueError("no prompt")
        return _fit(task, test_index)

    tasks = {t: Task(t, two, (A,)) for t in ("known", "asked", "owed", "broken")} | {
        "single": Task("single", two[:1], (A,))
    }
    promises = Promises(path, tasks, broken, _answer_ids)
    assert promises.of("known") == weight(-2.0) and promises.of("owed") is None
    owed = promises.owed(tasks, asked={"asked"})
    assert [p.task_id for p in owed] == ["owed"]
    # No request can be built for these: they have no promise, recorded once.
    assert promises.scored["single"] == promises.scored["broken"] == Scored(None, 0.0)
    assert promises.owed(tasks, asked={"asked", "owed"}) == []
    promises.record(owed[0], -0.5, 0.25)
    assert promises.of("owed") == weight(-0.5)
    # (13, 3) and A's cells
    assert promises.scored["owed"].tokens == owed[0].request.tokens == 2 + 2
    assert read_promises(path) == promises.scored  # a resumed run knows them all
