"""The shipped demo model really solves tasks of its trained family through the real pipeline.

Held-out synthetic tasks (a seed training never uses) of the rules the model learned best
(one colour recoloured: `airv.demo.synthetic.RECOLOUR_SPEC`), run through airv's pipeline on the
vLLM engine with 8 augmentations and a grid-wise vote. A random-weight model of the same shape
solves none of them, so the threshold below can fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from airv.core.augment import ViewPolicy
from airv.core.submission import score_submission
from airv.core.tasks import dump_challenges
from airv.demo.synthetic import RECOLOUR_SPEC, as_files, make_tasks
from airv.engines.config import Backend
from airv.engines.pool import LaneStarter
from runs import engine_config, fresh_run, workload

DEMO_MODEL = Path(__file__).resolve().parents[1] / "models" / "airv-demo"

# Spec, seed and count shared with bench/demo_model.py's "synthetic-recolour" set, which
# measures this exact run (see bench/demo-model.md).
TEST_SEED = 20261122
N_TASKS = 10
MIN_SOLVED = 6


@pytest.mark.engine
@pytest.mark.slow
def test_demo_model_solves_most_recolouring_tasks(tmp_path: Path, lent_lanes: LaneStarter) -> None:
    if not (DEMO_MODEL / "model.safetensors").is_file():
        pytest.fail(f"{DEMO_MODEL} holds no model; build it with `make demo-model`")
    tasks = make_tasks(N_TASKS, RECOLOUR_SPEC, np.random.default_rng(TEST_SEED), prefix="r")
    challenges, solutions = as_files(tasks)
    path = tmp_path / "challenges.json"
    dump_challenges(challenges.values(), path)
    cfg = workload(
        path,
        tmp_path / "out",
        engine_config(DEMO_MODEL, Backend.VLLM),
        views=ViewPolicy(),
        time_budget=600,
    )
    assert fresh_run(cfg, lanes=lent_lanes).execute() == 0
    score = score_submission(orjson.loads(cfg.submission_path.read_bytes()), solutions)
    assert score.n_outputs == N_TASKS
    assert score.n_correct >= MIN_SOLVED, score.per_task
