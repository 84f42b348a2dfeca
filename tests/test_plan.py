"""`airv plan`: the arithmetic of a plan on made-up numbers, and a real calibration with the
tiny model through the transformers backend (no timed asserts: only that it is sane)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from airv.cli import main
from airv.core.tasks import Pair, Task, dump_challenges, load_challenges
from airv.core.types import Grid
from airv.engines.config import EngineConfig
from airv.run.config import RunConfig
from airv.run.promise import demonstration
from airv.run.prompting import Prompter
from airv.tools.plan import (
    Costs,
    Plan,
    Throughput,
    TooLong,
    UnitCost,
    calibration_units,
    estimate_costs,
)


def _throughput(start: float = 10.0) -> Throughput:
    return Throughput(
        prefill_tokens_per_s=1000.0,
        decode_tokens_per_s=100.0,
        start_seconds=start,
        prompts=8,
        prompt_tokens=800,
        answer_tokens=80,
    )


def test_plan_arithmetic() -> None:
    units = (UnitCost("a", 0, 500.0, 10.0), UnitCost("b", 0, 1500.0, 30.0))
    costs = Costs(units, (TooLong("c", 0, 9000, 8192),), ())
    plan = Plan(_throughput(), costs, budget=130.0, reserve=20.0, workers=1, n_per_prompt=1)
    # one sweep: 2000 prompt tokens / 1000 + 40 answer tokens / 100 = 2.4 s
    assert plan.sweep_seconds == pytest.approx(2.4)
    assert plan.available == pytest.approx(100.0)
    assert plan.augmentations == 41  # floor(100 / 2.4)
    assert plan.predicted_seconds(41) == pytest.approx(10.0 + 41 * 2.4)
    two = Plan(_throughput(), costs, budget=130.0, reserve=20.0, workers=2, n_per_prompt=2)
    assert two.sweep_seconds == pytest.approx((2.0 + 0.8) / 2)
    text = plan.render()
    assert "41 augmentations per test input" in text and "c test 0: needs 9000" in text
    assert plan.to_json()["too_long"] == [{"task_id": "c", "test_index": 0, "needed": 9000}]
    broke = Plan(_throughput(start=500.0), costs, 130.0, 20.0, 1, 1)
    assert broke.available == 0.0 and broke.augmentations == 0
    # Test-time fine-tuning takes its share before inference: fewer augmentations fit.
    tuned = Plan(_throughput(), costs, 130.0, 20.0, 1, 1, ttt_seconds=40.0)
    assert tuned.available == pytest.approx(60.0) and tuned.augmentations == 25
    assert "fine-tuning 40s" in tuned.render()


def test_lora_is_timed_with_one_adapter_and_with_the_runs_count() -> None:
    """The decode call served with 3 adapters, then with one on every prompt: LoRA's cost with
    one adapter in the batch and what each further one adds, read off an engine whose batches
    take 2 + 0.5 x (k - 1) times the base model's time with k adapters in them."""
    from airv.core.prompts import FittedPrompt
    from airv.engines.base import Completion, GenerateRequest
    from airv.tools import plan as plan_mod

    clock = [0.0]

    def generate(requests: list[GenerateRequest]) -> list[list[Completion]]:
        k = len({r.adapter for r in requests if r.adapter is not None})
        base = sum(len(r.prompt_ids) / 1000 + r.max_tokens / 100 for r in requests)
        clock[0] += base * (2 + 0.5 * (k - 1) if k else 1.0)
        return [[Completion("", (1,) * r.max_tokens, 0.0, "length")] for r in requests]

    prompts = [FittedPrompt("", [1] * 200, 1, 10, ()) for _ in range(6)]
    adapters = ["a", "b", "c", "a", "b", "c"]
    t = plan_mod.measure(generate, prompts, prompts, started=0.0, adapters=adapters,
                         solo_adapter="solo", now=lambda: clock[0])  # fmt: skip
    assert t.lora_cost == pytest.approx(2.0) and t.lora_cost_per_adapter == pytest.approx(0.5)
    # One adapter only (jointly): nothing per further adapter, and no second call.
    t = plan_mod.measure(generate, prompts, prompts, started=0.0, adapters=["a"] * 6,
                         solo_adapter="solo", now=lambda: clock[0])  # fmt: skip
    assert t.lora_cost == pytest.approx(2.0) and t.lora_cost_per_adapter == 0.0


