"""A task as token ids, under the model's prompt format, fitted to the context length.

The task given here is already augmented. The text comes from `airv.core.prompt_format`
(the template, the grid encoding, the answer); this module adds the tokenizer: the chat
wrapper of the `default` preset, token ids, the answer's token allowance, and `fit_prompt`,
the one entry point the pipeline needs: it renders the prompt, estimates how many tokens the
answer may take, and drops train pairs (largest first) until prompt + answer fit in the
engine's `max_model_len`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from airv.core.errors import ConfigError
from airv.core.formats import encode_grid
from airv.core.prompt_format import (
    OUTPUT_MARK,
    PROBE_ANSWER,
    PROBE_TASK,
    PromptFormat,
    answer_text,
    query_input,
    render_text,
    with_tokenizer_eos,
)
from airv.core.tasks import Pair, Task
from airv.core.types import MAX_SIDE, Grid, TaskId, shape


class Tokenizer(Protocol):
    """The subset of a Hugging Face tokenizer that airv uses."""

    @property
    def chat_template(self) -> str | None: ...

    @property
    def eos_token_id(self) -> int | None: ...

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]: ...

    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        *,
        tokenize: bool,
        add_generation_prompt: bool,
    ) -> str: ...


@dataclass(frozen=True, slots=True)
class FittedPrompt:
    text: str
    token_ids: list[int]  # what the engine gets (vLLM TokensPrompt), so it never re-tokenises
    n_train: int
    max_answer_tokens: int  # includes EOS: use as the engine's max_tokens
    dropped: tuple[int, ...]  # indices into task.train, in the order they were dropped


@dataclass(frozen=True, slots=True)
class PromptTooLong:
    """Even one train pair does not fit: the caller falls back (no exception, it is counted)."""

    task_id: TaskId
    test_index: int
    prompt_tokens: int  # with only the smallest train pair kept
    needed: int  # prompt_tokens + max_answer_tokens
    max_model_len: int


def answer_token_ids(grid: Grid, fmt: PromptFormat, tokenizer: Tokenizer) -> list[int]:
    """The token ids the model is trained to emit for `grid`: its answer text, then EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no EOS token: an answer could never end")
    return [*tokenizer.encode(answer_text(grid, fmt), add_special_tokens=False), eos]


def for_tokenizer(fmt: PromptFormat, tokenizer: Tokenizer) -> PromptFormat:
    """The format as the model sees it: `{{ eos }}` is the tokenizer's own EOS text."""
    return with_tokenizer_eos(fmt, getattr(tokenizer, "eos_token", None))


def uses_chat_template(fmt: PromptFormat, tokenizer: Tokenizer | None) -> bool:
    """The `default` preset's rule: wrap the text in the tokenizer's chat template, if any."""
    return fmt.chat and tokenizer is not None and bool(tokenizer.chat_template)


def render_prompt(
    task: Task,
    test_index: int,
    fmt: PromptFormat,
    tokenizer: Tokenizer | None,
    *,
    keep: Sequence[int] | None = None,
    mark_outputs: bool = False,
) -> str:
    """The prompt text: the template rendered, then (formats with `chat`) wrapped in the
    tokenizer's chat template if it has one (optional system message, the text as the user
    message, generation prompt added). `mark_outputs`: as `render_text`."""
    text = render_text(fmt, task, test_index, keep=keep, mark_outputs=mark_outputs)
    if tokenizer is None or not uses_chat_template(fmt, tokenizer):
        return text
    system = fmt.layout.system
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def probe_text(fmt: PromptFormat, tokenizer: Tokenizer) -> str:
    """A small task's prompt as the model is sent it (chat template included), then its
    answer and EOS: the text a tokenizer must give back whole (engines.model's check)."""
    prompt = render_prompt(PROBE_TASK, 0, fmt, tokenizer)
    return prompt + answer_text(PROBE_ANSWER, fmt) + fmt.eos


def prompt_token_ids(text: str, fmt: PromptFormat, tokenizer: Tokenizer) -> list[int]:
    """Token ids of a rendered prompt. Special tokens (a BOS) are added as the format says;
    by default only to prompts no chat template wrapped (a chat template writes its own)."""
    return list(tokenizer.encode(text, add_special_tokens=adds_special_tokens(fmt, tokenizer)))


