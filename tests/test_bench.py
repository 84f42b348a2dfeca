"""Tests of the bench scripts without their workloads: bench.run_bench's token counts, its
section registry and every section's renderer (fed a real run's bench/results.json), its context
length; bench.vote_modes's accuracy and a small smoke run. No timings are checked here."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from airv.core.formats import FormatSpec
from airv.core.tasks import Task
from airv.core.types import Grid
from bench import harness, speculative, tokens, vote_modes
from bench.run_bench import SECTIONS, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def char_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> object:
    from airv.demo.tinymodel import CHARACTERS, build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"), CHARACTERS)


GRIDS: list[Grid] = [((0,),), ((1, 2, 3), (4, 5, 6)), tuple((7,) * 30 for _ in range(30))]


def test_tokens_per_grid_structure_and_counts(char_tokenizer: object) -> None:
    out = tokens.tokens_per_grid(GRIDS, char_tokenizer)
    assert out["grids"] == 3
    # One token per character: a grid's text plus its newline is one token per cell and row.
    assert out["tokens"] == {"min": 2, "median": 8, "max": 930}
    assert out["baseline"] == out["tokens"]
    assert out["ratio_to_baseline"] == {"min": 1.0, "median": 1.0, "max": 1.0}
    assert out["worst_case_30x30"] == {"tokens": 930, "baseline": 930}


def test_tokens_per_grid_follows_the_format(char_tokenizer: object) -> None:
    spaced = tokens.tokens_per_grid(GRIDS[1:2], char_tokenizer, FormatSpec(cell_sep=" "))
    # "1 2 3\n4 5 6\n": 12 characters against a baseline of 6 cells + 2 newlines.
    assert spaced["tokens"]["max"] == 12
    assert spaced["baseline"]["max"] == 8
    with pytest.raises(ValueError):
        tokens.tokens_per_grid([], char_tokenizer)


RESULTS = ROOT / "bench" / "results.json"  # a real full run's results, as main() wrote them
# Where each section's results hold a count its report prints as is: a sentinel put there must
# come out in the markdown, so a renderer that ignores its data fails.
SENTINEL = 98765
FIGURES: dict[str, tuple[str | int, ...]] = {
    "throughput": ("workload", "prompts"),
    "overhead": ("pipeline", 0, "prompts"),
    "tokens": ("splits", "arc-agi-1/training", "tiny (one token per character)", "grids"),
    "startup": ("run", "prompts"),
    "scaling": ("points", 0, "tokens_in"),
    "speculative": ("models", "random", "prompts"),
    "streaming": ("throughput", "prompts"),
    "servers": ("runs", "one server", "prompts"),
}


@pytest.fixture(scope="module")
def real_results() -> dict[str, Any]:
    results: dict[str, Any] = json.loads(RESULTS.read_text())
    return results


def _with_sentinel(data: Any, path: tuple[str | int, ...]) -> Any:
    data = copy.deepcopy(data)
    *outer, last = path
    inner = data
    for key in outer:
        inner = inner[key]
    assert isinstance(inner[last], int)  # a count, printed without thousands separators
    inner[last] = SENTINEL
    return data


def test_every_section_is_declared_once_with_its_renderer() -> None:
    names = [s.name for s in SECTIONS]
    assert len(names) == len(set(names)) == len(FIGURES)
    assert set(names) == set(FIGURES)  # a new section needs its line in FIGURES too
    for s in SECTIONS:
        assert callable(s.measure) and callable(s.render) and s.about, s.name
    # The CLI's names are SECTIONS' names: each is accepted, and nothing else is.
    with pytest.raises(SystemExit) as exit_:
        main(["--sections", "tokens", "bogus"])
    assert exit_.value.code == 2


def test_help_lists_every_section(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for s in SECTIONS:
        assert f"  {s.name} " in out


@pytest.mark.parametrize("name", list(FIGURES))
def test_each_section_renders_its_data(real_results: dict[str, Any], name: str) -> None:
    """Each renderer, fed a real run's results for its section: its numbered heading, its
    table, and a figure from the data in the markdown."""
    number, section = next((i, s) for i, s in enumerate(SECTIONS, 1) if s.name == name)
    data = _with_sentinel(real_results["sections"][name], FIGURES[name])
    md = "\n".join(section.render(data))
    assert md.startswith(f"## {number}. ")
    assert "\n|---|" in md
    assert str(SENTINEL) in md
    assert str(SENTINEL) not in "\n".join(section.render(real_results["sections"][name]))


def test_the_report_puts_the_sections_in_order(real_results: dict[str, Any]) -> None:
    assert set(real_results["sections"]) == {s.name for s in SECTIONS}
    report = harness.render_markdown(real_results, SECTIONS)
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert [h.split(".")[0] for h in headings] == [f"## {i}" for i in range(1, 9)]
    assert f"{real_results['machine']['cores']} cores" in report
    # A section missing from the results is left out, not rendered empty.
    partial = {**real_results, "sections": {"tokens": real_results["sections"]["tokens"]}}
    report = harness.render_markdown(partial, SECTIONS)
    headings = [line for line in report.splitlines() if "## " in line]
    assert [h.split(".")[0] for h in headings] == ["## 3"]


def test_a_failed_speculative_model_is_a_row_that_says_why() -> None:
    md = speculative.render(
        {
            "num_speculative_tokens": 3,
            "models": {"zeros": {"error": "RuntimeError: no spec decode on CPU\ntraceback"}},
        }
    )
    assert "`--ngram-speculative-tokens 3`" in md[0]
    assert "| zeros | failed |  |  | RuntimeError: no spec decode on CPU |" in md


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


def test_vote_modes_accuracy_reads_only_the_first_rounds() -> None:
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
def test_vote_modes_writes_its_table(bigram_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "vote-modes.md"
    args = ["--model", str(bigram_model), "--engine", "hf", "--synthetic", "2", "--easy", "0"]
    assert vote_modes.main([*args, "--arc", "0", "--max-model-len", "2048", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| synthetic")]
    # Grid and cell at 16 augs, at rescore's time and at 32; rescore; early stop.
    assert len(rows) == 8
    assert sum("rescore (top 4 x 4 augs)" in r for r in rows) == 1
    assert all(r.split("|")[3].strip() == "0.000" for r in rows)  # the bigram model answers "12"


def test_the_bench_uses_the_models_own_context_length(tmp_path: Path) -> None:
    """`--model models/airv-demo` once failed at engine start: the bench asked for 8192
    tokens of a model that allows 4096."""
    from airv.engines.config import EngineConfig

    demo = ROOT / "models" / "airv-demo"
    b = harness.Bench(harness.QUICK, tmp_path, model=demo, seed=0)
    assert b.max_model_len(harness.ModelKind.RANDOM) == 4096
    assert b.engine_config(harness.ModelKind.RANDOM).max_model_len == 4096
    b.user_model = None  # the tiny model built on the spot has no such limit
    assert b.max_model_len(harness.ModelKind.RANDOM) == EngineConfig().max_model_len


def test_the_schedule_bench_reads_its_replays() -> None:
    """bench.schedule's verdicts from its outcomes: when the gain run's replayed score first
    reaches uniform's, and the Done-when lines, for a budget where gain wins and one where it
    loses by two test outputs."""
    from bench.schedule import Outcome, render

    def outcome(schedule: str, seed: int, budget: float, score: float, n: int) -> Outcome:
        curve = ((budget * 0.2, score / 2), (budget * 0.6, score), (budget * 0.9, score))
        return Outcome(schedule, seed, budget, score, n, 100, "deadline", curve)

    gain = outcome("gain", 0, 10.0, 0.5, 5)
    assert gain.reached(0.5) == 6.0 and gain.reached(0.25) == 2.0 and gain.reached(0.6) is None
    outcomes = [
        outcome("uniform", 0, 10.0, 0.4, 4),
        gain,
        outcome("uniform", 0, 20.0, 0.6, 6),
        outcome("gain", 0, 20.0, 0.4, 4),
    ]
    tasks = [Task("t", train=(), test=(((0,),),))]
    text = "\n".join(render(tasks, outcomes[0], 40.0, outcomes))
    assert "| 25% (10.0 s) | 0 | 0.4 | 0.5 | 1 | 100 | 100 | 60% |" in text
    assert "| 50% (20.0 s) | 0 | 0.6 | 0.4 | -2 | 100 | 100 | never |" in text
    first, second = [line for line in text.splitlines() if line.startswith("- ")]
    assert "at least uniform's: yes" in first and "70% of the budget in every seed: yes" in first
    assert "at least uniform's: no" in second and "one test output worse: no" in second


def test_what_a_view_is_worth_is_read_off_a_recording() -> None:
    """bench.view_worth on a hand-made recording of 16 views per test input: "flip" has the
    right answer outside its top 2 after 8 views and inside after 12 (one step gained, the
    next changes nothing); "agree" is settled from the first round on, so its steps are not
    counted; no view of "never" is right. Each view's answer is a grid; its augmentation key
    only orders the views."""
    from airv.run.predictions import Prediction
    from airv.run.replay import Recording
    from bench.view_worth import render, unanswerable, worth

    right, a, b = ((1,),), ((2,),), ((3,),)
    other = [((9, k),) for k in range(8)]
    answers: dict[str, list[Grid]] = {
        "flip": [a, a, b, b, right, *other[:3], right, right, *other[3:5], a, a, a, a],
        "agree": [right] * 16,
        "never": [((8, k),) for k in range(16)],
    }
    preds = [
        Prediction(t, 0, f"v{k}", "", g, None, 0.0, 1, 10, "stop", 1, 0.1)
        for t, grids in answers.items()
        for k, g in enumerate(grids)
    ]
    tasks = [Task(t, train=(), test=(right,)) for t in answers]
    solutions = {t: [right] for t in answers}
    recording = Recording(preds)
    assert unanswerable(recording, solutions) == {("never", 0)}
    w = worth({0: recording}, {"g": tasks}, solutions)
    assert w.tests == {"g": 3}
    assert w.right["g"] == {1: 1, 2: 1, 4: 1, 8: 1, 16: 2, 32: 2}
    s = w.steps["g"]  # "never" is never settled: two steps that change nothing
    assert (s.steps, s.gained, s.lost) == (4, 1, 0)
    text = "\n".join(render(w))
    assert "| g | 3 | 1 | 1 | 1 | 1 | 2 | 2 |" in text
    assert "| g | 4 | 1 | 0 | 1 |" in text
    assert "Net over every step: +1 test outputs in 16 views" in text


def test_the_demonstrations_likelihood_request_and_its_auc(tiny_model: Path) -> None:
    """bench.demo_likelihood: the request scores a task's last train output under the prompt
    of the pair before it (a task of one pair has none); the AUC counts, over every recording's
    test inputs, how often one that some view answers right has the higher likelihood."""
    from airv.core.tasks import Pair
    from airv.engines.config import EngineConfig
    from airv.run.config import RunConfig
    from airv.run.predictions import Prediction
    from airv.run.promise import demonstration
    from airv.run.prompting import Prompter
    from airv.run.replay import Recording
    from bench.demo_likelihood import Likelihood, auc, promises

    first, last = Pair(((1,),), ((2,),)), Pair(((3, 4),), ((5, 6),))
    cfg = RunConfig(
        challenges=Path("c.json"), out_dir=Path("out"), engine=EngineConfig(model=tiny_model)
    )
    prompter = Prompter(cfg)
    fit, ids = prompter.fit, prompter.answer_ids
    request = demonstration(Task("t", train=(first, last), test=(((7,),),)), fit, ids)
    assert request is not None
    expected = prompter.fit(Task("t", train=(first,), test=(last.input,)), 0)
    assert not isinstance(expected, Exception)
    assert request.prompt_ids == tuple(expected.token_ids)
    assert request.continuation_ids == tuple(prompter.answer_ids(last.output))
    assert demonstration(Task("u", train=(first,), test=(((7,),),)), fit, ids) is None

    right = ((1,),)

    def recording(grid_of_b: Grid) -> Recording:
        return Recording(
            [
                Prediction(t, 0, "id", "", g, None, 0.0, 1, 10, "stop", 1, 0.1)
                for t, g in (("a", right), ("b", grid_of_b))
            ]
        )

    solutions = {"a": [right], "b": [right]}
    # "a" is answered right in both recordings, "b" in the second only.
    recordings = {0: recording(((9,),)), 1: recording(right)}
    # Right: a, a, b; never: b. With a above b, a's two pairs win and b's ties (half).
    assert auc({"a": -1.0, "b": -5.0}, recordings, solutions) == pytest.approx(2.5 / 3)
    assert auc({"a": -5.0, "b": -1.0}, recordings, solutions) == pytest.approx(0.5 / 3)
    assert auc({"a": -1.0, "b": -1.0}, recordings, solutions) == 0.5
    # In a recording's seconds: the first views took 0.2 s (0.1 s each), and the pass costs
    # half of them (1 s against 2 s measured): 0.1 s, split by the requests' tokens (3 to 1).
    lk = Likelihood(
        {"a": -1.0, "b": -5.0}, score_seconds=1.0, view_seconds=2.0, views=2,
        tokens={"a": 30, "b": 10},
    )  # fmt: skip
    promised = promises(lk, recordings[0])
    assert {t: s.loglik for t, s in promised.items()} == lk.loglik
    assert {t: s.tokens for t, s in promised.items()} == lk.tokens
    assert [s.seconds for s in promised.values()] == [pytest.approx(0.075), pytest.approx(0.025)]
