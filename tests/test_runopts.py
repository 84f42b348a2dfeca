"""`airv run` options: flags override the config defaults, and bad input is a clear error."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airv.adapt.config import Loss
from airv.cli import main
from airv.core.errors import ConfigError, InputError
from airv.core.formats import FormatSpec
from airv.core.tasks import Pair, Task, dump_challenges
from airv.core.units import parse_duration
from airv.core.voting import VoteMode
from airv.engines.config import Backend, Dtype, EngineConfig
from airv.run import options as runopts
from airv.run.config import RunConfig
from airv.run.option import RUN_GROUPS, Group


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    runopts.add_run_arguments(p)
    return p


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path]:
    ch = tmp_path / "ch.json"
    dump_challenges([Task("t1", (Pair(((1,),), ((2,),)),), (((1,),),))], ch)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return ch, model


def _build(files: tuple[Path, Path], *flags: str) -> RunConfig:
    ch, model = files
    args = _parser().parse_args(
        ["--challenges", str(ch), "--model", str(model), "--out", str(ch.parent / "o"), *flags]
    )
    cfg = runopts.build_run_config(args)
    assert isinstance(cfg, RunConfig)
    return cfg


def test_defaults_come_from_the_config_classes(files: tuple[Path, Path]) -> None:
    cfg = _build(files)
    ref = RunConfig(challenges=cfg.challenges, out_dir=cfg.out_dir)
    assert cfg.time_budget == ref.time_budget
    assert cfg.max_augmentations == ref.max_augmentations
    assert cfg.vote_mode is ref.vote_mode
    assert cfg.engine.backend is Backend.VLLM
    assert cfg.sampling.greedy
    assert cfg.prompt.grid == FormatSpec() and cfg.prompt.name == "default"


def test_flags_override(files: tuple[Path, Path]) -> None:
    cfg = _build(
        files,
        *("--time-budget", "1h30m", "--reserve", "90s", "--task-cap", "2000tok"),
        *("--vote", "cell", "--engine", "hf", "--dtype", "float32", "--max-model-len", "4096"),
        *("--first-round", "4", "--per-round", "2", "--max-augmentations", "10"),
        *("--temperature", "0.7", "--n", "2", "--workers", "1", "--order", "file"),
        "--permute-background",
    )
    assert cfg.time_budget == 5400 and cfg.reserve == 90
    assert cfg.task_cap_tokens == 2000 and cfg.task_cap_seconds is None
    assert cfg.vote_mode is VoteMode.CELL
    assert cfg.engine.backend is Backend.HF and cfg.engine.dtype is Dtype.FLOAT32
    assert cfg.engine.max_model_len == 4096
    assert (cfg.first_round, cfg.per_round, cfg.max_augmentations) == (4, 2, 10)
    assert cfg.sampling.temperature == 0.7 and cfg.sampling.n == 2
    assert not cfg.cheapest_first and not cfg.views.keep_background


def test_the_ttt_loss_and_the_adapter_fallback_flags(files: tuple[Path, Path]) -> None:
    default = _build(files)
    assert default.adapter_fallback and default.ttt.loss is Loss.ANSWER
    cfg = _build(files, "--no-adapter-fallback", "--ttt-loss", "outputs")
    assert not cfg.adapter_fallback and cfg.ttt.loss is Loss.OUTPUTS


def test_the_streaming_and_supervision_flags(files: tuple[Path, Path]) -> None:
    ref = _build(files)
    assert (ref.inflight, ref.stall_seconds, ref.max_restarts) == (
        RunConfig.inflight,
        RunConfig.stall_seconds,
        RunConfig.max_restarts,
    )
    cfg = _build(files, "--inflight", "64", "--stall-timeout", "5m", "--max-restarts", "0")
    assert (cfg.inflight, cfg.stall_seconds, cfg.max_restarts) == (64, 300, 0)


def test_decode_names_the_decoding(files: tuple[Path, Path]) -> None:
    from airv.engines.config import DEFAULT_DFS_THRESHOLD

    assert _build(files).sampling.decode == "greedy"
    dfs = _build(files, "--decode", "dfs").sampling
    assert (dfs.decode, dfs.dfs_threshold) == ("dfs", DEFAULT_DFS_THRESHOLD)
    s = _build(files, "--dfs-threshold", "0.2", "--dfs-max-candidates", "3").sampling
    assert (s.decode, s.dfs_threshold, s.dfs_max_candidates) == ("dfs", 0.2, 3)
    s = _build(files, "--decode", "sampling", "--temperature", "0.7", "--n", "4").sampling
    assert (s.decode, s.n) == ("sampling", 4)
    assert _build(files, "--decode", "beam", "--beam-width", "3").sampling.decode == "beam"
    for flags in (
        ("--decode", "sampling"),
        ("--decode", "greedy", "--temperature", "0.5"),
        ("--decode", "beam"),
        ("--decode", "dfs", "--temperature", "0.5"),
        ("--dfs-threshold", "1.5"),
    ):
        with pytest.raises(ConfigError):
            _build(files, *flags)


def test_the_openai_engine_takes_endpoints(files: tuple[Path, Path]) -> None:
    urls = ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1")
    cfg = _build(files, "--engine", "openai", "--endpoint", urls[0], "--endpoint", urls[1])
    assert cfg.engine.backend is Backend.OPENAI and cfg.engine.endpoints == urls
    assert cfg.workers == 2 and cfg.devices == ()  # one lane per server
    for flags in (
        ("--engine", "openai"),  # no endpoint
        ("--endpoint", urls[0]),  # an endpoint without the engine
        ("--engine", "openai", "--endpoint", "127.0.0.1:8000"),  # not a URL
        ("--engine", "openai", "--endpoint", urls[0], "--decode", "dfs"),
        ("--engine", "openai", "--endpoint", urls[0], "--beam-width", "2"),
        ("--engine", "openai", "--endpoint", urls[0], "--workers", "3"),
    ):
        with pytest.raises(ConfigError):
            _build(files, *flags)


def test_model_format_file_is_read(files: tuple[Path, Path]) -> None:
    _, model = files
    (model / "airv.json").write_text('{"format": {"shape_header": true}}')
    assert _build(files).prompt.grid.shape_header


@pytest.mark.parametrize(
    ("flags", "error", "match"),
    [
        (("--time-budget", "soon"), ConfigError, "duration"),
        (("--task-cap", "12tokens"), ConfigError, "task cap"),
        (("--n", "3"), ConfigError, "n > 1 needs"),
        (("--first-round", "9", "--max-augmentations", "8"), ConfigError, "max_augmentations"),
        (("--format", "/nonexistent.json"), InputError, "format file not found"),
        (("--stall-timeout", "0"), ConfigError, "stall_seconds"),
        (("--inflight", "0"), ConfigError, "inflight"),
        (("--max-restarts", "-1"), ConfigError, "max_restarts"),
        # A NaN budget once ran nothing and exited 0.
        (("--time-budget", "nan"), ConfigError, "finite"),
        (("--time-budget", "inf"), ConfigError, "finite"),
        (("--reserve", "NaN"), ConfigError, "finite"),
        (("--stall-timeout", "inf"), ConfigError, "finite"),
        (("--task-cap", "nan"), ConfigError, "task cap"),
        (("--ttt-budget", "nan"), ConfigError, "ttt-budget"),
        (("--ttt-budget", "inf"), ConfigError, "ttt-budget"),
        (("--ttt-task-cap", "inf"), ConfigError, "finite"),
    ],
)
def test_bad_options_are_clear_errors(
    files: tuple[Path, Path], flags: tuple[str, ...], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        _build(files, *flags)


def test_run_without_a_model_dir_exits_2(
    files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ch, _ = files
    code = main(["run", "--challenges", str(ch), "--model", str(ch.parent), "--out", "x"])
    assert code == 2
    assert "config.json" in capsys.readouterr().err


def test_durations() -> None:
    assert parse_duration("11h30m") == 41400
    assert parse_duration("45m") == 2700
    assert parse_duration("1.5h") == 5400
    assert parse_duration("600") == 600
    for bad in ("", "5x", "h", "-3", "nan", "inf", "-inf", "1e999"):
        with pytest.raises(ConfigError):
            parse_duration(bad)


def test_context_length_defaults_to_the_models_limit(files: tuple[Path, Path]) -> None:
    _, model = files
    (model / "config.json").write_text('{"max_position_embeddings": 4096}')
    assert _build(files).engine.max_model_len == 4096
    assert _build(files, "--max-model-len", "2048").engine.max_model_len == 2048
    (model / "config.json").write_text('{"max_position_embeddings": 131072}')
    assert _build(files).engine.max_model_len == EngineConfig().max_model_len


def test_a_command_takes_only_the_option_groups_it_needs(files: tuple[Path, Path]) -> None:
    ch, model = files
    p = argparse.ArgumentParser()
    groups = [g for g in RUN_GROUPS if g is not Group.VOTING]
    runopts.add_run_arguments(p, required=False, groups=groups)
    with pytest.raises(SystemExit):  # argparse: unrecognised argument
        p.parse_args(["--vote", "rescore"])
    # Options of the missing group read as unset, so their defaults hold.
    args = p.parse_args(["--challenges", str(ch), "--model", str(model), "--out", "o"])
    cfg = runopts.build_run_config(args)
    assert cfg.vote_mode is RunConfig(challenges=ch, out_dir=Path("o")).vote_mode


def test_every_option_group_is_taken_by_airv_run_once() -> None:
    p = _parser()
    titles = [
        g.title for g in p._action_groups if g.title not in ("options", "positional arguments")
    ]
    assert len(titles) == len(set(titles)) == len(RUN_GROUPS) + 1  # + inputs


def test_the_reserve_scales_with_a_short_budget() -> None:
    short = RunConfig(challenges=Path("c"), out_dir=Path("o"), time_budget=600)
    long = RunConfig(challenges=Path("c"), out_dir=Path("o"), time_budget=11.5 * 3600)
    assert short.reserve_seconds == 30  # 5% of 10 minutes
    assert long.reserve_seconds == 120  # capped at 2 minutes
    minute = RunConfig(challenges=Path("c"), out_dir=Path("o"), time_budget=60)
    assert minute.reserve_seconds == 8  # at least the time to stop the engines and write
    tiny = RunConfig(challenges=Path("c"), out_dir=Path("o"), time_budget=8)
    assert tiny.reserve_seconds == 2  # the floor is at most a quarter of the budget
    given = RunConfig(challenges=Path("c"), out_dir=Path("o"), time_budget=600, reserve=5)
    assert given.reserve_seconds == 5


def test_the_default_task_cap_is_a_multiple_of_the_fair_share() -> None:
    cfg = RunConfig(challenges=Path("c"), out_dir=Path("o"), time_budget=1000, reserve=0)
    assert cfg.task_cap(10) == cfg.task_cap_shares * 100
    capped = RunConfig(
        challenges=Path("c"), out_dir=Path("o"), time_budget=1000, task_cap_seconds=7
    )
    assert capped.task_cap(10) == 7


def test_a_budget_too_short_for_the_engine_warns_and_eval_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--time-budget 120s leaves nothing after the reserve: the run warns, writes a valid
    submission with no answers, and `airv eval` says why there are no predictions."""
    from airv.core.tasks import dump_solutions
    from airv.run.predictions import read_logged_candidates
    from runs import fresh_run

    ch = tmp_path / "ch.json"
    dump_challenges([Task("t1", (Pair(((1,),), ((2,),)),), (((1,),),))], ch)
    dump_solutions({"t1": [((2,),)]}, tmp_path / "sol.json")
    cfg = RunConfig(
        challenges=ch,
        out_dir=tmp_path / "out",
        engine=EngineConfig(model=tmp_path / "no-model"),
        time_budget=1,
        reserve=1,
        progress=False,
    )
    run = fresh_run(cfg)
    assert run.execute() == 0
    assert "may produce no answers" in caplog.text
    assert (tmp_path / "out" / "submission.json").is_file()
    with pytest.raises(InputError, match="its engine never started"):
        read_logged_candidates(tmp_path / "out" / "predictions.jsonl")


