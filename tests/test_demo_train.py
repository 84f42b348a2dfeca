"""The demo model's trainer: what it supervises, its curriculum, and a short run's checkpoint."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from airv.core.augment import D8
from airv.core.formats import FormatSpec, encode_grid, parse_grid
from airv.core.prompt_format import MODEL_PROMPT_FILE, PromptTemplate
from airv.demo.synthetic import SyntheticSpec, make_tasks
from airv.demo.tinymodel import build_tokenizer
from airv.demo.train import (
    DEMO_CHARACTERS,
    IGNORE,
    Recipe,
    curriculum_stage,
    encode_example,
    greedy_accuracy,
    task_spec,
    train,
    training_batch,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> object:
    return build_tokenizer(tmp_path_factory.mktemp("tok"), DEMO_CHARACTERS)


@pytest.mark.parametrize("row_numbers", [False, True])
def test_labels_cover_exactly_the_output_grids_and_eos(
    tokenizer: object, row_numbers: bool
) -> None:
    spec, template = FormatSpec(row_numbers=row_numbers), PromptTemplate()
    for st in make_tasks(20, SyntheticSpec(), np.random.default_rng(5)):
        enc = encode_example(st, spec, template, tokenizer)
        assert len(enc.ids) == len(enc.labels)
        # Supervised spans, in order: each one is a grid, then the newline (or EOS) ending it.
        spans: list[list[int]] = []
        previous = IGNORE
        for label in enc.labels:
            if label != IGNORE:
                if previous == IGNORE:
                    spans.append([])
                spans[-1].append(label)
            previous = label
        want = [p.output for p in st.task.train] + [st.solutions[0]]
        assert len(spans) == len(want)
        eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
        (newline,) = tokenizer.encode("\n", add_special_tokens=False)  # type: ignore[attr-defined]
        for span, grid in zip(spans, want, strict=True):
            assert span[-1] in (eos, newline)
            text = tokenizer.decode(span[:-1])  # type: ignore[attr-defined]
            assert text == encode_grid(grid, spec)
            assert parse_grid(text, spec) == grid
        assert enc.ids[-1] == eos
        # Supervised tokens are the tokens themselves (the shift happens at loss time).
        assert all(lab in (IGNORE, tok) for lab, tok in zip(enc.labels, enc.ids, strict=True))


def test_curriculum_stages_split_the_budget_evenly() -> None:
    recipe = replace(Recipe(), max_sides=(3, 5, 6), easy_shares=(1.0, 0.5, 0.0))
    assert curriculum_stage(recipe, 0.0) == (3, 1.0)
    assert curriculum_stage(recipe, 0.33) == (3, 1.0)
    assert curriculum_stage(recipe, 0.34) == (5, 0.5)
    assert curriculum_stage(recipe, 0.99) == (6, 0.0)
    assert curriculum_stage(recipe, 1.0) == (6, 0.0)
    with pytest.raises(ValueError, match="one easy share per curriculum stage"):
        curriculum_stage(replace(recipe, easy_shares=(1.0,)), 0.5)


def test_training_batches_follow_the_easy_share_and_side() -> None:
    rng = np.random.default_rng(0)
    recipe = replace(Recipe(), batch_size=64, max_sides=(3, 6), easy_shares=(1.0, 0.0))
    early = training_batch(recipe, 0.1, rng)
    assert len(early) == 64
    assert {t.rule.d8 for t in early} == {D8.IDENTITY}
    assert all(t.rule.has_colour_map for t in early)
    assert max(len(g) for t in early for g in t.task.test) <= 3
    late = training_batch(recipe, 0.9, rng)
    assert len({t.rule.d8 for t in late}) > 4  # the whole family
    assert max(len(g) for t in late for g in t.task.test) > 3


@pytest.mark.slow
def test_a_short_run_writes_a_checkpoint_airv_can_load(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = replace(Recipe(), hidden_size=64, intermediate_size=128, num_layers=1, batch_size=4)
    out = tmp_path / "model"
    record = train(out, seed=0, minutes=None, steps=3, recipe=recipe, eval_tasks=4, threads=1)
    assert record["step"] == 3 and record["final"] is True
    # The logged accuracy is what the saved checkpoint scores on the same held-out tasks
    # (the trainer draws them from the seed's own stream [seed, 1]).
    import numpy as np

    from airv.demo.synthetic import make_tasks

    held_out = make_tasks(4, task_spec(max(recipe.max_sides)), np.random.default_rng([0, 1]))
    saved = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    again, per_rule = greedy_accuracy(saved, tok, held_out, FormatSpec(), PromptTemplate())
    assert record["greedy_accuracy"] == again
    assert sum(total for _, total in per_rule.values()) == 4
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["recipe"]["num_layers"] == 1 and log[-1]["final"] is True
    prompt = json.loads((out / MODEL_PROMPT_FILE).read_text())
    assert FormatSpec.from_dict(prompt["format"]) == FormatSpec()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.head_dim == 64  # what vLLM's CPU attention needs
    assert AutoTokenizer.from_pretrained(out).decode([4, 5]) == "01"
    assert not (tmp_path / "model.tmp").exists()
