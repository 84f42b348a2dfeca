"""`airv plan`: how many augmentations per test input fit in a time budget, on this engine.

Run it in an interactive session on the machine of the real run (a Kaggle GPU notebook):
it starts the engine, measures prompt (prefill) and answer (decode) throughput on a few
calibration tasks, then prices every test input of the challenge file and divides the
budget (minus the reserve and the measured start-up) by the price of one augmentation of
every test input. Tasks whose prompt cannot fit max_model_len even with one train pair are
listed: they get the `[[0]]` fallback whatever the budget.

The measurement, in two batched calls on disjoint augmentations (so that vLLM's prefix
cache cannot make the second call look cheap):
  1. generate 1 token for set A            -> prefill tokens/s = prompt tokens / time
  2. generate full answers for set B       -> decode tokens/s = answer tokens /
                                              (time - B's prompt tokens / prefill rate)
Answers are priced at their token allowance (`max_answer_tokens`), an upper bound: a
trained model stops at EOS sooner. Throughput grows with batch size on a GPU, so calibrate
with about as many prompts as the run batches (`--calibration-tasks` x 2 x augmentations).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from airv.adapt.config import TTTMode
from airv.adapt.lora import TrainResult
from airv.adapt.stage import StageJob, run_stage
from airv.adapt.waves import adapter_bytes
from airv.core.augment import plan_views
from airv.core.errors import ConfigError, InputError
from airv.core.prompts import (
    FittedPrompt,
    PromptTooLong,
    Tokenizer,
    answer_token_ids,
    fit_prompt,
    for_tokenizer,
)
from airv.core.tasks import Challenges, Task, load_challenges
from airv.core.types import TaskId
from airv.core.units import format_duration
from airv.engines import Completion, GenerateRequest
from airv.engines.base import ScoreRequest, completions_of
from airv.engines.config import Backend
from airv.engines.lane import Lane
from airv.engines.model import load_tokenizer, weight_shapes
from airv.engines.pool import await_ready, run_lane, start_lane
from airv.run import options as runopts
from airv.run.budget import process_start_time
from airv.run.config import RunConfig, start_mode
from airv.run.costs import (
    Costs,
    TooLong,
    UnitCost,
    mean_prompt_tokens,
    price_by_cells,
    synthetic_tasks,
)
from airv.run.engines import serving
from airv.run.promise import demonstration
from airv.run.rates import Rates, load_rates, rates_names
from airv.run.simulate import simulate
from airv.run.timeline import Simulation

# Views priced per test input: identity and a quarter turn (a transposed grid has another
# number of line breaks, so the two bracket the D8 views).
PRICED_VIEWS = 2
# The floor on the decode share of the generation call's time: measurement noise must not
# make decoding look free.
MIN_DECODE_SHARE = 0.1
# `airv plan` defaults: 4 tasks x 2 calls x 4 views = 32+ calibration prompts.
CALIBRATION_TASKS = 4
CALIBRATION_AUGMENTATIONS = 4
# Optimiser steps of the longer of the two adapters `airv plan` trains to time fine-tuning.
TTT_CALIBRATION_STEPS = 16
# Each measurement (an engine start's, the fine-tuning's) ends by --time-budget, but never
# sooner than this: a plan for a short run still gets to measure.
MEASURE_SECONDS = 600.0
# The requests vLLM runs at once unless told otherwise (max_num_seqs: its LLM class's default
# on CPU and on most GPUs); the simulation takes the less of it and --inflight.
VLLM_BATCH = 256


@dataclass(frozen=True, slots=True)
class Throughput:
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    start_seconds: float  # from process start to a warmed-up engine: the run pays it too
    prompts: int  # calibration prompts, both calls
    prompt_tokens: int
    answer_tokens: int
    stop_seconds: float = 0.0  # ending the engine: paid inside the run's reserve
    answer_allowance: int = 0  # the decode call's answer-token allowance (max_answer_tokens)
    # The decode call served with one adapter, over the base model's time for the same
    # tokens; and what each further adapter in the call adds (the run's count of them).
    lora_cost: float = 1.0
    lora_cost_per_adapter: float = 0.0
    # A scoring request's seconds per token over prefill's (with --vote rescore or views-nll:
    # the decode call's answers scored under views neither call saw), else 1.
    score_cost: float = 1.0

    @property
    def answer_fill(self) -> float:
        """The share of their allowance the calibration answers used (1 if unknown)."""
        return self.answer_tokens / self.answer_allowance if self.answer_allowance else 1.0


@dataclass(frozen=True, slots=True)
class Plan:
    throughput: Throughput
    costs: Costs
    budget: float
    reserve: float
    workers: int
    n_per_prompt: int  # completions per prompt (Decoding.n)
    ttt_seconds: float = 0.0  # the test-time fine-tuning stage's share, before inference
    # vLLM measured both ways ("eager", "compiled"), the run's own start among them: what
    # `airv run --plan` chooses from. Empty: one way only (transformers does not compile).
    starts: Mapping[str, Throughput] = dataclasses.field(default_factory=dict)
    tuning: FineTuning | None = None  # with --ttt: fine-tuning as measured

    def started(self, mode: str) -> Plan:
        """This plan as if the engine started `mode`'s way."""
        return dataclasses.replace(self, throughput=self.starts[mode])

    @property
    def available(self) -> float:
        return max(
            0.0, self.budget - self.reserve - self.ttt_seconds - self.throughput.start_seconds
        )

    @property
    def sweep_seconds(self) -> float:
        """Predicted time of one augmentation of every test input that fits, all workers."""
        t = self.throughput
        total = math.fsum(
            u.prompt_tokens / t.prefill_tokens_per_s
            + self.n_per_prompt * u.answer_tokens / t.decode_tokens_per_s
            for u in self.costs.units
        )
        return total / self.workers

    @property
    def augmentations(self) -> int:
        """Augmentations per test input that fit in the budget."""
        sweep = self.sweep_seconds
        return int(self.available // sweep) if sweep > 0 else 0

    def predicted_seconds(self, augmentations: int) -> float:
        """Predicted wall time of a whole run with this many augmentations per test input."""
        t = self.throughput
        return t.start_seconds + augmentations * self.sweep_seconds + t.stop_seconds

    def to_json(self) -> dict[str, object]:
        t = self.throughput
        return {
            "prefill_tokens_per_s": t.prefill_tokens_per_s,
            "decode_tokens_per_s": t.decode_tokens_per_s,
            "start_seconds": t.start_seconds,
            "stop_seconds": t.stop_seconds,
            "calibration_prompts": t.prompts,
            "test_inputs": len(self.costs.units),
            "prompt_tokens_per_sweep": math.fsum(u.prompt_tokens for u in self.costs.units),
            "answer_tokens_per_sweep": math.fsum(u.answer_tokens for u in self.costs.units),
            "sweep_seconds": self.sweep_seconds,
            "budget": self.budget,
            "reserve": self.reserve,
            "ttt_seconds": self.ttt_seconds,
            "available": self.available,
            "workers": self.workers,
            "augmentations": self.augmentations,
            "ttt_step_seconds": None if self.tuning is None else self.tuning.step_seconds,
            "ttt_adapter_seconds": None if self.tuning is None else self.tuning.adapter_seconds,
            "ttt_step_tokens": None if self.tuning is None else self.tuning.tokens,
            "ttt_stage_start_seconds": (
                None if self.tuning is None else self.tuning.stage_start_seconds
            ),
            "answer_fill": self.throughput.answer_fill,
            "lora_cost": self.throughput.lora_cost,
            "lora_cost_per_adapter": self.throughput.lora_cost_per_adapter,
            "score_cost": self.throughput.score_cost,
            "starts": {
                mode: {
                    "start_seconds": t.start_seconds,
                    "prefill_tokens_per_s": t.prefill_tokens_per_s,
                    "decode_tokens_per_s": t.decode_tokens_per_s,
                    "sweep_seconds": self.started(mode).sweep_seconds,
                    "augmentations": self.started(mode).augmentations,
                }
                for mode, t in self.starts.items()
            },
            "too_long": [
                {"task_id": x.task_id, "test_index": x.test_index, "needed": x.needed}
                for x in self.costs.too_long
            ],
        }

    def render(self) -> str:
        t, c = self.throughput, self.costs
        prompt = math.fsum(u.prompt_tokens for u in c.units)
        answer = math.fsum(u.answer_tokens for u in c.units)
        lines = [
            f"engine: prefill {t.prefill_tokens_per_s:,.0f} tok/s, decode "
            f"{t.decode_tokens_per_s:,.0f} tok/s ({t.prompts} calibration prompts, "
            f"{t.prompt_tokens:,} prompt + {t.answer_tokens:,} answer tokens); start-up "
            f"{format_duration(t.start_seconds)}",
            f"one augmentation of each of {len(c.units)} test inputs: {prompt:,.0f} prompt + "
            f"{self.n_per_prompt} x {answer:,.0f} answer tokens (allowance) = "
            f"{format_duration(self.sweep_seconds)} on {self.workers} worker(s)",
            f"budget {format_duration(self.budget)} - reserve {format_duration(self.reserve)} - "
            + (f"fine-tuning {format_duration(self.ttt_seconds)} - " if self.ttt_seconds else "")
            + f"start-up = {format_duration(self.available)}",
            f"=> {self.augmentations} augmentations per test input fit "
            f"(e.g. --max-augmentations {max(self.augmentations, 1)}; predicted run time "
            f"{format_duration(self.predicted_seconds(self.augmentations))})",
        ]
        if self.tuning is not None:
            lines.append(
                f"fine-tuning: {self.tuning.step_seconds:.3f} s per step at "
                f"{self.tuning.tokens:,.0f} prompt tokens (in proportion for other tasks) and "
                f"{self.tuning.adapter_seconds:.1f} s per adapter beside its steps, "
                f"{self.tuning.stage_start_seconds:.1f} s for a training process's start; "
                f"serving a batch with its adapter costs {t.lora_cost:.2f}x the base model's time, "
                f"+{t.lora_cost_per_adapter:.2f}x per further adapter in it"
            )
        if t.score_cost != 1.0:
            lines.append(
                f"re-scoring: a scoring request costs {t.score_cost:.2f}x prefill's time per token"
            )
        if len(self.starts) > 1:
            both = {mode: self.started(mode) for mode in self.starts}
            lines.append(
                "vLLM started both ways: "
                + "; ".join(
                    f"{mode} up in {format_duration(p.throughput.start_seconds)}, decode "
                    f"{p.throughput.decode_tokens_per_s:,.0f} tok/s, {p.augmentations} "
                    "augmentations"
                    for mode, p in both.items()
                )
                + " (airv run --plan PLAN.json starts the way that fits more)"
            )
        if c.too_long:
            lines.append(f"{len(c.too_long)} test input(s) cannot fit max_model_len (fallback):")
            lines += [
                f"  {x.task_id} test {x.test_index}: needs {x.needed} tokens > {x.max_model_len}"
                for x in c.too_long
            ]
        if c.skipped:
            lines.append(f"{len(c.skipped)} invalid task(s) skipped: {', '.join(c.skipped)}")
        return "\n".join(lines)


def _views(task: Task, test_index: int, k: int, cfg: RunConfig) -> list[Task]:
    # The run's own first views of this test input (plan_views), so calibration sees them.
    return [a.apply_task(task) for a in plan_views(task, test_index, k, cfg.views)]


def estimate_costs(cfg: RunConfig, challenges: Challenges, tokenizer: Tokenizer) -> Costs:
    """Price every test input of `challenges` as the run configured by `cfg` would prompt it."""
    units: list[UnitCost] = []
    too_long: list[TooLong] = []
    fmt = for_tokenizer(cfg.prompt, tokenizer)

    def fit(view: Task, test_index: int) -> FittedPrompt | PromptTooLong:
        return fit_prompt(view, test_index, fmt, tokenizer, cfg.engine.max_model_len)

    for task_id in challenges.task_ids:
        task = challenges.tasks.get(task_id)
        if task is None:
            continue
        demo = demonstration(task, fit, lambda g: answer_token_ids(g, fmt, tokenizer))
        for i in range(len(task.test)):
            fitted = []
            for view in _views(task, i, PRICED_VIEWS, cfg):
                f = fit(view, i)
                if not isinstance(f, FittedPrompt):
                    too_long.append(TooLong(task_id, i, f.needed, f.max_model_len))
                    break
                fitted.append(f)
            else:
                units.append(
                    UnitCost(
                        task_id,
                        i,
                        prompt_tokens=sum(len(f.token_ids) for f in fitted) / len(fitted),
                        answer_tokens=sum(f.max_answer_tokens for f in fitted) / len(fitted),
                        promise_tokens=0.0 if demo is None else demo.tokens,
                    )
                )
    return Costs(tuple(units), tuple(too_long), tuple(sorted(challenges.rejected)))


def calibration_units(costs: Costs, n_tasks: int) -> list[UnitCost]:
    """The test inputs of n tasks spread evenly over the tasks sorted by prompt length, so
    the calibration sees short and long prompts alike."""
    by_task: dict[TaskId, list[UnitCost]] = {}
    for u in costs.units:
        by_task.setdefault(u.task_id, []).append(u)
    order = sorted(by_task, key=lambda t: (sum(u.prompt_tokens for u in by_task[t]), t))
    if n_tasks >= len(order):
        chosen = order
    else:
        picks = np.linspace(0, len(order) - 1, n_tasks).round().astype(int)
        chosen = [order[i] for i in sorted(set(picks.tolist()))]
    return [u for t in chosen for u in by_task[t]]


def _generate(
    lane: Lane, deadline: float, requests: list[GenerateRequest]
) -> list[list[Completion]]:
    return completions_of(run_lane(lane, requests, deadline))


def _run(lane: Lane, deadline: float, requests: list[ScoreRequest]) -> object:
    return run_lane(lane, requests, deadline)


def measure(
    generate: Callable[[list[GenerateRequest]], list[list[Completion]]],
    prefill_set: Sequence[FittedPrompt],
    decode_set: Sequence[FittedPrompt],
    *,
    started: float,
    adapters: Sequence[str | None] = (),
    solo_adapter: str | None = None,
    score: Callable[[list[ScoreRequest]], object] | None = None,
    score_set: Sequence[FittedPrompt] = (),
    now: Callable[[], float] = time.monotonic,
) -> Throughput:
    """Time the two calibration calls (see the module docstring) on the clock `now`.
    `started` is the `now()` the start-up is counted from. With `adapters` (one per decode
    prompt), the decode call is timed once more, each prompt served with its adapter, and
    where they are several, once more with `solo_adapter` on every prompt (a path of its
    own): LoRA's cost over the base model with one adapter in the batch, and what each
    further adapter adds (vLLM keys its prefix cache by adapter, so each call pays its
    prefill again, as the first did). With `score`, the decode call's answers are scored
    under the prompts of `score_set` (views neither call saw, as re-scoring's views are new
    to the engine): a scoring request's seconds per token over prefill's."""
    if not prefill_set or not decode_set:
        raise ConfigError("no calibration prompts: every calibration task was too long")
    warm = decode_set[0]
    generate([GenerateRequest(tuple(warm.token_ids), 2)])  # first-call overheads
    start_seconds = now() - started

    t0 = now()
    generate([GenerateRequest(tuple(p.token_ids), 1) for p in prefill_set])
    prefill_time = max(now() - t0, 1e-6)
    prefill_tokens = sum(len(p.token_ids) for p in prefill_set)
    prefill_rate = prefill_tokens / prefill_time

    t0 = now()
    out = generate([GenerateRequest(tuple(p.token_ids), p.max_answer_tokens) for p in decode_set])
    gen_time = max(now() - t0, 1e-6)
    decode_prompt_tokens = sum(len(p.token_ids) for p in decode_set)
    answer_tokens = sum(len(c.token_ids) for cs in out for c in cs)
    decode_time = max(gen_time - decode_prompt_tokens / prefill_rate, MIN_DECODE_SHARE * gen_time)
    lora_cost, per_adapter = 1.0, 0.0
    distinct = len({a for a in adapters if a is not None})
    if distinct:

        def lora_time(served_with: Sequence[str | None]) -> float:
            """The decode call served so, over the base model's time for the same tokens (an
            adapter trained on one task answers other tasks' prompts at lengths of its own)."""
            t0 = now()
            served = generate(
                [
                    GenerateRequest(tuple(p.token_ids), p.max_answer_tokens, a)
                    for p, a in zip(decode_set, served_with, strict=True)
                ]
            )
            lora_answers = sum(len(c.token_ids) for cs in served for c in cs)
            base_time = decode_prompt_tokens / prefill_rate + lora_answers * decode_time / max(
                answer_tokens, 1
            )
            return (now() - t0) / base_time

        lora_cost = lora_time(adapters)
        if distinct > 1 and solo_adapter is not None:
            many, lora_cost = lora_cost, lora_time([solo_adapter] * len(decode_set))
            per_adapter = max(0.0, (many - lora_cost) / (distinct - 1))
    score_cost = 1.0
    answers = [cs[0].token_ids for cs in out if cs and cs[0].token_ids]
    if score is not None and score_set and answers:
        scored = [
            ScoreRequest(tuple(p.token_ids), answers[i % len(answers)])
            for i, p in enumerate(score_set)
        ]
        t0 = now()
        score(scored)
        tokens = sum(r.tokens for r in scored)
        score_cost = (now() - t0) * prefill_rate / tokens
    return Throughput(
        prefill_tokens_per_s=prefill_rate,
        decode_tokens_per_s=max(answer_tokens, 1) / decode_time,
        start_seconds=start_seconds,
        prompts=len(prefill_set) + len(decode_set),
        prompt_tokens=prefill_tokens + decode_prompt_tokens,
        answer_tokens=answer_tokens,
        answer_allowance=sum(p.max_answer_tokens for p in decode_set),
        lora_cost=lora_cost,
        lora_cost_per_adapter=per_adapter,
        score_cost=score_cost,
    )


def make_plan(
    cfg: RunConfig,
    *,
    calibration_tasks: int = CALIBRATION_TASKS,
    augmentations: int = CALIBRATION_AUGMENTATIONS,
    started: float | None = None,
    both_starts: bool = True,
) -> Plan:
    """Start the engine of `cfg` in a worker process, calibrate it on `calibration_tasks` tasks
    with `augmentations` views per test input in each of the two calls, and plan the whole
    challenge file; vLLM is measured eager and compiled unless `both_starts` is off."""
    if calibration_tasks < 1 or augmentations < 1:
        raise ConfigError("--calibration-tasks and --calibration-augmentations must be >= 1")
    started = process_start_time() if started is None else started
    challenges = load_challenges(cfg.challenges, strict=False)
    tokenizer = load_tokenizer(cfg.engine.model)  # as the pipeline loads it
    costs = estimate_costs(cfg, challenges, tokenizer)
    fmt = for_tokenizer(cfg.prompt, tokenizer)
    # Prefill, decode and (re-scoring) scoring sets, on disjoint views.
    n_sets = 3 if cfg.vote_mode.needs_scores else 2
    sets: tuple[list[FittedPrompt], ...] = tuple([] for _ in range(n_sets))
    decode_tasks: list[TaskId] = []  # the task of each decode prompt
    for u in calibration_units(costs, calibration_tasks):
        task = challenges.tasks[u.task_id]
        for j, view in enumerate(_views(task, u.test_index, n_sets * augmentations, cfg)):
            f = fit_prompt(view, u.test_index, fmt, tokenizer, cfg.engine.max_model_len)
            if isinstance(f, FittedPrompt):
                sets[j % n_sets].append(f)
                if j % n_sets == 1:
                    decode_tasks.append(u.task_id)
    # The engine in a worker process, as the run starts it: its start-up (a fresh
    # interpreter importing torch/vLLM) and its shutdown are part of the price. vLLM is
    # started both ways (eager, compiled), the run's own way first; each start is counted
    # from its lane's launch plus what this process spent before the first.
    before = time.monotonic() - started
    ways = [cfg.engine.enforce_eager]
    if both_starts and cfg.engine.backend is Backend.VLLM:
        ways.append(not cfg.engine.enforce_eager)
    starts: dict[str, Throughput] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Fine-tuning first: its adapter is then served beside the base model, to price LoRA.
        tuning = None
        served: Sequence[str | None] = ()
        if cfg.ttt.enabled:
            tuning = measure_ttt(cfg, challenges, calibration_units(costs, 1), Path(tmp))
            if tuning is not None:
                # The slots the run's engine would have for these tasks' adapters (on CPU, one
                # per task and one spare: run.engines.serving): vLLM on CPU took twice the time
                # with 20 adapters in a batch as with 8.
                slots = serving(cfg, len(set(decode_tasks))).max_loras
                served = adapter_per_task(
                    tuning.adapter, decode_tasks, cfg.ttt.mode, Path(tmp), slots
                )
        for eager in ways:
            engine = dataclasses.replace(
                serving(cfg, len({a for a in served if a is not None})), enforce_eager=eager
            )
            launched = time.monotonic()
            deadline = launched + max(cfg.time_budget, MEASURE_SECONDS)
            lane = start_lane(engine, cfg.sampling, 0, devices=cfg.devices)
            try:
                await_ready(lane, deadline)
                measured = measure(
                    functools.partial(_generate, lane, deadline),
                    sets[0],
                    sets[1],
                    started=launched - before,
                    adapters=served,
                    solo_adapter=None if tuning is None else tuning.adapter,
                    score=functools.partial(_run, lane, deadline) if n_sets == 3 else None,
                    score_set=sets[2] if n_sets == 3 else (),
                )
            finally:
                t0 = time.monotonic()
                lane.close()
            mode = start_mode(eager)
            starts[mode] = dataclasses.replace(measured, stop_seconds=time.monotonic() - t0)
    throughput = starts[start_mode(cfg.engine.enforce_eager)]
    return Plan(
        throughput=throughput,
        costs=costs,
        budget=cfg.time_budget,
        reserve=cfg.reserve_seconds,
        workers=cfg.workers,
        n_per_prompt=cfg.sampling.n,
        # The stage takes its share of the budget (the run ends it there), then inference.
        ttt_seconds=cfg.stage_seconds,
        starts=starts if len(starts) > 1 else {},
        tuning=tuning,
    )


def adapter_per_task(
    adapter: str, tasks: Sequence[TaskId], mode: TTTMode, folder: Path, max_loras: int
) -> list[str]:
    """The adapter each prompt is served with to price LoRA as the run serves it: with
    per-task fine-tuning, each task its own (the one calibration adapter under a path of its
    own per task, a link: vLLM takes each path for another adapter), at most `max_loras` of
    them, the batch's adapter slots (more would time vLLM swapping adapters in and out, which
    a run pays only when a wave serves more adapters than that); jointly, the one adapter."""
    if mode is TTTMode.JOINT:
        return [adapter] * len(tasks)
    links = [folder / f"served-{i}" for i in range(max(1, max_loras))]
    paths: dict[TaskId, str] = {}
    for task_id in tasks:
        if task_id not in paths:
            link = links[len(paths) % len(links)]
            if not link.exists():
                link.symlink_to(adapter, target_is_directory=True)
            paths[task_id] = str(link)
    return [paths[t] for t in tasks]


@dataclass(frozen=True, slots=True)
class FineTuning:
    """Fine-tuning as `airv plan` times it: seconds per optimiser step and each adapter's
    fixed seconds beside its steps (building its sequences, saving it), from two adapters of
    one calibration task, each in a stage of its own; the stage's seconds before and after
    its adapter (its process's start, loading the model); and the longer adapter's folder,
    which the engine then serves."""

    step_seconds: float
    adapter_seconds: float
    adapter: str
    tokens: float  # the calibration task's prompt tokens (a test input's, the mean)
    stage_start_seconds: float = 0.0


def measure_ttt(
    cfg: RunConfig, challenges: Challenges, units: Sequence[UnitCost], folder: Path
) -> FineTuning | None:
    """Train one calibration task's adapter twice, for TTT_CALIBRATION_STEPS steps and for a
    quarter of them, in the stage's own process (model loading excluded), into `folder`:
    the difference gives the seconds per step, the rest each adapter's fixed seconds. None if
    it did not train."""
    if not units or cfg.engine.model is None:
        return None
    task = challenges.tasks[units[len(units) // 2].task_id]
    long = min(cfg.ttt.steps, TTT_CALIBRATION_STEPS)
    timed: list[TrainResult] = []
    outside: list[float] = []  # each stage's seconds beside its adapter's
    for steps in sorted({max(1, long // 4), long}):
        job = StageJob(
            model_dir=cfg.engine.model,
            fmt=cfg.prompt,
            cfg=dataclasses.replace(cfg.ttt, steps=steps),
            policy=cfg.views,
            max_len=cfg.engine.max_model_len,
            out_dir=folder / f"adapters-{steps}",
            task_cap=max(cfg.time_budget, MEASURE_SECONDS),
        )
        report = run_stage(
            [task],
            job,
            deadline=time.monotonic() + max(cfg.time_budget, MEASURE_SECONDS),
            log_path=folder / f"ttt-{steps}.jsonl",
            devices=cfg.devices[:1] or (None,),
        )
        trained = [r for r in report.results if r.steps > 0 and r.path is not None]
        timed += trained
        if trained:
            outside.append(max(0.0, report.seconds - sum(r.seconds for r in trained)))
    if not timed:
        return None
    short, full = timed[0], timed[-1]
    step = 0.0
    if full.steps > short.steps:
        step = (full.seconds - short.seconds) / (full.steps - short.steps)
    if step <= 0:  # one adapter, or steps too quick to tell apart: all of it per step
        step = full.seconds / full.steps
    assert full.path is not None
    tokens = mean_prompt_tokens(u for u in units if u.task_id == task.id)
    fixed = max(0.0, full.seconds - step * full.steps)
    return FineTuning(step, fixed, full.path, tokens, stage_start_seconds=min(outside))


HELP = "measure the engine, or simulate a whole run on paper, and predict what fits the budget"
DESCRIPTION = (
    "Size a run before spending it. Starts the engine of --model (with the same engine, "
    "sampling and format options as `airv run`), measures prompt (prefill) and answer (decode) "
    "tokens/s on a few calibration tasks, prices every test input of --challenges, and prints "
    "how many augmentations per test input fit in --time-budget after the reserve and the "
    "measured start-up, and which tasks cannot fit --max-model-len at all. Run it in an "
    "interactive session on the machine of the real run (e.g. a Kaggle GPU notebook), then "
    "pass --max-augmentations to `airv run`. With --simulate it plays the whole run on a "
    "virtual clock (fine-tuning waves, engine restarts, rounds, task caps, re-scoring, the "
    "workers) priced by a rates file (--rates), with no model; or, without --rates, by the "
    "rates it measures."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    c = p.add_argument_group("calibration")
    c.add_argument(
        "--calibration-tasks",
        type=int,
        default=CALIBRATION_TASKS,
        metavar="N",
        help="tasks to measure on, spread over short and long prompts "
        f"(default {CALIBRATION_TASKS})",
    )
    c.add_argument(
        "--calibration-augmentations",
        type=int,
        default=CALIBRATION_AUGMENTATIONS,
        metavar="K",
        help="views per test input in each of the two timed calls; more prompts = a batch "
        f"closer to the run's (default {CALIBRATION_AUGMENTATIONS})",
    )
    c.add_argument(
        "--one-start",
        action="store_true",
        help="measure vLLM only the way the run would start it (by default it is started "
        "both ways, eager and compiled, and plan.json keeps both for `airv run --plan`)",
    )
    s = p.add_argument_group("simulation (a whole run on paper)")
    s.add_argument(
        "--simulate",
        action="store_true",
        help="play the run on a virtual clock: waves of fine-tuning and answering, engine "
        "restarts, rounds, task caps, re-scoring, --workers GPUs; nothing settles early",
    )
    s.add_argument(
        "--rates",
        metavar="NAME|FILE",
        help="what the work costs per GPU (README › Sizing a run): a rates file, or a shipped "
        f"one by name ({', '.join(rates_names())}); no model needed. Without it, --simulate "
        "measures the engine of --model",
    )
    s.add_argument(
        "--tasks",
        type=int,
        metavar="N",
        help="without --challenges: N synthetic tasks of ARC-AGI-2 evaluation sizes",
    )
    s.add_argument(
        "--json", action="store_true", help="print the simulation as one JSON object alone"
    )
    runopts.add_run_arguments(
        p, required=False, out_help="also write plan.json into this directory"
    )


def _write_plan(out: Path | None, data: dict[str, object], *, quiet: bool) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    path = out / "plan.json"
    try:
        path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    except OSError as e:
        raise InputError(f"cannot write the plan: {e.strerror or e}", path=path) from e
    print(f"written: {path}", file=sys.stderr if quiet else sys.stdout)


def measured_rates(plan: Plan) -> Rates:
    """The rates `airv plan` measures: prefill, decode (as this run starts the engine), the
    engine's start-up both ways where vLLM was measured both ways (else as this run starts
    it) and its stop, with --ttt the seconds per training step and the adapter's serving
    cost, and with --vote rescore or views-nll the scoring cost. With --decode dfs the decode
    call runs the run's own search, so the decode rate is the search's: `dfs_cost` stays 1."""
    t = plan.throughput
    eager, compiled = (plan.starts.get(m, t) for m in ("eager", "compiled"))
    return Rates(
        prefill_tokens_per_second=t.prefill_tokens_per_s,
        decode_tokens_per_second=t.decode_tokens_per_s,
        engine_start_eager_seconds=eager.start_seconds,
        engine_start_compiled_seconds=compiled.start_seconds,
        engine_stop_seconds=t.stop_seconds,
        ttt_seconds_per_step=None if plan.tuning is None else plan.tuning.step_seconds,
        ttt_seconds_per_adapter=None if plan.tuning is None else plan.tuning.adapter_seconds,
        ttt_step_tokens=None if plan.tuning is None else plan.tuning.tokens,
        ttt_stage_start_seconds=0.0 if plan.tuning is None else plan.tuning.stage_start_seconds,
        answer_fill=max(t.answer_fill, 1e-3),
        lora_cost=t.lora_cost,
        lora_cost_per_adapter=t.lora_cost_per_adapter,
        score_cost=t.score_cost,
        batch_requests=VLLM_BATCH,
        name="measured",
        about=f"measured by airv plan on {t.prompts} calibration prompts",
    )


def simulate_main(args: argparse.Namespace) -> int:
    """`airv plan --simulate`: the run priced by a rates file, or by rates measured here."""
    if args.challenges is None and args.tasks is None:
        raise ConfigError("airv plan --simulate needs --challenges FILE or --tasks N")
    if args.tasks is not None and (args.challenges is not None or args.tasks < 1):
        raise ConfigError("--tasks N (N >= 1) stands for --challenges: give one of them")
    if args.rates is None and (args.model is None or args.challenges is None):
        raise ConfigError(
            "airv plan --simulate needs --rates NAME|FILE, or --model DIR and --challenges "
            "FILE to measure the rates"
        )
    cfg = runopts.build_run_config(
        argparse.Namespace(**{**vars(args), "out": args.out or Path(".")}), on_paper=True
    )
    if args.tasks is not None:
        tasks = synthetic_tasks(args.tasks, seed=cfg.views.seed)
        skipped: tuple[TaskId, ...] = ()
    else:
        challenges = load_challenges(cfg.challenges, strict=False)
        tasks = [challenges.tasks[t] for t in challenges.task_ids if t in challenges.tasks]
        skipped = tuple(sorted(challenges.rejected))
    tasks = tasks[: cfg.max_tasks] if cfg.max_tasks is not None else tasks
    measured: Plan | None = None
    if args.rates is None:
        measured = make_plan(
            cfg,
            calibration_tasks=args.calibration_tasks,
            augmentations=args.calibration_augmentations,
            both_starts=not args.one_start,
        )
        rates, source = measured_rates(measured), "measured"
        costs = measured.costs
    else:
        rates, source = load_rates(args.rates), str(args.rates)
        if cfg.engine.model is not None and args.challenges is not None:
            costs = estimate_costs(cfg, challenges, load_tokenizer(cfg.engine.model))
        else:
            costs = price_by_cells(tasks, rates, cfg.engine.max_model_len)
        costs = dataclasses.replace(costs, skipped=skipped)
    wanted = {t.id for t in tasks}
    costs = dataclasses.replace(costs, units=tuple(u for u in costs.units if u.task_id in wanted))
    sim = simulate(cfg, costs, rates, adapter_bytes=_adapter_bytes(cfg, rates, source))
    if args.json:
        print(orjson.dumps(sim.to_json()).decode())
    else:
        print(f"rates: {rates.name or source} ({rates.about})" if rates.about else source)
        print(sim.render())
    data: dict[str, object] = measured.to_json() if measured is not None else {}
    data.update({"rates": {"source": source, **rates.to_json()}, "simulation": sim.to_json()})
    _write_plan(args.out, data, quiet=args.json)
    return 0


def _adapter_bytes(cfg: RunConfig, rates: Rates, source: str) -> int | None:
    """One adapter's size: from the model's weight shapes when a model is given (as the run
    estimates it), else the rates file's, scaled to the run's rank."""
    ttt = cfg.ttt
    if not ttt.enabled:
        return None
    if rates.ttt_seconds(ttt.steps) is None:
        raise ConfigError(
            f"{source}: rates file: fine-tuning is on but the file gives neither "
            "ttt_seconds_per_step nor ttt_seconds_per_task"
        )
    if cfg.engine.model is not None:
        shapes = weight_shapes(cfg.engine.model)
        return adapter_bytes(shapes, ttt, dtype_bytes=2 if cfg.devices else 4)
    size = rates.adapter_size(ttt.rank)
    if size is None and cfg.scratch_limit is not None and ttt.mode is not TTTMode.JOINT:
        raise ConfigError(
            f"{source}: rates file: --scratch-limit needs the adapters' size: give "
            "adapter_bytes and adapter_rank, or --model DIR"
        )
    return size


def main(args: argparse.Namespace) -> int:
    if args.simulate:
        runopts.configure_logging(args.log_level)
        return simulate_main(args)
    if args.rates is not None or args.tasks is not None or args.json:
        raise ConfigError("--rates, --tasks and --json go with --simulate")
    if args.challenges is None or args.model is None:
        raise ConfigError("airv plan needs --challenges FILE and --model DIR")
    runopts.configure_logging(args.log_level)
    # The run's own config, so that the plan prices the prompts the run will send.
    cfg = runopts.build_run_config(
        argparse.Namespace(**{**vars(args), "out": args.out or Path(".")})
    )
    plan = make_plan(
        cfg,
        calibration_tasks=args.calibration_tasks,
        augmentations=args.calibration_augmentations,
        both_starts=not args.one_start,
    )
    print(plan.render())
    _write_plan(args.out, plan.to_json(), quiet=False)
    return 0


__all__ = [
    "CALIBRATION_AUGMENTATIONS",
    "CALIBRATION_TASKS",
    "DESCRIPTION",
    "HELP",
    "Costs",
    "Plan",
    "Simulation",
    "Throughput",
    "TooLong",
    "UnitCost",
    "add_arguments",
    "calibration_units",
    "estimate_costs",
    "main",
    "make_plan",
    "measure",
    "measured_rates",
    "simulate_main",
]
