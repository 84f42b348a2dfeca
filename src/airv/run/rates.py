"""Rates: what a run's work costs on one machine, for pricing a run on paper (`airv plan
--simulate`).

A rates file is a JSON object: one number per field below (seconds, tokens per second, bytes,
tokens), `name` and `about` in words, and `sources`: for each number, where it comes from
(a measurement, a paper, an assumption). Shipped files live in airv/data/rates/NAME.json and
are found by name, as recipes are; any other path is read as a file. Every error names the
file.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from airv.core.errors import ConfigError
from airv.core.jsonio import json_kind, read_config_object

# The fields a rates file may give beside the numbers.
_TEXT_FIELDS = ("name", "about", "sources")


@dataclass(frozen=True)
class Rates:
    """What one GPU (one engine worker) does per second, and the fixed costs of a run."""

    prefill_tokens_per_second: float  # prompt tokens, batched as the run batches them
    decode_tokens_per_second: float  # answer tokens, greedy, batched
    engine_start_eager_seconds: float  # process start to a warm engine, no CUDA graphs
    engine_start_compiled_seconds: float  # ... with compiled graphs (CUDA graph capture)
    engine_stop_seconds: float = 0.0  # ending the engines (between waves, and at the end)
    # Test-time fine-tuning of one adapter: seconds per optimiser step at the run's sequence
    # lengths (follows --ttt-steps), else seconds per task (the whole adapter).
    ttt_seconds_per_step: float | None = None
    ttt_seconds_per_task: float | None = None
    # With seconds per step: each adapter's fixed seconds beside its steps (building its
    # sequences, saving it).
    ttt_seconds_per_adapter: float | None = None
    # With seconds per step: the prompt tokens of the task they were measured on (a test
    # input's, the mean); each task's steps are then priced in proportion to its own.
    ttt_step_tokens: float | None = None
    # Each training process's start in a stage (every wave has its own): forking it (the first
    # one waits for the fork server's imports), loading the model, before its first adapter.
    ttt_stage_start_seconds: float = 0.0
    # One adapter on disk, at `adapter_rank` (scaled linearly to the run's rank); a model
    # folder gives it exactly instead (airv.adapt.waves.adapter_bytes).
    adapter_bytes: int | None = None
    adapter_rank: int | None = None
    # Tokens of a grid in the model's format when no tokenizer is loaded: each cell, each
    # row (its line break), each grid's own markers in a prompt (turn tags); and the prompt's
    # closing markers, after the test input.
    tokens_per_cell: float = 1.0
    tokens_per_row: float = 0.0
    tokens_per_grid: float = 0.0
    tokens_per_prompt: float = 0.0
    # Depth-first search's seconds per answer token over greedy decoding's (the branches it
    # expands and the candidates it keeps).
    dfs_cost: float = 1.0
    # A scoring request (prefill only, the candidate's log-probabilities) per token, over a
    # prompt token's prefill.
    score_cost: float = 1.0
    # The share of an answer's token allowance the model's answers use: 1 prices each at its
    # allowance, an upper bound (a trained model stops at EOS sooner).
    answer_fill: float = 1.0
    # A batch that serves test-time fine-tuned adapters: each of its requests' seconds over the
    # base model's with one adapter in the batch, and what each further adapter adds. The base
    # model's requests in it pay too, as on vLLM-CPU, which runs the whole batch through LoRA
    # (a GPU's kernels skip them: there this is an upper bound).
    lora_cost: float = 1.0
    lora_cost_per_adapter: float = 0.0
    # The requests one engine runs at once (vLLM's max_num_seqs, or what its KV cache holds):
    # they share its rate, and those in flight when the time is up are lost.
    batch_requests: float = 1.0
    name: str = ""
    about: str = ""
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _TEXT_FIELDS or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{f.name} must be a number, not {json_kind(value)}")
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{f.name} must be a finite number >= 0, got {value}")
        for name in ("prefill_tokens_per_second", "decode_tokens_per_second", "dfs_cost",
                     "score_cost", "tokens_per_cell", "answer_fill", "lora_cost",
                     "batch_requests"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if (self.adapter_bytes is None) != (self.adapter_rank is None):
            raise ConfigError("adapter_bytes and adapter_rank go together: give both or neither")
        if self.adapter_rank is not None and self.adapter_rank < 1:
            raise ConfigError(f"adapter_rank must be >= 1, got {self.adapter_rank}")
        unknown = set(self.sources) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"sources name unknown fields: {', '.join(sorted(unknown))}")

    def engine_start_seconds(self, eager: bool) -> float:
        return self.engine_start_eager_seconds if eager else self.engine_start_compiled_seconds

    def ttt_seconds(self, steps: int, tokens: float | None = None) -> float | None:
        """Training seconds of one adapter of `steps` steps, on a task of `tokens` prompt
        tokens (a step's sequences are as long as its prompts); None: the file does not say."""
        if self.ttt_seconds_per_step is not None:
            scale = 1.0
            if tokens and self.ttt_step_tokens:
                scale = tokens / self.ttt_step_tokens
            step = self.ttt_seconds_per_step * scale
            return step * steps + (self.ttt_seconds_per_adapter or 0.0)
        return self.ttt_seconds_per_task

    def adapter_size(self, rank: int) -> int | None:
        """One adapter's bytes at `rank`: LoRA's parameters grow with the rank."""
        if self.adapter_bytes is None or self.adapter_rank is None:
            return None
        return math.ceil(self.adapter_bytes * rank / self.adapter_rank)

    def to_json(self) -> dict[str, Any]:
        """The file's form: `from_json` reads it back equal."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Rates:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown field(s): {', '.join(sorted(unknown))}")
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [n for n in required if n not in data]
        if missing:
            raise ConfigError(f"missing field(s): {', '.join(missing)}")
        for key in ("name", "about"):
            if not isinstance(data.get(key, ""), str):
                raise ConfigError(f"{key} must be a string")
        sources = data.get("sources", {})
        if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
            raise ConfigError("sources must be an object of strings, one per field")
        values: dict[str, Any] = dict(data)
        if isinstance(values.get("adapter_bytes"), float) and values["adapter_bytes"].is_integer():
            values["adapter_bytes"] = int(values["adapter_bytes"])
        for key in ("adapter_bytes", "adapter_rank"):
            if values.get(key) is not None and not isinstance(values[key], int):
                raise ConfigError(f"{key} must be a whole number, not {json_kind(values[key])}")
        return cls(**values)


def _files() -> Any:
    return resources.files("airv") / "data" / "rates"


def rates_names() -> list[str]:
    return sorted(
        f.name.removesuffix(".json") for f in _files().iterdir() if f.name.endswith(".json")
    )


def load_rates(spec: str | Path) -> Rates:
    """A rates file by path, or a shipped one by name (`nvarc-4b-l4`)."""
    path: Any = Path(spec)
    if not path.is_file():
        shipped = _files() / f"{spec}.json"
        if not shipped.is_file():
            raise ConfigError(
                f"no rates file {str(spec)!r}: not a file, nor a shipped name "
                f"({', '.join(rates_names())})"
            )
        path = Path(str(shipped))
    data = read_config_object(path, "rates file")
    try:
        return Rates.from_json(data)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{path}: rates file: {e}") from None
