"""What makes an output folder one run's: a lock, and the fingerprint a resume must match.

A run locks OUT (fcntl, on OUT/.airv.lock) for its whole life, so a second run on the same
folder stops at once instead of doubling the log and tearing the adapters. It records in
OUT/fingerprint.json what decides its answers (the model's files, the prompt format, the views
policy and its seed, the decoding, the context length, the adapters' recipe); a later run on
the same folder resumes only if that matches, or starts over with `--fresh`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import orjson

from airv.adapt.stage import TTT_LOG
from airv.core.errors import ConfigError
from airv.core.jsonio import read_json, write_json
from airv.run.config import (
    FINGERPRINT_FILE,
    PREDICTIONS_FILE,
    PROMISE_FILE,
    SCHEDULE_FILE,
    SCORES_FILE,
    SUMMARY_FILE,
    RunConfig,
)

LOCK_FILE = ".airv.lock"
_RESULTS = (
    PREDICTIONS_FILE,
    SCORES_FILE,
    SCHEDULE_FILE,
    PROMISE_FILE,
    TTT_LOG,
    SUMMARY_FILE,
    FINGERPRINT_FILE,
)
# Model files whose content decides the answers; weights are identified by name and size
# (hashing gigabytes at every start would cost minutes).
_MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "airv.json")
_WEIGHTS = ("*.safetensors", "*.bin")


class RunLock:
    """An exclusive lock on an output folder, held until `release` (or the process ends)."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / LOCK_FILE
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise ConfigError(
                f"{out_dir} is in use by another airv run (pid {other}): give this run its "
                "own --out, or wait for that one to end"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the file releases the lock
            self._fd = None

    def __del__(self) -> None:
        self.release()


def _digest(value: object) -> str:
    data = orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(data).hexdigest()[:16]


def _model_id(model: Path | None) -> str:
    if model is None:
        return "none"
    h = hashlib.sha256()
    for name in _MODEL_FILES:
        with contextlib.suppress(OSError):
            h.update(name.encode() + (model / name).read_bytes())
    for pattern in _WEIGHTS:
        for f in sorted(model.glob(pattern)):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def fingerprint(cfg: RunConfig) -> dict[str, str]:
    """What decides a run's answers, one digest per part (the parts name what changed)."""
    ttt: dict[str, Any] = dataclasses.asdict(cfg.ttt)
    for scheduling in ("budget", "task_cap_seconds", "task_cap_shares"):  # when, not what
        ttt.pop(scheduling)
    return {
        "model": _model_id(cfg.engine.model),
        "format": _digest(dataclasses.asdict(cfg.prompt)),
        "views": _digest(dataclasses.asdict(cfg.views)),
        "decoding": _digest(dataclasses.asdict(cfg.sampling)),
        "context": str(cfg.engine.max_model_len),
        "adapters": _digest(ttt),
    }


def prepare(cfg: RunConfig) -> RunLock:
    """Lock the output folder, then start over (`cfg.fresh`) or check that its results were
    made the same way as this run would make them. Returns the held lock."""
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out)
    try:
        path = out / FINGERPRINT_FILE
        mine = fingerprint(cfg)
        if cfg.fresh:
            for name in _RESULTS:
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(cfg.adapters_dir, ignore_errors=True)
        elif path.exists() and _has_results(out):
            theirs = read_json(path, "run fingerprint", error=ConfigError)
            if not isinstance(theirs, dict):
                theirs = {}
            changed = sorted(k for k in mine if theirs.get(k) != mine[k])
            if changed:
                raise ConfigError(
                    f"{out} holds results made with another {', '.join(changed)}: resuming "
                    "would mix them. Use --fresh to start over there, or another --out"
                )
        write_json(path, mine, indent=True)
    except BaseException:
        lock.release()
        raise
    return lock


def _has_results(out: Path) -> bool:
    return any((out / n).is_file() and (out / n).stat().st_size for n in _RESULTS[:3])
