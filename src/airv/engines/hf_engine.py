"""The transformers backend: `generate` batched with left padding.

A fallback where vLLM is missing and a debugging aid; it answers the same protocol and gives
the same greedy outputs as the vLLM backend (checked by the tests on the tiny model). It
streams the simple way: each `step` runs one batch of what is queued (up to BATCH_SIZE
requests of one kind and adapter, the oldest first) and returns it whole; no partial results.
Depth-first searches (engines.dfs) of a batch run side by side: one batched forward pass per
step, each prompt expanding its own next node, over a KV cache whose positions a prompt masks
out when its search backtracks.
"""

from __future__ import annotations

from collections.abc import Sequence
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
)
from airv.engines.config import Backend, Decoding, Dtype, EngineConfig, unsupported
from airv.engines.dfs import Leaf, Limits, expansions, ranked
from airv.engines.model import gpu_capabilities, load_tokenizer, model_dtype

# Prompts per forward batch: bounds padding waste and activation memory.
BATCH_SIZE = 16


class HfEngine:
    def __init__(self, engine: EngineConfig, sampling: Decoding, *, n_gpus: int = 0):
        if engine.model is None:
            raise ConfigError("no model directory given")
        why = unsupported(Backend.HF, sampling, quantization=engine.quantization)
        if why is not None:
            raise ConfigError(why)
        try:
            import torch
            from transformers import AutoModelForCausalLM
        except ImportError as exc:
            raise EngineError("transformers/torch are not installed") from exc
        dtype = resolve_dtype(engine.dtype, gpu_capabilities(n_gpus), model_dtype(engine.model))
        torch_dtype = {
            Dtype.FLOAT32: torch.float32,
            Dtype.FLOAT16: torch.float16,
            Dtype.BFLOAT16: torch.bfloat16,
        }[dtype]
        self._torch = torch
        self._device = "cuda" if n_gpus > 0 else "cpu"
        self._tokenizer = load_tokenizer(engine.model)
        self._tokenizer.padding_side = "left"
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._model = AutoModelForCausalLM.from_pretrained(engine.model, dtype=torch_dtype)
        self._model.to(self._device).eval()
        self._sampling = sampling
        self._generator_seed = engine.seed if sampling.seed is None else sampling.seed
        self._adapters: dict[str, str] = {}  # adapter directory -> its name in the model
        self._queue: list[tuple[int, Request]] = []  # added, not yet run; oldest first
        self._max_model_len = engine.max_model_len
        self._done: list[Result] = []  # refused when added: the next step's
        # Requests of a batch that raised, each run on its own next: only the one the engine
        # cannot serve fails (as in vLLM), not the batch it shared.
        self._alone: set[int] = set()
        torch.manual_seed(self._generator_seed)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def _pad(self, rows: Sequence[Sequence[int]]) -> tuple[Any, Any]:
        """Left-pad token id rows into (input_ids, attention_mask) tensors: [B, S]."""
        torch = self._torch
        width = max(len(r) for r in rows)
        pad = self._tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
                mask[i, width - len(r) :] = 1
        return ids.to(self._device), mask.to(self._device)

    def _generation_kwargs(self, max_new_tokens: int, s: Decoding) -> dict[str, Any]:
        """The one place a Decoding becomes transformers' generate() arguments."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "pad_token_id": self._tokenizer.pad_token_id,
            "eos_token_id": self._tokenizer.eos_token_id,
            "repetition_penalty": s.repetition_penalty,
            "return_dict_in_generate": True,
            "output_logits": True,
        }
        if s.beam_width:
            kwargs.update(
                num_beams=s.beam_width,
                num_return_sequences=s.n,
                do_sample=False,
                output_scores=True,
                length_penalty=s.length_penalty,
            )
        elif s.greedy:
            kwargs.update(do_sample=False)
        else:
            kwargs.update(
                do_sample=True,
                num_return_sequences=s.n,
                temperature=s.temperature,
                top_k=s.top_k or None,
                top_p=s.top_p,
                min_p=s.min_p or None,
            )
        if s.stop:
            kwargs.update(stop_strings=list(s.stop), tokenizer=self._tokenizer)
        return kwargs

    # -- streaming: each step runs one batch of the queue -----------------------------------

    def add(self, request_id: int, request: Request) -> None:
        tokens = len(request.prompt_ids)
        if isinstance(request, ScoreRequest):
            tokens += len(request.continuation_ids)
        if tokens > self._max_model_len:  # as vLLM refuses it: this request only
            error = (
                f"a prompt of {tokens} tokens is longer than the context ({self._max_model_len})"
            )
            self._done.append(Result(request_id, error=error))
            return
        self._queue.append((request_id, request))

    def abort(self, request_ids: Sequence[int]) -> None:
        drop = set(request_ids)
        self._queue = [(i, r) for i, r in self._queue if i not in drop]
        self._done = [r for r in self._done if r.request_id not in drop]
        self._alone -= drop

    def unfinished(self) -> int:
        return len(self._queue) + len(self._done)

    def step(self) -> list[Result]:
        """One batch: the oldest request and up to BATCH_SIZE - 1 more that can share its
        forward pass (same kind, adapter, decode mode and n)."""
        out, self._done = self._done, []
        if not self._queue:
            return out
        head = self._queue[0]
        key = self._batch_key(head[1])
        batch = (
            [head]
            if head[0] in self._alone
            else [
                item
                for item in self._queue
                if item[0] not in self._alone and self._batch_key(item[1]) == key
            ][:BATCH_SIZE]
        )
        taken = {i for i, _ in batch}
        self._queue = [item for item in self._queue if item[0] not in taken]
        self._alone -= taken
        try:
            return out + self._run(batch)
        except (RuntimeError, ValueError, IndexError) as exc:  # torch's errors on a request
            if len(batch) > 1:  # which one? each alone, from the front of the queue
                self._alone |= taken
                self._queue[:0] = batch
                return out
            return [*out, Result(batch[0][0], error=f"{type(exc).__name__}: {exc}")]

    def _run(self, batch: Sequence[tuple[int, Request]]) -> list[Result]:
        """One forward batch of requests that share kind, adapter, decode mode and n."""
        ids = [i for i, _ in batch]
        requests = [r for _, r in batch]
        first = requests[0]
        decoding = (
            decoding_of(first, self._sampling) if isinstance(first, GenerateRequest) else None
        )
        if decoding is not None:
            why = unsupported(Backend.HF, decoding)
            if why is not None:  # these requests only
                return [Result(i, error=why) for i in ids]
        try:
            self._use_adapter(first.adapter)
        except (OSError, ValueError) as exc:  # this adapter only: its requests fail
            return [Result(i, error=f"adapter {first.adapter}: {exc}") for i in ids]
        if isinstance(first, ScoreRequest):
            scores = self._score([r for r in requests if isinstance(r, ScoreRequest)])
            return [Result(i, score=v) for i, v in zip(ids, scores, strict=True)]
        gens = [r for r in requests if isinstance(r, GenerateRequest)]
        if decoding is not None and decoding.decode == "dfs":
            limits = [dfs_limits(r, decoding) for r in gens]
            found = self._dfs(gens, limits)
            return [Result(i, tuple(cs)) for i, cs in zip(ids, found, strict=True)]
        found = self._generate_batch(gens)
        return [Result(i, tuple(cs)) for i, cs in zip(ids, found, strict=True)]

    def generate(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        return generate_blocking(self, requests)

    def score(self, requests: Sequence[ScoreRequest]) -> list[float]:
        return score_blocking(self, requests)

    def _use_adapter(self, adapter: str | None) -> None:
        """Activate a peft adapter directory (loaded on first use), or the base model."""
        if adapter is None:
            if self._adapters:
                self._model.disable_adapters()
            return
        name = self._adapters.get(adapter)
        if name is None:
            name = f"adapter-{len(self._adapters) + 1}"
            from transformers.utils import logging as hf_logging

            # transformers reports every other adapter's keys as "missing": noise, not news.
            level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                self._model.load_adapter(adapter, adapter_name=name)
            finally:
                hf_logging.set_verbosity(level)
            self._adapters[adapter] = name
        self._model.set_adapter(name)
        self._model.enable_adapters()

    def _batch_key(self, r: Request) -> tuple[object, ...]:
        """Requests that can share one forward batch (searches too: they run side by side)."""
        if isinstance(r, ScoreRequest):
            return ("score", r.adapter)
        return ("generate", r.adapter, decoding_of(r, self._sampling))

    def _generate_batch(self, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
        """One forward batch of requests that share adapter and decoding."""
        torch = self._torch
        decoding = decoding_of(requests[0], self._sampling)
        kwargs = self._generation_kwargs(max(r.max_tokens for r in requests), decoding)
        per_prompt = kwargs.get("num_return_sequences", 1)
        # Similar lengths together: less padding.
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt_ids))
        ids, mask = self._pad([requests[i].prompt_ids for i in order])
        with torch.no_grad():
            out = self._model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        new_tokens = out.sequences[:, ids.shape[1] :]
        if "num_beams" in kwargs:
            seq_logprobs = self._model.compute_transition_scores(
                out.sequences, out.scores, out.beam_indices, normalize_logits=False
            )
        else:
            logits = torch.stack(out.logits, dim=1).float()  # [B*n, T, V]
            logprobs = torch.log_softmax(logits, dim=-1)
            seq_logprobs = logprobs.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        results: list[list[Completion]] = [[] for _ in requests]
        for row in range(new_tokens.shape[0]):
            i = order[row // per_prompt]
            results[i].append(
                self._completion(new_tokens[row].tolist(), seq_logprobs[row].tolist(), requests[i])
            )
        return results

    def _dfs(
        self, requests: Sequence[GenerateRequest], limits: Sequence[Limits]
    ) -> list[list[Completion]]:
        """Every answer above the threshold (engines.dfs), best first, for each prompt: the
        searches run side by side, one batched forward pass per step, each prompt expanding
        its own next node. The KV cache only grows: a prompt that backtracks masks out the
        positions it left (its attention mask), and each new token gets its own position id,
        so every row attends to exactly its prompt and its current path."""
        torch = self._torch
        eos = self._tokenizer.eos_token_id
        pad = self._tokenizer.pad_token_id
        dev = self._device
        n = len(requests)
        ids, mask = self._pad([r.prompt_ids for r in requests])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            out = self._model(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True
            )
        cache = out.past_key_values
        lengths = [len(r.prompt_ids) for r in requests]

        def next_logprobs(logits: Any, k: int) -> dict[int, float]:
            """The tokens that can keep some path above the threshold, with their logprob."""
            lp = torch.log_softmax(logits.float(), dim=-1)
            top = torch.topk(lp, min(k, lp.shape[0]))
            return dict(zip(top.indices.tolist(), top.values.tolist(), strict=True))

        leaves: list[list[Leaf]] = [[] for _ in range(n)]
        nodes = [1] * n
        # Per prompt, frames of (answer so far, the cache slot of its last token or -1,
        # expansions still to try, best last); the top frame's path is what the row sees.
        stacks: list[list[tuple[tuple[int, ...], int, list[tuple[int, float]]]]] = [
            [
                (
                    (),
                    -1,
                    expansions(next_logprobs(out.logits[i, -1], lim.top_k), 0.0, lim.floor)[::-1],
                )
            ]
            for i, lim in enumerate(limits)
        ]
        while True:
            # Each live search takes its next node to expand (answers found on the way).
            step: list[tuple[int, int, float]] = []  # (row, token, path logprob)
            for i, stack in enumerate(stacks):
                while stack and not limits[i].done(len(leaves[i]), nodes[i]):
                    answer, slot, todo = stack[-1]
                    if not todo:
                        stack.pop()
                        if slot >= 0:
                            mask[i, slot] = 0  # the row leaves this token's position
                        continue
                    tok, score = todo.pop()
                    seq = (*answer, tok)
                    if tok == eos:
                        leaves[i].append(Leaf(seq, score))
                    elif len(seq) < requests[i].max_tokens:  # else no room left for EOS
                        step.append((i, tok, score))
                        break
                else:
                    stack.clear()
            if not step:
                break
            tokens = torch.full((n, 1), pad, dtype=torch.long, device=dev)
            new_mask = torch.zeros((n, 1), dtype=mask.dtype, device=dev)
            pos = torch.zeros((n, 1), dtype=torch.long, device=dev)
            for i, tok, _ in step:
                tokens[i, 0] = tok
                new_mask[i, 0] = 1
                pos[i, 0] = lengths[i] + len(stacks[i][-1][0])
            mask = torch.cat([mask, new_mask], dim=1)
            with torch.no_grad():
                out = self._model(
                    input_ids=tokens,
                    attention_mask=mask,
                    position_ids=pos,
                    past_key_values=cache,
                    use_cache=True,
                )
            slot = mask.shape[1] - 1
            for i, tok, score in step:
                nodes[i] += 1
                todo = expansions(
                    next_logprobs(out.logits[i, -1], limits[i].top_k), score, limits[i].floor
                )
                stacks[i].append(((*stacks[i][-1][0], tok), slot, todo[::-1]))
        return [
            [
                Completion(
                    text=self._tokenizer.decode(list(leaf.tokens), skip_special_tokens=True),
                    token_ids=leaf.tokens,
                    logprob=leaf.logprob,
                    finish_reason="stop",
                )
                for leaf in ranked(found, lim.max_candidates)
            ]
            for found, lim in zip(leaves, limits, strict=True)
        ]

    def _completion(
        self, tokens: list[int], logprobs: list[float], req: GenerateRequest
    ) -> Completion:
        """Cut one generated row at EOS (kept, as vLLM keeps it) or at the request's max_tokens."""
        eos = self._tokenizer.eos_token_id
        tokens = tokens[: req.max_tokens]
        finish = "length"
        if eos in tokens:
            tokens = tokens[: tokens.index(eos) + 1]
            finish = "stop"
        text = self._tokenizer.decode(tokens, skip_special_tokens=True)
        for stop in decoding_of(req, self._sampling).stop:
            if stop in text:
                text = text[: text.index(stop)]
                finish = "stop"
        return Completion(
            text=text,
            token_ids=tuple(tokens),
            logprob=float(sum(logprobs[: len(tokens)])),
            finish_reason=finish,
        )

    def _score(self, chunk: Sequence[ScoreRequest]) -> list[float]:
        torch = self._torch
        scores = [0.0] * len(chunk)
        if chunk:
            rows = [[*r.prompt_ids, *r.continuation_ids] for r in chunk]
            ids, mask = self._pad(rows)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = self._model(
                    input_ids=ids, attention_mask=mask, position_ids=positions
                ).logits.float()
            logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # predicts token t+1 at t
            targets = ids[:, 1:]
            token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, S-1]
            width = ids.shape[1]
            for j, r in enumerate(chunk):
                n = len(r.continuation_ids)
                scores[j] = float(token_lp[j, width - 1 - n :].sum())
        return scores

    def close(self) -> None:
        self._model = None
