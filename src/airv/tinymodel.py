"""Build a tiny Qwen2-architecture causal LM with a character-level tokenizer, locally.

Random weights, no downloads: it exists so that the real engines (vLLM on CPU, transformers)
can be exercised end to end in tests, benchmarks and `make submit-local` without a GPU or a hub.
The answers it gives are noise; the code paths it drives are the real ones.
"""

from __future__ import annotations

import string
from pathlib import Path

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
# Every character airv's default prompt and formats can produce, one token each: digits (one
# token per cell), the labels and separators of the templates, plus enough letters and
# punctuation that a custom template still tokenises without <unk>.
CHARACTERS = string.digits + "\n " + string.ascii_letters + "|x:,.-_`[]()#>"


def build_tiny_model(
    out_dir: Path | str,
    *,
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 2,
    head_dim: int = 64,
    max_position_embeddings: int = 8192,
) -> Path:
    """Write a tiny random Qwen2 model + tokenizer to `out_dir` (Hugging Face layout) and return it.

    head_dim 64: vLLM's CPU attention kernels reject some smaller head sizes (16 fails).
    """
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *CHARACTERS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Every character is its own pre-token, so the WordLevel model maps characters to ids.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )
    fast.save_pretrained(out)

    n_heads = max(1, hidden_size // head_dim)
    config = Qwen2Config(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config.pad_token_id = vocab["<pad>"]
    model.save_pretrained(out, safe_serialization=True)
    return out
