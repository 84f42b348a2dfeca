"""Section 5 of bench.run_bench: the real pipeline's wall time against tasks and against
augmentations per task, on one live engine worker."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from airv.core.tasks import dump_challenges
from airv.run.budget import Clock
from bench.common import table
from bench.harness import Bench, ModelKind, Section, pipeline_config, warm_up
from bench.runs import TimedRun, check_done, run_result


def measure(b: Bench) -> dict[str, object]:
    """Wall time of real runs (one live engine, its start-up excluded) against tasks and
    augmentations. Prefix caching is off, so no run profits from an earlier one's prompts."""
    s = b.settings
    w = b.worker(ModelKind.BIGRAM, prefix_caching=False)
    pool = b.task_pool()
    warm_up(w, b.workload(pool[:1], 1, ModelKind.BIGRAM))
    points = [(n, s.scale_augs[0]) for n in s.scale_tasks]
    points += [(s.scale_tasks[0], a) for a in s.scale_augs[1:]]
    if max(s.scale_tasks) > len(pool):
        raise ValueError(f"only {len(pool)} tasks fit max_prompt_tokens {s.max_prompt_tokens}")
    results = []
    for n, augs in points:
        d = b.workdir / f"scaling-{n}x{augs}"
        d.mkdir()
        dump_challenges(pool[:n], d / "challenges.json")
        cfg = pipeline_config(b, d / "challenges.json", d / "run", augs, prefix_caching=False)
        t0 = time.monotonic()
        r = TimedRun(cfg, clock=Clock.for_run(cfg, t0), worker=w)
        check_done(r.run, r.execute())
        results.append({"augmentations": augs, **run_result(r.run, time.monotonic() - t0)})
        print(f"  scaling {n} tasks x {augs}: {results[-1]['wall_seconds']:.1f}s", flush=True)
    return {"model": "tiny Qwen2 bigram (answers '12')", "points": results}


def render(sc: Mapping[str, Any]) -> list[str]:
    return [
        "## 5. Scaling: wall time against tasks and augmentations",
        "",
        f"Real runs, one live vLLM worker, {sc['model']}: prefill-bound. Engine start-up "
        "excluded (section 4); prefix caching off so that no run reuses another's prompts.",
        "",
        *table(
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


SECTION = Section(
    "scaling",
    "the real pipeline's wall time against tasks and augmentations per task",
    measure,
    render,
)
