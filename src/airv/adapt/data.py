"""Training sequences for test-time fine-tuning, from a task's own train pairs.

Leave-one-out: under each augmented view of the task, every train pair in turn becomes the
test of a prompt made of the other pairs. The prompt is rendered and fitted to the context
exactly as the pipeline renders an inference prompt (`airv.core.prompts.fit_prompt`), and the
target is the held-out output's answer tokens and EOS (`answer_token_ids`), so the adapter
learns the very format it is asked in. The loss is on the answer, or (`Loss.OUTPUTS`) on every
output grid of the sequence: the train pairs' in the prompt too, placed by the renderer
(`airv.core.prompts.output_token_spans`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from airv.adapt.config import Loss
from airv.core.augment import Stream, ViewPolicy, plan_views
from airv.core.prompt_format import PromptFormat
from airv.core.prompts import (
    FittedPrompt,
    Tokenizer,
    answer_token_ids,
    fit_prompt,
    output_token_spans,
)
from airv.core.tasks import Task

IGNORE = -100  # the label of a token that carries no loss (transformers' convention)


@dataclass(frozen=True, slots=True)
class Example:
    """One training sequence: the prompt's ids, then the answer's ids and EOS."""

    task_id: str
    input_ids: tuple[int, ...]
    n_prompt: int  # the answer starts here; it always carries loss
    # [start, end) token ranges in the prompt that carry loss too (the train outputs)
    prompt_spans: tuple[tuple[int, int], ...] = ()

    @property
    def labels(self) -> list[int]:
        labels = [IGNORE] * self.n_prompt + list(self.input_ids[self.n_prompt :])
        for start, end in self.prompt_spans:
            labels[start:end] = self.input_ids[start:end]
        return labels


def leave_one_out(task: Task) -> list[Task]:
    """One task per train pair: the other pairs as train, that pair's input as the test.
    Tasks with fewer than two train pairs give none (a prompt needs one example)."""
    if len(task.train) < 2:
        return []
    return [
        Task(task.id, task.train[:i] + task.train[i + 1 :], (pair.input,))
        for i, pair in enumerate(task.train)
    ]


def task_examples(
    task: Task,
    fmt: PromptFormat,
    tokenizer: Tokenizer,
    *,
    views: int,
    policy: ViewPolicy,
    max_len: int,
    loss: Loss,
) -> list[Example]:
    """The training sequences of one task: `views` augmented views (seeded per task, their own
    stream) x leave-one-out over its train pairs, with loss as `loss` says. A sequence that
    cannot fit `max_len` even with one example pair is left out."""
    out: list[Example] = []
    for aug in plan_views(task, 0, views, policy, stream=Stream.FINETUNE):
        view = aug.apply_task(task)
        for held, sub in zip(view.train, leave_one_out(view), strict=False):
            fitted = fit_prompt(sub, 0, fmt, tokenizer, max_len)
            if not isinstance(fitted, FittedPrompt):
                continue
            answer = answer_token_ids(held.output, fmt, tokenizer)
            if len(fitted.token_ids) + len(answer) > max_len:
                continue
            ids = (*fitted.token_ids, *answer)
            spans: tuple[tuple[int, int], ...] = ()
            if loss is Loss.OUTPUTS:
                spans = tuple(output_token_spans(sub, 0, fmt, tokenizer, fitted))
            out.append(Example(task.id, ids, len(fitted.token_ids), spans))
    return out


def batches(
    examples: Sequence[Example], batch_size: int, steps: int, seed: int
) -> list[list[Example]]:
    """`steps` batches drawn by shuffling the examples epoch after epoch (seeded)."""
    import numpy as np

    if not examples:
        return []
    rng = np.random.default_rng(seed)
    order: list[int] = []
    out: list[list[Example]] = []
    for _ in range(steps):
        batch = []
        for _ in range(batch_size):
            if not order:
                order = rng.permutation(len(examples)).tolist()
            batch.append(examples[order.pop()])
        out.append(batch)
    return out
