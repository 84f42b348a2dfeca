"""The engine protocol, the values that cross it, and choices shared by the backends.

An engine is streamed: requests are added one by one under the caller's ids, `step` advances
it and returns what finished since the last step, `abort` drops requests. The engine keeps
every request added until it finishes, so whoever feeds it (a worker process, or a caller in
this process) can keep its queue full and take each answer as it finishes. `generate` and
`score` are the blocking form of the same thing: add all, step until done.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from airv.core.errors import ConfigError, EngineError
from airv.engines.config import Decoding, Dtype
from airv.engines.dfs import Limits


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    prompt_ids: tuple[int, ...]
    max_tokens: int
    # A LoRA adapter directory (peft format) to answer with; None: the base model.
    adapter: str | None = None
    # How to decode this request, whole (greedy, sampling, beam, DFS, n, penalties, stop
    # strings); None: the engine's default, which is the run's settings. So one engine serves
    # requests decoded in different ways, as each backend's capabilities allow (CAPABILITIES).
    decoding: Decoding | None = None
    # Also send partial results (the tokens so far, finished=False) before the final one.
    # The vLLM engine streams them; the transformers engine sends only final results.
    partial: bool = False
    # A search (DFS) stops and returns what it has found at `deadline` (time.monotonic(): the
    # machine's clock, shared by the worker processes) or `max_seconds` after it started.
    deadline: float | None = None
    max_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """log p(continuation | prompt), summed over the continuation's tokens."""

    prompt_ids: tuple[int, ...]
    continuation_ids: tuple[int, ...]
    adapter: str | None = None  # as GenerateRequest.adapter

    @property
    def tokens(self) -> int:
        """The tokens the engine reads for it: prompt and continuation."""
        return len(self.prompt_ids) + len(self.continuation_ids)


Request = GenerateRequest | ScoreRequest


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]
    logprob: float  # cumulative log-probability of token_ids under the model
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (hit max_tokens)


@dataclass(frozen=True, slots=True)
class Result:
    """What an engine returns for one request: its completions (a GenerateRequest) or its score
    (a ScoreRequest); `finished` False for a partial result; `error` when the engine could not
    serve this one request (the others go on)."""

    request_id: int
    completions: tuple[Completion, ...] = ()
    score: float | None = None
    finished: bool = True
    error: str | None = None


class Engine(Protocol):
    """What the pipeline needs from an inference backend."""

    @property
    def tokenizer(self) -> Any: ...

    def add(self, request_id: int, request: Request) -> None:
        """Queue one request under the caller's id. A request the engine cannot serve comes
        back from `step` as a Result with `error`; add raises only if the engine is broken."""
        ...

    def step(self) -> list[Result]:
        """Advance the engine (one scheduler step, or one batch); the results since the last
        call. Call it only while `unfinished()`: with nothing to do it may block."""
        ...

    def abort(self, request_ids: Sequence[int]) -> None:
        """Drop requests (unknown or finished ids are ignored); they return no result."""
        ...

    def unfinished(self) -> int:
        """Requests added and not yet returned as finished."""
        ...

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        """Blocking: for each request, its completions (n, or beam_width, of them)."""
        ...

    def score(self, requests: Sequence[ScoreRequest]) -> list[float]:
        """Blocking, prefill only: the summed logprob of each continuation."""
        ...

    def close(self) -> None: ...


def decoding_of(request: GenerateRequest, default: Decoding) -> Decoding:
    """A request's decoding: its own, or the engine's default."""
    return request.decoding if request.decoding is not None else default


def dfs_limits(request: GenerateRequest, decoding: Decoding) -> Limits:
    """The search of one DFS request, starting now: its decoding's threshold and caps, and the
    sooner of the request's deadline and its time cap."""
    if not decoding.dfs_threshold:
        raise ConfigError("dfs decoding needs dfs_threshold (--dfs-threshold)")
    ends = [
        t
        for t in (
            request.deadline,
            None if request.max_seconds is None else time.monotonic() + request.max_seconds,
        )
        if t is not None
    ]
    return Limits(
        decoding.dfs_threshold,
        decoding.dfs_max_candidates,
        decoding.dfs_max_nodes,
        min(ends) if ends else None,
    )


def in_order(done: Mapping[int, Result], n: int, who: str = "the engine") -> list[Result]:
    """The finished results of requests 0..n-1, in request order; EngineError if any failed.
    The one place a blocking call turns its results into an answer."""
    results = [done[i] for i in range(n)]
    failed = [r for r in results if r.error is not None]
    if failed:
        raise EngineError(f"{who}: {len(failed)} request(s) failed: {failed[0].error}")
    return results


def completions_of(results: Sequence[Result]) -> list[list[Completion]]:
    return [list(r.completions) for r in results]


def scores_of(results: Sequence[Result]) -> list[float]:
    out = []
    for r in results:
        if r.score is None:
            raise EngineError(f"request {r.request_id}: no score returned")
        out.append(r.score)
    return out


def run_to_completion(engine: Engine, requests: Sequence[Request]) -> list[Result]:
    """Add every request, step until all have finished; results in request order. The one
    blocking path of every engine (its `generate` and `score`)."""
    for i, r in enumerate(requests):
        engine.add(i, r)
    out: dict[int, Result] = {}
    while len(out) < len(requests):
        if not engine.unfinished():
            raise EngineError(f"the engine dropped {len(requests) - len(out)} request(s)")
        for res in engine.step():
            if res.finished:
                out[res.request_id] = res
    return in_order(out, len(requests))


def generate_blocking(
    engine: Engine, requests: Sequence[GenerateRequest]
) -> list[list[Completion]]:
    return completions_of(run_to_completion(engine, requests))


def score_blocking(engine: Engine, requests: Sequence[ScoreRequest]) -> list[float]:
    return scores_of(run_to_completion(engine, requests))


def resolve_dtype(
    requested: Dtype, capabilities: Sequence[tuple[int, int]], declared: str | None
) -> Dtype:
    """Pick the compute dtype for the devices at hand.

    `capabilities` holds each GPU's CUDA compute capability; empty means CPU. bfloat16 needs
    compute capability 8.0 (Ampere) or newer: a T4 (7.5) must run float16.
    """
    has_bf16 = bool(capabilities) and all(cap >= (8, 0) for cap in capabilities)
    if requested is not Dtype.AUTO:
        if requested is Dtype.BFLOAT16 and capabilities and not has_bf16:
            raise ConfigError(
                f"dtype bfloat16 needs compute capability >= 8.0; these GPUs have {capabilities}"
                " (use float16)"
            )
        return requested
    if not capabilities:
        return Dtype.BFLOAT16 if declared == "bfloat16" else Dtype.FLOAT32
    if not has_bf16:
        return Dtype.FLOAT16
    return Dtype.FLOAT16 if declared == "float16" else Dtype.BFLOAT16


def sum_logprobs(values: Sequence[float | None]) -> float:
    return float(sum(v for v in values if v is not None))
