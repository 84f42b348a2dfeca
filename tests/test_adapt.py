"""Test-time fine-tuning: training sequences, the stage's processes, faults and the deadline.

The end-to-end accuracy test (adapters through the real vLLM engine) is in
tests/test_ttt_engine.py.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airv.adapt.config import Loss, Schedule, TTTConfig, TTTMode
from airv.adapt.data import IGNORE, batches, leave_one_out, task_examples
from airv.adapt.lora import ADAPTER_CONFIG_FILE
from airv.adapt.stage import JOINT, StageJob, adapter_dir, read_results, run_stage
from airv.core.augment import ViewPolicy
from airv.core.errors import ConfigError
from airv.core.prompt_format import DEFAULT_PRESET, load_preset
from airv.core.prompts import answer_token_ids, fit_prompt
from airv.core.tasks import Pair, Task
from airv.engines.worker import descendants

TASK = Task(
    "ttt00001",
    train=(
        Pair(((1, 2),), ((2, 1),)),
        Pair(((3, 4),), ((4, 3),)),
        Pair(((5, 6),), ((6, 5),)),
    ),
    test=(((7, 8),),),
)


def test_leave_one_out_holds_out_each_pair_in_turn() -> None:
    subs = leave_one_out(TASK)
    assert len(subs) == 3
    for i, sub in enumerate(subs):
        assert sub.test == (TASK.train[i].input,)
        assert sub.train == TASK.train[:i] + TASK.train[i + 1 :]
    assert leave_one_out(Task("one", TASK.train[:1], TASK.test)) == []


def test_examples_are_the_pipelines_prompt_then_the_answer(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    fmt = load_preset(DEFAULT_PRESET)
    examples = task_examples(
        TASK, fmt, tok, views=1, policy=ViewPolicy(), max_len=1024, loss=Loss.ANSWER
    )
    assert len(examples) == 3  # the identity view x 3 held-out pairs
    first = examples[0]
    prompt = fit_prompt(leave_one_out(TASK)[0], 0, fmt, tok, 1024)
    answer = answer_token_ids(TASK.train[0].output, fmt, tok)
    assert list(first.input_ids) == [*prompt.token_ids, *answer]  # type: ignore[union-attr]
    labels = first.labels
    assert labels[: first.n_prompt] == [IGNORE] * first.n_prompt
    assert labels[first.n_prompt :] == answer  # loss on the answer and EOS only
    more = task_examples(
        TASK, fmt, tok, views=4, policy=ViewPolicy(), max_len=1024, loss=Loss.ANSWER
    )
    assert len(more) == 12 and len({e.input_ids for e in more}) > 3


def test_the_all_outputs_loss_adds_each_train_output_of_the_prompt(tiny_model: Path) -> None:
    from airv.engines.model import load_tokenizer

    tok = load_tokenizer(tiny_model)
    fmt = load_preset(DEFAULT_PRESET)
    common = {"views": 2, "policy": ViewPolicy(), "max_len": 1024}
    answers = task_examples(TASK, fmt, tok, loss=Loss.ANSWER, **common)  # type: ignore[arg-type]
    outputs = task_examples(TASK, fmt, tok, loss=Loss.OUTPUTS, **common)  # type: ignore[arg-type]
    assert [e.input_ids for e in answers] == [e.input_ids for e in outputs]  # same sequences
    for plain, every in zip(answers, outputs, strict=True):
        assert plain.prompt_spans == () and len(every.prompt_spans) == 2  # two kept pairs
        lab = every.labels
        assert lab[every.n_prompt :] == plain.labels[every.n_prompt :]  # the answer, as before
        in_prompt = [t for t in lab[: every.n_prompt] if t != IGNORE]
        assert tok.decode(in_prompt) == "".join(
            tok.decode(every.input_ids[a:b]) for a, b in every.prompt_spans
        )
        # Each kept output (two cells, as a row or a column by the view) and the newline
        # after it, a token per character.
        for a, b in every.prompt_spans:
            text = tok.decode(every.input_ids[a:b])
            assert text.endswith("\n") and sum(c.isdigit() for c in text) == 2, text
            assert b - a == len(text)


def test_batches_cycle_through_every_example() -> None:
    from airv.adapt.data import Example

    examples = [Example("t", (i, i), 1) for i in range(5)]
    drawn = batches(examples, 2, 5, seed=0)
    assert len(drawn) == 5 and all(len(b) == 2 for b in drawn)
    assert {e.input_ids for b in drawn for e in b} == {e.input_ids for e in examples}
    assert batches([], 2, 5, seed=0) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"rank": 0}, {"learning_rate": 2.0}, {"steps": 0}, {"budget": 0}, {"target_modules": " "}],
)
def test_bad_ttt_options_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        TTTConfig(**kwargs)  # type: ignore[arg-type]


def test_budget_is_a_share_or_seconds() -> None:
    assert TTTConfig(budget=0.25).budget_seconds(400) == 100
    assert TTTConfig(budget=90).budget_seconds(400) == 90
    assert TTTConfig(budget=900).budget_seconds(400) == 400


def _job(model: Path, tmp_path: Path, **kw: object) -> StageJob:
    cfg = TTTConfig(mode=TTTMode.PER_TASK, steps=3, batch_size=2, augmentations=2, rank=4, alpha=8)
    base: dict[str, object] = dict(
        model_dir=model,
        fmt=load_preset(DEFAULT_PRESET),
        cfg=cfg,
        policy=ViewPolicy(),
        max_len=1024,
        out_dir=tmp_path / "adapters",
        task_cap=120.0,
        threads=1,
    )
    base.update(kw)
    return StageJob(**base)  # type: ignore[arg-type]


@pytest.mark.engine
def test_stage_trains_per_task_keeps_going_past_a_failure_and_resumes(
    tmp_path: Path, tiny_model: Path
) -> None:
    """A task whose training raises (its adapter cannot be written: a file holds the name of
    its folder) keeps the base model; the task after it trains from the base model, as it
    does after a success; a resumed run trains only what has no adapter yet."""
    tasks = [TASK, Task("ttt00002", TASK.train, TASK.test), Task("ttt00003", TASK.train, TASK.test)]
    job = _job(tiny_model, tmp_path)
    blocked = job.out_dir / adapter_dir("ttt00002")
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")
    log = tmp_path / "ttt.jsonl"
    report = run_stage(tasks, job, deadline=time.monotonic() + 300, log_path=log)
    assert set(report.adapters) == {"ttt00001", "ttt00003"}  # the failure keeps the base model
    failed = {r.name: r.error for r in report.results if r.error}
    assert list(failed) == ["ttt00002"] and "FileExistsError" in str(failed["ttt00002"])
    from airv.adapt.lora import check_adapter

    for name in ("ttt00001", "ttt00003"):
        assert check_adapter(Path(report.adapters[name]), max_rank=4) is None
    assert "rank 4" in str(check_adapter(Path(report.adapters["ttt00001"]), max_rank=2))
    ok = read_results(log)["ttt00001"]
    assert ok.steps == 3 and ok.final_loss is not None and ok.examples == 2 * 3
    after_failure = read_results(log)["ttt00003"]
    # A resumed run trains only what has no adapter yet: ttt00002, its folder free now, and
    # ttt00003, its adapter removed, which now trains after a success instead of a failure.
    blocked.unlink()
    shutil.rmtree(report.adapters["ttt00003"])
    again = run_stage(tasks, job, deadline=time.monotonic() + 300, log_path=log)
    assert [r.name for r in again.results] == ["ttt00002", "ttt00003"]
    assert set(again.adapters) == {t.id for t in tasks}
    after_success = again.results[1]
    assert (after_success.final_loss, after_success.adapted_logprob) == pytest.approx(
        (after_failure.final_loss, after_failure.adapted_logprob)
    )


@pytest.mark.engine
def test_joint_mode_trains_one_adapter_for_every_task(tmp_path: Path, tiny_model: Path) -> None:
    cfg = TTTConfig(mode=TTTMode.JOINT, steps=2, batch_size=2, augmentations=1, rank=4, alpha=8)
    tasks = [TASK, Task("ttt00002", TASK.train, TASK.test)]
    report = run_stage(
        tasks,
        _job(tiny_model, tmp_path, cfg=cfg),
        deadline=time.monotonic() + 300,
        log_path=tmp_path / "ttt.jsonl",
    )
    assert [r.name for r in report.results] == [JOINT]
    assert report.results[0].examples == 2 * 3
    assert set(report.adapters) == {t.id for t in tasks}
    assert len(set(report.adapters.values())) == 1


@pytest.mark.slow
@pytest.mark.engine
def test_the_stage_deadline_ends_training_and_its_processes(
    tmp_path: Path, tiny_model: Path
) -> None:
    cfg = TTTConfig(mode=TTTMode.PER_TASK, steps=10**6, batch_size=2, augmentations=1, rank=4)
    t0 = time.monotonic()
    # Room for the training process's start (torch, transformers and peft imported, the model
    # loaded): a few seconds alone, 14 on cores the suite's other worker loads, where a 20 s
    # deadline once left no time for a step.
    report = run_stage(
        [TASK],
        _job(tiny_model, tmp_path, cfg=cfg),
        deadline=time.monotonic() + 30,
        log_path=tmp_path / "ttt.jsonl",
    )
    assert time.monotonic() - t0 < 50
    # Training stops a margin before the deadline and saves what it has.
    (result,) = report.results
    assert result.steps > 0 and result.path is not None


def _kill_when_saving(adapter: Path) -> Callable[[], None]:
    """SIGKILL the training process, from outside as the kernel's out-of-memory killer does,
    once it is saving `adapter`: deep in that task's training, its "start" long sent. A FIFO
    stands for the adapter's config file, its buffer filled by this process, so the trainer's
    write of the config blocks: it is caught there, never early or late. Returns what stops
    the watch and closes the FIFO."""
    adapter.mkdir(parents=True)
    fifo = adapter / ADAPTER_CONFIG_FILE
    os.mkfifo(fifo)
    # Read and write: opens without waiting for a writer, and holds the reading end open.
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    for size in (4096, 1):
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(fd, b"\0" * size)
    stop = threading.Event()

    def holds_fifo(pid: int) -> bool:
        with contextlib.suppress(OSError):
            for entry in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{entry}") == str(fifo):
                        return True
        return False

    def watch() -> None:
        while not stop.wait(0.05):
            for pid in descendants(os.getpid()):
                if holds_fifo(pid):
                    os.kill(pid, signal.SIGKILL)
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def close() -> None:
        stop.set()
        watcher.join()
        os.close(fd)

    return close


@pytest.mark.engine
def test_a_killed_training_process_costs_its_task_only(tmp_path: Path, tiny_model: Path) -> None:
    """The training process killed mid-task, as an out-of-memory kill does: that task keeps
    the base model, a fresh process trains the rest."""
    tasks = [TASK, Task("ttt00002", TASK.train, TASK.test), Task("ttt00003", TASK.train, TASK.test)]
    job = _job(tiny_model, tmp_path)
    stop_watch = _kill_when_saving(job.out_dir / adapter_dir("ttt00002"))
    try:
        report = run_stage(
            tasks, job, deadline=time.monotonic() + 300, log_path=tmp_path / "t.jsonl"
        )
    finally:
        stop_watch()
    assert set(report.adapters) == {"ttt00001", "ttt00003"}
    assert report.restarts == 1
    failed = {r.name: r.error for r in report.results if r.error}
    assert failed == {"ttt00002": "exit code -9"}


@pytest.mark.engine
def test_a_trainer_that_cannot_start_is_not_restarted_for_ever(tmp_path: Path) -> None:
    """A training process whose model does not load dies before taking a task: it is started
    again at most MAX_START_FAILURES times (it once restarted until the stage's deadline, about
    70 times in 5 minutes), then every task keeps the base model, with the reason."""
    from airv.adapt.stage import MAX_START_FAILURES

    tasks = [TASK, Task("ttt00002", TASK.train, TASK.test)]
    job = _job(tmp_path / "no-model", tmp_path)
    start = time.monotonic()
    report = run_stage(tasks, job, deadline=start + 300, log_path=tmp_path / "t.jsonl")
    assert time.monotonic() - start < 120
    assert report.adapters == {} and report.restarts == MAX_START_FAILURES
    assert {r.name for r in report.results} == {"ttt00001", "ttt00002"}
    assert all("no training process left" in str(r.error) for r in report.results)


def test_a_damaged_adapter_is_not_served(tmp_path: Path) -> None:
    from airv.adapt.lora import check_adapter

    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    assert "cannot read" in str(check_adapter(adapter, 16))  # no weights
    (adapter / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    assert "cannot read" in str(check_adapter(adapter, 16))


@pytest.mark.engine
def test_training_processes_die_with_their_parent(tmp_path: Path, tiny_model: Path) -> None:
    """A run killed outright (Kaggle's limit, an OOM kill of the run itself) must not leave a
    trainer behind holding the GPU."""
    import os
    import signal
    import subprocess
    import sys

    from airv.engines.worker import process_alive

    script = f"""
import time
from pathlib import Path
from airv.adapt.config import Loss, Schedule, TTTConfig, TTTMode
from airv.adapt.stage import StageJob, run_stage
from airv.core.augment import ViewPolicy
from airv.core.prompt_format import load_preset
from airv.core.tasks import Pair, Task
task = Task("t", (Pair(((1, 2),), ((2, 1),)), Pair(((3, 4),), ((4, 3),))), (((5, 6),),))
cfg = TTTConfig(mode=TTTMode.PER_TASK, steps=10**6, batch_size=2, augmentations=1, rank=4)
job = StageJob(Path({str(tiny_model)!r}), load_preset("default"), cfg, ViewPolicy(), 1024,
               Path({str(tmp_path)!r}) / "a", task_cap=600.0, threads=1)
if __name__ == "__main__":
    run_stage([task], job, deadline=time.monotonic() + 600, log_path=Path({str(tmp_path)!r}) / "l")
"""
    (tmp_path / "stage.py").write_text(script)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "stage.py")])
    try:
        children: list[int] = []
        deadline = time.monotonic() + 120
        while not children and time.monotonic() < deadline:
            time.sleep(0.5)
            children = [p for p in descendants(parent.pid) if process_alive(p)]
        assert children, "the stage started no training process"
        time.sleep(2)
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 30
    while any(process_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(process_alive(p) for p in children)


def test_an_adapter_is_saved_in_the_models_dtype(tiny_model: Path, tmp_path: Path) -> None:
    """peft trains LoRA weights in float32; a bfloat16 model's adapter is saved in bfloat16
    (half the scratch disk: about 1 GB instead of 2 per task at NVARC's size)."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from airv.adapt.lora import train_adapter

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)
    fmt = load_preset(DEFAULT_PRESET)
    examples = task_examples(
        TASK, fmt, tok, views=1, policy=ViewPolicy(), max_len=1024, loss=Loss.ANSWER
    )
    cfg = TTTConfig(mode=TTTMode.PER_TASK, steps=2, batch_size=2, rank=4, alpha=8)
    base, result = train_adapter(
        model, tok, TASK.id, examples, cfg, tmp_path / "a", deadline=time.monotonic() + 300
    )
    assert result.path is not None and result.steps == 2
    with safe_open(str(tmp_path / "a" / "adapter_model.safetensors"), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118
    assert dtypes == {torch.bfloat16}
    assert next(base.parameters()).dtype == torch.bfloat16


def test_adapter_folders_are_hashes_of_the_task_ids() -> None:
    from airv.adapt.stage import adapter_dir

    ids = ["a", "a/", "./a", "../x", "/abs/x", "x/../../y", "", ".", "..", "a" * 500, "ü"]
    names = [adapter_dir(t) for t in ids]
    assert len(set(names)) == len(ids)
    for name in names:
        assert "/" not in name and name not in ("", ".", "..") and len(name) <= 49
        assert Path(name).name == name
    assert adapter_dir("00576224") == adapter_dir("00576224")  # stable: no run state in it
    assert adapter_dir("00576224").startswith("00576224-")


def test_an_adapter_for_another_models_modules_is_refused(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from airv.adapt.lora import adapter_modules, check_adapter

    assert adapter_modules(
        [
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
            "base_model.model.model.embed_tokens.lora_embedding_A",
            "base_model.model.lm_head.lora_B.weight",
        ]
    ) == {"model.layers.0.self_attn.q_proj", "model.embed_tokens", "lm_head"}
    model = {"model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"}
    adapter = tmp_path / "a"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 4}')
    lora = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 8),
        "base_model.model.lm_head.lora_A.weight": torch.zeros(4, 8),  # tied: no weight of its own
    }
    save_file(lora, str(adapter / "adapter_model.safetensors"))
    assert check_adapter(adapter, 16, model) is None
    lora["base_model.model.model.layers.0.self_attn.qkv.lora_A.weight"] = torch.zeros(4, 8)
    save_file(lora, str(adapter / "adapter_model.safetensors"))
    assert "model.layers.0.self_attn.qkv" in str(check_adapter(adapter, 16, model))


