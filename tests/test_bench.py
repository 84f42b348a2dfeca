"""Smoke test of bench/run_bench.py: it imports, and its cheapest section (tokens per grid) runs
and returns the structure the report expects. No timings are checked here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from airv.core.formats import FormatSpec
from airv.core.types import Grid

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run_bench.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("airv_run_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def char_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> object:
    from airv.demo.tinymodel import CHARACTERS, build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"), CHARACTERS)


GRIDS: list[Grid] = [((0,),), ((1, 2, 3), (4, 5, 6)), tuple((7,) * 30 for _ in range(30))]


def test_tokens_per_grid_structure_and_counts(bench: ModuleType, char_tokenizer: object) -> None:
    out = bench.tokens_per_grid(GRIDS, char_tokenizer)
    assert out["grids"] == 3
    # One token per character: a grid's text plus its newline is one token per cell and row.
    assert out["tokens"] == {"min": 2, "median": 8, "max": 930}
    assert out["baseline"] == out["tokens"]
    assert out["ratio_to_baseline"] == {"min": 1.0, "median": 1.0, "max": 1.0}
    assert out["worst_case_30x30"] == {"tokens": 930, "baseline": 930}


def test_tokens_per_grid_follows_the_format(bench: ModuleType, char_tokenizer: object) -> None:
    spaced = bench.tokens_per_grid(GRIDS[1:2], char_tokenizer, FormatSpec(cell_sep=" "))
    # "1 2 3\n4 5 6\n": 12 characters against a baseline of 6 cells + 2 newlines.
    assert spaced["tokens"]["max"] == 12
    assert spaced["baseline"]["max"] == 8
    with pytest.raises(ValueError):
        bench.tokens_per_grid([], char_tokenizer)


def test_every_section_is_declared_once_with_its_renderer(bench: ModuleType) -> None:
    names = [s.name for s in bench.SECTIONS]
    assert len(names) == len(set(names)) and set(names) == set(bench.Section)
    assert all(callable(s.measure) and callable(s.render) for s in bench.SECTIONS)


def test_each_section_renders_a_real_runs_results(bench: ModuleType) -> None:
    """bench/results.json holds a real run's results: every section's renderer writes its
    heading and the figures it was given, and the whole report puts them in order."""
    import json

    results = json.loads(BENCH.with_name("results.json").read_text())
    sections = results["sections"]
    assert set(sections) == {s.name.value for s in bench.SECTIONS}
    headings = []
    for s in bench.SECTIONS:
        md = "\n".join(s.render(sections[s.name.value]))
        heading = next(line for line in md.splitlines() if line.startswith("## "))
        headings.append(heading)
        assert "|" in md, f"{s.name}: no table"
    throughput = "\n".join(bench._render_throughput(sections["throughput"]))
    prompts = sections["throughput"]["workload"]["prompts"]
    assert f"= {prompts} prompts" in throughput
    report = bench.render_markdown(results)
    positions = [report.index(h) for h in headings]
    assert positions == sorted(positions)  # numbered 1..6 in report order
    assert [h.split(".")[0] for h in headings] == [f"## {i}" for i in range(1, 7)]
    # A section missing from the results is left out, not rendered empty.
    partial = {**results, "sections": {"tokens": sections["tokens"]}}
    assert "## 1." not in bench.render_markdown(partial)
    assert "## 3." in bench.render_markdown(partial)


VOTE_MODES = BENCH.with_name("vote_modes.py")


@pytest.fixture(scope="module")
def vote_modes() -> ModuleType:
    spec = importlib.util.spec_from_file_location("airv_vote_modes", VOTE_MODES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _prediction(grid: Grid, round_no: int) -> object:
    from airv.run.predictions import Prediction

    return Prediction(
        task_id="t",
        test_index=0,
        aug="i",
        text="",
        grid=grid,
        reject=None,
        logprob=-1.0,
        tokens=3,
        prompt_tokens=10,
        finish="stop",
        round=round_no,
        seconds=0.1,
    )


def test_vote_modes_accuracy_reads_only_the_first_rounds(vote_modes: ModuleType) -> None:
    from airv.core.voting import VoteMode

    right, b, c = ((1,),), ((2,),), ((3,),)
    preds = [_prediction(g, 1) for g in (b, b, c, c)] + [_prediction(right, 2) for _ in range(3)]
    truth = {"t": (right,)}
    for mode in (VoteMode.GRID, VoteMode.CELL):
        assert vote_modes.accuracy(preds, truth, mode, rounds=1) == 0.0
        assert vote_modes.accuracy(preds, truth, mode) == 1.0
    assert vote_modes.accuracy([], truth, VoteMode.GRID) == 0.0


@pytest.mark.engine
@pytest.mark.slow
def test_vote_modes_writes_its_table(
    vote_modes: ModuleType, bigram_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "vote-modes.md"
    args = ["--model", str(bigram_model), "--engine", "hf", "--synthetic", "2", "--easy", "0"]
    assert vote_modes.main([*args, "--arc", "0", "--max-model-len", "2048", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| synthetic")]
    # Grid and cell at 16 augs, at rescore's time and at 32; rescore; early stop.
    assert len(rows) == 8
    assert sum("rescore (top 4 x 4 augs)" in r for r in rows) == 1
    assert all(r.split("|")[3].strip() == "0.000" for r in rows)  # the bigram model answers "12"


def test_the_bench_uses_the_models_own_context_length(bench: ModuleType, tmp_path: Path) -> None:
    """`--model models/airv-demo` once failed at engine start: the bench asked for 8192
    tokens of a model that allows 4096."""
    from airv.engines.config import EngineConfig

    demo = BENCH.parents[1] / "models" / "airv-demo"
    b = bench.Bench(bench.QUICK, tmp_path, model=demo, seed=0)
    assert b.max_model_len(bench.ModelKind.RANDOM) == 4096
    assert b.engine_config(bench.ModelKind.RANDOM).max_model_len == 4096
    b.user_model = None  # the tiny model built on the spot has no such limit
    assert b.max_model_len(bench.ModelKind.RANDOM) == EngineConfig().max_model_len
