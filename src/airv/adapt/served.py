"""Adapters proven served: an engine must score a probe as the trainer did.

vLLM can load an adapter and serve the base model unchanged: module names it does not match
are ignored without an error (reported on vLLM 0.28), and LoRA on embed_tokens/lm_head depends
on the release. So the trainer records one training sequence's answer log-probability under
the adapter as saved and under the base model (airv.adapt.lora), and before the adapter answers
anything the run has the engine score the same tokens with it. It is served when the engine's
value is within TOLERANCE of the adapter's effect of the trainer's:
|engine - trainer| <= max(TOLERANCE x |trainer - base|, FLOOR). Else the run checks it again
on the transformers engine (peft), which answers the task if it serves the adapter; else the
task keeps the base model, and the summary and ttt.jsonl say why. Adapters vLLM refuses
outright (`vllm_refuses`) go to the transformers engine without asking vLLM.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from airv.adapt.lora import ADAPTER_CONFIG_FILE, TrainResult
from airv.engines.base import ScoreRequest

TOLERANCE = 0.1  # of the adapter's effect on the probe (nats)
# An adapter that hardly moves the probe cannot be told from the base model, and does not need
# to be: differences below this many nats pass (float32 CPU engines agree to about 1e-4).
FLOOR = 0.01


def probe_request(result: TrainResult) -> ScoreRequest | None:
    """The engine request that checks `result`'s adapter; None for an adapter trained before
    probes were recorded (it is served unchecked)."""
    if result.path is None or result.adapted_logprob is None or not result.probe_answer:
        return None
    return ScoreRequest(result.probe_prompt, result.probe_answer, adapter=result.path)


def verdict(result: TrainResult, engine: str, score: float | None, error: str | None) -> str | None:
    """None when the engine served the adapter, else why not (for the summary)."""
    if error is not None:
        return f"{engine} failed the probe: {error}"
    assert result.adapted_logprob is not None and result.base_logprob is not None
    trainer, base = result.adapted_logprob, result.base_logprob
    if score is None:
        return f"{engine} returned no score for the probe"
    if abs(score - trainer) <= max(TOLERANCE * abs(trainer - base), FLOOR):
        return None
    return (
        f"{engine} scores the probe {score:.3f}, the trainer {trainer:.3f} with the adapter "
        f"and {base:.3f} without: the adapter is not what it serves"
    )


def vllm_refuses(path: Path) -> str | None:
    """Why vLLM would refuse the adapter at `path` outright, from its adapter_config.json
    (vLLM's PEFTHelper raises on these: asked, it would fail the request or its engine), or
    None."""
    try:
        config = orjson.loads((path / ADAPTER_CONFIG_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        return f"cannot read {ADAPTER_CONFIG_FILE}: {exc}"
    if config.get("use_dora"):
        return "vLLM serves no DoRA adapters"
    saved = [m for m in config.get("modules_to_save") or () if m not in ("classifier", "score")]
    if saved:
        return f"vLLM serves no modules_to_save ({', '.join(saved)})"
    return None
