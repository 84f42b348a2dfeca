"""Shared test settings and fixtures."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# No per-example time limit: a timing assert in disguise on a shared, noisy 2-core machine.
settings.register_profile(
    "airv", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "airv"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# vLLM's CPU build sizes its KV cache from this (GiB); the tiny model needs little.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# What the bigram test model answers to any prompt ending in a newline: "12" then EOS.
BIGRAM_RULES = {"\n": "1", "1": "2"}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen2 model built locally (no downloads)."""
    from airv.demo.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def bigram_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 model whose weights make it answer every prompt with the grid `12`."""
    from airv.demo.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("bigram") / "model", bigram=BIGRAM_RULES)
