"""The engine protocol, the values that cross it, and choices shared by the backends."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from airv.config import Dtype
from airv.errors import ConfigError, EngineError


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    prompt_ids: tuple[int, ...]
    max_tokens: int


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """log p(continuation | prompt), summed over the continuation's tokens."""

    prompt_ids: tuple[int, ...]
    continuation_ids: tuple[int, ...]


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


def model_dtype(model_dir: Path) -> str | None:
    """The dtype a Hugging Face checkpoint declares in its config.json, if any."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise EngineError(f"{model_dir}: cannot read config.json: {exc}") from exc
    value = config.get("torch_dtype") or config.get("dtype")
    return str(value) if value else None


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


def gpu_capabilities(n_gpus: int) -> list[tuple[int, int]]:
    """Compute capabilities of the first n_gpus visible CUDA devices (none on CPU)."""
    if n_gpus <= 0:
        return []
    import torch

    return [torch.cuda.get_device_capability(i) for i in range(n_gpus)]


def sum_logprobs(values: Sequence[float | None]) -> float:
    return float(sum(v for v in values if v is not None))
