"""Task -> prompt text (plain layout, then the model's own chat template), and the token budget.

The task given here is already augmented. `fit_prompt` is the one entry point the pipeline
needs: it renders the prompt, estimates how many tokens the answer may take, and drops train
pairs (largest first) until prompt + answer fit in the engine's `max_model_len`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from airv.core.errors import ConfigError, InputError
from airv.core.formats import (
    FormatSpec,
    checked_fields,
    encode_grid,
)
from airv.core.jsonio import read_config_object, read_json, write_json
from airv.core.tasks import Pair, Task
from airv.core.types import MAX_SIDE, Grid, TaskId, shape

# A file of this name in the model directory says which format and template the model was
# trained with: {"format": {...FormatSpec...}, "template": {...PromptTemplate...}}.
MODEL_PROMPT_FILE = "airv.json"


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """The plain-text layout of a prompt. JSON-serialisable, to ship next to a model.

    With train pairs p1..pn and test input t (grids written by `encode_grid`)::

        {preamble}{input_label}
        {p1.input}
        {output_label}
        {p1.output}
        {pair_sep}...{input_label}
        {t}
        {output_label}
        <- the prompt ends here, after the newline; the answer is `answer_text`, then EOS

    i.e. every pair is `{input_label}\\n{in}\\n{output_label}\\n{out}\\n` followed by
    `pair_sep`, and the test input is written the same way up to and including the output
    label's newline. `preamble` is written as is (end it with "\\n" if it is a line). With the
    defaults and the default FormatSpec, one 1x2 train pair and a 1x2 test input read::

        I
        01
        O
        10

        I
        11
        O

    `system` is the system message when the tokenizer has a chat template ("" = none); the
    whole plain text above is then the one user message.
    """

    preamble: str = ""
    input_label: str = "I"
    output_label: str = "O"
    pair_sep: str = "\n"
    system: str = ""

    def __post_init__(self) -> None:
        if not self.input_label or not self.output_label:
            raise ConfigError("prompt template: input_label and output_label must not be empty")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object, *, source: str = "prompt template") -> PromptTemplate:
        return cls(**checked_fields(cls, data, source=source))

    @classmethod
    def load(cls, path: Path | str) -> PromptTemplate:
        return cls.from_dict(read_json(path, "format file", error=ConfigError), source=str(path))

    def save(self, path: Path | str) -> None:
        write_json(path, self.to_dict(), indent=True)


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


def answer_text(grid: Grid, spec: FormatSpec) -> str:
    """What the model should generate for `grid`, before EOS: the bare encoding (no newline)."""
    return encode_grid(grid, spec)


def answer_token_ids(grid: Grid, spec: FormatSpec, tokenizer: Tokenizer) -> list[int]:
    """The token ids the model is trained to emit for `grid`: its answer text, then EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no EOS token: an answer could never end")
    return [*tokenizer.encode(answer_text(grid, spec), add_special_tokens=False), eos]


def uses_chat_template(tokenizer: Tokenizer | None) -> bool:
    return tokenizer is not None and bool(tokenizer.chat_template)


def render_plain(
    task: Task,
    test_index: int,
    spec: FormatSpec,
    template: PromptTemplate,
    *,
    keep: Sequence[int] | None = None,
) -> str:
    """The plain-text problem (see PromptTemplate) with the train pairs `keep` (all if None),
    written in their order in `task.train` whatever the order of `keep`."""
    test = _test_input(task, test_index)
    parts = [template.preamble]
    for i in _kept_indices(task, keep):
        pair = task.train[i]
        parts += [
            f"{template.input_label}\n{encode_grid(pair.input, spec)}\n",
            f"{template.output_label}\n{encode_grid(pair.output, spec)}\n",
            template.pair_sep,
        ]
    parts.append(f"{template.input_label}\n{encode_grid(test, spec)}\n{template.output_label}\n")
    return "".join(parts)


def render_prompt(
    task: Task,
    test_index: int,
    spec: FormatSpec,
    template: PromptTemplate,
    tokenizer: Tokenizer | None,
    *,
    keep: Sequence[int] | None = None,
) -> str:
    """The prompt text: the plain text, wrapped in the tokenizer's chat template if it has one
    (optional system message, the plain text as the user message, generation prompt added)."""
    plain = render_plain(task, test_index, spec, template, keep=keep)
    if tokenizer is None or not uses_chat_template(tokenizer):
        return plain
    messages = [{"role": "system", "content": template.system}] if template.system else []
    messages.append({"role": "user", "content": plain})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_token_ids(text: str, tokenizer: Tokenizer) -> list[int]:
    """Token ids of a rendered prompt. A chat template writes its own BOS, so special tokens
    are added only to plain prompts (as the tokenizer would in training)."""
    return list(tokenizer.encode(text, add_special_tokens=not uses_chat_template(tokenizer)))


