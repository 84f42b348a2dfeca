"""The command line frame, the shape every subcommand shares, and the validate/score
subcommands, driven through main([...])."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from airv.cli import COMMANDS, main

CHALLENGES = {
    "a": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1]]}]},
    "b": {
        "train": [{"input": [[1]], "output": [[2]]}],
        "test": [{"input": [[1]]}, {"input": [[2]]}],
    },
}
SOLUTIONS = {"a": [[[2]]], "b": [[[3]], [[4, 4]]]}


def attempts(a1: list[list[int]], a2: list[list[int]]) -> dict[str, list[list[int]]]:
    return {"attempt_1": a1, "attempt_2": a2}


GOOD_SUB = {
    "a": [attempts([[2]], [[0]])],
    "b": [attempts([[0]], [[3]]), attempts([[4]], [[4], [4]])],
}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / f"{name}.json" for name in ("challenges", "solutions", "sub")}
    paths["challenges"].write_bytes(orjson.dumps(CHALLENGES))
    paths["solutions"].write_bytes(orjson.dumps(SOLUTIONS))
    paths["sub"].write_bytes(orjson.dumps(GOOD_SUB))
    return paths


def test_validate_ok(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["validate", str(files["sub"]), "--challenges", str(files["challenges"])])
    out = capsys.readouterr().out
    assert code == 0
    assert out == f"{files['sub']}: OK, 2 tasks, 3 test outputs\n"


def test_validate_prints_each_problem_and_exits_1(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files["sub"].write_bytes(orjson.dumps({"b": [attempts([[0]], [[True]])], "x": []}))
    code = main(["validate", str(files["sub"]), "--challenges", str(files["challenges"])])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert lines == [
        "task a: missing",
        "task b: 1 test entries, expected 2",
        "task b: test entry 0 attempt_2 row 0 cell 0 is a boolean (True), not an int",
        "task x: not in the challenge file",
        f"{files['sub']}: INVALID, 4 problem(s)",
    ]


def test_score_prints_both_scores_and_writes_per_task(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out_path = files["sub"].parent / "per_task.json"
    code = main(
        ["score", str(files["sub"]), "--solutions", str(files["solutions"]), "--out", str(out_path)]
    )
    out = capsys.readouterr().out
    assert code == 0
    # a: right; b: first right (attempt_2), second wrong (4x1 vs 1x2) -> 2/3 and (1 + 1/2) / 2.
    assert "kaggle score: 0.6667 (2/3 test outputs)" in out
    assert "task average: 0.7500 (over 2 tasks)" in out
    data = orjson.loads(out_path.read_bytes())
    assert data["per_task"] == {"a": [True], "b": [True, False]}
    assert data["kaggle"] == 2 / 3
    assert data["task_average"] == 0.75


def test_score_without_out_writes_nothing(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["score", str(files["sub"]), "--solutions", str(files["solutions"])]) == 0
    assert sorted(p.name for p in files["sub"].parent.iterdir()) == [
        "challenges.json",
        "solutions.json",
        "sub.json",
    ]


def test_airv_error_becomes_message_and_exit_code(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bad = files["solutions"].parent / "bad_solutions.json"
    bad.write_bytes(orjson.dumps({"a": [[[1, 2], [3]]]}))
    code = main(["score", str(files["sub"]), "--solutions", str(bad)])
    captured = capsys.readouterr()
    assert code == 2  # InputError.exit_code
    assert captured.out == ""
    assert captured.err == (f"airv: error: {bad}: task a: [0] row 1 has 1 cells, row 0 has 2\n")


def test_missing_files_are_errors_not_tracebacks(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    absent = files["sub"].parent / "absent.json"
    assert main(["validate", str(absent), "--challenges", str(files["challenges"])]) == 2
    assert capsys.readouterr().err.startswith(f"airv: error: {absent}: cannot read submission")
    assert main(["validate", str(files["sub"]), "--challenges", str(absent)]) == 2
    assert capsys.readouterr().err.startswith(f"airv: error: {absent}: cannot read challenge file")
    assert main(["score", str(absent), "--solutions", str(files["solutions"])]) == 2
    assert "cannot read submission" in capsys.readouterr().err


def test_invalid_challenge_file_is_an_error(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files["challenges"].write_bytes(b"[1]")
    assert main(["validate", str(files["sub"]), "--challenges", str(files["challenges"])]) == 2
    assert "must be a JSON object" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["nonsense"], ["validate", "x.json"], ["score", "x.json"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    assert "usage: airv" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        ([], ["validate", "score", "--version"]),
        (
            ["validate"],
            ["SUBMISSION", "--challenges FILE", "challenge file the submission answers"],
        ),
        (["score"], ["SUBMISSION", "--solutions FILE", "--out FILE", "per-test-output results"]),
    ],
)
def test_help_explains_each_option(
    argv: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for fragment in fragments:
        assert fragment in out


def test_every_command_has_a_help_that_renders(capsys: pytest.CaptureFixture[str]) -> None:
    """`airv CMD --help` for every command (argparse expands % in help texts: a bare one
    crashed `airv run --help`)."""
    import argparse

    from airv.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(sub.choices) >= 8
    for name in sub.choices:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0, name
        assert f"usage: airv {name}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--decode", "--dfs-threshold", "--endpoint", "--inflight", "--stall-timeout"):
        assert flag in out
    assert "5% of the budget" in out


def _unwrapped(text: str) -> str:
    # argparse rewraps descriptions, breaking lines at spaces and after hyphens.
    return "".join(text.split())


@pytest.mark.parametrize("name", [name for name, _ in COMMANDS])
def test_every_command_is_a_module_of_one_shape(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each subcommand is a module with HELP, DESCRIPTION, add_arguments and main, registered
    the same way: its HELP in `airv --help`, its DESCRIPTION in `airv NAME --help`, its main
    as the handler."""
    import argparse

    from airv.cli import build_parser

    command = dict(COMMANDS)[name]
    assert callable(command.add_arguments) and callable(command.main)
    assert command.HELP and "\n" not in command.HELP
    assert command.DESCRIPTION
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(sub.choices) == [n for n, _ in COMMANDS]
    assert sub.choices[name].get_default("func") is command.main
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert _unwrapped(command.HELP) in _unwrapped(capsys.readouterr().out)
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: airv {name}")
    assert _unwrapped(command.DESCRIPTION) in _unwrapped(out)


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    """A new Python process, with this checkout's airv first on its path."""
    src = Path(__file__).resolve().parents[1] / "src"
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
        check=False,
    )


