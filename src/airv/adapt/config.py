"""TTTConfig: every default of test-time fine-tuning, stated once."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from airv.core.errors import ConfigError

# Seconds a training process keeps, before the stage's end, to save the adapter it trains.
SAVE_MARGIN = 5.0


class Schedule(enum.StrEnum):
    """The learning rate over an adapter's steps, after the warm-up."""

    LINEAR = "linear"  # to zero, straight
    COSINE = "cosine"  # to zero, half a cosine (NVARC, the ARChitects)


class Loss(enum.StrEnum):
    """Which tokens of a training sequence carry loss."""

    ANSWER = "answer"  # the held-out output's answer and EOS
    # every output grid in the sequence, the train pairs' in the prompt too (NVARC, the
    # ARChitects): more signal per sequence from the same task
    OUTPUTS = "outputs"


class TTTMode(enum.StrEnum):
    OFF = "off"
    PER_TASK = "per-task"  # one adapter per task (arc24, marc, NVARC)
    JOINT = "joint"  # one adapter for the whole challenge file (the ARChitects 2024)


@dataclass(frozen=True)
class TTTConfig:
    """How adapters are trained. The defaults are the recipe measured on the demo model
    (README › Test-time fine-tuning); a large model wants a lower learning rate."""

    mode: TTTMode = TTTMode.OFF
    rank: int = 16
    alpha: int = 32
    # peft's target modules: "all-linear", or comma-separated module names (q_proj,v_proj).
    target_modules: str = "all-linear"
    learning_rate: float = 4e-3
    # Embeddings' and LM head's own learning rate, when the targets include them (the
    # ARChitects: 1e-5 beside 1e-4); None: the learning rate above.
    embedding_learning_rate: float | None = None
    schedule: Schedule = Schedule.LINEAR
    warmup: float = 0.0  # share of the steps, learning rate rising linearly from zero
    # rsLoRA: scale the update by alpha / sqrt(rank), not alpha / rank (NVARC, the ARChitects).
    rslora: bool = False
    steps: int = 100  # optimiser steps per adapter (per task, or for the joint adapter)
    batch_size: int = 8
    augmentations: int = 16  # augmented views of the task, each giving one sequence per pair
    loss: Loss = Loss.ANSWER
    # Share of the run's budget (after the reserve) for the whole stage, or seconds if > 1.
    budget: float = 0.4
    task_cap_seconds: float | None = None  # per task; default: task_cap_shares fair shares
    # of the stage, so that one slow task cannot eat it
    task_cap_shares: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha < 1:
            raise ConfigError("TTT: rank and alpha must be >= 1")
        if not 0 < self.learning_rate < 1:
            raise ConfigError(f"TTT: learning rate must be in (0, 1), got {self.learning_rate}")
        if self.steps < 1 or self.batch_size < 1 or self.augmentations < 1:
            raise ConfigError("TTT: steps, batch size and augmentations must be >= 1")
        if self.budget <= 0:
            raise ConfigError("TTT: the budget must be a positive fraction or duration")
        if self.task_cap_seconds is not None and self.task_cap_seconds <= 0:
            raise ConfigError("TTT: the per-task cap must be positive")
        if not self.target_modules.strip():
            raise ConfigError("TTT: target modules must not be empty")
        if not 0 <= self.warmup < 1:
            raise ConfigError(
                f"TTT: warm-up must be a share of the steps in [0, 1), got {self.warmup}"
            )
        lr = self.embedding_learning_rate
        if lr is not None and not 0 < lr < 1:
            raise ConfigError(f"TTT: embedding learning rate must be in (0, 1), got {lr}")

    @property
    def enabled(self) -> bool:
        return self.mode is not TTTMode.OFF

    def task_cap(self, fair_share: float) -> float:
        """Training seconds one adapter may take, given the stage's fair share per adapter."""
        return self.task_cap_seconds or self.task_cap_shares * fair_share

    def adapter_cap(self, stage_seconds: float, adapters: int, processes: int) -> float:
        """Training seconds one adapter may take when `processes` train `adapters` side by
        side in `stage_seconds`: its fair share is the stage's time over the adapters each
        process trains (the whole stage at most; a joint adapter: the whole stage)."""
        if self.mode is TTTMode.JOINT:
            return self.task_cap(stage_seconds)
        per_process = max(1, adapters) / max(1, processes)  # adapters each process trains
        return self.task_cap(stage_seconds / max(1.0, per_process))

    def budget_seconds(self, available: float) -> float:
        """The stage's seconds out of `available` (the run's budget minus its reserve)."""
        return self.budget * available if self.budget <= 1 else min(self.budget, available)

    def lr_factor(self, step: int) -> float:
        """The learning rate at optimiser step `step` (0-based), as a share of the peak: a
        linear warm-up over `warmup` of the steps, then the schedule down to zero."""
        ramp = round(self.warmup * self.steps)
        if step < ramp:
            return (step + 1) / (ramp + 1)
        progress = min(1.0, (step - ramp) / max(1, self.steps - ramp))
        if self.schedule is Schedule.COSINE:
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    def peft_targets(self) -> str | list[str]:
        t = self.target_modules.strip()
        return t if t == "all-linear" else [m.strip() for m in t.split(",") if m.strip()]
