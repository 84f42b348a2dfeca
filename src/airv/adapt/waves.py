"""Waves of adapters that fit the scratch disk.

Every adapter is trained before the engine serves it, and at a winner's size (NVARC's 4B with
its embeddings adapted: about 1 GB per task in bf16) 240 of them at once do not fit Kaggle's
disk. Under a scratch limit the run trains and answers in waves: the adapters of one wave fit
the limit together, they are deleted once their tasks are answered, and the next wave trains.

One adapter's size is estimated before any is trained, from the checkpoint's weight shapes
(safetensors headers: no tensor is read), the rank, the target modules and the dtype it is
saved in; once a wave is trained, the largest adapter measured replaces the estimate for the
waves after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from airv.adapt.config import TTTConfig, TTTMode

T = TypeVar("T")

# Bytes per adapter beyond its weights: adapter_config.json, the safetensors header, the
# tokenizer files peft may copy. Measured on the demo model's adapters: under 8 KiB.
ADAPTER_OVERHEAD = 64 * 1024
# peft's "all-linear" adapts every Linear but the output layer; embeddings are not Linear.
_NOT_LINEAR = ("embed_tokens", "lm_head", "wte", "wpe", "embed_in", "embed_out")


def lora_parameters(shapes: Mapping[str, tuple[int, ...]], ttt: TTTConfig) -> int:
    """Parameters of one LoRA adapter on a checkpoint whose weights have `shapes`: each
    adapted (out, in) weight gets A (rank x in) and B (out x rank)."""
    targets = ttt.peft_targets()
    rows: list[tuple[int, ...]] = []
    for name, shape in shapes.items():
        if len(shape) != 2 or not name.endswith(".weight"):
            continue
        module = name.removesuffix(".weight").rsplit(".", 1)[-1]
        if targets == "all-linear":
            if module not in _NOT_LINEAR:
                rows.append(shape)
        elif module in targets:
            rows.append(shape)
    tied = not any(n.endswith("lm_head.weight") for n in shapes)  # the head is the embeddings
    if targets != "all-linear" and "lm_head" in targets and tied:
        rows += [s for n, s in shapes.items() if n.endswith("embed_tokens.weight")]
    return sum(ttt.rank * (shape[0] + shape[1]) for shape in rows)


def adapter_bytes(shapes: Mapping[str, tuple[int, ...]], ttt: TTTConfig, dtype_bytes: int) -> int:
    """One adapter's estimated size on disk (saved in the model's dtype: `dtype_bytes`)."""
    return lora_parameters(shapes, ttt) * dtype_bytes + ADAPTER_OVERHEAD


def wave_size(per_adapter: int, limit: int | None, ttt: TTTConfig) -> int | None:
    """Adapters per wave under `limit` bytes (None: one wave of all); at least one, even where
    one does not fit: that one is tried, and a full disk costs only its own task."""
    if limit is None or ttt.mode is TTTMode.JOINT:
        return None
    return max(1, limit // max(1, per_adapter))


def waves(items: Sequence[T], size: int | None) -> list[list[T]]:
    """`items` cut into waves of `size` in their order (None: one wave)."""
    if size is None or not items:
        return [list(items)]
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
