"""The test-time fine-tuning stage of a run: adapters trained in processes of their own.

Training runs in separate processes (one per device; on CPU, one), which pull tasks from one
shared queue and send each adapter's result back as soon as it is saved. The parent owns the
clock: at the stage's deadline it ends the processes, and an adapter not ready by then is
simply missing (that task is answered by the base model). A process that dies (an
out-of-memory kill) costs the task it was training, which is recorded as failed; the others
are trained by a fresh process while time remains. When the stage ends, its processes have
exited and returned their memory, so the engine that follows has the GPU to itself.

Results are appended to OUT/ttt.jsonl; a resumed run keeps the adapters it finds there.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import re
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from airv.adapt.config import SAVE_MARGIN, TTTConfig, TTTMode
from airv.adapt.data import Example, task_examples
from airv.adapt.lora import ADAPTER_CONFIG_FILE, TrainResult, load_base, train_adapter
from airv.core.augment import ViewPolicy
from airv.core.jsonio import append_jsonl, read_jsonl
from airv.core.prompt_format import PromptFormat
from airv.core.prompts import for_tokenizer
from airv.core.tasks import Task
from airv.engines.worker import child_context, child_process, die_with_parent, end_group

log = logging.getLogger(__name__)
JOINT = "joint"  # the adapter's name in joint mode
ADAPTERS_DIR = "adapters"
# A training process that dies before taking any task (its model does not load) is started
# again at most this many times per device: the same failure would eat the whole stage.
MAX_START_FAILURES = 2
TTT_LOG = "ttt.jsonl"


@dataclass(frozen=True)
class StageJob:
    """What a training process needs; picklable (sent to the training processes)."""

    model_dir: Path
    fmt: PromptFormat
    cfg: TTTConfig
    policy: ViewPolicy
    max_len: int
    out_dir: Path  # adapters go to out_dir / adapter_dir(<name>)
    task_cap: float  # seconds per adapter
    deadline: float = float("inf")  # the stage's end (time.monotonic(), the same in every process)
    threads: int | None = None


def adapter_dir(name: str) -> str:
    """The folder name of a task's adapter: a stable hash of the task id (the same across
    --max-tasks, task order and resume), after a readable, path-safe prefix of it. A task id
    is data, never a path: `../x`, `/abs` and `a` vs `a/` cannot escape or collide."""
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:32]
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def dir_bytes(path: Path) -> int:
    """Bytes of the files under `path` (0 if it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def read_results(path: Path) -> dict[str, TrainResult]:
    """ttt.jsonl -> the last result per adapter name; damaged lines are skipped."""
    records, _ = read_jsonl(path, lambda d: TrainResult(**d))
    return {r.name: r for r in records}


def append_result(path: Path, result: TrainResult) -> None:
    """One more line for an adapter in ttt.jsonl (the last line per name counts)."""
    append_jsonl(path, [orjson.dumps(asdict(result))])


def _examples(job: StageJob, tasks: Sequence[Task], tokenizer: Any) -> list[Example]:
    fmt = for_tokenizer(job.fmt, tokenizer)
    out: list[Example] = []
    for task in tasks:
        out.extend(
            task_examples(
                task,
                fmt,
                tokenizer,
                views=job.cfg.augmentations,
                policy=job.policy,
                max_len=job.max_len,
                loss=job.cfg.loss,
            )
        )
    return out


def _serve(job: StageJob, device: str | None, todo: Any, results: Any, parent: int) -> None:
    """A training process: pull (name, tasks) items until the queue is empty."""
    os.setsid()  # a group of its own: the parent ends it whole
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    die_with_parent(parent, signal.SIGKILL)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    model, tokenizer = load_base(job.model_dir, device, job.threads)
    while True:
        try:
            name, tasks = todo.get(timeout=1.0)
        except queue.Empty:
            break
        results.put(("start", name, os.getpid()))
        t0 = time.monotonic()
        try:
            examples = _examples(job, tasks, tokenizer)
            model, result = train_adapter(
                model,
                tokenizer,
                name,
                examples,
                job.cfg,
                job.out_dir / adapter_dir(name),
                # Stop in time to save the adapter before the parent ends the stage.
                deadline=min(time.monotonic() + job.task_cap, job.deadline - SAVE_MARGIN),
            )
        except Exception as exc:  # one task's failure must not cost the others
            # train_adapter has taken its LoRA layers out again: `model` is the base model.
            detail = traceback.format_exc(limit=3)
            log.debug("training %s failed: %s", name, detail)
            result = TrainResult(
                name, None, 0, None, time.monotonic() - t0, 0, f"{type(exc).__name__}: {exc}"
            )
        results.put(("done", name, result))


# Told of each adapter as it is saved or fails: (its result, adapters done, adapters in all).
Progress = Callable[[TrainResult, int, int], None]


@dataclass
class StageReport:
    adapters: dict[str, str]  # task id -> adapter directory (per task: its own; joint: shared)
    results: list[TrainResult]  # trained by this stage
    seconds: float
    restarts: int = 0
    ready: dict[str, TrainResult] = field(default_factory=dict)  # adapter directory -> result


def run_stage(
    tasks: Sequence[Task],
    job: StageJob,
    *,
    deadline: float,
    log_path: Path,
    devices: Sequence[str | None] = (None,),
    progress: Progress | None = None,
) -> StageReport:
    """Train the adapters `job.cfg.mode` asks for, until done or `deadline`; `progress` is
    told of each adapter as it is saved (or fails)."""
    t0 = time.monotonic()
    done = {r.name: r for r in read_results(log_path).values() if _ready(r)}
    if job.cfg.mode is TTTMode.JOINT:
        items = [] if JOINT in done else [(JOINT, list(tasks))]
    else:
        items = [(t.id, [t]) for t in tasks if t.id not in done]
    results: list[TrainResult] = []
    restarts = 0
    if items:
        job = replace(job, deadline=deadline)
        results, restarts = _train(items, job, deadline, log_path, devices, progress)
    finished = {**done, **{r.name: r for r in results if _ready(r)}}
    if job.cfg.mode is TTTMode.JOINT:
        joint = finished.get(JOINT)
        adapters = {t.id: joint.path for t in tasks if joint is not None and joint.path}
    else:
        adapters = {n: r.path for n, r in finished.items() if r.path}
    ready = {r.path: r for r in finished.values() if r.path}
    return StageReport(adapters, results, time.monotonic() - t0, restarts, ready)


def _ready(r: TrainResult) -> bool:
    return r.path is not None and (Path(r.path) / ADAPTER_CONFIG_FILE).is_file()


def _train(
    items: list[tuple[str, list[Task]]],
    job: StageJob,
    deadline: float,
    log_path: Path,
    devices: Sequence[str | None],
    progress: Progress | None = None,
) -> tuple[list[TrainResult], int]:
    ctx = child_context()
    todo = ctx.Queue()
    for item in items:
        todo.put(item)
    results_q = ctx.Queue()
    procs: dict[Any, str | None] = {}
    current: dict[int, str] = {}  # pid -> the name it is training
    worked: set[int] = set()  # pids that took at least one task
    start_failures: dict[str | None, int] = {}
    last_exit: int | None = None

    def start(device: str | None) -> None:
        p = child_process(_serve, job, device, todo, results_q, os.getpid())
        p.start()
        procs[p] = device

    for device in devices:
        start(device)
    results: list[TrainResult] = []
    pending = {name for name, _ in items}
    restarts = 0
    try:
        while pending and time.monotonic() < deadline:
            try:
                msg = results_q.get(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                msg = None
            if msg is not None and msg[0] == "start":
                current[msg[2]] = msg[1]
                worked.add(msg[2])
            elif msg is not None:
                result = msg[2]
                pending.discard(result.name)
                results.append(result)
                append_result(log_path, result)
                if progress is not None:
                    progress(result, len(items) - len(pending), len(items))
            for p in [p for p in procs if not p.is_alive()]:
                device = procs.pop(p)
                last_exit = p.exitcode
                lost = current.pop(p.pid, None) if p.pid is not None else None
                if lost is not None and lost in pending:
                    # Died mid-task (e.g. killed for memory): that task keeps the base model.
                    pending.discard(lost)
                    failed = TrainResult(lost, None, 0, None, 0.0, 0, f"exit code {p.exitcode}")
                    results.append(failed)
                    append_result(log_path, failed)
                if p.pid not in worked:
                    start_failures[device] = start_failures.get(device, 0) + 1
                if (
                    pending
                    and time.monotonic() < deadline
                    and p.exitcode != 0
                    and start_failures.get(device, 0) <= MAX_START_FAILURES
                ):
                    restarts += 1
                    start(device)
            if not procs:
                break
        if pending and not procs:  # no process left to train them: say so for each task
            why = f"no training process left (the last ended with exit code {last_exit})"
            for name in sorted(pending):
                failed = TrainResult(name, None, 0, None, 0.0, 0, why)
                results.append(failed)
                append_result(log_path, failed)
            pending.clear()
    finally:
        for p in procs:
            _kill(p)
    return results, restarts


def _kill(p: Any) -> None:
    if p.pid is not None:
        end_group(p.pid)
    p.join(5)
