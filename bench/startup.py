"""Section 4 of bench.run_bench: a real run with a fresh engine worker; the time until
the engine is up and submission.json first exists and first holds answers; the imports."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from airv.core.tasks import dump_challenges
from airv.run.budget import Clock
from bench.common import table
from bench.harness import Bench, ModelKind, Section, pipeline_config
from bench.runs import TimedRun, check_done, run_result


def measure(b: Bench) -> dict[str, object]:
    """A fresh engine worker inside a real run; then `python -c 'import airv.run.pipeline'`."""
    s = b.settings
    tasks = b.task_pool()[: s.startup_tasks]
    d = b.workdir / "startup"
    d.mkdir()
    challenges = d / "challenges.json"
    dump_challenges(tasks, challenges)
    cfg = pipeline_config(b, challenges, d / "run", s.startup_augs, prefix_caching=False)
    t0 = time.monotonic()
    r = TimedRun(cfg, clock=Clock.for_run(cfg, t0))
    check_done(r.run, r.execute())
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
        "run": run_result(r.run, wall),
        "other_engine_starts": dict(b.worker_start_seconds),
    }


def render(st: Mapping[str, Any]) -> list[str]:
    r = st["run"]
    return [
        "## 4. Start-up and first answer",
        "",
        f"A real run ({r['tasks']} tasks, {r['prompts']} prompts, bigram model) with a fresh "
        f"engine worker: {st['engine']}. Times from the start of the run (challenge file "
        "read, tokenizer loaded, worker spawned); a fresh "
        "`python -c 'import airv.run.pipeline'` adds the interpreter and imports.",
        "",
        *table(
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


SECTION = Section(
    "startup",
    "engine start-up and the time until submission.json exists / holds answers",
    measure,
    render,
)