def test_the_engine_log_level_is_its_own_switch(files: tuple[Path, Path]) -> None:
    assert _build(files).engine.log_level == EngineConfig().log_level == "WARNING"
    assert _build(files, "--engine-log-level", "INFO").engine.log_level == "INFO"
    assert _build(files, "--log-level", "DEBUG").engine.log_level == "WARNING"
    # Either case, as logging itself and vLLM's VLLM_LOGGING_LEVEL take it.
    assert _build(files, "--engine-log-level", "debug").engine.log_level == "DEBUG"
    ch, model = files
    required = ["--challenges", str(ch), "--model", str(model), "--out", str(ch.parent / "o")]
    assert _parser().parse_args([*required, "--log-level", "info"]).log_level == "INFO"
    with pytest.raises(SystemExit):
        _parser().parse_args([*required, "--log-level", "loud"])


@pytest.mark.parametrize(
    ("workers", "n_gpus", "devices"),
    [
        (None, 0, ()),
        (None, 4, ("0", "1", "2", "3")),
        (4, 4, ("0", "1", "2", "3")),
        (2, 4, ("0", "1")),
        (8, 4, ("0", "1", "2", "3", "0", "1", "2", "3")),  # two per GPU
        (3, 0, ()),  # CPU workers
    ],
)
def test_workers_are_pinned_to_gpus_unless_told_otherwise(
    workers: int | None, n_gpus: int, devices: tuple[str, ...]
) -> None:
    """Once, --workers N without --devices on a GPU machine started every worker with CPU
    settings (no device, no gpu_memory_utilization)."""
    assert runopts.pin_workers(workers, n_gpus) == devices


