"""Every default of the engine and of sampling, in one place (a run's own defaults are in
airv.run.config).

CLI flags default to None and only override these (style: never state a default twice).
Engine options live apart from sampling options; the engines build their sampling object
from `Decoding` in one place each.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airv.core.errors import ConfigError


class Backend(enum.StrEnum):
    VLLM = "vllm"
    HF = "hf"
    OPENAI = "openai"  # vLLM's OpenAI-compatible servers (engines.openai_engine)


class Dtype(enum.StrEnum):
    AUTO = "auto"
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


@dataclass(frozen=True)
class EngineConfig:
    """How to load the model. Independent of how to sample from it."""

    model: Path | None = None
    backend: Backend = Backend.VLLM
    # auto: the model's own dtype, but float16 on GPUs without bf16 (compute capability < 8,
    # e.g. Kaggle's T4) and float32 on CPU for float32 checkpoints.
    dtype: Dtype = Dtype.AUTO
    max_model_len: int = 8192
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    # Skips vLLM's graph compilation: start-up is faster, decoding a little slower.
    enforce_eager: bool = False
    # vLLM n-gram (prompt lookup) speculative decoding; 0 = off. ARC answers copy the input a lot.
    ngram_speculative_tokens: int = 0
    # vLLM's CPU build only: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE, unless already set).
    # Without it vLLM sizes the cache from gpu_memory_utilization as a share of the machine's
    # memory and refuses to start when other processes hold a few GiB.
    cpu_kv_cache_gib: int = 2
    # vLLM's quantization method for a quantized checkpoint (e.g. "awq", "gptq", "fp8");
    # None = what the checkpoint's config declares. vLLM checks the name when it loads.
    quantization: str | None = None
    # LoRA adapters (test-time fine-tuning): the largest rank served; 0 = no adapters.
    max_lora_rank: int = 0
    max_loras: int = 8  # distinct adapters in one batch (vLLM's max_loras)
    # vLLM's own log level (VLLM_LOGGING_LEVEL, unless set): its INFO lines bury airv's.
    log_level: str = "WARNING"
    seed: int = 0
    # The openai engine's servers: base URLs including /v1, one lane each.
    endpoints: tuple[str, ...] = ()
    # The API key goes only to https:// or loopback endpoints unless this is set.
    allow_insecure_key: bool = False

    def __post_init__(self) -> None:
        if self.max_model_len < 64:
            raise ConfigError(f"max_model_len must be at least 64, got {self.max_model_len}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.cpu_kv_cache_gib < 1:
            raise ConfigError(f"cpu_kv_cache_gib must be >= 1, got {self.cpu_kv_cache_gib}")
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(
                f"engine log level must be DEBUG, INFO, WARNING or ERROR: {self.log_level}"
            )
        if self.max_lora_rank < 0 or self.max_loras < 1:
            raise ConfigError("max_lora_rank must be >= 0 and max_loras >= 1")
        if self.ngram_speculative_tokens < 0:
            raise ConfigError("ngram_speculative_tokens must be >= 0")
        if self.quantization is not None and not self.quantization.strip():
            raise ConfigError("quantization must be a method name such as awq, or unset")
        if (self.backend is Backend.OPENAI) != bool(self.endpoints):
            raise ConfigError(
                "the openai engine needs --endpoint URL (one or more), and --endpoint needs "
                "--engine openai"
            )
        for url in self.endpoints:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"an endpoint is a URL such as http://127.0.0.1:8000/v1: {url}")


# The threshold `--decode dfs` uses when none is given: inside the ARChitects' 7-20%.
DEFAULT_DFS_THRESHOLD = 0.1
DECODE_MODES = ("greedy", "sampling", "beam", "dfs")


@dataclass(frozen=True)
class Decoding:
    """How to decode a request. Greedy by default: ARC answers are exact, and AIRV gets its
    diversity from the augmentations, not from sampling. The run's settings give the default;
    a request may carry its own (GenerateRequest.decoding)."""

    n: int = 1  # completions per prompt; with beam search, the n best beams
    temperature: float = 0.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # != 1.0 hurts ARC: answers repeat the input's cells
    # vLLM/OpenAI-style penalties in [-2, 2]; 0 = off. They hurt ARC too: answers copy the input.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    beam_width: int = 0  # > 1: beam search (vLLM's LLM.beam_search / transformers num_beams)
    # Beam search ranks beams by logprob / length**length_penalty: > 1 favours longer answers.
    length_penalty: float = 1.0
    # > 0: depth-first search: every answer whose probability stays above this (the winners'
    # decoder: the ARChitects used 0.07-0.2, NVARC 0.2), at most dfs_max_candidates per prompt,
    # after at most dfs_max_nodes next-token distributions computed per prompt.
    dfs_threshold: float = 0.0
    dfs_max_candidates: int = 8
    dfs_max_nodes: int = 4096

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p < 1.0:
            raise ConfigError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ConfigError("repetition_penalty must be > 0")
        for name, value in (
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ):
            if not -2.0 <= value <= 2.0:
                raise ConfigError(f"{name} must be in [-2, 2] (0 = off), got {value}")
        penalised = (
            self.repetition_penalty != 1.0 or self.presence_penalty or self.frequency_penalty
        )
        if penalised and self.temperature == 0.0:
            raise ConfigError(
                "repetition, presence and frequency penalties apply to sampling (temperature > "
                "0): greedy decoding, beam search and DFS follow the model's own distribution"
            )
        if not math.isfinite(self.length_penalty):
            raise ConfigError(f"length_penalty must be a finite number, got {self.length_penalty}")
        if self.length_penalty != 1.0 and not self.beam_width:
            raise ConfigError("length_penalty applies to beam search only: set beam_width >= 2")
        if self.beam_width < 0 or self.beam_width == 1:
            raise ConfigError("beam_width must be 0 (off) or >= 2")
        if self.n > 1 and self.temperature == 0.0 and not self.beam_width:
            raise ConfigError("n > 1 needs sampling (temperature > 0) or beam search")
        if self.beam_width and (self.n > self.beam_width):
            raise ConfigError("with beam search, n must not exceed beam_width")
        if not 0.0 <= self.dfs_threshold < 1.0:
            raise ConfigError(
                f"dfs_threshold must be in (0, 1) (0 = off), got {self.dfs_threshold}"
            )
        if self.dfs_threshold and (self.temperature or self.beam_width or self.n > 1):
            raise ConfigError("depth-first search takes no temperature, n or beam_width")
        if self.dfs_max_candidates < 1 or self.dfs_max_nodes < 1:
            raise ConfigError("dfs_max_candidates and dfs_max_nodes must be >= 1")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 and not self.beam_width and not self.dfs_threshold

    @property
    def decode(self) -> str:
        """The decoding this config asks for: greedy, sampling, beam or dfs."""
        if self.dfs_threshold:
            return "dfs"
        if self.beam_width:
            return "beam"
        return "sampling" if self.temperature > 0 else "greedy"


@dataclass(frozen=True)
class Capabilities:
    """What one backend can do. Checked when a run's settings are read (before any adapter is
    trained or model loaded), when an engine starts, and for each request it is given."""

    refused_decodes: Mapping[str, str]  # decode mode -> why this backend does not offer it
    beam_with_adapters: bool
    penalties: frozenset[str]  # the Decoding penalties it applies
    quantization: str | None  # None: it takes EngineConfig.quantization; else why it does not


_ALL_PENALTIES = frozenset({"repetition_penalty", "presence_penalty", "frequency_penalty"})
CAPABILITIES: Mapping[Backend, Capabilities] = {
    # LLM.beam_search takes no LoRARequest.
    Backend.VLLM: Capabilities({}, False, _ALL_PENALTIES, None),
    Backend.HF: Capabilities(
        {},
        True,
        frozenset({"repetition_penalty"}),
        "quantization is a vLLM option; the hf backend loads a quantized checkpoint as its "
        "config.json declares (leave quantization unset)",
    ),
    Backend.OPENAI: Capabilities(
        {
            "dfs": "--decode dfs runs inside the engine (vllm or hf): it is not offered through "
            "the openai engine",
            "beam": "beam search is not offered through the openai engine: vLLM's server "
            "returns its beams without logprobs or token ids",
        },
        False,
        _ALL_PENALTIES,
        "quantization is the server's option (vllm serve --quantization): leave it unset",
    ),
}


_DEFAULT_DECODING = Decoding()  # what "unset" means for each option


def unsupported(
    backend: Backend,
    decoding: Decoding,
    *,
    adapter: bool = False,
    quantization: str | None = None,
) -> str | None:
    """Why `backend` cannot decode so (with a LoRA adapter, or with that quantization), or
    None. The one check of what a backend can do: a run's options, an engine's start and each
    request all ask it, so a difference is a clear error and never a quiet one."""
    can = CAPABILITIES[backend]
    if decoding.decode in can.refused_decodes:
        return can.refused_decodes[decoding.decode]
    if adapter and decoding.decode == "beam" and not can.beam_with_adapters:
        return (
            f"beam search on the {backend} engine takes no LoRA adapters (--ttt): decode greedy, "
            "sampling or dfs, or use --engine hf"
        )
    for name in sorted(_ALL_PENALTIES - can.penalties):
        if getattr(decoding, name) != getattr(_DEFAULT_DECODING, name):
            return f"{name} is not offered by the {backend} engine (leave it unset)"
    if quantization is not None and can.quantization is not None:
        return can.quantization
    return None


def replace(obj: Any, **overrides: Any) -> Any:
    """dataclasses.replace that ignores None overrides: how CLI flags (default None) apply."""
    return dataclasses.replace(obj, **{k: v for k, v in overrides.items() if v is not None})


__all__ = [
    "CAPABILITIES",
    "Backend",
    "Capabilities",
    "Decoding",
    "Dtype",
    "EngineConfig",
    "field",
    "replace",
    "unsupported",
]
