"""`airv report`: the data embedded in the page, and the page itself in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from airv.cli import main
from airv.core.submission import build_submission, write_submission
from airv.core.tasks import (
    Pair,
    Task,
    dump_challenges,
    dump_solutions,
    load_challenges,
    solutions_beside,
)
from airv.core.types import Grid, TaskId, Unit
from airv.core.voting import Candidate, vote
from airv.run.config import SCHEDULE_FILE
from airv.run.predictions import Prediction, append_predictions
from airv.run.schedule import Journal, Pick, Stop
from airv.run.summary import RunSummary
from airv.tools.report import REPORT_FILE

A: Grid = ((1, 2), (3, 4))
B: Grid = ((5, 5), (5, 5))
C: Grid = ((7,),)
D: Grid = ((8, 8, 8),)


def _task(task_id: TaskId, n_tests: int = 1) -> Task:
    return Task(task_id, (Pair(((1,),), ((2,),)), Pair(((3, 3),), ((4, 4),))), (((1,),),) * n_tests)


def _pred(
    task_id: TaskId,
    grid: Grid | None,
    *,
    test: int = 0,
    rnd: int = 1,
    reject: str | None = None,
    logprob: float = -1.0,
    aug: str = "id",
) -> Prediction:
    return Prediction(
        task_id=task_id,
        test_index=test,
        aug=aug,
        text="",
        grid=grid,
        reject=reject,
        logprob=logprob,
        tokens=4,
        prompt_tokens=100,
        finish="stop",
        round=rnd,
        seconds=0.25,
    )


# Six tasks: two solved, three unsolved, one without a known solution.
TASKS = [
    _task("t_solved"),  # right only once round 2 arrives
    _task("t_wrong"),
    _task("t_two", n_tests=2),  # test 0 right, test 1 wrong
    _task("t_second"),  # right by attempt_2
    _task("t_none"),  # no predictions: fallback [[0]]
    _task("t_nosol"),  # not in the solution file
]
SOLUTIONS = {
    "t_solved": (A,),
    "t_wrong": (A,),
    "t_two": (A, B),
    "t_second": (A,),
    "t_none": (A,),
}
PREDICTIONS = [
    _pred("t_solved", B, rnd=1),
    _pred("t_solved", A, rnd=2),
    _pred("t_solved", A, rnd=2),
    _pred("t_solved", None, rnd=2, reject="truncated"),
    _pred("t_wrong", C),
    _pred("t_wrong", C),
    _pred("t_wrong", D),
    _pred("t_wrong", None, reject="ragged"),
    _pred("t_wrong", None, reject="truncated", rnd=2),
    _pred("t_two", A, test=0),
    _pred("t_two", C, test=1),
    _pred("t_second", C, logprob=-0.5),
    _pred("t_second", A, logprob=-2.0),
    _pred("t_nosol", B),
]
STATUS = {
    "t_solved": "solved",
    "t_wrong": "unsolved",
    "t_two": "unsolved",
    "t_second": "solved",
    "t_none": "unsolved",
    "t_nosol": "unknown",
}


def _votes(preds: list[Prediction]) -> dict[Unit, tuple[Grid, Grid]]:
    cands: defaultdict[Unit, list[Candidate]] = defaultdict(list)
    for p in preds:
        if p.candidate is not None:
            cands[(p.task_id, p.test_index)].append(p.candidate)
    out = {}
    for unit, cs in cands.items():
        v = vote(cs)
        assert v is not None
        out[unit] = (v.attempt_1, v.attempt_2)
    return out


def make_run(
    root: Path,
    tasks: list[Task],
    solutions: dict[TaskId, tuple[Grid, ...]] | None,
    predictions: list[Prediction],
) -> Path:
    """A run directory as `airv run` leaves it, beside a Kaggle-named challenge file."""
    data = root / "data"
    data.mkdir()
    challenges_path = data / "demo_challenges.json"
    dump_challenges(tasks, challenges_path)
    if solutions is not None:
        dump_solutions(solutions, data / "demo_solutions.json")
    out = root / "out"
    out.mkdir()
    append_predictions(out / "predictions.jsonl", predictions)
    challenges = load_challenges(challenges_path, strict=True)
    write_submission(out / "submission.json", build_submission(challenges, _votes(predictions)))
    summary = RunSummary(challenges=str(challenges_path), tasks=len(tasks))
    for p in predictions:
        summary.add_prompt(p.task_id, p.prompt_tokens, p.seconds)
        summary.add_prediction(p)
    summary.stopped_by = "done"
    summary.write(out / "run_summary.json")
    return out


def embedded(html: str) -> dict[str, Any]:
    m = re.search(
        r'<script type="application/json" id="airv-data">(.*?)</script>', html, flags=re.S
    )
    assert m is not None, "no embedded data"
    data: dict[str, Any] = orjson.loads(m.group(1))
    return data


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path, TASKS, SOLUTIONS, PREDICTIONS)


def test_report_embeds_tasks_and_solved_flags(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{run_dir / REPORT_FILE}: 6 tasks; solutions: " in out
    data = embedded((run_dir / REPORT_FILE).read_text(encoding="utf-8"))
    tasks = {t["id"]: t for t in data["tasks"]}
    assert [t["id"] for t in data["tasks"]] == [t.id for t in TASKS]
    assert {k: t["status"] for k, t in tasks.items()} == STATUS
    assert data["has_solutions"] is True
    assert "found beside the challenge file" in data["solutions_note"]
    assert tasks["t_two"]["n_correct"] == 1 and tasks["t_two"]["n_tests"] == 2
    assert [t["correct"] for t in tasks["t_two"]["tests"]] == [True, False]
    assert tasks["t_nosol"]["n_correct"] is None
    # Train pairs and grids travel as one digit string per row.
    assert tasks["t_wrong"]["train"] == [[["1"], ["2"]], [["33"], ["44"]]]
    assert tasks["t_wrong"]["tests"][0]["truth"] == ["12", "34"]
    # Top tallies of the recomputed vote: grid, votes, mean logprob per token.
    top = tasks["t_wrong"]["tests"][0]["top"]
    assert [(t["grid"], t["votes"], t["ok"]) for t in top] == [
        (["7"], 2, False),
        (["888"], 1, False),
    ]
    assert top[0]["lp"] == pytest.approx(-0.25)
    assert tasks["t_wrong"]["margin"] == 1
    assert tasks["t_wrong"]["rejects"] == {"ragged": 1, "truncated": 1}
    assert tasks["t_wrong"]["completions"] == 5
    assert tasks["t_wrong"]["tokens"] == 5 * 100 + 5 * 4
    assert tasks["t_wrong"]["seconds"] == pytest.approx(5 * 0.25)
    # t_second: the wrong grid wins on logprob, the right one is attempt_2.
    second = tasks["t_second"]["tests"][0]
    assert second["attempts"] == [["7"], ["12", "34"]] and second["correct"] is True
    assert tasks["t_none"]["margin"] is None and tasks["t_none"]["tests"][0]["top"] == []
    assert tasks["t_none"]["tests"][0]["attempts"] == [["0"], ["0"]]
    assert data["rejections"] == {"truncated": 2, "ragged": 1}
    # Round 1: only t_two test 0 right (of 6 outputs with solutions); round 2 adds t_solved.
    # t_second is right from round 1 too (attempt_2).
    assert [(r["round"], r["n_correct"], r["n_outputs"]) for r in data["rounds"]] == [
        (1, 2, 6),
        (2, 3, 6),
    ]
    assert data["score"] == {"kaggle": 0.5, "n_correct": 3, "n_outputs": 6}


def test_report_without_solutions_says_so(tmp_path: Path) -> None:
    out = make_run(tmp_path, TASKS, None, PREDICTIONS)
    assert main(["report", str(out)]) == 0
    html = (out / REPORT_FILE).read_text(encoding="utf-8")
    data = embedded(html)
    assert data["has_solutions"] is False
    assert data["solutions_note"].startswith("no solutions: none given and no *_solutions.json")
    assert {t["status"] for t in data["tasks"]} == {"unknown"}
    assert data["rounds"] == [] and data["score"] is None


def test_report_options_override_paths(run_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    challenges = other / "tasks.json"  # not Kaggle-named: no solutions are guessed
    dump_challenges(TASKS[:2], challenges)
    sols = other / "truth.json"
    dump_solutions({"t_solved": (B,)}, sols)
    page = tmp_path / "view.html"
    args = ["report", str(run_dir), "--challenges", str(challenges), "--out", str(page)]
    assert main([*args, "--solutions", str(sols), "--mode", "cell"]) == 0
    data = embedded(page.read_text(encoding="utf-8"))
    assert data["mode"] == "cell"
    assert [(t["id"], t["status"]) for t in data["tasks"]] == [
        ("t_solved", "solved"),  # B is attempt_2 of the submitted grid vote
        ("t_wrong", "unknown"),
    ]
    assert data["foreign_predictions"] == 5  # predictions of the tasks not in this file
    assert not (run_dir / REPORT_FILE).exists()


def test_report_shows_a_vote_that_differs_from_the_submission(run_dir: Path) -> None:
    sub = orjson.loads((run_dir / "submission.json").read_bytes())
    sub["t_wrong"] = [{"attempt_1": [[9]], "attempt_2": [[9]]}]
    (run_dir / "submission.json").write_bytes(orjson.dumps(sub))
    assert main(["report", str(run_dir)]) == 0
    data = embedded((run_dir / REPORT_FILE).read_text(encoding="utf-8"))
    test = next(t for t in data["tasks"] if t["id"] == "t_wrong")["tests"][0]
    assert test["attempts"] == [["9"], ["9"]]
    assert test["vote_attempts"] == [["7"], ["888"]] and test["vote_correct"] is False
    same = next(t for t in data["tasks"] if t["id"] == "t_solved")["tests"][0]
    assert "vote_attempts" not in same


def test_markup_in_task_ids_cannot_end_the_script(tmp_path: Path) -> None:
    evil = "</script><b>x</b><!--"
    out = make_run(tmp_path, [_task(evil)], {evil: (A,)}, [_pred(evil, A)])
    assert main(["report", str(out)]) == 0
    html = (out / REPORT_FILE).read_text(encoding="utf-8")
    assert "<b>x</b>" not in html
    assert [t["id"] for t in embedded(html)["tasks"]] == [evil]


def test_report_errors_name_the_problem(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = orjson.loads((run_dir / "run_summary.json").read_bytes())
    summary["challenges"] = str(run_dir / "gone_challenges.json")
    (run_dir / "run_summary.json").write_bytes(orjson.dumps(summary))
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "gone_challenges.json" in err and "--challenges" in err
    assert main(["report", str(run_dir / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err


def write_schedule(out: Path) -> None:
    """schedule.jsonl as the gain schedule writes it, for some of TASKS' test inputs."""
    journal = Journal(out / SCHEDULE_FILE)
    t = 0.0

    def picks(unit: Unit, *gains: float) -> None:
        nonlocal t
        for n, g in enumerate(gains):
            t += 0.5
            journal.picked(t, Pick(unit, g, 0.25), views=n, owed=0)

    picks(("t_solved", 0), 0.5, 0.25, 0.031)
    journal.stopped(t, ("t_solved", 0), Stop.SETTLED, 3)
    picks(("t_two", 0), 0.5)
    journal.stopped(t, ("t_two", 0), Stop.VIEWS, 1)
    picks(("t_two", 1), 0.5, 0.3)  # no stop: the run ended first
    journal.stopped(t, ("t_wrong", 0), Stop.FAILED, 0)  # failed before any pick
    picks(("t_wrong", 5), 0.5)  # a test index the challenge file does not have
    journal.close()


