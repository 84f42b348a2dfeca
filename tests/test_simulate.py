"""`airv plan --simulate`: the rates file, and the run on a virtual clock against seconds
worked out by hand (no model, no engine)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airv.adapt.config import TTTConfig, TTTMode
from airv.cli import main
from airv.core.errors import ConfigError
from airv.core.voting import VoteMode
from airv.engines.config import EngineConfig
from airv.run.config import RunConfig
from airv.run.costs import Costs, UnitCost, price_by_cells, synthetic_tasks
from airv.run.rates import Rates, load_rates, rates_names
from airv.run.schedule import DEFAULT_SCHEDULE, ViewSchedule
from airv.run.simulate import simulate

# One view: 1000 prompt tokens / 1000 + 100 answer tokens / 100 = 2 s; start-up 10 s.
RATES = Rates(
    prefill_tokens_per_second=1000.0,
    decode_tokens_per_second=100.0,
    engine_start_eager_seconds=10.0,
    engine_start_compiled_seconds=50.0,
    ttt_seconds_per_step=1.0,
)


def _costs(n: int = 4, tests: int = 1) -> Costs:
    units = tuple(UnitCost(f"t{i}", j, 1000.0, 100.0) for i in range(n) for j in range(tests))
    return Costs(units, (), ())


def _cfg(**kw: object) -> RunConfig:
    base: dict[str, object] = {
        "challenges": Path("-"),
        "out_dir": Path("."),
        "engine": EngineConfig(enforce_eager=True),
        "time_budget": 1000.0,
        "reserve": 0.0,
        "first_round": 2,
        "per_round": 2,
        "max_augmentations": 4,
        "settle_margin": 0,
        "schedule": ViewSchedule.UNIFORM,  # the gain schedule's tests ask for it
    }
    return RunConfig(**{**base, **kw})  # type: ignore[arg-type]


# -- the rates file ------------------------------------------------------------------------

_amount = st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False)
_positive = st.floats(1e-3, 1e6, allow_nan=False, allow_infinity=False)


@st.composite
def rates(draw: st.DrawFn) -> Rates:
    adapter = draw(st.none() | st.tuples(st.integers(1, 10**10), st.integers(1, 512)))
    return Rates(
        prefill_tokens_per_second=draw(_positive),
        decode_tokens_per_second=draw(_positive),
        engine_start_eager_seconds=draw(_amount),
        engine_start_compiled_seconds=draw(_amount),
        engine_stop_seconds=draw(_amount),
        ttt_seconds_per_step=draw(st.none() | _amount),
        ttt_seconds_per_task=draw(st.none() | _amount),
        ttt_step_tokens=draw(st.none() | _amount),
        ttt_stage_start_seconds=draw(_amount),
        adapter_bytes=None if adapter is None else adapter[0],
        adapter_rank=None if adapter is None else adapter[1],
        tokens_per_cell=draw(_positive),
        tokens_per_row=draw(_amount),
        tokens_per_grid=draw(_amount),
        tokens_per_prompt=draw(_amount),
        dfs_cost=draw(_positive),
        score_cost=draw(_positive),
        lora_cost=draw(_positive),
        batch_requests=draw(_positive),
        lora_cost_per_adapter=draw(_amount),
        name=draw(st.text(max_size=10)),
        sources={"dfs_cost": draw(st.text(max_size=20))},
    )


@settings(max_examples=50)
@given(r=rates())
def test_rates_file_round_trip(r: Rates, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("rates") / "r.json"
    path.write_bytes(orjson.dumps(r.to_json()))
    back = load_rates(path)
    assert back == r and back.sources == r.sources


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"decode_tokens_per_second": None}, "missing field(s): decode_tokens_per_second"),
        ({"engine_stop_seconds": -1}, "engine_stop_seconds must be a finite number >= 0"),
        ({"prefill_tokens_per_second": 0}, "prefill_tokens_per_second must be > 0"),
        ({"dfs_cost": "fast"}, "dfs_cost must be a number"),
        ({"tokens_per_pixel": 1}, "unknown field(s): tokens_per_pixel"),
        ({"adapter_bytes": 10}, "adapter_bytes and adapter_rank go together"),
        ({"sources": {"speed": "x"}}, "sources name unknown fields: speed"),
    ],
)
def test_rates_file_errors_name_the_file(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    data = {k: v for k, v in {**RATES.to_json(), **change}.items() if v is not None}
    path = tmp_path / "bad-rates.json"
    path.write_bytes(orjson.dumps(data))
    with pytest.raises(ConfigError) as e:
        load_rates(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_rates_by_name_and_unknown_name() -> None:
    assert "nvarc-4b-l4" in rates_names()
    nvarc = load_rates("nvarc-4b-l4")
    numbers = {k for k, v in nvarc.to_json().items() if k not in ("name", "about", "sources")}
    assert numbers <= set(nvarc.sources)  # every number says where it comes from
    with pytest.raises(ConfigError, match="nvarc-4b-l4"):
        load_rates("no-such-rates")


# -- the virtual clock, by hand ------------------------------------------------------------


def test_four_tasks_one_worker_no_ttt() -> None:
    sim = simulate(_cfg(), _costs(), RATES)
    # 4 tasks x 4 views x 2 s after a 10 s start-up
    assert sim.prompts == 16 and sim.decode_seconds == pytest.approx(32.0)
    assert sim.end == pytest.approx(42.0) and sim.slack_seconds == pytest.approx(958.0)
    assert sim.views_stats() == (4.0, 4) and not sim.capped and not sim.cut
    # Re-scoring: 2 candidates x 2 augmentations per test input, 1100 tokens at 1000/s each.
    scored = simulate(_cfg(vote_mode=VoteMode.RESCORE, rescore_top=2, rescore_augmentations=2),
                      _costs(), RATES)  # fmt: skip
    assert scored.scores == 16 and scored.rescore_seconds == pytest.approx(17.6)
    assert scored.end == pytest.approx(59.6) and scored.unscored == 0
    # Two workers halve the queue; a compiled start costs its own start-up.
    two = simulate(_cfg(workers=2), _costs(), RATES)
    assert two.end == pytest.approx(26.0)
    compiled = simulate(_cfg(engine=EngineConfig(enforce_eager=False)), _costs(), RATES)
    assert compiled.end == pytest.approx(82.0)


def test_ttt_in_two_waves_under_the_scratch_limit() -> None:
    cfg = _cfg(ttt=TTTConfig(mode=TTTMode.PER_TASK, steps=10), scratch_limit=200)
    sim = simulate(cfg, _costs(), RATES, adapter_bytes=100)
    # Wave 1: 2 adapters x 10 s, engine 10 s, 4 views x 2 s x 2 tasks: done at 46.
    # Wave 2 starts there: 20 s of training, a restart (10 s), 16 s of answers: 92.
    assert [w.tasks for w in sim.waves] == [2, 2]
    assert sim.to_json()["engine_starts"] == 2
    assert [w.end for w in sim.waves] == pytest.approx([46.0, 92.0])
    assert [w.engine_start for w in sim.waves] == pytest.approx([20.0, 66.0])
    assert sim.ttt_seconds == pytest.approx(40.0) and sim.prompts == 16
    assert sim.scratch_bytes == 200 <= cfg.scratch_limit  # type: ignore[operator]
    assert all(w.adapters == 2 for w in sim.waves)
    assert "wave 2: 2 task(s)" in sim.render() and "1 restart(s)" in sim.render()


def test_what_adapters_cost_fine_tuning_and_short_answers_are_priced() -> None:
    """While an adapted task has views to go, every request pays lora_cost (the base model's
    too: they share its batches), plus lora_cost_per_adapter per further adapter; each
    adapter's fixed seconds add to its steps'; answer_fill prices answers at their measured
    share."""
    rates = dataclasses.replace(
        RATES, lora_cost=3.0, lora_cost_per_adapter=0.5, ttt_seconds_per_adapter=5.0
    )
    ttt = TTTConfig(mode=TTTMode.PER_TASK, steps=10, budget=30.0)
    sim = simulate(_cfg(ttt=ttt), _costs(), rates)
    # 30 s of stage for 4 adapters of 15 s each (10 steps + 5), each stopped 5 s before the
    # stage's end to be saved (SAVE_MARGIN): one trained in full, one for 10 s, two not; the
    # stage ends there, at 25 s, and the engine starts (10 s).
    assert sim.ttt_seconds == pytest.approx(25.0)
    assert (sim.waves[0].adapters, sim.waves[0].partial_adapters) == (1, 1)
    assert sim.waves[0].engine_start == pytest.approx(25.0)
    # Two adapters (t0, t1) in the batch at 3.5x (3 + 0.5) until t0 has its 4 views: round 1's
    # 8 and t0's 2 leading round 2; then t1 alone at 3x for its 2, then t2 and t3's 4 at the
    # base price: 10 x 2 s x 3.5 + 2 x 2 s x 3 + 4 x 2 s.
    assert sim.prompts == 16 and sim.decode_seconds == pytest.approx(70.0 + 12.0 + 8.0)
    # One adapter (a stage long enough for one, 15 s + the save margin): 3x while its task has
    # views to go. Task by task, t0 first: round 1's 8 views and t0's 2 leading round 2 pay
    # 3x; once t0 has its 4 views, round 2's other 6 run at the base price.
    one = dataclasses.replace(ttt, budget=20.0)
    sim = simulate(_cfg(ttt=one), _costs(), rates)
    assert sim.waves[0].adapters == 1 and sim.waves[0].partial_adapters == 0
    assert sim.decode_seconds == pytest.approx(10 * 2.0 * 3.0 + 6 * 2.0)
    # Without fine-tuning no wave serves an adapter: the base model's price.
    assert simulate(_cfg(), _costs(), rates).decode_seconds == pytest.approx(16 * 2.0)
    half = simulate(_cfg(), _costs(), dataclasses.replace(RATES, answer_fill=0.5))
    assert half.decode_seconds == pytest.approx(16 * (1.0 + 0.5))  # 1 s prefill + 0.5 s decode


def test_each_training_process_starts_before_its_first_adapter() -> None:
    """ttt_stage_start_seconds: each process of a stage (one per GPU) starts, then trains;
    the engine starts when the last adapter is saved, and the starts count as fine-tuning."""
    ttt = TTTConfig(mode=TTTMode.PER_TASK, steps=10, budget=100.0)
    rates = dataclasses.replace(RATES, ttt_stage_start_seconds=3.0)
    # One GPU: 3 s, then 4 adapters of 10 s.
    sim = simulate(_cfg(ttt=ttt), _costs(), rates)
    assert sim.waves[0].engine_start == pytest.approx(43.0)
    assert sim.ttt_seconds == pytest.approx(3.0 + 40.0) and sim.waves[0].adapters == 4
    # Two GPUs: both start (3 s each), then 2 adapters each.
    sim = simulate(_cfg(ttt=ttt, workers=2), _costs(), rates)
    assert sim.waves[0].engine_start == pytest.approx(23.0)
    assert sim.ttt_seconds == pytest.approx(2 * 3.0 + 40.0)


def test_each_tasks_steps_are_priced_at_its_prompts_length() -> None:
    """Steps measured at 1,000 prompt tokens: a task of 2,000 trains twice as long a step, one
    of 500 half (its fixed seconds unchanged); without the measured length, all alike."""
    rates = dataclasses.replace(RATES, ttt_step_tokens=1000.0, ttt_seconds_per_adapter=1.0)
    assert rates.ttt_seconds(10, 2000.0) == pytest.approx(21.0)
    assert rates.ttt_seconds(10, 500.0) == pytest.approx(6.0)
    assert RATES.ttt_seconds(10, 2000.0) == pytest.approx(10.0)
    units = (UnitCost("long", 0, 2000.0, 100.0), UnitCost("short", 0, 500.0, 100.0))
    ttt = TTTConfig(mode=TTTMode.PER_TASK, steps=10, budget=500.0)
    sim = simulate(_cfg(ttt=ttt), Costs(units, (), ()), rates)
    assert sim.ttt_seconds == pytest.approx(21.0 + 6.0)
    # Jointly: one adapter at the tasks' mean length, 1,250 tokens.
    joint = dataclasses.replace(ttt, mode=TTTMode.JOINT)
    sim = simulate(_cfg(ttt=joint), Costs(units, (), ()), rates)
    assert sim.ttt_seconds == pytest.approx(12.5 + 1.0)


@pytest.mark.parametrize(("batch", "prompts", "lost"), [(1, 4, 1), (2, 4, 2), (4, 4, 4), (8, 0, 8)])
def test_an_engine_runs_its_batch_together_and_loses_it_at_the_deadline(
    batch: int, prompts: int, lost: int
) -> None:
    """batch_requests: an engine's requests share its rate (views of 2 s each: a batch of 4
    ends together after 8 s), and what is in flight when the time is up is lost. Deadline at
    19 s, the engine up at 10: one at a time, 4 views end by 18 and the 5th is lost; two at a
    time, two pairs end at 14 and 18 and a pair is lost; four at a time, 4 end at 18 and 4 are
    lost; eight at a time would end at 26: nothing ends, 8 are lost."""
    rates = dataclasses.replace(RATES, batch_requests=float(batch))
    sim = simulate(_cfg(time_budget=19.0, schedule=ViewSchedule.UNIFORM), _costs(), rates)
    assert (sim.prompts, sim.lost) == (prompts, lost)
    # The engine's seconds until its last answer, as the run's recorder counts them.
    assert sim.to_json()["predicted_engine_seconds"] == pytest.approx(2.0 * prompts)
    # With no deadline the batch changes nothing but the order: all 16 views by 42 s.
    done = simulate(_cfg(schedule=ViewSchedule.UNIFORM), _costs(), rates)
    assert done.prompts == 16 and done.end == pytest.approx(42.0)


def test_deadline_too_short_cuts_tasks() -> None:
    sim = simulate(_cfg(time_budget=31.0, schedule=ViewSchedule.UNIFORM), _costs(), RATES)
    # 10 s start, round 1 (8 views) by 26 s, then t0's two round-2 views by 30 s; t1's next
    # would end at 32 s, past the deadline at 31: lost in flight.
    assert sim.prompts == 10 and sim.lost == 1
    assert sim.cut == ["t1", "t2", "t3"] and sim.slack_seconds == 0.0
    assert sim.views_stats() == (2.5, 2)
    assert sim.target_views == 4 and sim.views_share == pytest.approx(0.625)
    assert sim.to_json()["views_per_test_input"]["share"] == pytest.approx(0.625)
    assert "views per test input: mean 2.5, min 2 (target 4: 62% of it)" in sim.render()
    # The gain schedule scores the tasks' promises first (1 s each: 1,000 prompt tokens at the
    # prefill rate; the sample, an eighth of 512 in flight, is all four), then the first
    # round: 8 views by 30 s; the next would end at 32 s, past the deadline: lost.
    gain = simulate(_cfg(time_budget=31.0, schedule=ViewSchedule.GAIN), _costs(), RATES)
    assert (gain.promises, gain.promise_seconds) == (4, pytest.approx(4.0))
    assert gain.prompts == 8 and gain.lost == 1
    assert [gain.views[(f"t{i}", 0)] for i in range(4)] == [2, 2, 2, 2]
    assert gain.cut == ["t0", "t1", "t2", "t3"] and gain.views_stats() == (2.0, 2)
    # With 8 in flight the sample is one promise (1 s), and the other three (3 s) are more
    # than 10% of the 14 s left at 25 s: not asked; the first round as the rounds have it.
    gain = simulate(_cfg(time_budget=25.0, schedule=ViewSchedule.GAIN, inflight=8), _costs(), RATES)
    assert (gain.promises, gain.prompts) == (1, 7)


def test_the_schedule_is_reported() -> None:
    for schedule in ViewSchedule:
        sim = simulate(_cfg(schedule=schedule), _costs(), RATES)
        assert sim.to_json()["schedule"] == schedule.value
        assert f"schedule: {schedule.value} (" in sim.render()
    default = RunConfig(challenges=Path("-"), out_dir=Path("."), engine=EngineConfig())
    assert default.schedule is DEFAULT_SCHEDULE is ViewSchedule.GAIN
    assert simulate(default, _costs(), RATES).to_json()["schedule"] == "gain"


@pytest.mark.parametrize("schedule", list(ViewSchedule))
def test_task_cap_stops_tasks(schedule: ViewSchedule) -> None:
    sim = simulate(_cfg(task_cap_seconds=5.0, schedule=schedule), _costs(), RATES)
    # A task's third view takes it to 6 s >= 5: capped, its fourth dropped.
    assert sim.capped == ["t0", "t1", "t2", "t3"] and sim.prompts == 12 and not sim.cut


def test_price_by_cells() -> None:
    r = Rates(1.0, 1.0, 0.0, 0.0, tokens_per_cell=1, tokens_per_row=1, tokens_per_grid=3,
              tokens_per_prompt=3)  # fmt: skip
    (task,) = synthetic_tasks(1, seed=3)
    side, pairs = len(task.test[0]), len(task.train)
    costs = price_by_cells([task], r, max_model_len=100_000)
    # The nvarc format: each grid its cells, a token per row and 3 markers; 3 after the test.
    grid = side * side + side + 3
    assert costs.units[0].prompt_tokens == (2 * pairs + 1) * grid + 3
    assert costs.units[0].answer_tokens == side * side + side
    assert pairs >= 2
    # Its promise: the pair before the last, the last's input and 3, then its output scored.
    assert costs.units[0].promise_tokens == 3 * grid + 3 + side * side + side
    one = price_by_cells([dataclasses.replace(task, train=task.train[:1])], r, 100_000)
    assert {u.promise_tokens for u in one.units} == {0.0}  # one train pair: no promise
    short = price_by_cells([task], r, max_model_len=3 * grid + 3 + side * side + side)
    assert short.units[0].prompt_tokens == 3 * grid + 3  # all but one pair dropped
    assert price_by_cells([task], r, max_model_len=64).too_long


# -- properties ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 5),
    tests=st.integers(1, 2),
    workers=st.integers(1, 3),
    budget=st.floats(5.0, 200.0),
    more=st.floats(0.0, 200.0),
    ttt=st.booleans(),
    limit=st.none() | st.integers(100, 400),
)
def test_prompts_bounded_and_monotone_in_the_budget(
    n: int, tests: int, workers: int, budget: float, more: float, ttt: bool, limit: int | None
) -> None:
    def run(seconds: float) -> int:
        cfg = _cfg(
            time_budget=seconds,
            workers=workers,
            ttt=TTTConfig(mode=TTTMode.PER_TASK if ttt else TTTMode.OFF, steps=3),
            scratch_limit=limit,
        )
        sim = simulate(cfg, _costs(n, tests), RATES, adapter_bytes=100)
        assert sim.prompts <= n * tests * cfg.max_augmentations
        return sim.prompts

    assert run(budget) <= run(budget + more)


def _priced(prompts: list[int], tests: int) -> Costs:
    """One task per entry, its test inputs' prompts of that many tokens (answers 100)."""
    units = tuple(UnitCost(f"t{i}", j, float(p), 100.0)
                  for i, p in enumerate(prompts) for j in range(tests))  # fmt: skip
    return Costs(units, (), ())


