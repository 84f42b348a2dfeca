"""The engine protocol, the values that cross it, and choices shared by the backends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from airv.core.errors import ConfigError
from airv.engines.config import Dtype


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    prompt_ids: tuple[int, ...]
    max_tokens: int
    # A LoRA adapter directory (peft format) to answer with; None: the base model.
    adapter: str | None = None


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """log p(continuation | prompt), summed over the continuation's tokens."""

    prompt_ids: tuple[int, ...]
    continuation_ids: tuple[int, ...]
    adapter: str | None = None  # as GenerateRequest.adapter


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]
    logprob: float  # cumulative log-probability of token_ids under the model
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (hit max_tokens)


class Engine(Protocol):
    """What the pipeline needs from an inference backend."""

    @property
    def tokenizer(self) -> Any: ...

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        """One batched call; for each request, its completions (n, or beam_width, of them)."""
        ...

    def score(self, requests: Sequence[ScoreRequest]) -> list[float]:
        """One batched call, prefill only: the summed logprob of each continuation."""
        ...

    def close(self) -> None: ...


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
