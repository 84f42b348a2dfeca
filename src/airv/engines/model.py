"""The model directory and the devices at hand: config.json read in one place, GPU probing.

Every question about a checkpoint's own settings (its declared dtype, its context limit,
whether a directory is a model at all) is answered from `read_model_config`.
"""

from __future__ import annotations

from pathlib import Path

from airv.core.errors import InputError
from airv.core.jsonio import read_json_object
from airv.engines.config import EngineConfig

MODEL_CONFIG_FILE = "config.json"


def read_model_config(model_dir: Path) -> dict[str, object]:
    """The checkpoint's config.json; InputError naming the file if it is missing or bad."""
    return read_json_object(Path(model_dir) / MODEL_CONFIG_FILE, "model config")


def is_model_dir(d: Path) -> bool:
    """A Hugging Face causal LM checkpoint: config.json with a model_type, weights, tokenizer."""
    try:
        config = read_model_config(d)
    except InputError:
        return False
    has_weights = any(d.glob("*.safetensors")) or any(d.glob("pytorch_model*.bin"))
    has_tokenizer = (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()
    return "model_type" in config and has_weights and has_tokenizer


def model_dtype(model_dir: Path) -> str | None:
    """The dtype a Hugging Face checkpoint declares in its config.json, if any."""
    config = read_model_config(model_dir)
    value = config.get("torch_dtype") or config.get("dtype")
    return str(value) if value else None


def default_max_model_len(model_dir: Path) -> int | None:
    """The default context length, lowered to the model's own limit when that is smaller
    (vLLM refuses a max_model_len beyond max_position_embeddings). None: keep the default."""
    try:
        limit = read_model_config(model_dir).get("max_position_embeddings")
    except InputError:
        return None
    default = EngineConfig().max_model_len
    return int(limit) if isinstance(limit, int) and 64 <= limit < default else None


def visible_gpus() -> int:
    """CUDA devices this process can see (0 on CPU or without torch)."""
    try:
        import torch

        return int(torch.cuda.device_count())
    except ImportError:
        return 0


def gpu_capabilities(n_gpus: int) -> list[tuple[int, int]]:
    """Compute capabilities of the first n_gpus visible CUDA devices (none on CPU)."""
    if n_gpus <= 0:
        return []
    import torch

    return [torch.cuda.get_device_capability(i) for i in range(n_gpus)]
