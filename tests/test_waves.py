"""Waves of adapters that fit the scratch disk (airv.adapt.waves), and sizes as people write
them (airv.core.units)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airv.adapt.config import TTTConfig, TTTMode
from airv.adapt.stage import dir_bytes, run_stage
from airv.adapt.waves import ADAPTER_OVERHEAD, adapter_bytes, lora_parameters, wave_size, waves
from airv.core.errors import ConfigError
from airv.core.units import format_size, parse_size
from airv.engines.config import Backend
from airv.engines.model import weight_shapes
from airv.run.observer import Observer
from airv.run.rounds import View

PER_TASK = TTTConfig(mode=TTTMode.PER_TASK)


@given(st.integers(0, 2**50))
def test_a_size_reads_back_from_its_text_within_its_rounding(n: int) -> None:
    text = format_size(n)
    assert abs(parse_size(text.replace(" ", "")) - n) <= max(1, n) * 0.05 + 1


@given(st.integers(0, 10**6), st.sampled_from(["", "k", "M", "G", "T", "KiB", "mb", "GiB", "B"]))
def test_a_size_with_a_unit_is_binary(k: int, unit: str) -> None:
    scale = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[unit[:1].lower()]
    assert parse_size(f"{k}{unit}") == k * scale


@pytest.mark.parametrize("bad", ["", "G", "-1G", "1.5.2G", "12 parsecs", "1ib", "nan"])
def test_a_size_that_is_not_one_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="cannot read size"):
        parse_size(bad)


@given(
    st.lists(st.integers(), max_size=40),
    st.integers(1, 10**9),
    st.one_of(st.none(), st.integers(1, 10**10)),
)
def test_waves_cut_the_tasks_in_order_into_waves_that_fit(
    items: list[int], per_adapter: int, limit: int | None
) -> None:
    size = wave_size(per_adapter, limit, PER_TASK)
    cut = waves(items, size)
    assert [x for w in cut for x in w] == items  # every task once, in order
    if limit is None:
        assert size is None and len(cut) == 1
    else:
        assert size is not None and size >= 1  # one that does not fit is still tried
        assert all(len(w) * per_adapter <= limit or len(w) == 1 for w in cut)
        assert all(len(w) == size for w in cut[:-1])


def test_a_joint_adapter_is_one_wave() -> None:
    assert wave_size(10**9, 1, TTTConfig(mode=TTTMode.JOINT)) is None


def test_lora_parameters_count_rank_times_each_adapted_weights_sides() -> None:
    shapes = {
        "model.embed_tokens.weight": (16, 8),
        "model.layers.0.self_attn.q_proj.weight": (8, 8),
        "model.layers.0.mlp.down_proj.weight": (8, 32),
        "model.norm.weight": (8,),
    }
    assert lora_parameters(shapes, TTTConfig(rank=2)) == 2 * (16 + 40)  # all-linear
    assert lora_parameters(shapes, TTTConfig(rank=2, target_modules="q_proj")) == 2 * 16
    # lm_head tied to the embeddings (no weight of its own): adapted as their shape.
    head = TTTConfig(rank=2, target_modules="q_proj,lm_head")
    assert lora_parameters(shapes, head) == 2 * (16 + 24)


@pytest.mark.engine
def test_the_estimate_bounds_a_trained_adapter_from_above(tiny_model: Path, tmp_path: Path) -> None:
    """The estimate from the checkpoint's headers against an adapter the stage trains: never
    below it (a wave planned on it fits) and within a quarter above it."""
    from test_adapt import TASK, _job

    job = _job(tiny_model, tmp_path)
    report = run_stage([TASK], job, deadline=time.monotonic() + 300, log_path=tmp_path / "t.jsonl")
    measured = dir_bytes(Path(report.adapters[TASK.id]))
    estimate = adapter_bytes(weight_shapes(tiny_model), job.cfg, dtype_bytes=4)
    assert measured <= estimate <= 1.25 * measured + ADAPTER_OVERHEAD


@pytest.mark.engine
def test_a_run_over_its_scratch_limit_trains_and_answers_in_waves(
    tmp_path: Path, bigram_model: Path
) -> None:
    """Four tasks whose adapters fit two at a time: two waves, each trained, checked,
    answered and deleted before the next trains; the engine started once per wave; every
    view carries its task's adapter, planned only once that adapter is in."""
    from test_pipeline import D8_IMAGES, _answers, _challenges, _config, _grid, _task

    ids = [f"wave{i:04d}" for i in range(4)]
    ch = _challenges(tmp_path, [_task(t) for t in ids], broken=False)
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    ttt = TTTConfig(mode=TTTMode.PER_TASK, steps=2, batch_size=2, augmentations=1, rank=4, alpha=8)
    per_adapter = adapter_bytes(weight_shapes(bigram_model), ttt, dtype_bytes=4)
    limit = 2 * per_adapter + per_adapter // 2
    cfg = _config(
        ch, out, bigram_model, Backend.HF, ttt=ttt, scratch_dir=scratch, scratch_limit=limit
    )
    adapters = cfg.adapters_dir
    planned: list[tuple[str, str | None, bool]] = []

    class Watch(Observer):
        def planned(self, views: Sequence[View], seconds: float) -> None:
            planned.extend((v.unit[0], v.adapter, Path(str(v.adapter)).is_dir()) for v in views)

    from runs import fresh_run

    run = fresh_run(cfg, observer=Watch())
    assert run.execute() == 0
    s = run.summary
    assert s.stopped_by == "done" and s.waves == [2, 2]
    assert len(s.engine_start_seconds) == 2  # one start per wave
    assert s.scratch_peak_bytes <= limit and s.adapters_deleted == 4
    assert list(adapters.iterdir()) == []
    assert {t for t, _, _ in planned} == set(ids)
    assert all(a is not None and on_disk for _, a, on_disk in planned)
    # Waves in order: no view of a later wave's task before the last of an earlier wave's.
    wave_of = {t: i // 2 for i, t in enumerate(ids)}
    order = [wave_of[t] for t, _, _ in planned]
    assert order == sorted(order)
    for name in ids:
        assert s.ttt[name]["error"] is None and str(s.ttt[name]["served"]).startswith("verified")
    sub = _answers(out)
    assert all(_grid(sub[t][0]["attempt_1"]) in D8_IMAGES for t in ids)


def test_the_scratch_limit_is_the_given_size_else_the_disks_free_space_less_a_margin(
    tmp_path: Path,
) -> None:
    import shutil

    from airv.run.config import SCRATCH_MARGIN, RunConfig

    deep = tmp_path / "not" / "yet" / "made"  # measured on the folder that exists above it
    cfg = RunConfig(challenges=Path("c"), out_dir=deep)
    free = shutil.disk_usage(tmp_path).free
    assert abs(cfg.scratch_bytes() - free * (1 - SCRATCH_MARGIN)) <= 0.01 * free
    assert RunConfig(challenges=Path("c"), out_dir=deep, scratch_limit=123).scratch_bytes() == 123
    with pytest.raises(ConfigError, match="scratch limit"):
        RunConfig(challenges=Path("c"), out_dir=deep, scratch_limit=0)
