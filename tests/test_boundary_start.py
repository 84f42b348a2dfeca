"""The Kaggle boundary while vLLM starts: `airv run` processes signalled, killed or out of
budget before their engine is up, with vLLM's engine core in processes of its own, as
deployed. Apart from tests/test_boundary.py (whose helpers it shares) so that the suite's two
workers each take one file of these slow runs."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from airv.core.submission import validate_submission
from airv.core.tasks import load_challenges
from test_boundary import (
    _airv_run,
    _challenges,
    _engine_core,
    _names,
    _none_left,
    _summary,
    _wait_for,
    tag,
)

__all__ = ["tag"]  # the fixture, shared


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.usefixtures("vllm_processes")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_process_outlives_a_run_ended_while_vllm_starts(
    tmp_path: Path, tiny_model: Path, tag: str, sig: signal.Signals
) -> None:
    """SIGTERM while vLLM's EngineCore is starting: the run writes its files and kills the
    engine's process groups. SIGKILL of the run itself (nothing of it runs any more): its
    engine worker gets the parent-death signal and ends its whole group, EngineCore included.
    Either way no process of the run is left (they once stayed as orphans holding 4 GB)."""
    ch = _challenges(tmp_path, 3)
    out = tmp_path / "out"
    run = _airv_run(
        tag, "--challenges", str(ch), "--model", str(tiny_model), "--out", str(out),
        "--engine", "vllm", "--time-budget", "15m", "--compile",
    )  # fmt: skip
    try:
        _wait_for(lambda: _engine_core(tag), 180, "vLLM's EngineCore")
        run.send_signal(sig)
        _, err = run.communicate(timeout=60)
    finally:
        run.kill()
    left = _none_left(tag)
    assert left == [], _names(left)
    if sig == signal.SIGTERM:
        assert run.returncode == 0, err[-3000:]
        assert _summary(out)["stopped_by"] == "SIGTERM"
        assert validate_submission(out / "submission.json", load_challenges(ch, strict=False)) == []


@pytest.mark.slow
@pytest.mark.engine
@pytest.mark.usefixtures("vllm_processes")
def test_the_deadline_is_a_wall_while_the_engine_starts(
    tmp_path: Path, tiny_model: Path, tag: str
) -> None:
    """Three runs at once, each with a budget its compiled vLLM engine cannot start in: each
    ends before process start + budget (it once overran by 20 s, closing an engine that was
    still starting; with a reserve of 5 s, by 0.5 to 1.5 s under the suite's load), with a valid
    submission and no process left. 32 s: the reserve's floor whole (a quarter of the budget
    at most)."""
    budget = 32
    ch = _challenges(tmp_path, 120)
    runs = []
    for i in range(3):
        out = tmp_path / f"out{i}"
        started = time.monotonic()
        proc = _airv_run(
            tag, "--challenges", str(ch), "--model", str(tiny_model), "--out", str(out),
            "--engine", "vllm", "--time-budget", f"{budget}s", "--compile",
        )  # fmt: skip
        runs.append((proc, out, started))
    try:
        for proc, out, started in runs:
            _, err = proc.communicate(timeout=budget + 60)
            elapsed = time.monotonic() - started
            assert proc.returncode == 0, err[-3000:]
            assert elapsed < budget, f"ended {elapsed:.1f}s after its start ({budget}s budget)"
            assert _summary(out)["stopped_by"] == "deadline"
            challenges = load_challenges(ch, strict=False)
            assert validate_submission(out / "submission.json", challenges) == []
    finally:
        for proc, _, _ in runs:
            proc.kill()
    left = _none_left(tag)
    assert left == [], _names(left)
