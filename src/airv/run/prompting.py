"""A run's prompts: the model's tokenizer (loaded, and checked to round-trip the format's text,
once, when first needed), the run's format with the model's own EOS text, each augmented task's
prompt fitted to the context, and answers parsed and tokenized as that format writes them."""

from __future__ import annotations

from typing import Any

from airv.core.formats import Rejection
from airv.core.prompt_format import PromptFormat, parse_answer
from airv.core.prompts import (
    FittedPrompt,
    PromptTooLong,
    answer_token_ids,
    fit_prompt,
    for_tokenizer,
    probe_text,
)
from airv.core.tasks import Task
from airv.core.types import Grid
from airv.engines.model import check_round_trip, load_tokenizer
from airv.run.config import RunConfig


class Prompter:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self._tokenizer: Any = None
        self._format: PromptFormat | None = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            model = self.cfg.engine.model
            tokenizer = load_tokenizer(model)
            # Before any prompt is built: a tokenizer that loses tokens is a usage error.
            check_round_trip(
                model, tokenizer, probe_text(for_tokenizer(self.cfg.prompt, tokenizer), tokenizer)
            )
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def format(self) -> PromptFormat:
        """The run's format with the model's own EOS text (see `for_tokenizer`)."""
        if self._format is None:
            self._format = for_tokenizer(self.cfg.prompt, self.tokenizer)
        return self._format

    def fit(self, view: Task, test_index: int) -> FittedPrompt | PromptTooLong:
        """The prompt of one augmented task's test input, fitted to the context length."""
        return fit_prompt(
            view, test_index, self.format, self.tokenizer, self.cfg.engine.max_model_len
        )

    def answer_ids(self, grid: Grid) -> list[int]:
        return answer_token_ids(grid, self.format, self.tokenizer)

    def parse(self, text: str) -> Grid | Rejection:
        return parse_answer(text, self.format)