def test_beam_search_with_adapters_is_refused_before_any_work(files: tuple[Path, Path]) -> None:
    """vLLM's beam search takes no adapters: refused when the options are read, not after
    every adapter is trained and the engine has loaded the model."""
    with pytest.raises(ConfigError, match="beam search on the vllm engine takes no LoRA adapters"):
        _build(files, "--decode", "beam", "--beam-width", "2", "--ttt", "per-task")
    assert _build(files, "--decode", "beam", "--beam-width", "2", "--engine", "hf", "--ttt",
                  "per-task").ttt.enabled  # fmt: skip


def test_a_signal_within_a_held_block_stops_the_run_after_it() -> None:
    """A real SIGTERM in the middle of a held block (a log line written, the run's memory of it
    not yet updated) raises Stopped only once the block is done; outside one, at once; once
    disarmed, never (only recorded)."""
    import os
    import signal

    from airv.run.budget import Stopped, stop_on_signals

    steps: list[str] = []
    with stop_on_signals() as signals:
        with pytest.raises(Stopped, match="SIGTERM"), signals.held():
            steps.append("logged")
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("remembered")
        assert steps == ["logged", "remembered"] and signals.received == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # disarmed by the first: recorded, not raised
    with stop_on_signals() as signals, pytest.raises(Stopped):
        os.kill(os.getpid(), signal.SIGTERM)
        steps.append("never")
    assert "never" not in steps


