"""A toy stand-in for NVARC's checkpoint (Qwen3-4B, its vocabulary cut to 16 tokens).

The tokenizer files have the shape NVARC ships (1ytic/NVARC, `ARChitects/qwen3_configs/`,
described in the project's field notes; written here from that description, not copied): a
WordLevel `tokenizer.json` over the ten digits, the newline, `user` and `assistant`, with
`<|endoftext|>` (pad, unk), `<|im_start|>` and `<|im_end|>` (EOS) as added special tokens; a
`vocab.json` without merges; `tokenizer_class: Qwen2Tokenizer` in `tokenizer_config.json`.
That last line is the trap: transformers 5's Qwen2Tokenizer rebuilds the vocabulary from
vocab.json as byte-level BPE and, with no merges, can no longer produce `user` or `assistant`.
The weights are random (a Qwen3 of toy size): the model exists to drive the real code paths.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from airv.demo.tinymodel import make_bigram

# The Qwen2/Qwen3 pre-tokenizer's split pattern (one digit per piece, newlines apart).
_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
WORDS = (*"0123456789", "Ċ", "user", "assistant")  # "Ċ": the newline, byte-level
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def build_nvarc_tokenizer(out_dir: Path | str, *, drop: Iterable[str] = ()) -> Path:
    """Write NVARC-shaped tokenizer files to `out_dir`. `drop`: words left out of the
    vocabulary (they then read as `<|endoftext|>`: a tokenizer that cannot give back its
    prompt, for tests of the round-trip check)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers import processors as post

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    words = [w for w in WORDS if w not in set(drop)]
    if len(words) < len(WORDS):  # the dropped words read as <|endoftext|>, in the vocabulary
        words.append(SPECIALS[0])
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIALS[0]))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    plain = {"add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tok.post_processor = post.ByteLevel(**plain)
    tok.decoder = decoders.ByteLevel()
    specials = [t for t in SPECIALS if t not in vocab]
    tok.add_special_tokens(specials)
    tok.save(str(out / "tokenizer.json"))
    (out / "vocab.json").write_text(json.dumps(vocab))
    special = {s: tok.token_to_id(s) for s in SPECIALS}
    (out / "added_tokens.json").write_text(json.dumps(special, indent=2))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_bos_token": False,
                "add_prefix_space": False,
                "added_tokens_decoder": {
                    str(i): {"content": s, "special": True, "normalized": False}
                    for s, i in special.items()
                },
                "additional_special_tokens": list(SPECIALS[1:]),
                "bos_token": None,
                "clean_up_tokenization_spaces": False,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "model_max_length": 262144,
                "tokenizer_class": "Qwen2Tokenizer",
            },
            indent=2,
        )
    )
    return out


def build_nvarc_model(
    out_dir: Path | str,
    *,
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 2,
    head_dim: int = 64,
    drop: Iterable[str] = (),
    bigram: Mapping[str, str] | None = None,
    recipe: str | None = None,
) -> Path:
    """A random-weight Qwen3 of toy size on the NVARC-shaped tokenizer, in Hugging Face layout,
    with the nvarc prompt format (or `recipe`) named in its airv.json. With `bigram` (rules in
    the tokenizer's own token strings: the newline is "Ċ"), the weights make it the
    deterministic bigram machine of airv.demo.tinymodel, ending at <|im_end|>."""
    import torch
    from tokenizers import Tokenizer
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = build_nvarc_tokenizer(out_dir, drop=drop)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    n_heads = max(1, hidden_size // head_dim)
    config = Qwen3Config(
        vocab_size=tok.get_vocab_size(with_added_tokens=True),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        head_dim=head_dim,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tok.token_to_id("<|im_end|>"),
        pad_token_id=tok.token_to_id("<|endoftext|>"),
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    if bigram is not None:
        vocab = tok.get_vocab(with_added_tokens=True)
        make_bigram(model, vocab, bigram, hidden_size, eos="<|im_end|>")
    model.save_pretrained(out)
    named = {"recipe": recipe} if recipe else {"preset": "nvarc"}
    (out / "airv.json").write_text(json.dumps(named))
    return out