def test_calibration_spreads_over_prompt_lengths() -> None:
    units = tuple(UnitCost(f"t{i}", 0, float(100 * i), 10.0) for i in range(10))
    costs = Costs(units, (), ())
    picked = [u.task_id for u in calibration_units(costs, 3)]
    assert picked == ["t0", "t4", "t9"] or picked == ["t0", "t5", "t9"]
    assert len(calibration_units(costs, 50)) == 10


@pytest.mark.engine
def test_plan_with_the_tiny_model(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def grid(side: int, k: int) -> Grid:
        return tuple(tuple((r + c + k) % 10 for c in range(side)) for r in range(side))

    small = [
        Task(f"small{i}", (Pair(grid(3, i), grid(3, i + 1)),) * 2, (grid(3, i + 2),))
        for i in range(3)
    ]
    # 30x30 grids: about 930 tokens each, far past the 512-token context below.
    huge = Task("huge", (Pair(grid(30, 1), grid(30, 2)),), (grid(30, 3),))
    challenges = tmp_path / "challenges.json"
    dump_challenges([*small, huge], challenges)
    out = tmp_path / "plan"
    code = main(
        [
            "plan",
            "--challenges",
            str(challenges),
            "--model",
            str(tiny_model),
            "--engine",
            "hf",
            "--dtype",
            "float32",
            "--max-model-len",
            "512",
            "--time-budget",
            "1h",
            "--calibration-tasks",
            "2",
            "--calibration-augmentations",
            "2",
            "--vote",
            "rescore",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "huge test 0" in text and "augmentations per test input fit" in text
    assert "re-scoring: a scoring request costs" in text
    data = orjson.loads((out / "plan.json").read_bytes())
    assert data["prefill_tokens_per_s"] > 0 and data["decode_tokens_per_s"] > 0
    assert data["start_seconds"] > 0 and data["sweep_seconds"] > 0
    assert data["test_inputs"] == 3
    assert data["calibration_prompts"] == 8  # 2 tasks x 2 calls x 2 views
    assert data["augmentations"] >= 1
    assert [x["task_id"] for x in data["too_long"]] == ["huge"]
    assert data["too_long"][0]["needed"] > 512
    assert data["starts"] == {}  # transformers starts one way only: nothing to choose from
    # --vote rescore: the decode call's answers scored under views neither call saw.
    assert data["score_cost"] > 0 and data["score_cost"] != 1.0


def _simulate_measured(
    tmp_path: Path, model: Path, *, tasks: int, calibration: int
) -> tuple[list[str], Path]:
    """`airv plan --simulate` on rates measured on `model` (transformers, float32), for
    `tasks` one-cell tasks, calibrated on `calibration` tasks x `calibration` views; and the
    output folder."""
    challenges = tmp_path / "challenges.json"
    dump_challenges(
        [
            Task(f"t{i}", (Pair(((i % 10, 1),), ((1, i % 10),)),) * 2, (((2, i % 10),),))
            for i in range(tasks)
        ],
        challenges,
    )
    out = tmp_path / "plan"
    args = ["plan", "--simulate", "--challenges", str(challenges), "--model", str(model),
            "--engine", "hf", "--dtype", "float32", "--max-model-len", "512",
            "--time-budget", "1h", "--calibration-tasks", str(calibration),
            "--calibration-augmentations", str(calibration), "--out", str(out),
            "--json"]  # fmt: skip
    return args, out


@pytest.mark.engine
def test_simulate_with_measured_rates(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --rates, --simulate measures the engine as `airv plan` does and plays the run
    on those rates; plan.json holds both."""
    args, out = _simulate_measured(tmp_path, tiny_model, tasks=3, calibration=2)
    assert main(args) == 0
    sim = orjson.loads(capsys.readouterr().out)
    assert sim["predicted_prompts"] == 3 * 32  # nothing settles, the budget is ample
    data = orjson.loads((out / "plan.json").read_bytes())
    assert data["prefill_tokens_per_s"] > 0 and data["simulation"] == sim
    assert data["rates"]["source"] == "measured"


@pytest.mark.engine
def test_plan_times_fine_tuning_and_the_simulation_trains_on_that_rate(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --ttt, `airv plan` trains one calibration task's adapter twice (1 and 3 steps) to
    time a step and an adapter's fixed seconds, and serves it to time LoRA; --simulate on
    measured rates then prices the stage and the adapters' requests with them."""
    args, out = _simulate_measured(tmp_path, tiny_model, tasks=2, calibration=1)
    args += ["--ttt", "per-task", "--ttt-steps", "3", "--ttt-batch", "2",
             "--ttt-augmentations", "2", "--ttt-rank", "4"]  # fmt: skip
    assert main(args) == 0
    sim = orjson.loads(capsys.readouterr().out)
    data = orjson.loads((out / "plan.json").read_bytes())
    step, fixed = data["ttt_step_seconds"], data["ttt_adapter_seconds"]
    assert step > 0 and fixed >= 0
    assert data["rates"]["ttt_seconds_per_step"] == step
    # A training process's start (the calibration stages' seconds beside their adapters').
    assert data["rates"]["ttt_stage_start_seconds"] == data["ttt_stage_start_seconds"] > 0
    # Two adapters of 3 steps each on one process, at the measured rate, after its start.
    start = data["ttt_stage_start_seconds"]
    assert sim["ttt_seconds"] == pytest.approx(start + 2 * (3 * step + fixed), rel=1e-6)
    assert sim["predicted_prompts"] == 2 * 32
    # Serving the adapter it trained was timed too; the answers' share of their allowance.
    assert data["lora_cost"] > 0 and data["rates"]["lora_cost"] == data["lora_cost"]
    assert data["rates"]["lora_cost_per_adapter"] == data["lora_cost_per_adapter"] >= 0
    assert 0 < data["answer_fill"] <= 1


def test_each_task_is_served_its_own_adapter_path(tmp_path: Path) -> None:
    """LoRA is priced as the run serves it: per task, one adapter path per task (links to the
    calibration adapter, which vLLM takes for distinct adapters); jointly, the one adapter."""
    from airv.adapt.config import TTTMode
    from airv.tools.plan import adapter_per_task

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    tasks = ["a", "a", "b", "c", "b"]
    served = adapter_per_task(str(adapter), tasks, TTTMode.PER_TASK, tmp_path, max_loras=8)
    assert len(set(served)) == 3 and served[0] == served[1] and served[2] == served[4]
    assert all((Path(p) / "adapter_config.json").read_text() == "{}" for p in served)
    # No more paths than the batch's adapter slots: tasks past them share.
    (tmp_path / "two").mkdir()
    two = adapter_per_task(str(adapter), tasks, TTTMode.PER_TASK, tmp_path / "two", max_loras=2)
    assert len(set(two)) == 2 and two[3] == two[0]
    joint = adapter_per_task(str(adapter), tasks, TTTMode.JOINT, tmp_path, max_loras=8)
    assert joint == [str(adapter)] * 5


def test_a_plan_prices_each_promise_as_the_run_asks_it(tmp_path: Path, tiny_model: Path) -> None:
    """estimate_costs gives each test input its task's promise request's tokens, the request
    the run's own prompter builds (airv.run.promise), and 0 to a task of one train pair."""
    two = Task("two", (Pair(((1, 2),), ((2, 1),)), Pair(((3, 4), (5, 6)), ((6, 5), (4, 3)))),
               (((7,),), ((8, 9),)))  # fmt: skip
    one = Task("one", (Pair(((1,),), ((2,),)),), (((3,),),))
    path = tmp_path / "challenges.json"
    dump_challenges([two, one], path)
    cfg = RunConfig(challenges=path, out_dir=tmp_path, engine=EngineConfig(model=tiny_model))
    prompter = Prompter(cfg)
    costs = estimate_costs(cfg, load_challenges(path, strict=True), prompter.tokenizer)
    request = demonstration(two, prompter.fit, prompter.answer_ids)
    assert request is not None
    promise = {(u.task_id, u.test_index): u.promise_tokens for u in costs.units}
    assert promise == {("two", 0): request.tokens, ("two", 1): request.tokens, ("one", 0): 0.0}
