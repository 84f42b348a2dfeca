"""Training one LoRA adapter with peft: the loop, and the adapter written where vLLM (and the
transformers engine) load it from.

The base model is loaded once per process; each adapter is added, trained, saved and removed
again (`unload`), so per-task training does not reload the model.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airv.adapt.config import TTTConfig
from airv.adapt.data import IGNORE, Example, batches

ADAPTER_CONFIG_FILE = "adapter_config.json"
# LoRA weights of the embeddings and the LM head (their own learning rate, if given).
_EMBEDDING = re.compile(
    r"(embed_tokens|lm_head)\."
)  # what peft writes; its presence marks an adapter


@dataclass(frozen=True, slots=True)
class TrainResult:
    """One adapter's training: what the run summary and ttt.jsonl report."""

    name: str  # a task id, or "joint"
    path: str | None  # the adapter directory; None when training failed or had no data
    steps: int
    final_loss: float | None  # mean loss of the last few steps
    seconds: float
    examples: int
    error: str | None = None
    rank: int | None = None
    target_modules: str | None = None
    # The served check (README > Test-time fine-tuning): one training sequence's answer
    # log-probability under the adapter as saved (dtype included) and under the base model.
    probe_prompt: tuple[int, ...] = ()
    probe_answer: tuple[int, ...] = ()
    adapted_logprob: float | None = None
    base_logprob: float | None = None
    served: str | None = None  # "verified by <engine>", or why the task kept the base model


def load_base(model_dir: Path, device: str | None, threads: int | None = None) -> tuple[Any, Any]:
    """The model for training (float32 on CPU; bfloat16 where the GPU has it, else float16)
    and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from airv.engines.model import load_tokenizer

    if threads:
        torch.set_num_threads(threads)
    if device is None or not torch.cuda.is_available():
        dtype, target = torch.float32, "cpu"
    else:
        bf16 = torch.cuda.get_device_capability(0) >= (8, 0)
        dtype, target = (torch.bfloat16 if bf16 else torch.float16), "cuda"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(target)
    tokenizer = load_tokenizer(model_dir)
    return model, tokenizer


def _collate(batch: Sequence[Example], pad_id: int, device: Any) -> dict[str, Any]:
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = [list(e.input_ids) + [pad_id] * (width - len(e.input_ids)) for e in batch]
    mask = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in batch]
    labels = [e.labels + [IGNORE] * (width - len(e.input_ids)) for e in batch]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "attention_mask": torch.tensor(mask, device=device),
        "labels": torch.tensor(labels, device=device),
    }


def train_adapter(
    model: Any,
    tokenizer: Any,
    name: str,
    examples: Sequence[Example],
    cfg: TTTConfig,
    out_dir: Path,
    *,
    deadline: float,
) -> tuple[Any, TrainResult]:
    """Train one adapter on `examples` until cfg.steps or `deadline` (time.monotonic()),
    save it to `out_dir`, and return the base model (adapter removed) and the result. If it
    raises (the adapter cannot be written, memory runs out), `model` is the base model again
    all the same."""
    import torch
    from peft import LoraConfig, get_peft_model

    t0 = time.monotonic()
    if not examples:
        return model, TrainResult(name, None, 0, None, 0.0, 0, "no training sequences")
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        target_modules=cfg.peft_targets(),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        use_rslora=cfg.rslora,
    )
    torch.manual_seed(cfg.seed)
    dtype = next(model.parameters()).dtype  # the model's: what the adapter is saved in
    peft_model = get_peft_model(model, lora)
    try:
        peft_model.train()
        trained = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
        params = [p for _, p in trained]
        embedding = [p for n, p in trained if _EMBEDDING.search(n)]
        groups: list[dict[str, Any]] = [{"params": params}]
        if embedding and cfg.embedding_learning_rate is not None:
            ids = {id(p) for p in embedding}
            groups = [
                {"params": [p for p in params if id(p) not in ids]},
                {"params": embedding, "lr": cfg.embedding_learning_rate},
            ]
        opt = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=0.0)
        # Warm-up, then down to zero over the planned steps: the last steps settle the adapter.
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cfg.lr_factor)
        pad = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        device = next(peft_model.parameters()).device
        losses: list[float] = []
        steps = 0
        for batch in batches(examples, cfg.batch_size, cfg.steps, cfg.seed):
            if time.monotonic() >= deadline:
                break
            loss = peft_model(**_collate(batch, pad, device)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            steps += 1
        path: str | None = None
        error = None
        tail = losses[-max(1, min(10, len(losses))) :]
        final = sum(tail) / len(tail) if losses else None
        probe: dict[str, Any] = {}
        if steps and final is not None and math.isfinite(final):
            out_dir.mkdir(parents=True, exist_ok=True)
            saved = _in_dtype(peft_model, dtype)
            # LoRA factors only, never whole embedding matrices (peft's default with embeddings
            # among the targets): vLLM serves no modules_to_save, and they would weigh gigabytes.
            peft_model.save_pretrained(str(out_dir), state_dict=saved, save_embedding_layers=False)
            path = str(out_dir)
            # The weights as saved (rounded to the model's dtype) score the probe, as an engine
            # that loads the file will.
            peft_model.load_state_dict(saved, strict=False)
            probe = probe_logprobs(peft_model, examples[0])
        else:
            error = "no step before the deadline" if not steps else f"loss is {final}"
    finally:
        # The LoRA layers sit in `model` itself: taken out again whether training ended or
        # raised, so the caller holds the base model and the next adapter starts from it.
        base = peft_model.unload()
    result = TrainResult(
        name,
        path,
        steps,
        final,
        time.monotonic() - t0,
        len(examples),
        error,
        rank=cfg.rank,
        target_modules=cfg.target_modules,
        **probe,
    )
    return base, result


def probe_logprobs(peft_model: Any, example: Example) -> dict[str, Any]:
    """One training sequence's answer log-probability with the adapter and without it: what
    an engine serving the adapter must reproduce (the served check)."""
    import torch

    ids = torch.tensor([list(example.input_ids)], device=next(peft_model.parameters()).device)
    n = example.n_prompt

    def answer_logprob() -> float:
        logits = peft_model(input_ids=ids).logits[0, n - 1 : -1].float()
        picked = logits.log_softmax(-1).gather(1, ids[0, n:, None])
        return float(picked.sum())

    peft_model.eval()
    with torch.no_grad():
        adapted = answer_logprob()
        with peft_model.disable_adapter():
            base = answer_logprob()
    return {
        "probe_prompt": tuple(example.input_ids[:n]),
        "probe_answer": tuple(example.input_ids[n:]),
        "adapted_logprob": adapted,
        "base_logprob": base,
    }


def _in_dtype(model: Any, dtype: Any) -> dict[str, Any]:
    """The adapter's own (trained) weights in `dtype`, by their state-dict names: what peft
    saves, and what is loaded back, without copying the base model's weights each time. peft
    trains LoRA weights in float32 (autocast) and would save them so: twice the disk of a
    bfloat16 model's adapter."""
    return {k: v.detach().to(dtype) for k, v in model.named_parameters() if v.requires_grad}


