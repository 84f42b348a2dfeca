"""Section 1 of bench.run_bench: throughput of vLLM (airv's worker, every prompt at once)
against one transformers `generate` per prompt and airv's batched transformers backend, on the
same greedy prompts, runs interleaved."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airv.engines.config import Backend, Decoding
from bench.common import median, table
from bench.harness import Bench, Section, WorkItem, generate, model_name, warm_up, workload_info


class NaiveHf:
    """The baseline notebooks start from: one `model.generate` per prompt, greedy."""

    def __init__(self, model_dir: Path, device: str):
        import torch
        from transformers import AutoModelForCausalLM

        from airv.engines.model import load_tokenizer

        self._torch = torch
        self.device = device
        self.tokenizer = load_tokenizer(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()

    def generate(self, items: Sequence[WorkItem]) -> tuple[float, list[tuple[int, ...]]]:
        torch = self._torch
        eos = self.tokenizer.eos_token_id
        outs = []
        t0 = time.perf_counter()
        for it in items:
            ids = torch.tensor([it.prompt.token_ids], device=self.device)
            with torch.no_grad():
                seq = self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=it.prompt.max_answer_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=eos,
                )
            new = seq[0, ids.shape[1] :].tolist()
            outs.append(tuple(new[: new.index(eos) + 1] if eos in new else new))
        return time.perf_counter() - t0, outs


def measure(b: Bench) -> dict[str, object]:
    """vLLM vs naive transformers vs airv's batched transformers backend, same prompts."""
    from airv.engines.hf_engine import HfEngine

    s = b.settings
    kind = s.throughput_model
    items = b.workload(b.task_pool(kind)[: s.throughput_tasks], s.throughput_augs, kind)
    w = b.worker(kind)
    warm_up(w, items)
    naive = NaiveHf(b.model(kind), b.device)
    naive.generate(items[:1])  # warm-up
    batched = HfEngine(
        b.engine_config(kind, backend=Backend.HF),
        Decoding(),
        n_gpus=int(b.device == "cuda"),
    )
    runs: dict[str, list[float]] = {"vllm": [], "naive_hf": [], "hf_batched": []}
    tokens: dict[str, int] = {}
    identical = {"naive_hf": 0, "hf_batched": 0}
    for _ in range(s.reps):  # interleaved, so load changes hit every engine alike
        secs, v_out = generate(w, items)
        runs["vllm"].append(secs)
        tokens["vllm"] = sum(len(c.token_ids) for c in v_out)
        secs, n_out = naive.generate(items)
        runs["naive_hf"].append(secs)
        tokens["naive_hf"] = sum(len(t) for t in n_out)
        t0 = time.perf_counter()
        h_out = [cs[0] for cs in batched.generate([it.request for it in items])]
        runs["hf_batched"].append(time.perf_counter() - t0)
        tokens["hf_batched"] = sum(len(c.token_ids) for c in h_out)
        identical["naive_hf"] = sum(c.token_ids == t for c, t in zip(v_out, n_out, strict=True))
        identical["hf_batched"] = sum(
            c.token_ids == h.token_ids for c, h in zip(v_out, h_out, strict=True)
        )
    batched.close()
    n_tasks = len({it.task_id for it in items})
    engines = {}
    for name, secs_list in runs.items():
        secs = median(secs_list)
        engines[name] = {
            "seconds": secs_list,
            "median_seconds": secs,
            "output_tokens": tokens[name],
            "output_tokens_per_s": tokens[name] / secs,
            "tasks_per_hour": n_tasks / secs * 3600,
            "prompts_per_s": len(items) / secs,
        }
    v, n = engines["vllm"]["median_seconds"], engines["naive_hf"]["median_seconds"]
    hb = engines["hf_batched"]["median_seconds"]
    return {
        "model": model_name(b, kind),
        "workload": {**workload_info(items), "augmentations": s.throughput_augs},
        "engines": engines,
        "speedup_vllm_over_naive": float(n) / float(v),  # type: ignore[arg-type]
        "speedup_vllm_over_hf_batched": float(hb) / float(v),  # type: ignore[arg-type]
        "identical_greedy_outputs_vs_vllm": identical,
        "reps": s.reps,
    }


ENGINE_NAMES = {
    "vllm": "vLLM (airv worker, every prompt sent at once)",
    "naive_hf": "transformers, one generate per prompt",
    "hf_batched": "transformers, airv's hf backend (batches of 16)",
}


def render(t: Mapping[str, Any]) -> list[str]:
    w = t["workload"]
    same = t["identical_greedy_outputs_vs_vllm"]
    vllm_seconds = t["engines"]["vllm"]["median_seconds"]
    return [
        "## 1. Throughput: vLLM vs one transformers `generate` per prompt",
        "",
        f"Workload: {w['tasks']} tasks, {w['test_inputs']} test inputs x "
        f"{w['augmentations']} augmentations = {w['prompts']} prompts, {w['prompt_tokens']:,} "
        f"prompt tokens, max_tokens {w['max_tokens']:,} in all; greedy; median of "
        f"{t['reps']} interleaved runs. Identical greedy outputs vs vLLM: naive "
        f"{same['naive_hf']}/{w['prompts']}, batched {same['hf_batched']}/{w['prompts']}.",
        "",
        *table(
            ["engine", "seconds", "output tokens/s", "tasks/hour", "vLLM speed-up"],
            [
                (
                    ENGINE_NAMES[k],
                    e["median_seconds"],
                    e["output_tokens_per_s"],
                    e["tasks_per_hour"],
                    e["median_seconds"] / vllm_seconds,
                )
                for k, e in t["engines"].items()
            ],
        ),
    ]


SECTION = Section(
    "throughput",
    "vLLM vs one transformers `generate` per prompt vs airv's hf backend, greedy",
    measure,
    render,
)