@settings(max_examples=40, deadline=None)
@given(
    prompts=st.lists(st.integers(100, 4000), min_size=1, max_size=5),
    tests=st.integers(1, 2),
    workers=st.integers(1, 3),
    inflight=st.sampled_from([1, 3, 512]),
    ttt=st.booleans(),
    rescore=st.booleans(),
)
def test_gain_and_uniform_agree_when_everything_fits(
    prompts: list[int], tests: int, workers: int, inflight: int, ttt: bool, rescore: bool
) -> None:
    """With time for everything (and no task cap), the gain schedule only reorders the work:
    the same prompts, views per test input and scores as the rounds, none cut."""

    def run(schedule: ViewSchedule) -> dict[str, object]:
        cfg = _cfg(
            schedule=schedule,
            time_budget=1e6,
            workers=workers,
            inflight=inflight,
            ttt=TTTConfig(mode=TTTMode.PER_TASK if ttt else TTTMode.OFF, steps=3),
            scratch_limit=200,
            vote_mode=VoteMode.RESCORE if rescore else VoteMode.GRID,
        )
        sim = simulate(cfg, _priced(prompts, tests), RATES, adapter_bytes=100)
        assert not sim.cut and not sim.lost and sim.schedule is schedule
        return {
            "prompts": sim.prompts,
            "scores": sim.scores,
            "views": sim.views,
            "decode": pytest.approx(sim.decode_seconds),
            "waves": len(sim.waves),
        }

    assert run(ViewSchedule.GAIN) == run(ViewSchedule.UNIFORM)


