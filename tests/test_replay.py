"""`airv replay`: the run's planners on a virtual clock, answered from a recorded run (no
engine: airv.run.replay, airv.tools.replay)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airv.cli import main
from airv.core.augment import ViewPolicy, plan_views
from airv.core.tasks import Pair, Task, dump_challenges, load_challenges
from airv.core.types import Grid
from airv.run.config import RunConfig
from airv.run.predictions import Prediction, append_predictions
from airv.run.promise import Scored, append_promises
from airv.run.replay import Recording, replay
from airv.run.schedule import ViewSchedule

GRID: Grid = ((1, 2, 0), (0, 3, 0), (0, 0, 4))
SECONDS = 0.1  # each recorded view's engine seconds


def _recorded(
    tmp_path: Path, views: dict[str, int], n: int = 1
) -> tuple[Path, Path, list[Prediction]]:
    """A run folder as `airv run --settle-margin 0` leaves it: one task per entry of `views`
    (its test input answered that many times, in the augmentations the rounds ask for, 8 at
    a time); task "agree" always answers GRID (right), any other a new grid each view. `n`
    completions per view. Returns the folder, the solutions file and the predictions."""
    tasks = [Task(t, train=(Pair(GRID, GRID),), test=(GRID,)) for t in views]
    challenges = tmp_path / "challenges.json"
    dump_challenges(tasks, challenges)
    run = tmp_path / "run"
    run.mkdir()
    preds = []
    for task in tasks:
        keys: list[str] = []
        while len(keys) < views[task.id]:
            keys += [a.key for a in plan_views(task, 0, 8, ViewPolicy(), exclude=set(keys))]
        for k, key in enumerate(keys[: views[task.id]]):
            for j in range(n):
                answer = GRID if task.id == "agree" else ((k, j),)
                seconds = SECONDS / n
                preds.append(
                    Prediction(task.id, 0, key, "", answer, None, 0.0, 5, 50, "stop", 1, seconds)
                )
    append_predictions(run / "predictions.jsonl", preds)
    summary = {
        "challenges": str(challenges),
        "settings": {"views": dataclasses.asdict(ViewPolicy()), "augmentations": [8, 8, 32]},
    }
    (run / "run_summary.json").write_bytes(orjson.dumps(summary))
    solutions = tmp_path / "solutions.json"
    solutions.write_bytes(orjson.dumps({t: [GRID] for t in views}))
    return run, solutions, preds


def _rows(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    assert main(["replay", *argv, "--json"]) == 0
    return orjson.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_a_replay_settles_what_agrees_and_stops_at_the_deadline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With 8 prompts in flight, the test input whose answers agree settles after round 1 (8
    views), the other gets all 32: 4 engine seconds, the whole recording; at 1.05 s the
    deadline stops it after 10 views. Both schedules, every view answered as asked."""
    run, solutions, _ = _recorded(tmp_path, {"agree": 32, "never": 32})
    rows = _rows(capsys, str(run), "--solutions", str(solutions), "--budget", "100%", "1.05",
                 "--inflight", "8")  # fmt: skip
    # The default schedule first.
    assert [(r["budget"], r["schedule"]) for r in rows] == [
        ("100%", "gain"), ("100%", "uniform"), ("1.05", "gain"), ("1.05", "uniform"),
    ]  # fmt: skip
    for r in rows[:2]:
        assert (r["prompts"], r["stopped_by"], r["score"], r["correct"]) == (40, "done", 0.5, 1)
        assert r["engine_seconds"] == pytest.approx(40 * SECONDS)
        assert r["budget_seconds"] == pytest.approx(64 * SECONDS)  # the whole recording
        assert (r["substituted"], r["unanswered"]) == (0, 0)
    for r in rows[2:]:
        assert (r["prompts"], r["stopped_by"]) == (10, "deadline")