def test_the_command_line_starts_without_the_engines() -> None:
    """`airv --help` builds every subcommand's parser; none may import torch, vLLM or
    transformers to do it (the pipeline and the engines load when a command runs)."""
    code = (
        "import sys; from airv.cli import build_parser; build_parser(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'vllm', 'transformers'}))"
    )
    result = _python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_python_dash_m_airv_runs(files: dict[str, Path]) -> None:
    result = _python("-m", "airv", "validate", str(files["sub"]), "--challenges",
                     str(files["challenges"]))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "OK, 2 tasks, 3 test outputs" in result.stdout


@pytest.mark.parametrize("good", [True, False])
def test_the_process_ends_when_the_command_returns(
    files: dict[str, Path], tmp_path: Path, good: bool
) -> None:
    """`airv` and `python -m airv` end the process as the command returns: its output is all
    there and its exit code kept, and Python's teardown (an atexit hook stands for it) never
    runs: with torch loaded it took seconds of a run's budget after the run had written."""
    sub = files["sub"] if good else tmp_path / "missing.json"
    code = (
        "import atexit, sys; atexit.register(print, 'teardown ran'); "
        "from airv.cli import entry; "
        f"sys.argv = ['airv', 'validate', {str(sub)!r}, '--challenges', "
        f"{str(files['challenges'])!r}]; entry()"
    )
    result = _python("-c", code)
    assert "teardown ran" not in result.stdout
    if good:
        assert result.returncode == 0, result.stderr
        assert result.stdout.rstrip().endswith("OK, 2 tasks, 3 test outputs"), result.stdout
    else:
        assert result.returncode != 0
        assert "missing.json" in result.stderr