def adds_special_tokens(fmt: PromptFormat, tokenizer: Tokenizer) -> bool:
    """Whether tokenising a prompt adds the tokenizer's special tokens: as the format says, by
    default only when no chat template wrapped the text (a chat template writes its own)."""
    if fmt.add_special_tokens is not None:
        return fmt.add_special_tokens
    return not uses_chat_template(fmt, tokenizer)


def answer_shape(task: Task, test_index: int) -> tuple[int, int]:
    """The answer's expected shape: the largest train output's height and width, each scaled
    by how much the test input outgrows every train input, at most 30 (30x30 without train
    pairs)."""
    if not task.train:
        return MAX_SIDE, MAX_SIDE
    out_rows = max(len(p.output) for p in task.train)
    out_cols = max(len(p.output[0]) for p in task.train)
    in_rows = max(len(p.input) for p in task.train)
    in_cols = max(len(p.input[0]) for p in task.train)
    test_rows, test_cols = shape(query_input(task, test_index))
    rows = min(MAX_SIDE, math.ceil(out_rows * max(1.0, test_rows / in_rows)))
    cols = min(MAX_SIDE, math.ceil(out_cols * max(1.0, test_cols / in_cols)))
    return rows, cols


def drop_order(task: Task) -> list[int]:
    """The order train pairs are dropped in to fit a context: largest first (cells of input +
    output; ties: the later pair first)."""
    return sorted(range(len(task.train)), key=lambda i: (-_cells(task.train[i]), -i))


