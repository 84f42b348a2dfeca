"""vLLM's own engine processes failing under a real run, as deployed: the engine core in
processes of its own (the suite otherwise runs it in-process; tests/conftest.py). A file of its
own: its three engine start-ups make it the suite's longest test, and a file runs on one
worker."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import orjson
import pytest

from airv.core.augment import Augmentation
from airv.core.submission import validate_submission
from airv.core.tasks import load_challenges
from airv.engines.config import Backend
from airv.engines.pool import FaultyLanes
from airv.engines.worker import Faults
from airv.run.budget import Clock
from airv.run.pipeline import Run
from airv.run.predictions import read_predictions
from test_pipeline import (
    ANSWER,
    D8_IMAGES,
    _answers,
    _challenges,
    _config,
    _grid,
    _no_process_left,
    _task,
)

pytestmark = pytest.mark.engine


@pytest.mark.slow
@pytest.mark.usefixtures("vllm_processes")
def test_vllm_end_to_end_survives_every_engine_death_and_a_stall(
    tmp_path: Path,
    bigram_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """Through real vLLM, as deployed (its engine core in processes of its own), one run whose
    engine fails twice, each after 6 results: vLLM's own engine process (VLLM::EngineCore) is
    killed with SIGKILL, as an out-of-memory kill does (the worker cannot tell); that process
    is stopped with SIGSTOP (a stall: alive, silent). Each is noticed within seconds (process
    watch, stall watchdog), the process group is ended and the engine restarted; the requests
    in flight go back to the queue. Nothing logged is lost or asked twice, every task is
    answered, the submission is valid and no process is left behind. (A worker that dies
    without a word: test_an_engine_that_raises_or_whose_worker_dies_is_restarted.)"""
    tasks = [_task("task0001"), _task("task0002", n_test=2), _task("task0003", side=3)]
    ch = _challenges(tmp_path, tasks)
    out = tmp_path / "out"
    # A bigram model's engine step takes milliseconds and a live worker beats every second:
    # 10 s of silence is a stall. torch's compile caches start cold, as on a fresh Kaggle or
    # CI machine: vLLM compiles its logprob kernel at the first request that asks for logprobs
    # (15 s here), which in the first requests' step was taken for a stall; the engine now
    # compiles it while it starts (VllmEngine._warm_up). The precompiled headers live in the
    # temporary folder whatever TORCHINDUCTOR_CACHE_DIR says, so that moves too (a short path:
    # vLLM's sockets live there).
    scratch = Path(tempfile.mkdtemp(prefix="airv-"))
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(scratch / "inductor"))
    cfg = _config(ch, out, bigram_model, Backend.VLLM, inflight=6, stall_seconds=10)
    lives = [Faults(kill_engine_after=6), Faults(stop_engine_after=6)]
    t0 = time.monotonic()
    lanes = FaultyLanes(lives)
    run = Run(cfg, lanes=lanes, clock=Clock(t0, 1800, 0))
    assert run.execute() == 0
    assert run.summary.stopped_by == "done"
    assert run.summary.restarts == 2 and len(run.summary.engine_start_seconds) == 3
    killed, stalled = run.summary.engine_failures
    assert "vLLM's engine process" in killed  # seen dead by the parent's watch
    assert "stalled" in stalled
    # Three engine start-ups and one stall timeout, not waits for the deadline.
    starts = sum(run.summary.engine_start_seconds)
    assert time.monotonic() - t0 < starts + cfg.stall_seconds + 120
    assert _no_process_left(lanes.pids)

    challenges = load_challenges(ch, strict=False)
    assert validate_submission(out / "submission.json", challenges) == []
    sub = _answers(out)
    assert sub["broken01"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]
    for t in tasks:
        assert len(sub[t.id]) == len(t.test)
        for entry in sub[t.id]:
            assert _grid(entry["attempt_1"]) in D8_IMAGES
            assert _grid(entry["attempt_2"]) in D8_IMAGES
            assert entry["attempt_1"] != entry["attempt_2"]

    records, damaged = read_predictions(out / "predictions.jsonl")
    assert damaged == 0
    per_unit: dict[tuple[str, int], list[str]] = {}
    for p in records:
        per_unit.setdefault((p.task_id, p.test_index), []).append(p.aug)
        # Each answer was reversed: re-applying its augmentation gives the raw `12` back.
        assert p.grid is not None
        assert Augmentation.from_key(p.aug).apply_grid(p.grid) == ANSWER
    assert sorted(per_unit) == [("task0001", 0), ("task0002", 0), ("task0002", 1), ("task0003", 0)]
    for augs in per_unit.values():
        assert len(augs) == len(set(augs)) == 8  # nothing asked twice after the restarts

    summary = orjson.loads((out / "run_summary.json").read_bytes())
    assert summary["stopped_by"] == "done"
    assert summary["completions"] == 32 and summary["restarts"] == 2
    assert summary["answered_test_inputs"] == 4
    assert summary["rejected_tasks"].keys() == {"broken01"}
    assert set(summary["per_task"]) == {t.id for t in tasks}
    assert summary["tokens_out"] == 32 * 3  # "1", "2", EOS