def test_a_step_blocked_past_the_deadline_is_stopped_by_its_alarm() -> None:
    """A step that never looks at the clock (here a sleep; in a run, a tokenizer loading on
    overloaded cores) is stopped DEADLINE_GRACE after the deadline, as "deadline"; a step that
    ends in time is not; an alarm set before the block (pytest-timeout's) is set again after
    it, less the block's time, or left to ring in it if it rings first; a deadline too far
    off for a timer sets none."""
    import signal
    import time

    from airv.run.budget import (
        ALARM_MAX_SECONDS,
        DEADLINE,
        DEADLINE_GRACE,
        Stopped,
        deadline_alarm,
        stop_on_signals,
    )

    outer = 600.0
    signal.setitimer(signal.ITIMER_REAL, outer)
    previous = signal.getsignal(signal.SIGALRM)
    try:
        t0 = time.monotonic()
        with (
            stop_on_signals() as signals,
            pytest.raises(Stopped, match=DEADLINE),
            deadline_alarm(signals, t0 + 0.2),
        ):
            time.sleep(30)
        took = time.monotonic() - t0
        assert 0.2 + DEADLINE_GRACE <= took < 0.2 + DEADLINE_GRACE + 5
        assert signals.received == DEADLINE
        assert signal.getsignal(signal.SIGALRM) is previous
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert outer - took - 5 < left <= outer - took + 0.01

        with stop_on_signals() as signals, deadline_alarm(signals, time.monotonic() + 0.3):
            pass
        time.sleep(0.3 + DEADLINE_GRACE + 0.2)  # its alarm was cancelled with the block
        assert signals.received is None

        rang: list[int] = []
        signal.signal(signal.SIGALRM, lambda signum, frame: rang.append(signum))
        signal.setitimer(signal.ITIMER_REAL, 0.3)  # rings before the block's deadline would
        with stop_on_signals() as signals, deadline_alarm(signals, time.monotonic() + 5):
            time.sleep(1)
        assert rang == [signal.SIGALRM] and signals.received is None

        with stop_on_signals() as signals, deadline_alarm(signals, 10 * ALARM_MAX_SECONDS):
            assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_vllm_starts_eager_or_compiled_by_the_budget(files: tuple[Path, Path]) -> None:
    """Neither flag: eager below COMPILE_MIN_BUDGET, compiled from it (the stated rule);
    --enforce-eager and --compile force either; both at once are a usage error."""
    from airv.run.config import COMPILE_MIN_BUDGET

    short = _build(files, "--time-budget", "15m")
    assert short.engine.enforce_eager and short.settings()["engine_start"] == "eager"
    assert not _build(files, "--time-budget", "11h50m").engine.enforce_eager
    edge = f"{int(COMPILE_MIN_BUDGET)}s"
    assert not _build(files, "--time-budget", edge).engine.enforce_eager
    assert not _build(files, "--time-budget", "15m", "--compile").engine.enforce_eager
    assert _build(files, "--time-budget", "12h", "--enforce-eager").engine.enforce_eager
    with pytest.raises(SystemExit):
        _build(files, "--compile", "--enforce-eager")