def estimate_answer_tokens(
    task: Task, test_index: int, spec: FormatSpec, tokenizer: Tokenizer
) -> int:
    """Tokens to allow for the answer to test input `test_index`, EOS included.

    Rule: take the largest train output height and width (separately); if the test input is
    taller (wider) than every train input, scale the height (width) by that ratio, rounding
    up, at most 30. The estimate is the larger of the tokens of a probe grid of that shape
    and the tokens of the longest train output answer, plus EOS and a margin of 10% + 4
    (tokenisers may merge digits differently in other grids). It never exceeds the tokens of
    a 30x30 worst-case answer + EOS, which is also the answer when there are no train pairs.
    """
    test = _test_input(task, test_index)
    cap = worst_case_answer_tokens(spec, tokenizer)
    if not task.train:
        return cap
    out_rows = max(len(p.output) for p in task.train)
    out_cols = max(len(p.output[0]) for p in task.train)
    in_rows = max(len(p.input) for p in task.train)
    in_cols = max(len(p.input[0]) for p in task.train)
    test_rows, test_cols = shape(test)
    rows = min(MAX_SIDE, math.ceil(out_rows * max(1.0, test_rows / in_rows)))
    cols = min(MAX_SIDE, math.ceil(out_cols * max(1.0, test_cols / in_cols)))
    longest = max(_answer_tokens(p.output, spec, tokenizer) for p in task.train)
    probe = max(_answer_tokens(g, spec, tokenizer) for g in _probe_grids(rows, cols))
    estimate = max(longest, probe) + 1  # + EOS
    return min(cap, estimate + estimate // 10 + 4)


def worst_case_answer_tokens(spec: FormatSpec, tokenizer: Tokenizer) -> int:
    """Tokens of the longest 30x30 probe answer under `spec`, + EOS: the most ever allowed."""
    return _worst_case(spec, cast(Hashable, tokenizer))


@functools.lru_cache(maxsize=16)
def _worst_case(spec: FormatSpec, tokenizer: Any) -> int:
    # Cached: it is asked for every prompt, and tokenising two 30x30 grids each time was the
    # largest non-model cost per prompt.
    return max(_answer_tokens(g, spec, tokenizer) for g in _probe_grids(MAX_SIDE, MAX_SIDE)) + 1


def fit_prompt(
    task: Task,
    test_index: int,
    spec: FormatSpec,
    template: PromptTemplate,
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
    max_answer = estimate_answer_tokens(task, test_index, spec, tokenizer)
    drop_order = sorted(range(len(task.train)), key=lambda i: (-_cells(task.train[i]), -i))
    dropped: list[int] = []
    while True:
        keep = sorted(set(range(len(task.train))).difference(dropped))
        text = render_prompt(task, test_index, spec, template, tokenizer, keep=keep)
        ids = prompt_token_ids(text, tokenizer)
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
        dropped.append(drop_order[len(dropped)])


def _test_input(task: Task, test_index: int) -> Grid:
    if not 0 <= test_index < len(task.test):
        raise ValueError(
            f"task {task.id}: test index {test_index} out of range ({len(task.test)} test inputs)"
        )
    return task.test[test_index]


def _kept_indices(task: Task, keep: Sequence[int] | None) -> list[int]:
    if keep is None:
        return list(range(len(task.train)))
    kept = sorted(set(keep))
    if len(kept) != len(keep) or (kept and not 0 <= kept[0] <= kept[-1] < len(task.train)):
        raise ValueError(
            f"task {task.id}: train indices {list(keep)} are not distinct indices "
            f"into {len(task.train)} train pairs"
        )
    return kept


def _cells(pair: Pair) -> int:
    (ri, ci), (ro, co) = shape(pair.input), shape(pair.output)
    return ri * ci + ro * co


def _answer_tokens(grid: Grid, spec: FormatSpec, tokenizer: Tokenizer) -> int:
    return len(tokenizer.encode(answer_text(grid, spec), add_special_tokens=False))


def _probe_grids(rows: int, cols: int) -> tuple[Grid, Grid]:
    # Two irregular digit patterns: tokenisers that merge digit runs ("000") merge these
    # least, so they stand in for the longest answer of this shape.
    return (
        tuple(tuple((7 * r + 3 * c + r * c) % 10 for c in range(cols)) for r in range(rows)),
        tuple(tuple((r * r + 5 * c + c * c * 3) % 10 for c in range(cols)) for r in range(rows)),
    )


def load_prompt_files(
    model: Path | None, format_file: Path | None
) -> tuple[FormatSpec, PromptTemplate]:
    """Format and template: built-in defaults, overridden by the model's airv.json, then by
    --format."""
    spec, template = FormatSpec(), PromptTemplate()
    if format_file is not None and not format_file.exists():
        raise InputError("format file not found", path=format_file)
    model_file = None if model is None else model / MODEL_PROMPT_FILE
    for path in (model_file, format_file):
        if path is None or not path.exists():
            continue
        data = read_config_object(path, "format file")
        unknown = set(data) - {"format", "template"}
        if unknown:
            raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; use 'format', 'template'")
        if "format" in data:
            spec = FormatSpec.from_dict(data["format"], source=str(path))
        if "template" in data:
            template = PromptTemplate.from_dict(data["template"], source=str(path))
    return spec, template