@settings(max_examples=60, deadline=None)
@given(
    prompts=st.lists(st.integers(1000, 1900), min_size=2, max_size=5),
    tests=st.integers(1, 2),
    inflight=st.sampled_from([1, 2, 512]),
    budget=st.floats(11.0, 80.0),
)
def test_gain_gives_the_first_round_cheapest_test_input_first_and_whole(
    prompts: list[int], tests: int, inflight: int, budget: float
) -> None:
    """Under a deadline that cuts, at prices within a factor of 2 (2 to 2.9 s a view), on one
    worker (views end in the order planned): the first round's views go cheapest test input
    first, each's first round whole before the next's (as the rounds order a round), and no
    test input has more than the first round while another lacks some of it."""
    cfg = _cfg(
        time_budget=budget, inflight=inflight, max_augmentations=8, schedule=ViewSchedule.GAIN
    )
    costs = _priced(prompts, tests)
    sim = simulate(cfg, costs, RATES)
    price = {(u.task_id, u.test_index): u.prompt_tokens for u in costs.units}
    first = [min(sim.views[u], cfg.first_round) for u in sorted(price, key=lambda u: (price[u], u))]
    assert first == sorted(first, reverse=True)
    assert sum(0 < n < cfg.first_round for n in first) <= 1
    if max(sim.views.values()) > cfg.first_round:
        assert min(first) == cfg.first_round


