"""The model directory and the devices at hand: config.json read in one place, the one
tokenizer loader, GPU probing.

Every question about a checkpoint's own settings (its declared dtype, its context limit,
whether a directory is a model at all) is answered from `read_model_config`; every component
that turns text into token ids (the pipeline, `airv prompt`, `airv plan`, test-time
fine-tuning, the engines) gets its tokenizer from `load_tokenizer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airv.core.errors import ConfigError, InputError
from airv.core.jsonio import read_json_object
from airv.engines.config import EngineConfig

MODEL_CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"


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


def weight_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """A checkpoint's weights by name, with their shapes (its safetensors headers only: no
    tensor is read)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="numpy") as weights:
            for name in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                shapes[name] = tuple(weights.get_slice(name).get_shape())
    return shapes


def weight_names(model_dir: Path) -> set[str]:
    """The names of a checkpoint's weights."""
    return set(weight_shapes(model_dir))


def load_tokenizer(model_dir: Path | None) -> Any:
    """The checkpoint's tokenizer, encoding exactly as its own tokenizer.json does.

    Where tokenizer.json exists it is read by the `tokenizers` library through transformers'
    generic fast class, with tokenizer_config.json's special tokens: a model-specific class
    (AutoTokenizer) may rebuild the vocabulary its own way, and for a reduced-vocabulary
    checkpoint that loses tokens (NVARC's Qwen3 with 16 tokens, loaded as Qwen2Tokenizer by
    transformers 5, drops `user` and `assistant`). Without the file, AutoTokenizer decides.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if model_dir is None:
        raise ConfigError("no model directory given: the tokenizer comes from it")
    model_dir = Path(model_dir)
    if not (model_dir / TOKENIZER_FILE).is_file():
        return AutoTokenizer.from_pretrained(model_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    if not tokenizer.chat_template:  # a template kept where only the model's own class looks
        try:
            auto = AutoTokenizer.from_pretrained(model_dir)
        except (ValueError, OSError, ImportError):  # a class this release does not have
            return tokenizer
        if auto.chat_template:
            tokenizer.chat_template = auto.chat_template
    return tokenizer


def check_round_trip(model_dir: Path | None, tokenizer: Any, text: str) -> None:
    """Encode `text` (a probe task's prompt and answer) and decode it back: a tokenizer that
    loses or alters anything would show the model prompts it was never trained on. A mismatch
    is a usage error naming the model folder and the first differing character."""
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
        back = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    except Exception as exc:  # the tokenizers library raises its own types
        raise ConfigError(
            f"{model_dir}: the tokenizer cannot encode a probe prompt: {type(exc).__name__}: {exc}"
        ) from exc
    if back == text:
        return
    at = next((i for i, (a, b) in enumerate(zip(text, back, strict=False)) if a != b), None)
    at = min(len(text), len(back)) if at is None else at
    raise ConfigError(
        f"{model_dir}: the tokenizer does not give back the prompt it encoded: from character "
        f"{at}, {text[at : at + 20]!r} came back as {back[at : at + 20]!r}. The model would "
        "see prompts it was never trained on; check its tokenizer files"
    )
