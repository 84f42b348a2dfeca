"""airv against vLLM's OpenAI-compatible servers (`vllm serve`): one lane per endpoint.

Each endpoint is a lane of the pool (engines.pool), so the servers pull from the same shared
queue as in-process engines, and the same supervision applies: an endpoint that fails (a
connection refused or reset, a timeout, a server error) has its requests in flight sent back
to the queue for the others, and is tried again after a back-off; one that stays silent with
work in flight is stalled. The rest of airv does not know which engine ran.

Requests go out concurrently through the `openai` package's async client, in a thread of
their own, at most the pool's depth (`--inflight`) per endpoint, on the completions API with
token-id prompts: greedy or sampling, `n`, per-request `max_tokens`, the sampled tokens'
logprobs (vLLM's `return_tokens_as_token_ids` gives their ids). Re-scoring uses vLLM's
`prompt_logprobs`. An adapter (test-time fine-tuning) is loaded on the server on first use
through vLLM's `/v1/load_lora_adapter` (the server needs `--enable-lora` and
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and must see the adapter's path). The API key comes
from the environment (AIRV_API_KEY), never from a flag.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import ipaddress
import math
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Sequence
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from typing import Any

from airv.core.errors import ConfigError
from airv.engines.base import (
    Completion,
    GenerateRequest,
    Request,
    Result,
    ScoreRequest,
    decoding_of,
    sum_logprobs,
)
from airv.engines.config import Backend, Decoding, unsupported
from airv.engines.lane import WorkerDied

API_KEY_ENV = "AIRV_API_KEY"
REQUEST_TIMEOUT = 600.0  # seconds for one HTTP request; the stall watchdog bounds a silent server
_USERINFO = re.compile(r"//[^/@\s]+@")
BACKOFF_MAX = 30.0  # seconds before trying a failed endpoint again: 1, 3, 7, 15, 30, ...


def redact_url(url: str) -> str:
    """The URL as logs and run_summary.json may show it: no user:password@, no query."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port is not None else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def key_is_safe(url: str) -> bool:
    """Whether an API key may go to this endpoint: over https, or to this machine."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoints(endpoints: Sequence[str], *, allow_insecure_key: bool) -> None:
    """An API key set in the environment must not travel in clear text to another machine."""
    if not os.environ.get(API_KEY_ENV) or allow_insecure_key:
        return
    exposed = [redact_url(u) for u in endpoints if not key_is_safe(u)]
    if exposed:
        raise ConfigError(
            f"${API_KEY_ENV} is set and would be sent unencrypted to {', '.join(exposed)}: use "
            "https://, a loopback address, or --allow-insecure-key"
        )


def adapter_name(path: str) -> str:
    """An adapter's name on a server: the same for the same directory in every lane life."""
    return "airv-adapter-" + hashlib.sha256(path.encode()).hexdigest()[:16]