def test_gain_orders_the_first_round_as_the_rounds_do() -> None:
    """Both schedules give the cheapest task its first round's views (2) before the other
    tasks get any: spread over every test input, a tight budget's first views were too few
    for any vote (the replayed schedule bench: 18 test outputs behind over 10 seeds at 20%
    of the work)."""
    cfg = _cfg(time_budget=15.0, inflight=8)  # 10 s start-up, then 2 views of 2 s
    uniform = simulate(dataclasses.replace(cfg, schedule=ViewSchedule.UNIFORM), _costs(), RATES)
    # Gain samples one task's promise first (1 s more); the rest, 3 s, is not asked.
    cfg = dataclasses.replace(cfg, time_budget=16.0, schedule=ViewSchedule.GAIN)
    gain = simulate(cfg, _costs(), RATES)
    assert gain.promises == 1
    assert list(uniform.views.values()) == list(gain.views.values()) == [2, 0, 0, 0]


def test_a_promise_is_priced_by_its_own_request() -> None:
    """A promise costs its demonstration's tokens (UnitCost.promise_tokens: 500 here, 0.5 s),
    not a view's prompt; a task with no promise (one train pair: 0 tokens) asks nothing."""
    units = (UnitCost("a", 0, 1000.0, 100.0, 500.0), UnitCost("b", 0, 1000.0, 100.0, 0.0))
    gain = simulate(_cfg(schedule=ViewSchedule.GAIN), Costs(units, (), ()), RATES)
    assert (gain.promises, gain.promise_seconds) == (1, pytest.approx(0.5))
    assert gain.views == {("a", 0): 4, ("b", 0): 4}