def test_vllm_starts_the_way_airv_plan_measured_to_fit_more(
    files: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--plan PLAN.json with both starts measured: compiled (90 s to start, 10 s a sweep)
    beats eager (20 s, 15 s a sweep) once the budget is long enough to pay its start back
    (from 3m50s on, here); the flags still force either; a plan of one start leaves the
    budget rule; a plan that is not one is an input error naming the file."""
    import orjson

    from airv.core.errors import InputError

    plan = tmp_path / "plan.json"
    starts = {
        "eager": {"start_seconds": 20.0, "sweep_seconds": 15.0},
        "compiled": {"start_seconds": 90.0, "sweep_seconds": 10.0},
    }
    plan.write_bytes(orjson.dumps({"augmentations": 3, "starts": starts}))
    by_plan = ("--plan", str(plan), "--reserve", "0")
    assert _build(files, "--time-budget", "2m", *by_plan).engine.enforce_eager
    assert not _build(files, "--time-budget", "25m", *by_plan).engine.enforce_eager
    assert _build(files, "--time-budget", "25m", "--enforce-eager", *by_plan).engine.enforce_eager
    # The fine-tuning stage's share is not the engine's: half of 8 minutes leaves 4, where
    # compiled fits 15 sweeps against eager's 14.
    with_ttt = ("--ttt", "per-task", "--ttt-budget", "0.5")
    assert not _build(files, "--time-budget", "8m", *with_ttt, *by_plan).engine.enforce_eager
    assert _build(files, "--time-budget", "7m", *with_ttt, *by_plan).engine.enforce_eager
    plan.write_bytes(orjson.dumps({"augmentations": 3, "starts": {}}))
    caplog.set_level("WARNING", logger="airv")
    assert _build(files, "--time-budget", "15m", *by_plan).engine.enforce_eager  # the rule
    assert "one way of starting only" in caplog.text
    plan.write_bytes(orjson.dumps({"starts": {"eager": {"start_seconds": 1.0}}}))
    with pytest.raises(InputError, match="sweep_seconds") as err:
        _build(files, *by_plan)
    assert str(plan) in str(err.value)
    plan.write_text("{not json")
    with pytest.raises(InputError, match="not JSON"):
        _build(files, *by_plan)


@given(
    st.floats(0, 1e4),
    st.floats(0.1, 1e3),
    st.floats(0, 1e4),
    st.floats(0.1, 1e3),
    st.floats(0, 1e5),
)
def test_the_start_chosen_by_a_plan_fits_at_least_as_many_sweeps(
    start_e: float, sweep_e: float, start_c: float, sweep_c: float, available: float
) -> None:
    from airv.run.config import eager_by_plan

    starts = {
        "eager": {"start_seconds": start_e, "sweep_seconds": sweep_e},
        "compiled": {"start_seconds": start_c, "sweep_seconds": sweep_c},
    }
    fits = {
        m: max(0.0, available - s["start_seconds"]) / s["sweep_seconds"] for m, s in starts.items()
    }
    chosen = "eager" if eager_by_plan(starts, available) else "compiled"
    assert fits[chosen] >= max(fits.values())
