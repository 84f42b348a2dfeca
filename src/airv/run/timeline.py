"""A simulated run's result (`Simulation`): its waves, its work, where time ran out, as
`airv plan --simulate` prints it (`render`) and as plan.json holds it (`to_json`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from airv.core.types import TaskId, Unit
from airv.core.units import format_duration, format_size
from airv.run.costs import TooLong
from airv.run.schedule import DEFAULT_SCHEDULE, ViewSchedule


@dataclass(frozen=True, slots=True)
class Wave:
    """One wave on the virtual clock (seconds from process start)."""

    tasks: int
    start: float
    train_seconds: float  # wall time of its training stage
    engine_start: float  # when its engines started (each wave after the first: a restart)
    answer_seconds: float  # wall time from the engines' start-up to its last answer
    end: float
    adapters: int  # adapters trained in full
    partial_adapters: int  # stopped at the stage's end or the TTT task cap
    no_adapter: int  # not started before the stage ended: the base model answers


@dataclass
class Simulation:
    """What the run would do: its waves, its work, and where time ran out."""

    budget: float
    reserve: float
    workers: int
    test_inputs: int
    target_views: int  # views per test input the rounds aim at
    engine_start_seconds: float  # each start-up
    waves: list[Wave] = field(default_factory=list)
    prompts: int = 0  # generation requests answered
    scores: int = 0  # scoring requests answered
    lost: int = 0  # requests in flight at a wave's end or the deadline
    ttt_seconds: float = 0.0  # GPU seconds of training, all workers
    decode_seconds: float = 0.0  # GPU seconds of generation requests (prefill + decode)
    rescore_seconds: float = 0.0  # GPU seconds of scoring requests
    promises: int = 0  # gain: tasks' promises scored (airv.run.promise)
    promise_seconds: float = 0.0  # GPU seconds of those
    # The engines' time up to each one's last answer, as a run's recorder counts it: the
    # requests' seconds, and the work on those lost in flight meanwhile.
    engine_seconds: float = 0.0
    views: dict[Unit, int] = field(default_factory=dict)  # views answered per test input
    capped: list[TaskId] = field(default_factory=list)  # stopped at their task cap
    cut: list[TaskId] = field(default_factory=list)  # short of the target: time ran out
    unscored: int = 0  # test inputs whose candidates were never re-scored
    too_long: tuple[TooLong, ...] = ()
    end: float = 0.0  # when the last request ended
    adapter_bytes: int | None = None
    scratch_limit: int | None = None
    stopped_by: str = "done"
    schedule: ViewSchedule = DEFAULT_SCHEDULE  # how the views were planned (`--schedule`)

    @property
    def deadline(self) -> float:
        return self.budget - self.reserve

    @property
    def slack_seconds(self) -> float:
        """Time left unused at the deadline (some may be left where a wave's share of the
        time ran out before its work was done: `cut`)."""
        return max(0.0, self.deadline - self.end)

    @property
    def scratch_bytes(self) -> int:
        """The most the adapters hold on disk at once: the largest wave's."""
        if self.adapter_bytes is None or not self.waves:
            return 0
        return self.adapter_bytes * max(w.tasks for w in self.waves)

    @property
    def views_share(self) -> float:
        """The mean views per test input over the target: the share of the most work the
        budget reaches (README, *Where the seconds go*: which schedule to choose by it)."""
        mean, _ = self.views_stats()
        return mean / self.target_views if self.target_views else 0.0

    def views_stats(self) -> tuple[float, int]:
        counts = list(self.views.values())
        return (sum(counts) / len(counts), min(counts)) if counts else (0.0, 0)

    def to_json(self) -> dict[str, object]:
        mean, low = self.views_stats()
        gpu = self.budget * self.workers
        return {
            "predicted_prompts": self.prompts,
            "predicted_scores": self.scores,
            "predicted_engine_seconds": self.engine_seconds,
            "views_per_test_input": {
                "mean": mean,
                "min": low,
                "target": self.target_views,
                "share": self.views_share,
            },
            "schedule": self.schedule.value,
            "test_inputs": self.test_inputs,
            "waves": [
                {
                    "tasks": w.tasks,
                    "start": w.start,
                    "train_seconds": w.train_seconds,
                    "answer_seconds": w.answer_seconds,
                    "end": w.end,
                    "adapters": w.adapters,
                    "partial_adapters": w.partial_adapters,
                    "no_adapter": w.no_adapter,
                }
                for w in self.waves
            ],
            "engine_starts": max(1, len(self.waves)),
            "engine_start_seconds": self.engine_start_seconds,
            "ttt_seconds": self.ttt_seconds,
            "decode_seconds": self.decode_seconds,
            "rescore_seconds": self.rescore_seconds,
            "predicted_promises": self.promises,
            "promise_seconds": self.promise_seconds,
            "gpu_seconds": gpu,
            "capped_tasks": self.capped,
            "cut_tasks": self.cut,
            "unscored_test_inputs": self.unscored,
            "lost_requests": self.lost,
            "too_long": [{"task_id": x.task_id, "test_index": x.test_index} for x in self.too_long],
            "end_seconds": self.end,
            "deadline_seconds": self.deadline,
            "slack_seconds": self.slack_seconds,
            "stopped_by": self.stopped_by,
            "adapter_bytes": self.adapter_bytes,
            "scratch_bytes": self.scratch_bytes,
            "scratch_limit": self.scratch_limit,
            "early_settle": False,  # the no-early-settle bound: votes are unknown on paper
        }

    def render(self) -> str:
        d = format_duration
        mean, low = self.views_stats()
        gpu = self.budget * self.workers
        starts = max(1, len(self.waves))
        start_gpu = starts * self.engine_start_seconds * self.workers

        def share(seconds: float) -> str:
            return f"{seconds / 3600:,.2f} GPU-h ({seconds / gpu:.0%})"

        lines = [
            f"simulated run: {self.test_inputs} test inputs on {self.workers} GPU(s), budget "
            f"{d(self.budget)} - reserve {d(self.reserve)} = deadline at {d(self.deadline)}; "
            "no test input settles early (votes unknown on paper: the most work the run "
            "can be asked to do)",
        ]
        if self.waves and (len(self.waves) > 1 or self.waves[0].train_seconds > 0):
            lines.append("waves (clock from process start):")
            for i, w in enumerate(self.waves, 1):
                lines.append(
                    f"  wave {i}: {w.tasks} task(s) from {d(w.start)}: training "
                    f"{d(w.train_seconds)} ({w.adapters} adapters"
                    + (f", {w.partial_adapters} partial" if w.partial_adapters else "")
                    + (f", {w.no_adapter} none" if w.no_adapter else "")
                    + f"), engine {'start' if i == 1 else 'restart'} at {d(w.engine_start)}, "
                    f"answering {d(w.answer_seconds)}, done at {d(w.end)}"
                )
            lines.append(
                f"engine start-ups: {starts} of {d(self.engine_start_seconds)} "
                f"({starts - 1} restart(s) between waves)"
            )
        lines += [
            f"GPU time ({gpu / 3600:,.1f} GPU-h in the budget): fine-tuning "
            f"{share(self.ttt_seconds)}, decoding {share(self.decode_seconds)}, re-scoring "
            f"{share(self.rescore_seconds)}, "
            + (f"promises {share(self.promise_seconds)}, " if self.promises else "")
            + f"engine start-ups {share(start_gpu)}",
            f"requests: {self.prompts:,} prompts, {self.scores:,} scoring requests"
            + (f", {self.lost} lost in flight" if self.lost else ""),
            f"views per test input: mean {mean:.1f}, min {low} (target {self.target_views}: "
            f"{self.views_share:.0%} of it)",
            "schedule: "
            + (
                "gain (each view to the test input with the best gain per second)"
                if self.schedule is ViewSchedule.GAIN
                else "uniform (rounds of the same number of views per test input)"
            ),
        ]
        if self.capped:
            lines.append(_listed("capped by their task cap", self.capped))
        if self.cut:
            lines.append(_listed("cut by time (their wave's share or the deadline)", self.cut))
        if self.unscored:
            lines.append(f"test inputs never re-scored: {self.unscored}")
        if self.too_long:
            lines.append(f"test inputs too long for the context (fallback): {len(self.too_long)}")
        lines.append(
            f"last request ends at {d(self.end)}; slack at the deadline {d(self.slack_seconds)}"
            + (" (time ran out for some tasks)" if self.stopped_by == "deadline" else "")
        )
        if self.adapter_bytes is not None:
            limit = "no limit" if self.scratch_limit is None else format_size(self.scratch_limit)
            lines.append(
                f"scratch disk: adapters of {format_size(self.adapter_bytes)}, at most "
                f"{format_size(self.scratch_bytes)} at once ({limit})"
            )
        return "\n".join(lines)


def _listed(what: str, task_ids: Sequence[TaskId], shown: int = 10) -> str:
    more = " ..." if len(task_ids) > shown else ""
    return f"{what}: {len(task_ids)} task(s): {', '.join(task_ids[:shown])}{more}"
