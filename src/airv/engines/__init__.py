"""Inference engines behind one small protocol: vLLM (default) and transformers (fallback)."""

from __future__ import annotations

from airv.core.errors import ConfigError
from airv.engines.base import Completion, Engine, GenerateRequest, ScoreRequest
from airv.engines.config import Backend, Decoding, EngineConfig


def make_engine(engine: EngineConfig, sampling: Decoding, *, n_gpus: int = 0) -> Engine:
    """Build the configured backend. Imports the heavy library only for the backend asked for."""
    if engine.backend is Backend.OPENAI:
        raise ConfigError(
            "the openai engine runs under `airv run` (its servers are lanes of the run's pool), "
            "not as an engine of its own"
        )
    if engine.backend is Backend.VLLM:
        from airv.engines.vllm_engine import VllmEngine

        return VllmEngine(engine, sampling, n_gpus=n_gpus)
    from airv.engines.hf_engine import HfEngine

    return HfEngine(engine, sampling, n_gpus=n_gpus)


__all__ = ["Completion", "Engine", "GenerateRequest", "ScoreRequest", "make_engine"]
