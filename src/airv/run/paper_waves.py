"""Test-time fine-tuning on paper, for airv.run.simulate: each wave's adapters on the virtual
clock, and the split of airv.run.adapting.adapt_and_answer between training and answering,
waves whose adapters fit the scratch limit (airv.adapt.waves)."""

from __future__ import annotations

from collections.abc import Sequence

from airv.adapt.config import SAVE_MARGIN, TTTMode
from airv.adapt.waves import wave_size, waves
from airv.core.types import TaskId, Unit
from airv.run.config import RunConfig
from airv.run.costs import UnitCost, mean_prompt_tokens
from airv.run.rates import Rates
from airv.run.timeline import Simulation, Wave


class WavesOnPaper:
    """The simulator's training and its waves (a part of airv.run.simulate's simulator,
    which gives it these and `answer`)."""

    cfg: RunConfig
    rates: Rates
    sim: Simulation
    units: dict[Unit, UnitCost]
    by_task: dict[TaskId, list[Unit]]
    task_ids: list[TaskId]
    adapted: set[TaskId]

    def answer(self, tasks: Sequence[TaskId], start: float, until: float) -> float:
        raise NotImplementedError

    def _ttt_seconds(self, tasks: Sequence[TaskId]) -> float:
        """One adapter's training on `tasks`, at their prompts' mean length."""
        tokens = mean_prompt_tokens(self.units[u] for t in tasks for u in self.by_task[t])
        seconds = self.rates.ttt_seconds(self.cfg.ttt.steps, tokens)
        assert seconds is not None
        return seconds

    def train(
        self, tasks: Sequence[TaskId], start: float, stage_end: float
    ) -> tuple[float, int, int, int]:
        """The wave's adapters, on one process per GPU pulling from one queue, each within the
        TTT task cap (its fair share of the stage) and the stage's end. Returns the stage's end
        on the clock and the adapters trained in full, in part, and not at all."""
        ttt, workers = self.cfg.ttt, self.cfg.workers
        joint = ttt.mode is TTTMode.JOINT
        n = 1 if joint else len(tasks)
        seconds_of = [self._ttt_seconds(tasks if joint else [t]) for t in tasks[:n]]
        left = stage_end - start
        if left <= 0:
            return start, 0, 0, n
        cap = ttt.adapter_cap(left, n, workers)
        # Each adapter stops in time to be saved before the stage's end, as the stage stops
        # it; the stage ends when its last adapter does (the engine starts then).
        train_end = stage_end - SAVE_MARGIN
        # Each process starts (its imports, the model) before its first adapter.
        processes = 1 if joint else workers
        begin = min(start + self.rates.ttt_stage_start_seconds, stage_end)
        self.sim.ttt_seconds += (begin - start) * processes
        lanes = [begin] * processes
        full = partial = none = 0
        for i in range(n):
            k = lanes.index(min(lanes))
            t = lanes[k]
            if t >= train_end:
                none += 1
                continue
            whole = seconds_of[i]
            seconds = min(whole, cap, train_end - t)
            full += seconds >= whole
            partial += seconds < whole
            self.adapted |= set(tasks) if joint else {tasks[i]}
            self.sim.ttt_seconds += seconds
            lanes[k] = t + seconds
        return max(lanes), full, partial, none

    def _waves(self) -> None:
        """airv.run.adapting's split, on the virtual clock."""
        cfg, sim, ttt = self.cfg, self.sim, self.cfg.ttt
        size = wave_size(sim.adapter_bytes or 0, cfg.scratch_limit, ttt)
        todo = list(self.task_ids)
        n_tasks = len(todo)
        stage_seconds = cfg.stage_seconds
        now = start = 0.0
        for wave in waves(todo, size):
            if now >= sim.deadline:
                break
            todo = todo[len(wave) :]
            stage_end = min(sim.deadline, start + stage_seconds * len(wave) / n_tasks)
            trained, full, partial, none = self.train(wave, now, stage_end)
            wave_start, now = now, trained
            if now >= sim.deadline:
                sim.waves.append(Wave(len(wave), wave_start, now - wave_start, now, 0.0, now,
                                      full, partial, none))  # fmt: skip
                break
            until = sim.deadline
            if todo:
                owed = stage_seconds * len(todo) / n_tasks
                share = len(wave) / (len(wave) + len(todo))
                until = now + max(0.0, sim.deadline - now - owed) * share
            engine_start = now
            now = self.answer(wave, now, until)
            sim.end = now
            sim.waves.append(Wave(len(wave), wave_start, trained - wave_start, engine_start,
                                  now - engine_start, now, full, partial, none))  # fmt: skip
            if todo:
                now += self.rates.engine_stop_seconds
            start = now
