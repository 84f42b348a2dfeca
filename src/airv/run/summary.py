"""The run summary: what a user needs to judge a run and tune the per-task budget.

Printed at the end of `airv run` and written as run_summary.json beside submission.json.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from airv.core.jsonio import write_atomic
from airv.core.tasks import Challenges
from airv.core.types import TaskId
from airv.core.units import format_duration, format_size
from airv.run.config import RunConfig
from airv.run.predictions import Prediction


@dataclass
class TaskStats:
    prompts: int = 0
    completions: int = 0
    rejected: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0  # this task's share of engine wall time


@dataclass
class RoundStats:
    round: int
    prompts: int
    seconds: float


@dataclass
class RunSummary:
    challenges: str = ""  # the challenge file's path, for `airv report` / `airv eval`
    decode: str = "greedy"  # how answers were decoded: greedy, sampling, beam or dfs (p > P)
    tasks: int = 0
    test_inputs: int = 0
    answered_test_inputs: int = 0
    prompts: int = 0
    completions: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    engine_seconds: float = 0.0
    total_seconds: float = 0.0
    first_write_seconds: float | None = None
    engine_start_seconds: list[float] = field(default_factory=list)
    writes: int = 0
    rounds: list[RoundStats] = field(default_factory=list)
    rejections: Counter[str] = field(default_factory=Counter)
    scoring_requests: int = 0  # --vote rescore: candidate x augmentation likelihoods computed
    scoring_seconds: float = 0.0
    settled_skips: int = 0  # prompts not run because the vote was already settled
    # --schedule gain: the tasks' promises scored (airv.run.promise) and their engine seconds;
    # whether the whole pass was asked (True also when the sample was every task, or no task
    # had a promise to score; False: its sample alone; None: not decided, or not a gain run).
    promises: int = 0
    promise_seconds: float = 0.0
    promise_pass: bool | None = None
    restarts: int = 0
    engine_failures: list[str] = field(default_factory=list)  # why each engine life ended early
    results_per_worker: list[int] = field(default_factory=list)  # pulled from the shared queue
    stopped_by: str | None = None  # "done", "deadline" or "engine failure"
    error: str | None = None
    resumed_predictions: int = 0
    damaged_log_lines: int = 0
    skipped_tasks: int = 0  # beyond --max-tasks
    rejected_tasks: dict[TaskId, str] = field(default_factory=dict)  # invalid in the file
    failed_tasks: dict[TaskId, str] = field(default_factory=dict)  # valid, but fallback
    per_task: dict[TaskId, TaskStats] = field(default_factory=dict)
    # Test-time fine-tuning: the stage's seconds, and per adapter (task id or "joint") its
    # steps, final loss, seconds and examples, or why it failed (that task keeps the base).
    ttt_seconds: float = 0.0
    ttt: dict[str, dict[str, object]] = field(default_factory=dict)
    # The adapters' folder (--scratch): its largest size seen, and adapters deleted after use.
    scratch_peak_bytes: int = 0
    adapters_deleted: int = 0
    # Tasks per wave of training and answering (adapt.waves; one wave when all fit at once).
    waves: list[int] = field(default_factory=list)
    settings: dict[str, object] = field(default_factory=dict)  # RunConfig.settings()

    @classmethod
    def of(cls, cfg: RunConfig, challenges: Challenges) -> RunSummary:
        """A run's summary before it starts: what it was asked, and how."""
        d = cfg.sampling
        return cls(
            challenges=str(cfg.challenges.resolve()),
            decode=d.decode + (f" (p > {d.dfs_threshold:g})" if d.decode == "dfs" else ""),
            tasks=len(challenges.task_ids),
            rejected_tasks=dict(challenges.rejected),
            settings=cfg.settings(),
        )

    def add_prompt(self, task_id: TaskId, prompt_tokens: int, seconds: float) -> None:
        s = self.per_task.setdefault(task_id, TaskStats())
        s.prompts += 1
        s.tokens_in += prompt_tokens
        s.seconds += seconds
        self.prompts += 1
        self.tokens_in += prompt_tokens
        self.engine_seconds += seconds

    def add_prediction(self, p: Prediction) -> None:
        s = self.per_task.setdefault(p.task_id, TaskStats())
        s.completions += 1
        s.tokens_out += p.tokens
        self.completions += 1
        self.tokens_out += p.tokens
        if p.reject is not None:
            s.rejected += 1
            self.rejections[p.reject] += 1

    def add_round(self, round_no: int, seconds: float, prompts: int) -> None:
        self.rounds.append(RoundStats(round_no, prompts, seconds))

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_out / self.engine_seconds if self.engine_seconds else 0.0

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["rejections"] = dict(self.rejections)
        d["tokens_per_second"] = self.tokens_per_second
        return d

    def write(self, path: Path) -> None:
        write_atomic(path, orjson.dumps(self.to_json(), option=orjson.OPT_INDENT_2))

    def render(self) -> str:
        """A short human-readable report."""
        lines = [
            f"run: {self.stopped_by or 'unfinished'} after {format_duration(self.total_seconds)}"
            + (f" ({self.error})" if self.error else ""),
        ]
        if self.settings.get("recipe"):
            supplied = self.settings.get("from_recipe")
            n = len(supplied) if isinstance(supplied, dict) else 0
            lines.append(
                f"recipe: {self.settings['recipe']} ({n} of its options in effect; "
                "run_summary.json lists them)"
            )
        lines += [
            f"tasks: {self.tasks} ({len(self.rejected_tasks)} invalid in the file, "
            f"{len(self.failed_tasks)} fell back to [[0]], {self.skipped_tasks} skipped)",
            f"test inputs answered: {self.answered_test_inputs}/{self.test_inputs}",
            f"decoding: {self.decode}, prompts: {self.prompts}, completions: {self.completions}, "
            f"tokens in/out: {self.tokens_in:,}/{self.tokens_out:,}, "
            f"{self.tokens_per_second:,.0f} output tokens/s",
            "engine start: "
            + (", ".join(f"{s:.1f}s" for s in self.engine_start_seconds) or "not started")
            + f", restarts: {self.restarts}",
        ]
        for why in self.engine_failures[:10]:
            lines.append(f"  engine failure: {why}")
        if self.first_write_seconds is not None:
            lines.append(f"first submission.json after {self.first_write_seconds:.1f}s")
        if self.rounds:
            lines.append(
                "rounds: "
                + ", ".join(f"#{r.round} {r.prompts} prompts {r.seconds:.1f}s" for r in self.rounds)
            )
        if self.rejections:
            lines.append(
                "rejected outputs: "
                + ", ".join(f"{k} {v}" for k, v in self.rejections.most_common())
            )
        if self.ttt:
            ready = [r for r in self.ttt.values() if r.get("error") is None]
            steps = sorted(int(r["steps"]) for r in ready)  # type: ignore[call-overload]
            lines.append(
                f"test-time fine-tuning: {len(ready)}/{len(self.ttt)} adapters in "
                f"{format_duration(self.ttt_seconds)}"
                + (f", median {steps[len(steps) // 2]} steps" if steps else "")
            )
            lines.append(
                f"adapters on disk: peak {format_size(self.scratch_peak_bytes)}, "
                f"{self.adapters_deleted} deleted after use"
                + (
                    f", in {len(self.waves)} waves of {self.waves} tasks"
                    if len(self.waves) > 1
                    else ""
                )
            )
            verified = [
                r["served"]
                for r in self.ttt.values()
                if str(r.get("served", "")).startswith("verified")
            ]
            if verified:
                lines.append(f"adapters proven served: {len(verified)} ({verified[0]})")
            for name, r in list(self.ttt.items())[:20]:
                error = r.get("error")
                if error is not None:
                    text = str(error)
                    if not text.startswith("adapter not served"):
                        text = f"fine-tuning failed ({text})"
                    lines.append(f"  base model for {name}: {text}")
        if self.scoring_requests:
            lines.append(
                f"re-scoring: {self.scoring_requests} likelihoods in {self.scoring_seconds:.1f}s"
            )
        if self.promises:
            lines.append(
                f"promises: {self.promises} scored in {self.promise_seconds:.1f}s"
                + ("" if self.promise_pass is not False else " (a sample: the rest too dear)")
            )
        if self.settled_skips:
            lines.append(f"prompts saved by settled votes: {self.settled_skips}")
        if self.per_task:
            secs = sorted(s.seconds for s in self.per_task.values())
            toks = sorted(s.tokens_in + s.tokens_out for s in self.per_task.values())
            lines.append(
                f"per task: median {secs[len(secs) // 2]:.2f}s / {toks[len(toks) // 2]:,} tokens, "
                f"max {secs[-1]:.2f}s / {toks[-1]:,} tokens"
            )
        for tid, why in list(self.failed_tasks.items())[:20]:
            lines.append(f"  fallback {tid}: {why}")
        for tid, why in list(self.rejected_tasks.items())[:20]:
            lines.append(f"  invalid {tid}: {why}")
        return "\n".join(lines)
