"""Train airv's demo model: a tiny Qwen2 causal LM that solves synthetic ARC-style tasks, on CPU.

    python -m airv.demo.train --out models/airv-demo --steps 18000 --seed 0

The tasks come from `airv.demo.synthetic` (a D8 transform and/or a colour map to infer from the
pairs). Every training sequence is exactly what the pipeline prompts with (`render_prompt`,
`prompt_token_ids`), followed by the answer and EOS; the loss is on every output grid of the
sequence (train outputs and the test answer) and EOS, never on inputs. A curriculum in equal
stages of the budget sets the largest grid side and the share of each batch drawn from the
easy corner of the family (see `Recipe`). The learning rate warms up, then follows a cosine to
10% of its peak over the budget (`--minutes` or `--steps`; with `--steps` the data, the
initialisation and the schedule depend only on the seed, a time budget's do not).

Checkpoints (weights, tokenizer, `airv.json` with the format and template) are written to
`--out` every few minutes, so an interrupted run still leaves a usable model, with a greedy
accuracy measured on held-out tasks logged to `--out/train_log.jsonl`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from airv.core.formats import FormatSpec, parse_grid
from airv.core.prompt_format import (
    DEFAULT_PRESET,
    MODEL_PROMPT_FILE,
    RECIPE_KEY,
    PromptFormat,
    PromptTemplate,
    answer_text,
    load_preset,
)
from airv.core.prompts import FittedPrompt, output_token_spans, prompt_token_ids, render_prompt
from airv.demo.synthetic import EASY_SPEC, SyntheticSpec, SyntheticTask, make_tasks
from airv.demo.tinymodel import build_tokenizer, qwen2_config

# Digits (one token per cell), newline, the default template's labels, and the characters of a
# shape header and row numbers, so either format can be chosen without a new tokenizer.
DEMO_CHARACTERS = "0123456789\nIO|x"
# The recipe the model's airv.json names (airv.run.recipes): its runs fine-tune per task.
DEMO_RECIPE = "airv-demo"
IGNORE = -100


@dataclass(frozen=True, slots=True)
class Recipe:
    """Model size and optimiser settings. The curriculum is split into equal shares of the
    budget: `max_sides[k]` is the largest grid side in share k and `easy_shares[k]` the part of
    each batch drawn from the easy corner of the family (colour maps without a transform, the
    part a small model learns first); the rest comes from the whole family."""

    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    batch_size: int = 16
    peak_lr: float = 2.5e-3
    warmup_steps: int = 150
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    max_sides: tuple[int, ...] = (4, 4, 5, 6, 6)
    easy_shares: tuple[float, ...] = (1.0, 1.0, 0.6, 0.5, 0.5)
    row_numbers: bool = False
    shape_header: bool = False
    bf16: bool = False  # autocast to bf16 measured 1.4-5x slower than fp32 on this CPU


@dataclass(frozen=True, slots=True)
class Encoded:
    ids: list[int]
    labels: list[int]  # IGNORE where no loss; else the token id itself (shifted at loss time)


def task_spec(max_side: int, *, easy: bool = False) -> SyntheticSpec:
    """The trained family (and its held-out evaluation set at max_side 6); `easy` keeps only
    its easiest corner, colour maps without a transform (airv.demo.synthetic.EASY_SPEC's rules)."""
    if easy:
        return replace(EASY_SPEC, max_side=max_side)
    return SyntheticSpec(max_side=max_side)


def curriculum_stage(recipe: Recipe, progress: float) -> tuple[int, float]:
    """(largest grid side, easy share of a batch) at `progress` in [0, 1] of the budget."""
    if len(recipe.max_sides) != len(recipe.easy_shares):
        raise ValueError("a recipe needs one easy share per curriculum stage")
    k = min(len(recipe.max_sides) - 1, int(progress * len(recipe.max_sides)))
    return recipe.max_sides[k], recipe.easy_shares[k]


def training_batch(
    recipe: Recipe, progress: float, rng: np.random.Generator
) -> list[SyntheticTask]:
    """One batch of freshly drawn tasks at this point of the curriculum."""
    max_side, easy_share = curriculum_stage(recipe, progress)
    n_easy = int(rng.binomial(recipe.batch_size, easy_share))
    return make_tasks(n_easy, task_spec(max_side, easy=True), rng) + make_tasks(
        recipe.batch_size - n_easy, task_spec(max_side), rng
    )


def demo_format(spec: FormatSpec, template: PromptTemplate) -> PromptFormat:
    """The `default` preset with the recipe's grid spec: the demo model's prompt format."""
    return dataclasses.replace(load_preset(DEFAULT_PRESET), grid=spec, layout=template)


def encode_example(
    st: SyntheticTask, spec: FormatSpec, template: PromptTemplate, tokenizer: Any
) -> Encoded:
    """Prompt ids exactly as the pipeline builds them, then the answer ids and EOS; labels on
    the answer, EOS and every train output grid with the newline that ends it (the spans
    test-time fine-tuning's all-outputs loss uses)."""
    task = st.task
    fmt = demo_format(spec, template)
    text = render_prompt(task, 0, fmt, tokenizer)
    ids = prompt_token_ids(text, fmt, tokenizer)
    answer = tokenizer.encode(answer_text(st.solutions[0], fmt), add_special_tokens=False)
    eos = int(tokenizer.eos_token_id)
    labels = [IGNORE] * len(ids)
    whole = FittedPrompt(text, ids, len(task.train), len(answer) + 1, dropped=())
    for start, end in output_token_spans(task, 0, fmt, tokenizer, whole):
        labels[start:end] = ids[start:end]
    return Encoded(ids + answer + [eos], labels + answer + [eos])


def collate(batch: Sequence[Encoded], pad_id: int) -> tuple[Any, Any]:
    """Right-padded [B, T] ids and labels. No attention mask: with a causal model, padding
    after a sequence cannot change its logits."""
    import torch

    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for row, e in enumerate(batch):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
    return ids, labels


def greedy_accuracy(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[SyntheticTask],
    spec: FormatSpec,
    template: PromptTemplate,
    *,
    batch_size: int = 32,
) -> tuple[float, dict[str, tuple[int, int]]]:
    """Exact-match accuracy of greedy answers (identity view, one attempt), overall and per
    rule name as (solved, total)."""
    import torch

    per_rule: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    eos, pad = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(tasks), batch_size):
            chunk = tasks[start : start + batch_size]
            fmt = demo_format(spec, template)
            prompts = [
                prompt_token_ids(render_prompt(t.task, 0, fmt, tokenizer), fmt, tokenizer)
                for t in chunk
            ]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            max_new = max(len(answer_text(t.solutions[0], fmt)) for t in chunk) + 8
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
            )
            for t, row in zip(chunk, out[:, width:].tolist(), strict=True):
                text = tokenizer.decode([i for i in row if i not in (eos, pad)])
                grid = parse_grid(text, spec)
                totals[t.rule.name] += 1
                per_rule[t.rule.name] += int(grid == t.solutions[0])
    model.train()
    solved = sum(per_rule.values())
    table = {name: (per_rule[name], totals[name]) for name in sorted(totals)}
    return solved / max(1, len(tasks)), table