def test_report_shows_why_each_test_input_stopped(run_dir: Path) -> None:
    write_schedule(run_dir)
    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / REPORT_FILE).read_text(encoding="utf-8")
    data = embedded(html)
    assert data["has_schedule"] is True
    tasks = {t["id"]: t for t in data["tasks"]}
    assert tasks["t_solved"]["tests"][0]["schedule"] == {
        "views": 3,
        "first_gain": 0.5,
        "last_gain": 0.031,
        "stop": "settled",
        "promise": 1.0,
    }
    assert [t["schedule"] for t in tasks["t_two"]["tests"]] == [
        {"views": 1, "first_gain": 0.5, "last_gain": 0.5, "stop": "views", "promise": 1.0},
        {"views": 2, "first_gain": 0.5, "last_gain": 0.3, "stop": None, "promise": 1.0},
    ]
    assert tasks["t_wrong"]["tests"][0]["schedule"] == {
        "views": 0,
        "first_gain": None,
        "last_gain": None,
        "stop": "failed",
        "promise": None,
    }
    assert len(tasks["t_wrong"]["tests"]) == 1  # test 5 of the journal is not shown
    assert {k: t["stopped"] for k, t in tasks.items()} == {
        "t_solved": "settled",
        "t_wrong": "failed",
        "t_two": "views, deadline",
        "t_second": None,
        "t_none": None,
        "t_nosol": None,
    }
    assert tasks["t_none"]["tests"][0]["schedule"] is None
    # The page draws the line from those fields.
    assert "stopped: " in html and "function scheduleText" in html
    # Engine seconds stay per task.
    assert tasks["t_solved"]["seconds"] == pytest.approx(4 * 0.25)