@given(
    steps=st.integers(1, 400),
    warmup=st.floats(0, 0.9),
    schedule=st.sampled_from(list(Schedule)),
)
def test_the_learning_rate_warms_up_then_falls_to_zero(
    steps: int, warmup: float, schedule: Schedule
) -> None:
    cfg = TTTConfig(steps=steps, warmup=warmup, schedule=schedule)
    factors = [cfg.lr_factor(s) for s in range(steps)]
    ramp = round(warmup * steps)
    assert all(0 <= f <= 1 for f in factors)
    assert all(a < b for a, b in itertools.pairwise(factors[: ramp + 1]))
    assert all(a >= b for a, b in itertools.pairwise(factors[ramp:]))
    if ramp < steps:
        assert factors[ramp] == 1.0  # the peak, right after the warm-up
    if warmup == 0 and schedule is Schedule.LINEAR:  # the schedule airv always had
        assert factors == [max(0.0, 1.0 - s / steps) for s in range(steps)]


def test_rslora_with_lora_on_the_embeddings_and_their_own_learning_rate(tmp_path: Path) -> None:
    """NVARC's and the ARChitects' adapter shape on the NVARC stand-in (untied embeddings):
    rsLoRA, LoRA on embed_tokens and lm_head beside the projections, cosine with warm-up, and a
    separate (here, vanishing) learning rate for the embeddings' and the head's LoRA."""
    import orjson
    from safetensors import safe_open

    from airv.adapt.lora import load_base, train_adapter
    from airv.core.prompt_format import load_preset
    from airv.demo.nvarc import build_nvarc_model

    model_dir = build_nvarc_model(tmp_path / "nvarc", num_layers=1)
    model, tok = load_base(model_dir, None, threads=1)
    fmt = load_preset("nvarc")
    from airv.core.prompts import for_tokenizer

    examples = task_examples(
        TASK,
        for_tokenizer(fmt, tok),
        tok,
        views=2,
        policy=ViewPolicy(),
        max_len=1024,
        loss=Loss.OUTPUTS,
    )
    targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,embed_tokens,lm_head"
    cfg = TTTConfig(
        mode=TTTMode.PER_TASK,
        steps=4,
        batch_size=1,
        rank=4,
        alpha=8,
        target_modules=targets,
        rslora=True,
        schedule=Schedule.COSINE,
        warmup=0.25,
        learning_rate=1e-2,
        embedding_learning_rate=1e-30,
    )
    _, result = train_adapter(
        model, tok, TASK.id, examples, cfg, tmp_path / "a", deadline=time.monotonic() + 300
    )
    assert result.path is not None and result.steps == 4 and result.rank == 4
    saved = orjson.loads((tmp_path / "a" / "adapter_config.json").read_bytes())
    assert saved["use_rslora"] is True
    assert {"embed_tokens", "lm_head", "q_proj"} <= set(saved["target_modules"])
    with safe_open(str(tmp_path / "a" / "adapter_model.safetensors"), framework="pt") as f:
        weights = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    # peft starts one factor of each pair at zero (B of a linear layer, A of an embedding):
    # the projections' moved, the embeddings' and the head's stayed put at their own rate.
    emb_a = [v for k, v in weights.items() if "embed_tokens.lora_embedding_A" in k]
    head_b = [v for k, v in weights.items() if "lm_head.lora_B" in k]
    proj_b = [v for k, v in weights.items() if "q_proj.lora_B" in k]
    assert emb_a and head_b and proj_b
    assert max(float(v.abs().max()) for v in proj_b) > 1e-4
    assert max(float(v.abs().max()) for v in emb_a + head_b) < 1e-12
    # LoRA factors only: not the whole embedding matrix (vLLM serves no modules_to_save).
    assert not any("base_layer" in k or k.endswith("embed_tokens.weight") for k in weights)


def test_an_adapters_cap_is_its_fair_share_per_training_process() -> None:
    """Four GPUs training 240 adapters side by side in 1,000 s: each process trains 60, so an
    adapter's fair share is 1,000 / 60 s (not 1,000 / 240), and the cap 3 of those."""
    per_task = TTTConfig(mode=TTTMode.PER_TASK)
    assert per_task.adapter_cap(1000.0, 240, 4) == pytest.approx(3 * 1000 / 60)
    assert per_task.adapter_cap(1000.0, 2, 4) == pytest.approx(3 * 1000)  # a process each
    assert TTTConfig(mode=TTTMode.JOINT).adapter_cap(1000.0, 1, 4) == pytest.approx(3000.0)
    assert TTTConfig(task_cap_seconds=30.0).adapter_cap(1000.0, 240, 4) == 30.0