def train(
    out: Path,
    *,
    seed: int,
    minutes: float | None,
    steps: int | None,
    recipe: Recipe,
    checkpoint_minutes: float = 5.0,
    eval_tasks: int = 100,
    threads: int = 2,
) -> dict[str, Any]:
    import torch
    from transformers import Qwen2ForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # Held-out tasks come from their own stream, so they never depend on the training draws.
    held_out = make_tasks(
        eval_tasks, task_spec(max(recipe.max_sides)), np.random.default_rng([seed, 1]), prefix="ho"
    )
    held_out_easy = make_tasks(
        eval_tasks // 2, EASY_SPEC, np.random.default_rng([seed, 2]), prefix="hoe"
    )
    out.mkdir(parents=True, exist_ok=True)
    spec = FormatSpec(shape_header=recipe.shape_header, row_numbers=recipe.row_numbers)
    template = PromptTemplate()
    tokenizer = build_tokenizer(out, DEMO_CHARACTERS)
    config = qwen2_config(
        tokenizer.get_vocab(),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_layers=recipe.num_layers,
        max_position_embeddings=4096,
    )
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optim = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=recipe.peak_lr,
        betas=(0.9, 0.95),
    )
    log_path = out / "train_log.jsonl"
    log = log_path.open("a", encoding="utf-8")
    started = time.monotonic()
    last_ckpt = started
    step, tokens, ema = 0, 0, float("nan")

    def progress() -> float:
        if steps is not None:
            return step / steps
        return (time.monotonic() - started) / (60.0 * (minutes or 0.0))

    def checkpoint(final: bool) -> dict[str, Any]:
        acc, table = greedy_accuracy(model, tokenizer, held_out, spec, template)
        easy_acc, _ = greedy_accuracy(model, tokenizer, held_out_easy, spec, template)
        _save(model, tokenizer, spec, template, out)
        record = {
            "step": step,
            "minutes": round((time.monotonic() - started) / 60, 2),
            "tokens": tokens,
            "loss_ema": round(ema, 4),
            "greedy_accuracy": acc,
            "greedy_accuracy_easy": easy_acc,
            "per_rule": table,
            "final": final,
        }
        log.write(json.dumps(record) + "\n")
        log.flush()
        print(json.dumps({k: v for k, v in record.items() if k != "per_rule"}), flush=True)
        return record

    header = {"recipe": asdict(recipe), "seed": seed, "params": n_params, "minutes": minutes}
    log.write(json.dumps({**header, "steps": steps}) + "\n")
    print(json.dumps(header), flush=True)
    model.train()
    while progress() < 1.0:
        p = progress()
        max_side, _ = curriculum_stage(recipe, p)
        batch = [
            encode_example(st, spec, template, tokenizer) for st in training_batch(recipe, p, rng)
        ]
        ids, labels = collate(batch, int(tokenizer.pad_token_id))
        lr = recipe.peak_lr * min(1.0, (step + 1) / recipe.warmup_steps)
        lr *= recipe.final_lr_fraction + (1 - recipe.final_lr_fraction) * 0.5 * (
            1 + math.cos(math.pi * min(1.0, p))
        )
        for group in optim.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
            logits = model(input_ids=ids).logits
        # [B, T, V] -> predict token t+1 from position t.
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            ignore_index=IGNORE,
        )
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optim.step()
        step += 1
        tokens += int(ids.numel())
        value = loss.item()
        ema = value if math.isnan(ema) else 0.98 * ema + 0.02 * value
        if step % 25 == 0:
            elapsed = time.monotonic() - started
            print(
                f"step {step} p {p:.3f} side {max_side} lr {lr:.2e} loss {value:.4f} "
                f"ema {ema:.4f} tok/s {tokens / elapsed:.0f}",
                flush=True,
            )
        if time.monotonic() - last_ckpt > 60 * checkpoint_minutes:
            checkpoint(final=False)
            last_ckpt = time.monotonic()
    return checkpoint(final=True)