def test_settle_margin_off_gives_every_view(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, solutions, _ = _recorded(tmp_path, {"agree": 32, "never": 32})
    rows = _rows(capsys, str(run), "--solutions", str(solutions), "--budget", "100%",
                 "--schedule", "uniform", "--settle-margin", "0", "4",
                 "--inflight", "8")  # fmt: skip
    assert [(r["settle_margin"], r["prompts"]) for r in rows] == [(0, 64), (4, 40)]


def test_views_past_the_recording_are_unanswered_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A recording with 8 views of a test input, replayed at 16: the 8 more are unanswered
    (no seconds, no answer), and the table says how to record."""
    run, solutions, _ = _recorded(tmp_path, {"never": 8})
    argv = [str(run), "--solutions", str(solutions), "--budget", "100%", "--schedule",
            "uniform", "--settle-margin", "0", "--max-augmentations", "16"]  # fmt: skip
    (row,) = _rows(capsys, *argv)
    assert (row["prompts"], row["unanswered"], row["stopped_by"]) == (8, 8, "done")
    assert main(["replay", *argv]) == 0
    out = capsys.readouterr().out
    assert "1 test inputs, 8-8 views each" in out and "unanswered" in out
    assert "--settle-margin 0" in out


def test_a_view_sampled_n_times_replays_all_its_answers(tmp_path: Path) -> None:
    _, _, preds = _recorded(tmp_path, {"never": 8}, n=2)
    challenges = load_challenges(tmp_path / "challenges.json", strict=True)
    cfg = RunConfig(
        challenges=tmp_path / "challenges.json", out_dir=tmp_path / "out", settle_margin=0,
        max_augmentations=8, inflight=8,
    )  # fmt: skip
    r = replay(cfg, challenges, Recording(preds), 100.0)
    assert len(r.done) == 16 and {p for _, p in r.done} == set(preds)
    assert r.seconds == pytest.approx(8 * SECONDS)


def test_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, solutions, _ = _recorded(tmp_path, {"agree": 8})
    (tmp_path / "challenges.json").unlink()
    assert main(["replay", str(run), "--solutions", str(solutions)]) == 2
    err = capsys.readouterr().err
    assert "challenges.json" in err and "--challenges" in err
    summary = orjson.loads((run / "run_summary.json").read_bytes())
    (run / "run_summary.json").write_bytes(orjson.dumps({"challenges": summary["challenges"]}))
    assert main(["replay", str(run), "--solutions", str(solutions)]) == 2
    assert "run_summary.json: the run summary has no views and rounds" in capsys.readouterr().err
    (run / "run_summary.json").write_bytes(orjson.dumps({"settings": summary["settings"]}))
    assert main(["replay", str(run), "--solutions", str(solutions)]) == 2
    assert "names no challenge file" in capsys.readouterr().err
    (run / "predictions.jsonl").unlink()
    assert main(["replay", str(run), "--solutions", str(solutions)]) == 2
    assert "predictions.jsonl" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "predictions.jsonl").write_text("")
    assert main(["replay", str(empty), "--solutions", str(solutions)]) == 2
    assert "no predictions to replay" in capsys.readouterr().err


@given(st.floats(0.001, 1000.0))
def test_a_share_of_the_recording_is_a_budget(share: float) -> None:
    from airv.tools.replay import _budget

    assert _budget(f"{share}%") == f"{share}%"


@pytest.mark.parametrize("bad", ["0%", "-5%", "x%", "%", "soon", "5 minutes"])
def test_a_budget_that_cannot_be_read_is_refused(
    bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["replay", str(tmp_path), "--solutions", "s.json", f"--budget={bad}"])
    assert exit_.value.code == 2
    assert repr(bad) in capsys.readouterr().err


def test_the_gain_schedule_replays_its_journal(tmp_path: Path) -> None:
    """The gain planner keeps its journal in the replay's folder, as in a run."""
    _, _, preds = _recorded(tmp_path, {"agree": 32, "never": 32})
    challenges = load_challenges(tmp_path / "challenges.json", strict=True)
    out = tmp_path / "out"
    cfg = RunConfig(
        challenges=tmp_path / "challenges.json", out_dir=out, schedule=ViewSchedule.GAIN,
        inflight=8,
    )  # fmt: skip
    r = replay(cfg, challenges, Recording(preds), 100.0)
    assert len(r.done) == 40
    lines = [orjson.loads(x) for x in (out / "schedule.jsonl").read_bytes().splitlines()]
    stops = {line["task"]: line["stop"] for line in lines if "stop" in line}
    assert stops == {"agree": "settled", "never": "views"}


def test_a_gain_runs_promises_are_asked_by_its_rule_and_order_its_first_round(
    tmp_path: Path,
) -> None:
    """The run's rule, charged at once: a sample (the promise with the fewest tokens, one at
    8 in flight: "agree"'s), then the rest if the sample's rate says it is cheap; the pass puts
    "other", the task the model follows, ahead of the two it cannot. At equal prices and no
    promises, the first round goes by unit; so it does after a sample alone."""
    run, _, preds = _recorded(tmp_path, {"agree": 32, "never": 32, "other": 32})
    challenges = load_challenges(tmp_path / "challenges.json", strict=True)
    cfg = RunConfig(
        challenges=tmp_path / "challenges.json", out_dir=tmp_path / "out",
        schedule=ViewSchedule.GAIN, inflight=8,
    )  # fmt: skip
    plain = replay(cfg, challenges, Recording(preds), 100.0)
    order = ["agree"] * 8 + ["never"] * 8
    assert [p.task_id for _, p in plain.done[:16]] == order

    def promised(seconds: float) -> Recording:
        (run / "promise.jsonl").unlink(missing_ok=True)
        rows = [("agree", -9.0, 90), ("never", -9.0, 100), ("other", 0.0, 100)]
        append_promises(run / "promise.jsonl", [(t, Scored(ll, seconds, n)) for t, ll, n in rows])
        return Recording.read(run / "predictions.jsonl")

    cheap = replay(cfg, challenges, promised(0.5), 100.0)
    assert [p.task_id for _, p in cheap.done[:16]] == ["other"] * 8 + ["agree"] * 8
    assert cheap.done[0][0] == pytest.approx(1.5 + SECONDS)  # the whole pass first
    # A sample whose rate (10 s for 90 tokens) puts the rest (200 tokens) past 10% of the
    # time left is all that is asked: "agree"'s promise alone, which orders nothing (known
    # against the others' unknown, it would put "agree" last).
    dear = replay(cfg, challenges, promised(10.0), 100.0)
    assert [p.task_id for _, p in dear.done[:16]] == order
    assert dear.done[0][0] == pytest.approx(10.0 + SECONDS)
    # A sample that runs past the deadline ends the replay there.
    assert replay(cfg, challenges, promised(10.0), 5.0).done == []


def test_a_task_cap_stops_each_task_where_it_is_reached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each recorded view costs 55 tokens (50 prompt, 5 answer): a cap of 550 tokens stops each
    task at 10 views, its views on their way taken back; in seconds, 0.95 s is 10 views too."""
    run, solutions, _ = _recorded(tmp_path, {"agree": 32, "never": 32})
    rows = _rows(capsys, str(run), "--solutions", str(solutions), "--budget", "100%",
                 "--schedule", "uniform", "--settle-margin", "0", "--inflight", "8",
                 "--task-cap", "550tok", "0.95s")  # fmt: skip
    assert [r["task_cap"] for r in rows] == ["550tok", "0.95s"]
    for r in rows:
        assert (r["prompts"], r["stopped_by"]) == (20, "done")
        assert r["engine_seconds"] == pytest.approx(20 * SECONDS)
    (default,) = _rows(capsys, str(run), "--solutions", str(solutions), "--budget", "100%",
                       "--schedule", "uniform", "--settle-margin", "0")  # fmt: skip
    assert default["task_cap"] == f"{RunConfig.task_cap_shares:g} shares"


def test_views_the_recording_lacks_are_answered_by_its_others_and_counted(
    tmp_path: Path,
) -> None:
    """A recording made with another seed holds other augmentations: each view is answered by
    the test input's next unused recorded view (no answer used twice), and counted."""
    _, _, preds = _recorded(tmp_path, {"never": 8})
    challenges = load_challenges(tmp_path / "challenges.json", strict=True)
    cfg = RunConfig(
        challenges=tmp_path / "challenges.json", out_dir=tmp_path / "out", settle_margin=0,
        max_augmentations=8, inflight=8, views=ViewPolicy(seed=7),
    )  # fmt: skip
    r = replay(cfg, challenges, Recording(preds), 100.0)
    assert sorted(p.aug for _, p in r.done) == sorted(p.aug for p in preds)
    assert r.substituted == 7 and r.unanswered == 0  # the identity comes first in both


@settings(max_examples=100, deadline=None)
@given(
    views=st.lists(st.sampled_from([8, 16]), min_size=1, max_size=3),
    answers=st.lists(st.integers(0, 3), min_size=16, max_size=16),
    schedule=st.sampled_from(list(ViewSchedule)),
    inflight=st.sampled_from([1, 8, 512]),
    budget=st.floats(0.05, 5.0),
)
def test_a_replay_asks_what_was_recorded_and_keeps_to_its_budget(
    tmp_path_factory: pytest.TempPathFactory,
    views: list[int],
    answers: list[int],
    schedule: ViewSchedule,
    inflight: int,
    budget: float,
) -> None:
    """With no settling and the recorded view count, a replay with no deadline answers every
    recorded view once, each with its own recorded answer; under a budget it stops within it,
    and its engine seconds are its answers' recorded seconds."""
    tmp = tmp_path_factory.mktemp("r")
    ids = [f"t{i}" for i in range(len(views))]
    _, _, preds = _recorded(tmp, dict(zip(ids, views, strict=True)))
    # Some agreement among the answers, so the schedules have votes to read.
    preds = [dataclasses.replace(p, grid=((answers[k % 16],),)) for k, p in enumerate(preds)]
    challenges = load_challenges(tmp / "challenges.json", strict=True)
    cfg = RunConfig(
        challenges=tmp / "challenges.json", out_dir=tmp / "out", schedule=schedule,
        settle_margin=0, max_augmentations=max(views), inflight=inflight,
    )  # fmt: skip
    whole = replay(cfg, challenges, Recording(preds), 1e9)
    assert (whole.stopped_by, whole.substituted) == ("done", 0)
    assert Counter(p for _, p in whole.done) == Counter(preds)  # each once
    assert whole.unanswered == sum(max(views) - n for n in views)  # past a shorter recording
    cut = replay(cfg, challenges, Recording(preds), budget)
    assert cut.seconds <= budget + 1e-9
    assert cut.seconds == pytest.approx(sum(p.seconds for _, p in cut.done))
    if abs(budget - whole.seconds) > 1e-6:  # at the boundary, the sum's rounding decides
        assert cut.stopped_by == ("deadline" if budget < whole.seconds else "done")


@pytest.mark.parametrize(
    ("recorded", "replayed"), [(None, "grid"), ("cell", "cell"), ("rescore", "grid")]
)
def test_the_replay_votes_as_the_recorded_run_did(
    recorded: str | None, replayed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The recorded run's vote, but a re-scoring vote (its scores need the model): grid."""
    run, solutions, _ = _recorded(tmp_path, {"never": 8})
    summary = orjson.loads((run / "run_summary.json").read_bytes())
    if recorded is not None:
        summary["settings"]["vote"] = recorded
    (run / "run_summary.json").write_bytes(orjson.dumps(summary))
    assert main(["replay", str(run), "--solutions", str(solutions), "--budget", "100%"]) == 0
    assert f"; {replayed} vote\n" in capsys.readouterr().out
    summary["settings"]["vote"] = "loudest"
    (run / "run_summary.json").write_bytes(orjson.dumps(summary))
    assert main(["replay", str(run), "--solutions", str(solutions)]) == 2
    assert "unknown vote mode 'loudest'" in capsys.readouterr().err
