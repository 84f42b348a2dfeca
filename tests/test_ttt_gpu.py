"""bench.ttt_gpu without a GPU: its smoke run at toy shapes on the CPU with vLLM made
unimportable, its refusal of the GPU shapes, and the report section it rewrites in place.
No timing is checked beyond being positive."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from bench import common, ttt_gpu

ROOT = Path(__file__).resolve().parents[1]
# Runs the bench as `python -m bench.ttt_gpu ARGS` would from the repository root, with vLLM
# unimportable: a test of the promise that it needs torch, transformers and peft only.
NO_VLLM = (
    "import runpy, sys; sys.modules['vllm'] = None; "
    "runpy.run_module('bench.ttt_gpu', run_name='__main__', alter_sys=True)"
)


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])
        ),
        "CUDA_VISIBLE_DEVICES": "",  # the CPU, even on a machine with a GPU
        # One thread: two spin at each op's barrier when another job holds one of two cores
        # (a tiny step then takes a second, not 10 ms).
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-c", NO_VLLM, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_tiny_shapes_train_one_adapter_on_the_cpu_without_vllm(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = run_bench("--shapes", "tiny", "--steps", "5", "--no-report", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    figures = orjson.loads(out.read_bytes())
    assert figures["steps"] == figures["planned_steps"] == 5 and figures["error"] is None
    assert len(figures["step_seconds"]) == 5 and figures["step_seconds_median"] > 0
    assert figures["adapter_bytes"] > 0 and figures["peak_gpu_bytes"] is None
    assert figures["recipe"] == "nvarc-2025" and figures["ttt"]["rank"] == 256  # the recipe's
    assert "## GPU: one adapter at Qwen3-4B's shapes" in done.stdout


def test_the_gpu_shapes_are_refused_without_a_gpu() -> None:
    done = run_bench("--no-report")
    assert done.returncode == 2
    assert "no CUDA GPU" in done.stderr and "--shapes tiny" in done.stderr


def test_the_section_is_replaced_or_appended_and_the_rest_kept() -> None:
    head = "# TTT\n\ntext\n\n| a |\n| --- |\n"
    tail = "## Later\n\nmore\n"
    old = f"{ttt_gpu.SECTION}\n\nold figures\n\n"
    new = f"{ttt_gpu.SECTION}\n\nnew figures\n"
    assert common.replace_section(head + old + tail, new) == head + new + "\n" + tail
    assert common.replace_section(head + old, new) == head + new
    assert common.replace_section(head, new) == head + "\n" + new
    assert common.replace_section(head + "\n", new) == head + "\n" + new
    assert common.replace_section(head.rstrip("\n"), new) == head + "\n" + new
