"""Build a tiny Qwen2-architecture causal LM with a character-level tokenizer, locally.

Random weights, no downloads: it exists so that the real engines (vLLM on CPU, transformers)
can be exercised end to end in tests, benchmarks and `make submit-local` without a GPU or a hub.
The answers it gives are noise; the code paths it drives are the real ones.
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
# Every character airv's default prompt and formats can produce, one token each: digits (one
# token per cell), the labels and separators of the templates, plus enough letters and
# punctuation that a custom template still tokenises without <unk>.
# New characters go at the end: the ids of the others stay as they were.
CHARACTERS = string.digits + "\n " + string.ascii_letters + "|:,.-_`[]()#>" + "<+/="


def build_tiny_model(
    out_dir: Path | str,
    *,
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 2,
    head_dim: int = 64,
    max_position_embeddings: int = 8192,
    bigram: Mapping[str, str | Mapping[str, float]] | None = None,
) -> Path:
    """Write a tiny Qwen2 model + tokenizer to `out_dir` (Hugging Face layout) and return it.

    With random weights (the default) its answers are noise. With `bigram`, the weights are set
    so that the model is a deterministic bigram machine: the next token depends only on the
    current one, `bigram[current]` if given, else end-of-sequence. E.g. {"\n": "1", "1": "2"}
    answers every prompt ending in a newline with "12" and EOS: a valid 1x2 grid, so the whole
    pipeline (parse, reverse, vote) runs on real answers through the real engines. A rule may
    instead give next-token probabilities, {"\n": {"1": 0.6, "2": 0.3, "</s>": 0.1}}: a model
    whose every sequence probability is known (for testing searches).

    head_dim 64: vLLM's CPU attention kernels reject some smaller head sizes (16 fails).
    """
    import torch
    from transformers import Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    fast = build_tokenizer(out, CHARACTERS)
    vocab = fast.get_vocab()
    config = qwen2_config(
        vocab,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_layers=num_layers,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=bigram is None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    if bigram is not None:

        def token(text: str) -> str:
            return _bytes_to_unicode()[ord(text)] if len(text) == 1 else text

        rules = {
            token(a): token(b) if isinstance(b, str) else {token(t): p for t, p in b.items()}
            for a, b in bigram.items()
        }
        make_bigram(model, vocab, rules, hidden_size)
    model.generation_config.pad_token_id = vocab["<pad>"]
    model.save_pretrained(out, safe_serialization=True)
    return out


def build_tokenizer(out_dir: Path | str, characters: str) -> Any:
    """Write a tokenizer with one token per character of `characters` (plus SPECIAL_TOKENS,
    ids 0-3) to `out_dir` and return it (a transformers PreTrainedTokenizerFast).

    Byte-level BPE with no merges: one token per character, as Qwen2's own tokenizer class
    expects (transformers maps model_type qwen2 to it and rebuilds the pre-tokenizer).
    Characters must be ASCII (one byte each).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if len(set(characters)) != len(characters) or not characters.isascii():
        raise ValueError(f"characters must be distinct ASCII characters: {characters!r}")
    byte_char = _bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in characters:
        vocab[byte_char[ord(ch)]] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )
    fast.save_pretrained(Path(out_dir))
    _portable_class(Path(out_dir))
    return fast


def _portable_class(out_dir: Path) -> None:
    """Name the generic fast class in tokenizer_config.json: transformers 5 writes its own
    `TokenizersBackend`, which transformers 4 (the Kaggle kernel's pin, and vLLM's own
    tokenizer loading there) cannot load."""
    import json

    path = out_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.pop("backend", None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2) + "\n")


def qwen2_config(
    vocab: Mapping[str, int],
    *,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    head_dim: int = 64,
    max_position_embeddings: int = 8192,
    tie_word_embeddings: bool = True,
) -> Any:
    """A float32 Qwen2Config for a tokenizer from `build_tokenizer` (its vocabulary is `vocab`);
    hidden_size // head_dim attention heads (at least one), as many key/value heads."""
    from transformers import Qwen2Config

    n_heads = max(1, hidden_size // head_dim)
    return Qwen2Config(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
        torch_dtype="float32",
    )


# A soft rule's logits: ln p + SOFT_LOGIT for its tokens, 0 for the rest of the vocabulary,
# whose probability is then below e**-40 each.
SOFT_LOGIT = 40.0


def make_bigram(
    model: Any,
    vocab: Mapping[str, int],
    rules: Mapping[str, str | Mapping[str, float]],
    hidden: int,
    eos: str = "</s>",
) -> None:
    """Set weights so that logits depend only on the current token.

    Attention and MLP outputs are zeroed, so the residual stream is the token's embedding, a
    one-hot vector; the final RMSNorm scales it to sqrt(hidden) and the untied lm_head maps it
    to the next token's logits: EOS by default (weight 1), the rule's target if any (weight 2),
    or for a soft rule ln p + SOFT_LOGIT per token (scaled by 1/sqrt(hidden)).
    """
    import torch

    if len(vocab) > hidden:
        raise ValueError(f"bigram model needs hidden_size >= vocabulary ({len(vocab)})")
    used = [
        c for cur, nxt in rules.items() for c in (cur, *([nxt] if isinstance(nxt, str) else nxt))
    ]
    unknown = [c for c in used if c not in vocab]
    if unknown:
        raise ValueError(f"bigram rules use tokens outside the vocabulary: {unknown}")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = torch.zeros(len(vocab), hidden)
        emb[torch.arange(len(vocab)), torch.arange(len(vocab))] = 1.0
        model.model.embed_tokens.weight.copy_(emb)
        model.model.norm.weight.fill_(1.0)
        head = torch.zeros(len(vocab), hidden)
        head[vocab[eos], : len(vocab)] = 1.0
        for cur, nxt in rules.items():
            if isinstance(nxt, str):
                head[vocab[nxt], vocab[cur]] = 2.0
                continue
            head[:, vocab[cur]] = 0.0
            for t, p in nxt.items():
                head[vocab[t], vocab[cur]] = (math.log(p) + SOFT_LOGIT) / math.sqrt(hidden)
        model.lm_head.weight.copy_(head)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table