def test_report_without_schedule(run_dir: Path) -> None:
    assert not (run_dir / SCHEDULE_FILE).exists()  # older runs, uniform runs
    assert main(["report", str(run_dir)]) == 0
    data = embedded((run_dir / REPORT_FILE).read_text(encoding="utf-8"))
    assert data["has_schedule"] is False
    for task in data["tasks"]:
        assert task["stopped"] is None
        assert all(t["schedule"] is None for t in task["tests"])


def test_solutions_beside(tmp_path: Path) -> None:
    ch = tmp_path / "arc-agi_evaluation_challenges.json"
    assert solutions_beside(ch) is None
    (tmp_path / "arc-agi_evaluation_solutions.json").write_text("{}")
    assert solutions_beside(ch) == tmp_path / "arc-agi_evaluation_solutions.json"
    assert solutions_beside(tmp_path / "tasks.json") is None


# ---- the page in a real browser -------------------------------------------------------------

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (`make browser` installs Debian's)"
)


def chromium(page: Path, fragment: str, profile: Path, *extra: str) -> str:
    """Load page#fragment headless, let its scripts run, and return stdout (the DOM if asked)."""
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *extra,
        f"{page.as_uri()}#{fragment}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def shown(dom: str) -> tuple[int, int, int, list[str]]:
    """(shown count, total count, rendered task cards, their ids in page order)."""
    count = re.search(r'<span id="shown-count">(\d+)</span>', dom)
    total = re.search(r'<span id="total-count">(\d+)</span>', dom)
    assert count is not None and total is not None, dom[:2000]
    ids = re.findall(r'<section class="task-card [a-z]+" data-task-id="([^"]*)"', dom)
    return int(count.group(1)), int(total.group(1)), dom.count('class="task-card '), ids


