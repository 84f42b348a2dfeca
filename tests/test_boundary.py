"""Kaggle's boundary, through real runs: signals, the deadline as a wall, one run per output
folder, resumes that must match, and logs torn by a kill.

Runs that are signalled or killed are `airv run` processes of their own, tagged by an
environment variable that every process they start inherits (engine workers, vLLM's EngineCore
and its workers), so a test can tell that none of them is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from airv.cli import main
from airv.core.submission import validate_submission
from airv.core.tasks import Pair, Task, dump_challenges, load_challenges
from airv.run.predictions import read_predictions

TAG = "AIRV_TEST_TAG"


def _tasks(n: int, side: int = 3) -> list[Task]:
    out = []
    for i in range(n):
        g = tuple(tuple((r + c + i) % 10 for c in range(side)) for r in range(side))
        out.append(Task(f"t{i:04d}", (Pair(g, g), Pair(g, g)), (g,)))
    return out


def _challenges(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "challenges.json"
    dump_challenges(_tasks(n), path)
    return path


def _tagged(tag: str) -> list[int]:
    """Every process whose environment carries this tag."""
    needle = f"{TAG}={tag}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in env.split(b"\0") and state not in ("Z", "X"):
            out.append(int(entry))
    return out


def _names(pids: list[int]) -> list[str]:
    names = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                names.append(f.read().replace(b"\0", b" ").decode(errors="replace")[:80])
        except OSError:
            continue
    return names


def _none_left(tag: str, within: float = 20.0) -> list[int]:
    """Wait up to `within` seconds for every tagged process to end; returns those left."""
    deadline = time.monotonic() + within
    while (left := _tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.25)
    return left


@pytest.fixture
def tag() -> Iterator[str]:
    t = uuid.uuid4().hex
    yield t
    for pid in _tagged(t):  # a failed test must not leave its processes to the next one
        os.kill(pid, signal.SIGKILL)


def _airv_run(tag: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, TAG: tag}
    return subprocess.Popen(
        [sys.executable, "-m", "airv", "run", "--no-progress", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _summary(out: Path) -> dict[str, object]:
    return orjson.loads((out / "run_summary.json").read_bytes())  # type: ignore[no-any-return]


def _engine_core(tag: str) -> bool:
    return any("EngineCore" in n or "VLLM" in n for n in _names(_tagged(tag))) or any(
        _comm(p).startswith("VLLM") for p in _tagged(tag)
    )


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


@pytest.mark.engine
@pytest.mark.usefixtures("vllm_processes")
def test_sigterm_mid_run_writes_everything_and_a_second_run_is_refused(
    tmp_path: Path, tiny_model: Path, tag: str
) -> None:
    """A run killed by SIGTERM (Kaggle's limit) stops as its deadline would: submission.json
    and run_summary.json written (stopped_by SIGTERM), exit 0, no engine process left. While
    it ran, a second run on its folder was refused, naming the folder and its pid."""
    ch = _challenges(tmp_path, 30)
    out = tmp_path / "out"
    args = ("--challenges", str(ch), "--model", str(tiny_model), "--out", str(out))
    first = _airv_run(tag, *args, "--engine", "hf", "--time-budget", "15m")
    try:
        log = out / "predictions.jsonl"
        _wait_for(lambda: log.exists() and log.stat().st_size > 0, 240, "a first answer")
        second = subprocess.run(
            [sys.executable, "-m", "airv", "run", "--no-progress", *args, "--engine", "hf"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert second.returncode == 2, second.stderr[-2000:]
        assert str(out) in second.stderr and f"pid {first.pid}" in second.stderr
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 0, err[-3000:]
    summary = _summary(out)
    assert summary["stopped_by"] == "SIGTERM"
    assert validate_submission(out / "submission.json", load_challenges(ch, strict=False)) == []
    assert _none_left(tag) == []


@pytest.mark.engine
@pytest.mark.usefixtures("cli_clock")
def test_a_resume_must_match_and_a_torn_line_is_cut(
    tmp_path: Path, bigram_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ch = _challenges(tmp_path, 2)
    out = tmp_path / "out"
    base = [
        "run", "--no-progress", "--engine", "hf", "--challenges", str(ch),
        "--model", str(bigram_model), "--out", str(out), "--no-colour-permutations",
    ]  # fmt: skip
    assert main([*base, "--first-round", "2", "--max-augmentations", "2"]) == 0
    first, _ = read_predictions(out / "predictions.jsonl")
    assert len(first) == 4
    # Another views policy: refused, naming what changed and the way out.
    capsys.readouterr()
    assert main([*base, "--first-round", "2", "--max-augmentations", "2", "--seed", "7"]) == 2
    err = capsys.readouterr().err
    assert "views" in err and "--fresh" in err and str(out) in err
    # A kill mid-append left half a record: cut (and counted) before this run appends, so
    # the next record is not swallowed with it.
    log = out / "predictions.jsonl"
    whole = log.read_bytes()
    log.write_bytes(whole + whole.splitlines()[0][:40])
    more = ["--first-round", "2", "--per-round", "2", "--max-augmentations", "4"]
    assert main([*base, *more]) == 0
    summary = _summary(out)
    assert summary["damaged_log_lines"] == 1 and summary["resumed_predictions"] == 4
    records, damaged = read_predictions(log)
    assert damaged == 0 and len(records) == 8
    # --fresh starts over with the new settings.
    assert (
        main([*base, "--first-round", "2", "--max-augmentations", "2", "--seed", "7", "--fresh"])
        == 0
    )
    records, _ = read_predictions(log)
    assert len(records) == 4 and _summary(out)["resumed_predictions"] == 0
    assert {r.aug for r in records} != {r.aug for r in first}