def _save(
    model: Any, tokenizer: Any, spec: FormatSpec, template: PromptTemplate, out: Path
) -> None:
    """Write weights, tokenizer and airv.json to a temporary directory beside `out`, then move
    each file into place, so a reader never sees half a checkpoint file."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    prompt = {RECIPE_KEY: DEMO_RECIPE, "format": spec.to_dict(), "template": template.to_dict()}
    (tmp / MODEL_PROMPT_FILE).write_text(json.dumps(prompt, indent=2) + "\n", encoding="utf-8")
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airv.demo.train", description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="wall-clock training budget")
    budget.add_argument("--steps", type=int, help="step budget (reproducible)")
    # Defaults are train()'s: a flag left out is not passed.
    parser.add_argument("--checkpoint-minutes", type=float, help="minutes between checkpoints")
    parser.add_argument("--eval-tasks", type=int, help="held-out tasks for the accuracy log")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads; on a CPU shared with other jobs, one thread was measured 2.5x "
        "faster per step than two",
    )
    parser.add_argument("--row-numbers", action="store_true")
    parser.add_argument("--shape-header", action="store_true")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument(
        "--max-sides", type=int, nargs="+", default=None, help="largest side per stage"
    )
    parser.add_argument(
        "--easy-shares", type=float, nargs="+", default=None, help="easy share per stage"
    )
    args = parser.parse_args(argv)
    recipe = Recipe()
    overrides: dict[str, Any] = {
        "row_numbers": args.row_numbers or recipe.row_numbers,
        "shape_header": args.shape_header or recipe.shape_header,
        "bf16": args.bf16 or recipe.bf16,
    }
    if args.layers is not None:
        overrides["num_layers"] = args.layers
    if args.hidden is not None:
        overrides["hidden_size"] = args.hidden
        overrides["intermediate_size"] = args.hidden * 8 // 3
    if args.max_sides is not None:
        overrides["max_sides"] = tuple(args.max_sides)
    if args.easy_shares is not None:
        overrides["easy_shares"] = tuple(args.easy_shares)
    if args.lr is not None:
        overrides["peak_lr"] = args.lr
    if args.batch is not None:
        overrides["batch_size"] = args.batch
    recipe = replace(recipe, **overrides)
    given = {
        "checkpoint_minutes": args.checkpoint_minutes,
        "eval_tasks": args.eval_tasks,
        "threads": args.threads,
    }
    train(
        args.out,
        seed=args.seed,
        minutes=args.minutes,
        steps=args.steps,
        recipe=recipe,
        **{k: v for k, v in given.items() if v is not None},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