def artifacts(tmp_path: Path) -> Path:
    path = Path(os.environ.get("AIRV_ARTIFACTS", tmp_path))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.slow
@needs_chromium
def test_page_renders_and_filters_in_chromium(run_dir: Path, tmp_path: Path) -> None:
    assert main(["report", str(run_dir)]) == 0
    page = run_dir / REPORT_FILE
    profile = tmp_path / "profile"
    count, total, cards, ids = shown(chromium(page, "", profile, "--dump-dom"))
    assert (count, total, cards) == (6, 6, 6)
    assert ids == [t.id for t in sorted(TASKS, key=lambda t: t.id)]
    count, total, cards, ids = shown(chromium(page, "filter=unsolved", profile, "--dump-dom"))
    assert (count, total, cards) == (3, 6, 3)
    assert sorted(ids) == ["t_none", "t_two", "t_wrong"]
    # Sorted by tokens, most first; a margin filter drops t_none (no votes, no margin).
    _, _, _, ids = shown(chromium(page, "filter=unsolved&sort=tokens&min=0", profile, "--dump-dom"))
    assert ids == ["t_wrong", "t_two"]
    _, _, _, ids = shown(chromium(page, "q=second", profile, "--dump-dom"))
    assert ids == ["t_second"]
    shot = artifacts(tmp_path) / "report.png"
    shot.unlink(missing_ok=True)
    chromium(page, "", profile, f"--screenshot={shot}", "--window-size=1400,2000")
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@needs_chromium
def test_page_shows_stops_and_filters_by_them_in_chromium(run_dir: Path, tmp_path: Path) -> None:
    write_schedule(run_dir)
    assert main(["report", str(run_dir)]) == 0
    page = run_dir / REPORT_FILE
    dom = chromium(page, "stop=deadline", tmp_path / "profile", "--dump-dom")
    _, _, _, ids = shown(dom)
    assert ids == ["t_two"]
    assert "stopped: views · gain 0.500 over 1 view" in dom
    assert "stopped: deadline (the run ended first) · gain 0.500 → 0.300 over 2 views" in dom
    assert "stopped: views, deadline" in dom  # the card's facts