class OpenAILane:
    """One OpenAI-compatible endpoint as a lane of engines.pool.Pool."""

    def __init__(
        self,
        endpoint: str,
        sampling: Decoding,
        *,
        name: str,
        life: int = 0,
        allow_insecure_key: bool = False,
    ):
        why = unsupported(Backend.OPENAI, sampling)
        if why is not None:
            raise ConfigError(why)
        self.endpoint = endpoint.rstrip("/")
        self.shown = redact_url(self.endpoint)  # what messages and the summary may show
        self.name = name
        self._key = self.key_for(self.endpoint, allow_insecure_key=allow_insecure_key)
        self.ready = False
        self.started = self.last_heard = time.monotonic()
        self.model_id: str | None = None
        self._sampling = sampling
        self._lock = threading.Lock()
        self._results: list[Result] = []
        self._failure: str | None = None
        self._futures: dict[int, concurrent.futures.Future[None]] = {}
        # adapter directory -> its load on the server, which gives the name to ask for
        self._adapters: dict[str, asyncio.Future[str]] = {}
        self._wake_r, self._wake_w = Pipe(duplex=False)
        self._client: Any = None
        self._stopped = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        backoff = min(BACKOFF_MAX, 2.0**life - 1.0)
        asyncio.run_coroutine_threadsafe(self._start(backoff), self._loop)

    @staticmethod
    def key_for(endpoint: str, *, allow_insecure_key: bool) -> str | None:
        """The API key this endpoint gets: ${API_KEY_ENV}, where it may safely go."""
        key = os.environ.get(API_KEY_ENV)
        return key if key and (allow_insecure_key or key_is_safe(endpoint)) else None

    # -- the Lane protocol ---------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None

    @property
    def waitable(self) -> Connection:
        return self._wake_r

    def send(self, items: Sequence[tuple[int, Request]]) -> None:
        for rid, request in items:
            self._futures[rid] = asyncio.run_coroutine_threadsafe(
                self._one(rid, request), self._loop
            )

    def abort(self, request_ids: Sequence[int]) -> None:
        for rid in request_ids:
            future = self._futures.pop(rid, None)
            if future is not None:
                future.cancel()

    def receive(self) -> list[Result]:
        """The results that have arrived; WorkerDied if the endpoint failed."""
        with contextlib.suppress(OSError, EOFError):
            while self._wake_r.poll():
                self._wake_r.recv_bytes()
        with self._lock:
            out, self._results = self._results, []
            failure = self._failure
        for r in out:
            self._futures.pop(r.request_id, None)
        if out:
            self.last_heard = time.monotonic()
        if failure is not None:
            self.kill()
            raise WorkerDied(failure, partial=out)
        return out

    def kill(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._futures.clear()
        if self._stopped:
            return
        self._stopped = True
        if self._loop.is_running():
            closing = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            with contextlib.suppress(Exception):
                closing.result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        if not self._loop.is_running():
            self._loop.close()

    def close(self) -> None:
        self.kill()

    @property
    def finished(self) -> bool:
        """Whether the lane's thread has ended and its event loop is closed (once killed)."""
        return not self._thread.is_alive() and self._loop.is_closed()

    # -- in the lane's thread --------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send_bytes(b".")

    def _fail(self, why: str) -> None:
        # Errors may quote the URL whole, credentials included.
        why = _USERINFO.sub("//", why.replace(self.endpoint, self.shown))
        with self._lock:
            if self._failure is None:
                self._failure = why
        self._wake()

    async def _shutdown(self) -> None:
        """Whatever still runs in the lane's loop (its start, a request, an adapter's load) is
        cancelled and waited for, then the client's connections are closed in the loop they
        live in: a lane ended while it starts once left its start pending in a stopped loop."""
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    async def _start(self, backoff: float) -> None:
        """Wait out the back-off, then ask the server which model it serves."""
        from openai import AsyncOpenAI

        await asyncio.sleep(backoff)
        self._client = AsyncOpenAI(
            base_url=self.endpoint,
            api_key=self._key or "EMPTY",
            max_retries=0,
            timeout=REQUEST_TIMEOUT,
        )
        try:
            models = await self._client.models.list()
        except Exception as exc:
            self._fail(f"{self.name} ({self.shown}): cannot list its models: {exc}")
            return
        ids = [m.id for m in models.data]
        if not ids:
            self._fail(f"{self.name} ({self.shown}): the server lists no model")
            return
        self.model_id = ids[0]
        self.ready = True
        self._wake()

    async def _one(self, rid: int, request: Request) -> None:
        import openai

        why = None
        if isinstance(request, GenerateRequest):
            why = unsupported(Backend.OPENAI, decoding_of(request, self._sampling))
        try:
            if why is not None:  # this request only
                result = Result(rid, error=why)
            elif isinstance(request, ScoreRequest):
                result = Result(rid, score=await self._score(request))
            else:
                result = Result(rid, tuple(await self._generate(request)))
        except asyncio.CancelledError:
            raise
        except (openai.BadRequestError, openai.UnprocessableEntityError, ValueError) as exc:
            result = Result(rid, error=f"the server refused it: {exc}")  # this request only
        except Exception as exc:  # connection, timeout, server error: the endpoint is failing
            self._fail(f"{self.name} ({self.shown}): {type(exc).__name__}: {exc}")
            return
        with self._lock:
            self._results.append(result)
        self._wake()

    async def _model(self, adapter: str | None) -> str:
        """The model name a request is sent to: the server's model, or a LoRA adapter loaded
        on the server on first use. Requests that need an adapter while it loads wait for
        that one load (the server refuses a name it does not know yet)."""
        assert self.model_id is not None
        if adapter is None:
            return self.model_id
        loading = self._adapters.get(adapter)
        if loading is None:
            loading = asyncio.ensure_future(self._load(adapter))
            self._adapters[adapter] = loading
        try:
            # Shielded: an aborted request must not cancel the load the others wait for.
            return await asyncio.shield(loading)
        except Exception:
            if self._adapters.get(adapter) is loading:
                del self._adapters[adapter]  # the next request tries again
            raise

    async def _load(self, adapter: str) -> str:
        """Load an adapter on the server under a name fixed by its path, unless the server
        lists that name already (loaded by this lane's previous life)."""
        name = adapter_name(adapter)
        models = await self._client.models.list()
        if name not in {m.id for m in models.data}:
            await self._client.post(
                "/load_lora_adapter",
                body={"lora_name": name, "lora_path": adapter},
                cast_to=str,  # vLLM answers with a line of text
            )
        return name

    async def _generate(self, request: GenerateRequest) -> list[Completion]:
        s = decoding_of(request, self._sampling)
        greedy = s.decode == "greedy"
        kwargs: dict[str, Any] = {
            "model": await self._model(request.adapter),
            "prompt": list(request.prompt_ids),
            "max_tokens": request.max_tokens,
            "logprobs": 0,  # the sampled tokens' own logprobs
            "temperature": 0.0 if greedy else s.temperature,
            "n": s.n,
        }
        extra: dict[str, Any] = {"return_tokens_as_token_ids": True}
        if not greedy:
            kwargs["top_p"] = s.top_p
            extra.update(top_k=s.top_k if s.top_k > 0 else -1, min_p=s.min_p)
            if s.seed is not None:
                kwargs["seed"] = s.seed
        if s.stop:
            kwargs["stop"] = list(s.stop)
        if not greedy:  # greedy is the model's argmax: no penalty (engines.config)
            if s.repetition_penalty != 1.0:
                extra["repetition_penalty"] = s.repetition_penalty
            if s.presence_penalty:
                kwargs["presence_penalty"] = s.presence_penalty
            if s.frequency_penalty:
                kwargs["frequency_penalty"] = s.frequency_penalty
        response = await self._client.completions.create(**kwargs, extra_body=extra)
        out = []
        for choice in sorted(response.choices, key=lambda c: c.index):
            lp = choice.logprobs
            tokens = [int(t.rsplit(":", 1)[1]) for t in (lp.tokens if lp and lp.tokens else [])]
            values = [x for x in (lp.token_logprobs if lp and lp.token_logprobs else [])]
            out.append(
                Completion(
                    text=choice.text,
                    token_ids=tuple(tokens),
                    logprob=math.fsum(x for x in values if x is not None),
                    finish_reason="length" if choice.finish_reason == "length" else "stop",
                )
            )
        return out

    async def _score(self, request: ScoreRequest) -> float:
        response = await self._client.completions.create(
            model=await self._model(request.adapter),
            prompt=[*request.prompt_ids, *request.continuation_ids],
            max_tokens=1,
            temperature=0.0,
            extra_body={"prompt_logprobs": 0},
        )
        choice = response.choices[0]
        entries = (choice.model_extra or {}).get("prompt_logprobs") or []
        values = []
        for tok, entry in zip(
            request.continuation_ids, entries[len(request.prompt_ids) :], strict=True
        ):
            if not entry or str(tok) not in entry:
                raise ValueError("the server returned no prompt logprob for a candidate token")
            values.append(float(entry[str(tok)]["logprob"]))
        return sum_logprobs(values)
