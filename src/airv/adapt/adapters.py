"""A run's test-time fine-tuned adapters, from training to deletion.

1. The stage trains them, in processes of their own, before the engine starts (adapt.stage);
   one that fails or does not fit the engine (its rank, its target weights) leaves its task on
   the base model.
2. Each is proven served before its tasks are planned: its probe (adapt.served) is scored by
   the engine that will serve it. One vLLM does not serve goes to the transformers engine when
   the run allows it (--adapter-fallback), else its tasks keep the base model.
3. Each is deleted once its tasks are over (--keep-adapters keeps them): the scratch disk holds
   only what is still to be served.

Under a scratch limit this runs in waves (adapt.waves): a wave's tasks are trained, checked,
answered and their adapters deleted before the next wave trains; a task waits (nothing is
planned for it) until its wave's adapter is in, and is closed once its wave is over.

The run owns the engines: it is told where to queue each probe (`check`) and when tasks are
released to be planned (`released`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from airv.adapt.config import TTTConfig
from airv.adapt.lora import TrainResult, check_adapter
from airv.adapt.served import probe_request, verdict, vllm_refuses
from airv.adapt.stage import TTT_LOG, StageJob, append_result, dir_bytes, run_stage
from airv.core.tasks import Task
from airv.core.types import TaskId
from airv.core.units import format_duration
from airv.engines.base import ScoreRequest
from airv.engines.model import weight_names

log = logging.getLogger(__name__)

# Queue an adapter's probe: on the run's engine (`vllm_failed` None), or on the transformers
# engine because vLLM did not serve it (why).
QueueCheck = Callable[[TrainResult, ScoreRequest, "str | None"], None]


def stage_log(out_dir: Path) -> Path:
    """The stage's log in a run's output folder (one line per adapter, ttt.jsonl)."""
    return out_dir / TTT_LOG


class Adapters:
    def __init__(
        self,
        ttt: TTTConfig,
        out_dir: Path,
        *,
        backend: str,
        fallback: bool,
        keep: bool,
        check: QueueCheck,
        released: Callable[[], None],
    ):
        self.ttt = ttt
        self.log_path = stage_log(out_dir)
        self.backend = backend  # the run's engine: "vllm", "hf" or "openai"
        self.fallback = fallback
        self.keep = keep
        self._check = check
        self._released = released
        self.by_task: dict[TaskId, str] = {}  # task -> its adapter's folder
        # Per adapter (task id, or "joint"): steps, final loss, seconds, examples, error, served.
        self.entries: dict[str, dict[str, object]] = {}
        self.seconds = 0.0  # the stage's
        self.scratch_peak = 0  # bytes of the adapters' folder, at its largest seen
        self.largest = 0  # bytes of the largest adapter trained
        self.deleted = 0
        self.unchecked: set[TaskId] = set()  # adapters not yet proven served: held back
        self.on_fallback: set[TaskId] = set()  # served by the transformers engine
        self.waiting: set[TaskId] = set()  # their wave has not trained yet
        self.closed: set[TaskId] = set()  # their wave is over
        self._trained: dict[str, TrainResult] = {}  # adapter folder -> its training
        self._probed: set[str] = set()  # adapter folders whose check has been queued
        self._over: set[TaskId] = set()  # tasks whose adapter may go
        self._weights: set[str] | None = None  # the model's weight names (headers)

    def adapter(self, task_id: TaskId) -> str | None:
        return self.by_task.get(task_id)

    def serving(self) -> int:
        """Distinct adapters the engine serves now: those of the tasks whose wave is not over."""
        return len({p for t, p in self.by_task.items() if t not in self.closed})

    def verdicts_due(self) -> bool:
        """Whether some adapter waits for its served check's verdict."""
        return bool(self.unchecked)

    def held(self, task_id: TaskId) -> bool:
        """Whether nothing is to be planned for a task: it waits for its wave or for its
        adapter's verdict, or its wave is over."""
        return task_id in self.unchecked or task_id in self.waiting or task_id in self.closed

    # -- 1. training ---------------------------------------------------------------------

    def train(
        self,
        tasks: Sequence[Task],
        job: StageJob,
        *,
        deadline: float,
        devices: tuple[str | None, ...],
        progress: bool,
    ) -> None:
        """Train within the stage's time (`deadline`, time.monotonic()); `job.task_cap` is
        set here from the fair share of what is left, per training process."""
        left = deadline - time.monotonic()
        if not tasks or left <= 0:
            return
        cap = self.ttt.adapter_cap(left, len(tasks), len(devices))
        job = dataclasses.replace(job, task_cap=cap)
        log.info("test-time fine-tuning %d task(s), %s", len(tasks), self.ttt.mode.value)
        with _StageProgress(progress, deadline) as bar:
            report = run_stage(
                tasks, job, deadline=deadline, log_path=self.log_path, devices=devices, progress=bar
            )
        self.seconds += report.seconds
        for r in report.results:
            self.entries[r.name] = {
                "steps": r.steps,
                "final_loss": r.final_loss,
                "seconds": r.seconds,
                "examples": r.examples,
                "error": r.error,
            }
        self.scratch_peak = max(self.scratch_peak, dir_bytes(job.out_dir))
        sizes = (dir_bytes(Path(p)) for p in set(report.adapters.values()))
        self.largest = max(self.largest, *sizes, 0)
        self._trained.update(report.ready)
        bad: dict[str, str] = {}
        if report.adapters and self._weights is None:  # read once, not once per wave
            self._weights = weight_names(job.model_dir)
        weights = self._weights or set()
        for task_id, path in report.adapters.items():
            why = bad.get(path) or check_adapter(Path(path), self.ttt.rank, weights)
            if why is None:
                self.by_task[task_id] = path
                continue
            bad[path] = why
            log.warning("task %s keeps the base model: %s", task_id, why)
            entry = self.entries.setdefault(task_id, {"steps": 0, "seconds": 0.0})
            entry["error"] = f"adapter not served: {why}"

    # -- 2. the served check -------------------------------------------------------------

    def check_new(self) -> None:
        """Each new adapter's probe, queued through `check`; its tasks wait for the verdict.
        One vLLM would refuse outright goes to the transformers engine (or its tasks to the
        base model) without asking vLLM."""
        for path in sorted(set(self.by_task.values()) - self._probed):
            self._probed.add(path)
            trained = self._trained.get(path)
            request = None if trained is None else probe_request(trained)
            if trained is None or request is None:
                continue  # trained before probes were recorded: served unchecked
            self.unchecked |= set(self._tasks(path))
            refused = vllm_refuses(Path(path)) if self.backend == "vllm" else None
            if refused is None:
                self._check(trained, request, None)
            elif self.fallback:
                self._check(trained, request, refused)
            else:
                self._release(trained, f"not served, base model: {refused}", refused)

    def checked(
        self, trained: TrainResult, vllm_failed: str | None, score: float | None, error: str | None
    ) -> None:
        """An adapter's verdict. One vLLM does not serve is checked again on the transformers
        engine, which then answers its tasks if it serves it."""
        backend = "hf" if vllm_failed is not None else self.backend
        why = verdict(trained, backend, score, error)
        if why is not None and backend == "vllm" and self.fallback:
            log.warning("vLLM does not serve %s (%s): trying transformers", trained.name, why)
            request = probe_request(trained)
            assert request is not None  # only checked adapters reach here
            self._check(trained, request, why)
        elif why is not None:
            why = why if vllm_failed is None else f"{vllm_failed}; {why}"
            self._release(trained, f"not served, base model: {why}", why)
        elif vllm_failed is not None:
            served = f"verified by {backend} (vLLM did not serve it: {vllm_failed})"
            self._release(trained, served, None, on_fallback=True)
        else:
            self._release(trained, f"verified by {backend}", None)

    def fallback_lost(self, why: str, pending: Sequence[TrainResult]) -> None:
        """The transformers engine is gone for good: its tasks, and those of the adapters
        whose check (`pending`) it still owed, keep the base model."""
        lost = set(self.on_fallback)
        for trained in pending:
            lost |= set(self._tasks(trained.path))
        for task_id in sorted(lost):
            self.by_task.pop(task_id, None)
            self.unchecked.discard(task_id)
            entry = self.entries.setdefault(task_id, {})
            entry["served"] = f"not served, base model: the transformers engine failed: {why}"
            log.warning("task %s keeps the base model: the transformers engine failed", task_id)
        self.on_fallback.clear()
        self._released()

    def _tasks(self, path: str | None) -> list[TaskId]:
        return sorted(t for t, p in self.by_task.items() if p == path)

    def _release(
        self, trained: TrainResult, served: str, why: str | None, *, on_fallback: bool = False
    ) -> None:
        """An adapter's tasks are released: with it (`why` None; on the transformers engine
        with `on_fallback`) or with the base model."""
        for task_id in self._tasks(trained.path):
            self.unchecked.discard(task_id)
            self.entries.setdefault(task_id, {"steps": trained.steps}).update(served=served)
            if why is not None:
                del self.by_task[task_id]
                self.entries[task_id]["error"] = f"adapter not served: {why}"
                log.warning("task %s keeps the base model: %s", task_id, why)
            elif on_fallback:
                self.on_fallback.add(task_id)
        append_result(self.log_path, dataclasses.replace(trained, served=served))
        self._released()

    # -- 3. deletion ---------------------------------------------------------------------

    def end_wave(self, tasks: Sequence[TaskId]) -> None:
        """A wave is over: its tasks are closed and their adapters deleted."""
        self.closed |= set(tasks)
        self.delete(lambda t: t in self.closed)

    def delete(self, over: Callable[[TaskId], bool], *, final: bool = False) -> None:
        """Delete the adapters of tasks that are `over` (all of them with `final`), unless
        --keep-adapters. A joint adapter goes with the last task it serves."""
        if self.keep or not self.by_task:
            return
        live = {t: p for t, p in self.by_task.items() if t not in self._over}
        for task_id in live:
            if final or over(task_id):
                self._over.add(task_id)
        for path in set(live.values()):
            if all(t in self._over for t, p in live.items() if p == path):
                shutil.rmtree(path, ignore_errors=True)
                self.deleted += 1


class _StageProgress:
    """The fine-tuning stage as the user sees it: a bar of adapters (with the progress bar on),
    and a log line per adapter either way (what a hidden Kaggle run keeps): steps, seconds,
    steps per second over the stage, and the stage's time left."""

    def __init__(self, enabled: bool, stage_end: float):
        self.enabled = enabled
        self.stage_end = stage_end
        self.bar: Any = None
        self.steps = 0
        self.seconds = 0.0

    def __enter__(self) -> _StageProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def __call__(self, result: TrainResult, done: int, total: int) -> None:
        self.steps += result.steps
        self.seconds += result.seconds
        rate = self.steps / self.seconds if self.seconds else 0.0
        left = format_duration(self.stage_end - time.monotonic())
        if self.enabled:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc="adapters", unit="adapter", dynamic_ncols=True)
            self.bar.update(1)
            self.bar.set_postfix_str(f"{rate:.1f} steps/s | stage left {left}")
        outcome = f"{result.steps} steps in {result.seconds:.1f}s"
        if result.error is not None:
            outcome = f"failed: {result.error}"
        log.info(
            "adapter %d/%d (%s): %s; %.1f steps/s, stage left %s",
            done, total, result.name, outcome, rate, left,
        )  # fmt: skip