def _random_grid(rng: np.random.Generator) -> Grid:
    h, w = rng.integers(3, 26, size=2)
    return tuple(tuple(int(c) for c in row) for row in rng.integers(0, 10, size=(h, w)))


@pytest.mark.slow
@needs_chromium
def test_400_tasks_stay_light(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tasks, sols, preds = [], {}, []
    for n in range(400):
        tid = f"{n:08x}"
        pairs = tuple(Pair(_random_grid(rng), _random_grid(rng)) for _ in range(3))
        tasks.append(Task(tid, pairs, (_random_grid(rng),)))
        answers = [_random_grid(rng) for _ in range(4)]
        sols[tid] = (answers[3],) if n % 2 else (_random_grid(rng),)
        for k in range(8):
            grid = answers[min(k, 3)] if k % 3 else None
            reject = None if grid is not None else "truncated"
            preds.append(_pred(tid, grid, aug=f"a{k}", rnd=1 + k // 4, reject=reject))
    out = make_run(tmp_path, tasks, sols, preds)
    assert main(["report", str(out)]) == 0
    page = out / REPORT_FILE
    size = page.stat().st_size
    assert size < 5_000_000, f"report is {size:,} bytes"
    profile = tmp_path / "profile"
    count, total, cards, _ = shown(chromium(page, "", profile, "--dump-dom"))
    assert (count, total, cards) == (400, 400, 50)  # one page of cards at a time
    count, _, cards, _ = shown(chromium(page, "filter=solved&per=100", profile, "--dump-dom"))
    data = embedded(page.read_text(encoding="utf-8"))
    n_solved = sum(t["status"] == "solved" for t in data["tasks"])
    assert 0 < n_solved < 400
    assert (count, cards) == (n_solved, min(n_solved, 100))
    shot = artifacts(tmp_path) / "report-400.png"
    shot.unlink(missing_ok=True)
    chromium(page, "sort=time", profile, f"--screenshot={shot}", "--window-size=1400,2000")
    assert shot.is_file()