def test_only_the_gain_schedule_prices_promises() -> None:
    """One scoring request a task (its view's prompt at the prefill rate, times the scoring
    cost), in plan.json's prediction and the timeline: a sample (1.5 s) and then the rest, as
    2,000 tokens at its rate are less than 10% of the time left."""
    rates = dataclasses.replace(RATES, score_cost=1.5)
    gain = simulate(_cfg(schedule=ViewSchedule.GAIN), _costs(n=3, tests=2), rates)
    assert gain.to_json()["predicted_promises"] == 3
    assert gain.to_json()["promise_seconds"] == pytest.approx(3 * 1.5)
    assert "promises " in gain.render()
    uniform = simulate(_cfg(schedule=ViewSchedule.UNIFORM), _costs(n=3, tests=2), rates)
    assert uniform.to_json()["predicted_promises"] == 0 and "promises " not in uniform.render()
    assert (gain.prompts, gain.views) == (uniform.prompts, uniform.views)


# -- the command ---------------------------------------------------------------------------

KAGGLE = ["--simulate", "--rates", "nvarc-4b-l4", "--tasks", "240", "--recipe", "nvarc-2025",
          "--workers", "4", "--time-budget", "11h50m", "--scratch-limit", "20G"]  # fmt: skip


def test_nvarc_at_kaggle_scale_in_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", *KAGGLE, "--json", "--out", str(tmp_path)]) == 0  # no model needed
    out = capsys.readouterr().out
    sim = orjson.loads(out)  # stdout holds the JSON object alone
    assert len(sim["waves"]) == 12 and sim["engine_starts"] == 12
    assert sim["scratch_bytes"] <= 20 * 2**30
    assert sim["views_per_test_input"]["target"] == 16 and sim["schedule"] == DEFAULT_SCHEDULE.value
    for key in ("predicted_prompts", "predicted_engine_seconds", "ttt_seconds",
                "decode_seconds", "rescore_seconds", "capped_tasks", "slack_seconds"):  # fmt: skip
        assert key in sim
    written = orjson.loads((tmp_path / "plan.json").read_bytes())
    assert written["simulation"] == sim and written["rates"]["source"] == "nvarc-4b-l4"


def test_simulate_needs_tasks_and_rates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--simulate", "--rates", "nvarc-4b-l4"]) == 2
    assert "--challenges FILE or --tasks N" in capsys.readouterr().err
    assert main(["plan", "--simulate", "--tasks", "3"]) == 2
    assert "--rates" in capsys.readouterr().err
    assert main(["plan", "--rates", "nvarc-4b-l4"]) == 2
    assert "go with --simulate" in capsys.readouterr().err