def estimate_answer_tokens(
    task: Task, test_index: int, fmt: PromptFormat, tokenizer: Tokenizer
) -> int:
    """Tokens to allow for the answer to test input `test_index`, EOS included.

    Rule: take the largest train output height and width (separately); if the test input is
    taller (wider) than every train input, scale the height (width) by that ratio, rounding
    up, at most 30. The estimate is the larger of the tokens of a probe grid of that shape
    and the tokens of the longest train output answer, plus EOS and a margin of 10% + 4
    (tokenisers may merge digits differently in other grids). It never exceeds the tokens of
    a 30x30 worst-case answer + EOS, which is also the answer when there are no train pairs.
    """
    cap = worst_case_answer_tokens(fmt, tokenizer)
    if not task.train:
        return cap
    rows, cols = answer_shape(task, test_index)
    longest = max(_answer_tokens(p.output, fmt, tokenizer) for p in task.train)
    probe = max(_answer_tokens(g, fmt, tokenizer) for g in _probe_grids(rows, cols))
    estimate = max(longest, probe) + 1  # + EOS
    return min(cap, estimate + estimate // 10 + 4)


def worst_case_answer_tokens(fmt: PromptFormat, tokenizer: Tokenizer) -> int:
    """Tokens of the longest 30x30 probe answer under `fmt`, + EOS: the most ever allowed."""
    return _worst_case(fmt, cast(Hashable, tokenizer))


@functools.lru_cache(maxsize=16)
def _worst_case(fmt: PromptFormat, tokenizer: Any) -> int:
    # Cached: it is asked for every prompt, and tokenising two 30x30 grids each time was the
    # largest non-model cost per prompt.
    return max(_answer_tokens(g, fmt, tokenizer) for g in _probe_grids(MAX_SIDE, MAX_SIDE)) + 1


def fit_prompt(
    task: Task,
    test_index: int,
    fmt: PromptFormat,
    tokenizer: Tokenizer,
    max_model_len: int,
) -> FittedPrompt | PromptTooLong:
    """Render the prompt for test input `test_index`, dropping train pairs until
    prompt tokens + estimated answer tokens <= max_model_len.

    Pairs are dropped largest first (cells of input + output; ties: the later pair first)
    and at least one is kept; kept pairs stay in their order. Cost: one render and
    tokenisation per dropped pair, so only long tasks pay more than one.
    """
    if max_model_len < 1:
        raise ValueError(f"max_model_len must be positive, got {max_model_len}")
    max_answer = estimate_answer_tokens(task, test_index, fmt, tokenizer)
    order = drop_order(task)
    dropped: list[int] = []
    while True:
        keep = sorted(set(range(len(task.train))).difference(dropped))
        text = render_prompt(task, test_index, fmt, tokenizer, keep=keep)
        ids = prompt_token_ids(text, fmt, tokenizer)
        if len(ids) + max_answer <= max_model_len:
            return FittedPrompt(
                text=text,
                token_ids=ids,
                n_train=len(keep),
                max_answer_tokens=max_answer,
                dropped=tuple(dropped),
            )
        if len(keep) <= 1:
            return PromptTooLong(
                task_id=task.id,
                test_index=test_index,
                prompt_tokens=len(ids),
                needed=len(ids) + max_answer,
                max_model_len=max_model_len,
            )
        dropped.append(order[len(dropped)])


def output_token_spans(
    task: Task, test_index: int, fmt: PromptFormat, tokenizer: Tokenizer, fitted: FittedPrompt
) -> list[tuple[int, int]]:
    """Where the kept train outputs lie in a fitted prompt's token ids: one [start, end) range
    per output, over every token that holds part of its grid text and the one token after it
    (the model learns where a grid stops there: a newline, or an end-of-turn token). What
    test-time fine-tuning puts loss on besides the answer (`--ttt-loss outputs`).

    The prompt is rendered once more with marks for the outputs, and the tokenizer's character
    offsets place them: any template and tokenizer, no layout assumed. A template that alters
    an output's text (a filter on it), or a tokenizer without offsets (no tokenizer.json),
    cannot be placed: a usage error."""
    dropped = set(fitted.dropped)
    kept = [i for i in range(len(task.train)) if i not in dropped]
    marked = render_prompt(task, test_index, fmt, tokenizer, keep=kept, mark_outputs=True)
    parts: list[str] = []
    chars: list[tuple[int, int]] = []
    at = end = 0
    for m in OUTPUT_MARK.finditer(marked):
        parts.append(marked[end : m.start()])
        at += m.start() - end
        out = encode_grid(task.train[kept[int(m.group(1))]].output, fmt.grid)
        parts.append(out)
        chars.append((at, at + len(out)))
        at += len(out)
        end = m.end()
    parts.append(marked[end:])
    if "".join(parts) != fitted.text or len(chars) != len(kept):
        raise ConfigError(
            f"prompt format {fmt.name!r}: its template does not write each train output "
            "exactly once as given, so the outputs' tokens cannot be found (use --ttt-loss "
            "answer)"
        )
    add = adds_special_tokens(fmt, tokenizer)
    try:
        encoded = cast(Any, tokenizer)(
            fitted.text, add_special_tokens=add, return_offsets_mapping=True
        )
    except NotImplementedError:  # a slow tokenizer: no tokenizer.json
        raise ConfigError(
            "the tokenizer gives no character offsets (the model has no tokenizer.json), so "
            "the outputs' tokens cannot be found (use --ttt-loss answer)"
        ) from None
    if list(encoded["input_ids"]) != list(fitted.token_ids):
        raise ConfigError("the tokenizer encodes the prompt differently with offsets")
    offsets = encoded["offset_mapping"]
    spans = []
    for start, stop in chars:
        inside = [t for t, (a, b) in enumerate(offsets) if a < stop and b > start]
        if not inside:
            raise ConfigError("the tokenizer's offsets place no token on a train output")
        spans.append((inside[0], min(len(offsets), inside[-1] + 2)))
    return spans


def _cells(pair: Pair) -> int:
    (ri, ci), (ro, co) = shape(pair.input), shape(pair.output)
    return ri * ci + ro * co


def _answer_tokens(grid: Grid, fmt: PromptFormat, tokenizer: Tokenizer) -> int:
    return len(tokenizer.encode(answer_text(grid, fmt), add_special_tokens=False))


def _probe_grids(rows: int, cols: int) -> tuple[Grid, Grid]:
    # Two irregular digit patterns: tokenisers that merge digit runs ("000") merge these
    # least, so they stand in for the longest answer of this shape.
    return (
        tuple(tuple((7 * r + 3 * c + r * c) % 10 for c in range(cols)) for r in range(rows)),
        tuple(tuple((r * r + 5 * c + c * c * 3) % 10 for c in range(cols)) for r in range(rows)),
    )
