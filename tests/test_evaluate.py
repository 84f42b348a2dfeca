"""`airv eval`: exact metric values on hand-built candidates and logs, the pool oracle, the
voting-mode table, the CLI, one end-to-end run through the transformers backend, and the
decoding knobs reaching each engine's arguments."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest

from airv.cli import main
from airv.core.errors import ConfigError
from airv.core.tasks import Pair, Task, dump_challenges
from airv.core.types import Grid, TaskId, Unit
from airv.core.voting import SELECTORS, Candidate, VoteMode
from airv.engines.config import Backend, Decoding, Dtype, EngineConfig
from airv.run.predictions import Prediction, append_predictions
from airv.tools.evaluate import (
    NO_MATCH,
    Metrics,
    Source,
    compare_modes,
    evaluate_candidates,
    evaluate_log,
    match,
    render,
)

A: Grid = ((1, 2), (3, 4))
B: Grid = ((1, 2), (3, 5))  # A with one cell wrong: 3/4 pixels
C: Grid = ((5, 5, 5),)
D: Grid = ((5,), (5,), (5,))  # C's cells, wrong shape
E: Grid = ((5, 0, 5),)  # C with one cell wrong: 2/3 pixels
F: Grid = ((7, 7),)

SOLUTIONS: dict[TaskId, tuple[Grid, ...]] = {"t1": (A, C), "t2": (F,)}

# (task, test index, grid or None for a rejected completion, logprob)
ROWS: list[tuple[TaskId, int, Grid | None, float]] = [
    ("t1", 0, B, -1.0),
    ("t1", 0, B, -1.0),
    ("t1", 0, B, -1.0),
    ("t1", 0, A, -1.0),  # the truth, in a minority: attempt_2
    ("t1", 1, D, -1.0),
    ("t1", 1, D, -1.0),
    ("t1", 1, E, -1.0),  # ties with C on votes, wins on logprob: attempt_2
    ("t1", 1, C, -9.0),  # the truth, third: only the oracle sees it
    ("t2", 0, None, 0.0),  # nothing parsed: unanswered
]


def _pools() -> dict[Unit, list[Candidate]]:
    pools: dict[Unit, list[Candidate]] = {}
    for k, (task_id, i, grid, lp) in enumerate(ROWS):
        if grid is not None:
            pools.setdefault((task_id, i), []).append(Candidate(grid, f"aug{k}", lp, 4))
    return pools


def _metrics(overall: Mapping[Source, Metrics]) -> dict[str, tuple[float, float, float, float]]:
    return {
        s.value: (m.accuracy, m.correct_pixels, m.correct_size, m.unanswered)
        for s, m in overall.items()
    }


def test_match_counts_cells_only_when_the_shape_is_right() -> None:
    assert match(A, A).rank == (True, 1.0)
    assert match(B, A).pixels == 0.75 and match(B, A).size and not match(B, A).exact
    assert match(D, C) == NO_MATCH
    assert match(E, C).pixels == pytest.approx(2 / 3)


def test_exact_metrics_over_three_test_outputs() -> None:
    ev = evaluate_candidates(_pools(), SOLUTIONS, VoteMode.GRID)
    got = _metrics(ev.overall())
    third = 1 / 3
    assert got["attempt_1"] == pytest.approx((0.0, 0.75 / 3, third, third))
    assert got["best_of_2"] == pytest.approx((third, (1 + 2 / 3) / 3, 2 * third, third))
    assert got["oracle"] == pytest.approx((2 * third, 2 * third, 2 * third, third))
    per_task = ev.per_task()
    assert per_task["t1"][Source.BEST_OF_2].accuracy == 0.5
    assert per_task["t1"][Source.BEST_OF_2].correct_pixels == pytest.approx((1 + 2 / 3) / 2)
    assert per_task["t1"][Source.ATTEMPT_1].unanswered == 0.0
    assert per_task["t2"][Source.ORACLE].unanswered == 1.0
    assert per_task["t2"][Source.ORACLE].correct_size == 0.0
    assert [r.n_candidates for r in ev.outputs] == [4, 4, 0]


def test_oracle_beats_attempts_when_the_truth_is_a_minority() -> None:
    ev = evaluate_candidates(_pools(), SOLUTIONS)
    overall = ev.overall()
    assert overall[Source.ORACLE].accuracy > overall[Source.BEST_OF_2].accuracy
    assert overall[Source.BEST_OF_2].accuracy > overall[Source.ATTEMPT_1].accuracy


def test_cell_vote_can_beat_the_oracle() -> None:
    truth: Grid = ((1, 1, 1),)
    wrong = [((0, 1, 1),), ((1, 0, 1),), ((1, 1, 0),)]  # each wrong in another cell
    pools = {("t", 0): [Candidate(g, f"a{i}", -1.0, 4) for i, g in enumerate(wrong)]}
    modes = compare_modes(pools, {"t": (truth,)})
    assert modes[VoteMode.CELL].overall()[Source.ATTEMPT_1].accuracy == 1.0
    assert modes[VoteMode.CELL].overall()[Source.ORACLE].accuracy == 0.0
    assert modes[VoteMode.GRID].overall()[Source.BEST_OF_2].accuracy == 0.0


def test_mode_table_has_every_mode() -> None:
    modes = compare_modes(_pools(), SOLUTIONS)
    assert set(modes) == set(SELECTORS)
    # The oracle reads the candidates only: the same under every mode.
    oracles = {m: ev.overall()[Source.ORACLE] for m, ev in modes.items()}
    assert len(set(oracles.values())) == 1


def _write_log(path: Path) -> None:
    preds = [
        Prediction(
            task_id=task_id,
            test_index=i,
            aug=f"aug{k}",
            text="",
            grid=grid,
            reject=None if grid is not None else "bad_char",
            logprob=lp,
            tokens=4,
            prompt_tokens=20,
            finish="stop",
            round=1,
            seconds=0.1,
        )
        for k, (task_id, i, grid, lp) in enumerate(ROWS)
    ]
    # A test input no solution covers: ignored, counted.
    preds.append(dataclasses.replace(preds[0], task_id="zz"))
    append_predictions(path, preds)
    with open(path, "ab") as f:
        f.write(b'{"task_id": "t1", "cut short\n')


def _write_files(tmp_path: Path) -> dict[str, Path]:
    log = tmp_path / "run" / "predictions.jsonl"
    log.parent.mkdir()
    _write_log(log)
    solutions = tmp_path / "solutions.json"
    solutions.write_bytes(
        orjson.dumps({t: [[list(r) for r in g] for g in gs] for t, gs in SOLUTIONS.items()})
    )
    return {"log": log, "solutions": solutions}


def test_evaluate_log_counts_and_metrics(tmp_path: Path) -> None:
    files = _write_files(tmp_path)
    report = evaluate_log(files["log"], files["solutions"])
    assert report.n_predictions == len(ROWS) + 1
    assert report.n_rejected == 1
    assert report.damaged_lines == 1
    assert report.ignored_inputs == 1
    data = report.to_json()
    assert data["test_outputs"] == 3 and data["tasks"] == 2
    overall = data["overall"]
    assert isinstance(overall, dict)
    assert overall["oracle"]["accuracy"] == pytest.approx(2 / 3)
    # No scores.jsonl beside this log: the likelihood modes are listed as not evaluated.
    evaluated = {m.value for m in SELECTORS if not m.needs_scores}
    assert set(data["modes"]) == evaluated  # type: ignore[call-overload]
    assert set(data["modes_not_evaluated"]) == {m.value for m in SELECTORS} - evaluated  # type: ignore[call-overload]
    text = render(report, per_task=True)
    for fragment in ("pool oracle", "best of 2", "correct_pixels", "unanswered", "t2"):
        assert fragment in text
    for mode in SELECTORS:
        assert f"{mode.value}: attempt_1" in text


def test_challenges_limit_the_tasks_and_need_solutions(tmp_path: Path) -> None:
    files = _write_files(tmp_path)
    g: Grid = ((1,),)
    one = tmp_path / "one.json"
    dump_challenges([Task("t2", (Pair(g, g),), (g,))], one)
    report = evaluate_log(files["log"], files["solutions"], challenges=one)
    assert [r.task_id for r in report.headline.outputs] == ["t2"]
    unknown = tmp_path / "unknown.json"
    dump_challenges([Task("nope", (Pair(g, g),), (g,))], unknown)
    with pytest.raises(Exception, match="no solution"):
        evaluate_log(files["log"], files["solutions"], challenges=unknown)


def test_cli_eval_of_a_log_writes_eval_json_beside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _write_files(tmp_path)
    code = main(
        ["eval", "--predictions", str(files["log"]), "--solutions", str(files["solutions"])]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "pool oracle" in out and "cell: best of 2" in out
    data = orjson.loads((files["log"].parent / "eval.json").read_bytes())
    assert data["overall"]["best_of_2"]["accuracy"] == pytest.approx(1 / 3)
    assert data["per_task"]["t2"]["attempt_1"]["unanswered"] == 1.0

    other = tmp_path / "cell.json"
    code = main(
        [
            "eval",
            "--predictions",
            str(files["log"]),
            "--solutions",
            str(files["solutions"]),
            "--vote",
            "cell",
            "--out",
            str(other),
        ]
    )
    assert code == 0 and orjson.loads(other.read_bytes())["mode"] == "cell"


def test_cli_eval_needs_a_log_or_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _write_files(tmp_path)
    assert main(["eval", "--solutions", str(files["solutions"])]) == 2
    assert "--predictions" in capsys.readouterr().err
    missing = tmp_path / "missing.jsonl"
    assert main(["eval", "--predictions", str(missing), "--solutions", str(files["solutions"])])
    assert "not found" in capsys.readouterr().err
    code = main(["eval", "--model", str(tmp_path), "--solutions", str(files["solutions"])])
    assert code == 2
    assert "--challenges" in capsys.readouterr().err


@pytest.mark.engine
def test_cli_eval_with_a_model_end_to_end(tmp_path: Path, bigram_model: Path) -> None:
    # The bigram model answers `12` to every prompt; without colour permutations the
    # reversed answers are the D8 images of it: (1, 2), (2, 1) and the two columns.
    g: Grid = ((1, 0), (0, 2))
    tasks = [Task("right", (Pair(g, g), Pair(g, g)), (g,)), Task("wrong", (Pair(g, g),), (g,))]
    challenges = tmp_path / "challenges.json"
    dump_challenges(tasks, challenges)
    solutions = tmp_path / "solutions.json"
    solutions.write_bytes(orjson.dumps({"right": [[[1, 2]]], "wrong": [[[3, 3, 3]]]}))
    out = tmp_path / "run"
    # A process of its own, as a user runs it: the run's budget counts from its start.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "airv",
            "eval",
            "--challenges",
            str(challenges),
            "--solutions",
            str(solutions),
            "--model",
            str(bigram_model),
            "--out",
            str(out),
            "--engine",
            "hf",
            "--dtype",
            "float32",
            "--max-model-len",
            "512",
            "--first-round",
            "8",
            "--max-augmentations",
            "8",
            "--no-colour-permutations",
            "--no-progress",
            "--time-budget",
            "15m",
            "--reserve",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "submission.json").exists()
    data = orjson.loads((out / "eval.json").read_bytes())
    assert data["test_outputs"] == 2
    assert data["per_task"]["right"]["oracle"]["accuracy"] == 1.0
    assert data["per_task"]["wrong"]["oracle"]["accuracy"] == 0.0
    assert data["per_task"]["wrong"]["oracle"]["correct_size"] == 0.0
    assert data["overall"]["oracle"]["unanswered"] == 0.0
    assert data["overall"]["oracle"]["accuracy"] == 0.5
    assert data["overall"]["best_of_2"]["accuracy"] <= 0.5
    assert "pool oracle" in done.stdout


# -- decoding knobs ---------------------------------------------------------------------------


def test_penalty_ranges_are_checked() -> None:
    with pytest.raises(ConfigError, match="presence_penalty"):
        Decoding(temperature=0.7, presence_penalty=-2.5)
    with pytest.raises(ConfigError, match="frequency_penalty"):
        Decoding(temperature=0.7, frequency_penalty=2.01)
    with pytest.raises(ConfigError, match="presence_penalty"):
        Decoding(temperature=0.7, presence_penalty=float("nan"))
    # Greedy is the model's argmax, in every backend: a penalty there is a usage error.
    for penalty in ({"repetition_penalty": 1.1}, {"presence_penalty": 0.1}):
        with pytest.raises(ConfigError, match="apply to sampling"):
            Decoding(**penalty)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="beam search"):
        Decoding(length_penalty=0.5)
    with pytest.raises(ConfigError, match="length_penalty"):
        Decoding(beam_width=2, length_penalty=float("inf"))
    with pytest.raises(ConfigError, match="quantization"):
        EngineConfig(quantization=" ")
    s = Decoding(temperature=0.7, presence_penalty=-2.0, frequency_penalty=2.0)
    assert s.presence_penalty == -2.0


def test_vllm_arguments_carry_the_knobs() -> None:
    pytest.importorskip("vllm")
    from airv.engines.vllm_engine import VllmEngine

    s = Decoding(temperature=0.7, presence_penalty=0.5, frequency_penalty=-0.25)
    params = VllmEngine._sampling_params(s, max_tokens=7)
    assert (params.presence_penalty, params.frequency_penalty) == (0.5, -0.25)
    beam = VllmEngine._beam_params(Decoding(beam_width=3, length_penalty=0.6), max_tokens=9)
    assert (beam.beam_width, beam.length_penalty, beam.max_tokens) == (3, 0.6, 9)
    engine = EngineConfig(model=Path("/m"), quantization="awq")
    kwargs = VllmEngine._llm_kwargs(engine, Dtype.FLOAT16, n_gpus=1)
    assert kwargs["quantization"] == "awq"
    assert "quantization" not in VllmEngine._llm_kwargs(EngineConfig(), Dtype.FLOAT16, n_gpus=0)


def test_each_backend_refuses_what_it_lacks() -> None:
    """The one capability check (engines.config.unsupported), as a run's options, an engine's
    start and each request ask it."""
    from airv.engines.config import unsupported

    hf, vl, api = Backend.HF, Backend.VLLM, Backend.OPENAI
    beam = Decoding(beam_width=2, length_penalty=2.0)
    assert unsupported(hf, beam, adapter=True) is None
    assert unsupported(vl, beam) is None
    assert "no LoRA adapters" in (unsupported(vl, beam, adapter=True) or "")
    assert "not offered through the openai engine" in (unsupported(api, beam) or "")
    assert "dfs" in (unsupported(api, Decoding(dfs_threshold=0.1)) or "")
    for name in ("presence_penalty", "frequency_penalty"):
        sampling = Decoding(temperature=0.7, **{name: 0.1})  # type: ignore[arg-type]
        assert name in (unsupported(hf, sampling) or "")
        assert unsupported(vl, sampling) is None and unsupported(api, sampling) is None
    assert unsupported(hf, Decoding(temperature=0.7, repetition_penalty=1.1)) is None
    assert "quantization" in (unsupported(hf, Decoding(), quantization="awq") or "")
    assert "quantization" in (unsupported(api, Decoding(), quantization="awq") or "")
    assert unsupported(vl, Decoding(), quantization="awq") is None


def test_cli_flags_reach_the_config(tmp_path: Path, tiny_model: Path) -> None:
    from airv.cli import build_parser
    from airv.run.options import build_run_config

    challenges = tmp_path / "c.json"
    g: Grid = ((1,),)
    dump_challenges([Task("t", (Pair(g, g),), (g,))], challenges)
    base = ["run", "--challenges", str(challenges), "--model", str(tiny_model), "--out", "o"]
    args = build_parser().parse_args(
        [
            *base,
            *("--temperature", "0.7", "--presence-penalty", "0.3"),
            *("--frequency-penalty", "0.2", "--quantization", "fp8"),
        ]
    )
    cfg = build_run_config(args)
    assert (cfg.sampling.presence_penalty, cfg.sampling.frequency_penalty) == (0.3, 0.2)
    assert cfg.engine.quantization == "fp8"
    args = build_parser().parse_args([*base, "--beam-width", "2", "--length-penalty", "1.5"])
    assert build_run_config(args).sampling.length_penalty == 1.5
    hf = ["--engine", "hf", "--temperature", "0.7", "--presence-penalty", "0.3"]
    args = build_parser().parse_args([*base, *hf])
    with pytest.raises(ConfigError, match="presence_penalty"):
        build_run_config(args)


@pytest.mark.engine
def test_hf_generate_kwargs_carry_length_penalty(tiny_model: Path) -> None:
    from airv.engines.hf_engine import HfEngine

    cfg = EngineConfig(model=tiny_model, backend=Backend.HF, dtype=Dtype.FLOAT32)
    engine = HfEngine(cfg, Decoding(beam_width=2, length_penalty=0.7))
    try:
        kwargs = engine._generation_kwargs(5, Decoding(beam_width=2, length_penalty=0.7))
        assert kwargs["length_penalty"] == 0.7 and kwargs["num_beams"] == 2
    finally:
        engine.close()