# What peft puts around a module's name in an adapter's weights.
_PEFT_PREFIX = "base_model.model."
_LORA_SUFFIXES = (
    ".lora_A.weight",
    ".lora_B.weight",
    ".lora_embedding_A",
    ".lora_embedding_B",
    ".lora_magnitude_vector.weight",  # DoRA
    ".lora_magnitude_vector",
)


def adapter_modules(keys: Sequence[str]) -> set[str]:
    """The model modules an adapter's weights apply to: `base_model.model.X.lora_A.weight` ->
    `X`."""
    out = set()
    for key in keys:
        name = key.removeprefix(_PEFT_PREFIX)
        for suffix in _LORA_SUFFIXES:
            if name.endswith(suffix):
                out.add(name[: -len(suffix)])
                break
        else:
            out.add(name)
    return out


def check_adapter(path: Path, max_rank: int, model_weights: set[str] | None = None) -> str | None:
    """Why an adapter directory cannot be served (a missing or unreadable file, a rank above
    the engine's, weights for modules the model does not have), or None. Checked before the
    engine starts: a bad adapter must cost its own task the adapter, not fail the batch it
    would ride in. Module names matter twice: vLLM 0.32 fails its whole engine on an adapter
    whose modules it does not know (every restart again, as the request is retried), and
    releases before it served the base model unchanged."""
    import orjson
    from safetensors import safe_open

    config = path / ADAPTER_CONFIG_FILE
    weights = path / "adapter_model.safetensors"
    try:
        rank = orjson.loads(config.read_bytes()).get("r")
        with safe_open(str(weights), framework="numpy") as f:
            keys = list(f.keys())
            if not keys:
                return f"{weights.name} holds no tensors"
    except (OSError, ValueError, AttributeError) as exc:
        return f"cannot read the adapter: {type(exc).__name__}: {exc}"
    except Exception as exc:  # safetensors raises its own error types on a damaged file
        return f"cannot read the adapter: {type(exc).__name__}: {exc}"
    if not isinstance(rank, int) or not 1 <= rank <= max_rank:
        return f"rank {rank!r} is not within 1..{max_rank}"
    if model_weights is not None:
        known = {w.removesuffix(".weight") for w in model_weights}
        if "model.embed_tokens" in known:
            known.add("lm_head")  # tied to the embeddings: no weight of its own on disk
        unknown = sorted(adapter_modules(keys) - known)
        if unknown:
            return (
                f"its weights name {len(unknown)} module(s) the model does not have, e.g. "
                f"{unknown[0]!r}: it was trained for another model"
            )
    return None
