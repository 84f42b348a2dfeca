"""RunConfig: every default of a run, stated once; and the names of a run directory's files.

CLI flags default to None and only override these (airv.run.options). The engine's and the
sampler's defaults live beside them in airv.engines.config.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from airv.adapt.config import TTTConfig
from airv.adapt.stage import ADAPTERS_DIR
from airv.core.augment import ViewPolicy
from airv.core.errors import ConfigError
from airv.core.prompt_format import DEFAULT_PRESET, PromptFormat, load_preset
from airv.core.voting import DEFAULT_VOTE_MODE, VoteMode
from airv.engines.config import Decoding, EngineConfig, unsupported
from airv.run.schedule import DEFAULT_SCHEDULE, ViewSchedule

# A run directory's files; `airv report`, `airv vote` and the kernel read them by these names.
SUBMISSION_FILE = "submission.json"
PREDICTIONS_FILE = "predictions.jsonl"
SUMMARY_FILE = "run_summary.json"
SCORES_FILE = "scores.jsonl"
SCHEDULE_FILE = "schedule.jsonl"  # the gain schedule's decisions and stops (airv.run.schedule)
PROMISE_FILE = "promise.jsonl"  # the gain schedule's task promises (airv.run.promise)
FINGERPRINT_FILE = "fingerprint.json"  # what decided the answers (airv.run.outdir)
RESERVE_CAP = 120.0  # seconds: the default reserve's ceiling ...
RESERVE_SHARE = 0.05  # ... its share of the budget below that ...
# ... and its floor: killing the engines, the final writes and the process's exit took about
# a second on 2 busy cores, and 5.5 to 6.5 s for three runs at once whose vLLM engines were
# killed while starting under the suite's load (the kill waits up to 5 s for the processes to
# be gone); a run must end before its budget does (Kaggle's limit is a wall).
RESERVE_FLOOR = 8.0
# Start-up of an engine seen on CPU (vLLM, the tiny models): a budget that leaves less than
# this after the reserve gets a warning that the engine may not even start.
ENGINE_START_SECONDS = 60.0
# Below this budget (seconds) vLLM starts eager unless --compile says otherwise. Compiling (torch
# compile on CPU, CUDA-graph capture on a GPU) makes the start longer: on this machine's CPU a
# compiled start took 54 s of a 60 s trial and the run answered nothing; an eager one was up at
# 19 s and answered 243 prompts. From half an hour on, that cost is under 3% of the budget.
COMPILE_MIN_BUDGET = 30 * 60.0


def start_mode(eager: bool) -> str:
    """How vLLM starts, as run_summary.json and plan.json name it."""
    return "eager" if eager else "compiled"


def eager_by_plan(starts: Mapping[str, Mapping[str, float]], available: float) -> bool:
    """Whether vLLM starts eager by `airv plan`'s measurement of both starts (plan.json's
    `starts`: each way's start-up and sweep seconds, one view of every test input): the way
    that leaves time for more sweeps in `available` seconds (the budget less the reserve and
    the fine-tuning stage), eager on a tie."""

    def sweeps(mode: str) -> float:
        m = starts[mode]
        return max(0.0, available - m["start_seconds"]) / max(m["sweep_seconds"], 1e-9)

    return sweeps("eager") >= sweeps("compiled")


def eager_by_budget(time_budget: float) -> bool:
    """Whether vLLM starts eager when neither --enforce-eager nor --compile is given: below
    COMPILE_MIN_BUDGET, a compiled start costs more of the budget than its faster decoding
    gives back."""
    return time_budget < COMPILE_MIN_BUDGET


# The share of the scratch disk's free space kept free when --scratch-limit is not given: the
# logs, vLLM's and the trainer's own files and the disk's other users need room too.
SCRATCH_MARGIN = 0.1


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; every default of `airv run` is stated here and only here."""

    challenges: Path
    out_dir: Path
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: Decoding = field(default_factory=Decoding)
    # The model's prompt format (airv.core.prompt_format.resolve_format picks it).
    prompt: PromptFormat = field(default_factory=lambda: load_preset(DEFAULT_PRESET))
    vote_mode: VoteMode = DEFAULT_VOTE_MODE
    rescore_top: int = 4  # with --vote rescore: distinct candidates scored per test input (M)
    rescore_augmentations: int = 4  # ... each under this many augmentations (J)
    time_budget: float = 11.5 * 3600  # seconds from process start, model loading included
    # Seconds kept back to stop the engines and write; None: RESERVE_SHARE of the budget,
    # within [RESERVE_FLOOR, RESERVE_CAP] (the floor at most a quarter of a tiny budget).
    reserve: float | None = None
    first_round: int = 8  # augmentations per test input in round 1 (the first 8 cover D8)
    per_round: int = 8  # augmentations added per test input in each later round
    max_augmentations: int = 32  # per test input, over all rounds
    settle_margin: int = 4  # leader's lead in votes that stops more work on a test input; 0 = off
    schedule: ViewSchedule = DEFAULT_SCHEDULE  # who gets the next view (airv.run.schedule)
    # Per task, engine time (its share of batch time); None: task_cap_shares fair shares of the
    # budget (budget after the reserve / tasks), so one task cannot eat the run.
    task_cap_seconds: float | None = None
    task_cap_shares: float = 4.0
    task_cap_tokens: int | None = None  # per task, prompt + completion tokens
    cheapest_first: bool = True  # order work by prompt length, so most tasks answer early
    # Prompts each engine holds in flight: twice vLLM's default batch (max_num_seqs 256), so
    # its scheduler always has work waiting. Only these are lost at the deadline or a crash.
    inflight: int = 512
    # submission.json is rewritten (votes recounted) this often while results come in, and
    # after this many new results, whichever comes first; every result is logged at once.
    write_seconds: float = 5.0
    write_every: int = 256
    workers: int = 1  # engine processes; one per GPU
    # Engine restarts after a failure (its process or vLLM's own died, it raised, or it
    # stalled), over all workers, while time remains. A worker past them stays down; with
    # none left the run ends with exit 3 (submission.json written).
    max_restarts: int = 3
    # An engine with work in flight that returns nothing for this long is stalled: restarted.
    stall_seconds: float = 120.0
    devices: tuple[str, ...] = ()  # CUDA device ids, one per worker; empty = CPU
    views: ViewPolicy = field(default_factory=ViewPolicy)  # augmentations and their seed
    ttt: TTTConfig = field(default_factory=TTTConfig)  # test-time fine-tuning, off by default
    # Where adapters go (SCRATCH/adapters); None: the output directory. The Kaggle kernel
    # puts them under /tmp: /kaggle/working holds about 20 GB and is the submission's disk.
    scratch_dir: Path | None = None
    keep_adapters: bool = False  # else each is deleted once its task is answered and re-scored
    # Bytes the adapters may hold on the scratch disk at once (adapt.waves): training and
    # answering alternate in waves that fit. None: the disk's free space at the start, less
    # SCRATCH_MARGIN of it.
    scratch_limit: int | None = None
    # An adapter vLLM does not serve (the served check): its task is answered by the
    # transformers engine if that serves it; else, or with False, by the base model.
    adapter_fallback: bool = True
    max_tasks: int | None = None  # only the first N tasks of the file get inference
    # Start over: the output folder's logs (and adapters) are deleted, not resumed from.
    fresh: bool = False
    recipe: str | None = None  # the recipe that supplied defaults (airv.run.recipes) ...
    recipe_options: tuple[tuple[str, str], ...] = ()  # ... and what it supplied
    progress: bool = True

    def __post_init__(self) -> None:
        if self.scratch_limit is not None and self.scratch_limit <= 0:
            raise ConfigError(f"the scratch limit must be positive, got {self.scratch_limit}")
        if self.first_round < 1 or self.per_round < 1:
            raise ConfigError("first_round and per_round must be >= 1")
        if self.max_augmentations < self.first_round:
            raise ConfigError("max_augmentations must be >= first_round")
        if self.workers < 1:
            raise ConfigError("workers must be >= 1")
        if self.devices and len(self.devices) != self.workers:
            raise ConfigError(f"{self.workers} workers but {len(self.devices)} devices")
        durations = (self.time_budget, self.reserve or 0.0, self.stall_seconds, self.write_seconds)
        if not all(math.isfinite(d) for d in durations):
            raise ConfigError("time_budget, reserve, stall and write seconds must be finite")
        if (self.reserve is not None and self.reserve < 0) or self.time_budget <= 0:
            raise ConfigError("time_budget must be > 0 and reserve >= 0")
        if self.max_restarts < 0:
            raise ConfigError("max_restarts must be >= 0")
        if self.inflight < 1 or self.write_every < 1:
            raise ConfigError("inflight and write_every must be >= 1")
        if self.stall_seconds <= 0 or self.write_seconds <= 0:
            raise ConfigError("stall_seconds and write_seconds must be > 0")
        # What the engine would refuse only once started, checked before any adapter is
        # trained or any model loaded.
        why = unsupported(
            self.engine.backend,
            self.sampling,
            adapter=self.ttt.enabled,
            quantization=self.engine.quantization,
        )
        if why is not None:
            raise ConfigError(why)

    @property
    def reserve_seconds(self) -> float:
        if self.reserve is not None:
            return self.reserve
        floor = min(RESERVE_FLOOR, self.time_budget / 4)
        return min(RESERVE_CAP, max(floor, RESERVE_SHARE * self.time_budget))

    def task_cap(self, n_tasks: int) -> float:
        """Engine seconds one task may take: the given cap, else task_cap_shares fair shares."""
        if self.task_cap_seconds is not None:
            return self.task_cap_seconds
        available = self.time_budget - self.reserve_seconds
        return self.task_cap_shares * available / max(1, n_tasks)

    def settings(self) -> dict[str, object]:
        """What decides the run's answers, resolved: for run_summary.json."""
        return {
            "recipe": self.recipe,
            "from_recipe": dict(self.recipe_options),
            "model": str(self.engine.model),
            "format": self.prompt.name,
            "views": dataclasses.asdict(self.views),
            "augmentations": [self.first_round, self.per_round, self.max_augmentations],
            "schedule": self.schedule.value,
            "decoding": dataclasses.asdict(self.sampling),
            "vote": self.vote_mode.value,
            "rescore": [self.rescore_top, self.rescore_augmentations],
            "ttt": {k: str(v) for k, v in dataclasses.asdict(self.ttt).items()},
            # How vLLM started (eager_by_budget unless forced): speed, not answers.
            "engine_start": start_mode(self.engine.enforce_eager),
        }

    @property
    def stage_seconds(self) -> float:
        """The fine-tuning stage's share of the budget (0 without it): trained before the
        engines answer."""
        available = self.time_budget - self.reserve_seconds
        return self.ttt.budget_seconds(available) if self.ttt.enabled else 0.0

    @property
    def adapters_dir(self) -> Path:
        return (self.scratch_dir or self.out_dir) / ADAPTERS_DIR

    def scratch_bytes(self) -> int:
        """What the adapters may hold at once: --scratch-limit, else the scratch disk's free
        space now, less SCRATCH_MARGIN of it."""
        if self.scratch_limit is not None:
            return self.scratch_limit
        folder = self.adapters_dir
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        return int(shutil.disk_usage(folder).free * (1 - SCRATCH_MARGIN))

    @property
    def log_path(self) -> Path:
        return self.out_dir / PREDICTIONS_FILE

    @property
    def submission_path(self) -> Path:
        return self.out_dir / SUBMISSION_FILE

    @property
    def summary_path(self) -> Path:
        return self.out_dir / SUMMARY_FILE

    @property
    def scores_path(self) -> Path:
        return self.out_dir / SCORES_FILE

    @property
    def schedule_path(self) -> Path:
        return self.out_dir / SCHEDULE_FILE

    @property
    def promise_path(self) -> Path:
        return self.out_dir / PROMISE_FILE
