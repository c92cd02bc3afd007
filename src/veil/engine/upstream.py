"""The `upstream` backend: any OpenAI-compatible server (vLLM, SGLang, llama-server, Ollama).

The node keeps everything around the engine: it counts prompt tokens with the model's own
tokenizer (read from the weights the operator names, whose sha256 it declares with scope
"declared": nothing here proves the upstream runs them), applies `max_tokens`, the context
window and stop strings itself, and signs the receipt. Only the chat messages and sampling
knobs go upstream, in a request the node builds: no client header is ever forwarded.

Everything the upstream sends is bounded: connect and between-pieces read deadlines, one SSE
line and one error body at most `max_line_bytes`, JSON depth, and at most `max_tokens` pieces.
Failures become typed errors (`UpstreamUnavailable`, `UpstreamTimeout`, `UpstreamFailed`).
Requests run as tasks on one event-loop thread; a cancelled handle is noticed within
`_POLL_S` even while the upstream is silent, and closes the upstream connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from veil.engine.backend import Backend, EngineStats, check_prompt_fits
from veil.engine.chat import ChatMessage, encode_chat
from veil.engine.detokenize import StreamedText
from veil.engine.errors import (
    EngineClosed,
    EngineError,
    EngineOverloaded,
    ModelLoadError,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from veil.engine.handle import Failed, Finished, GenerationHandle, TokenDelta
from veil.engine.model import ModelFiles, locate_model, weights_digest
from veil.engine.sampling import SamplingParams
from veil.wire import boundedjson
from veil.wire.errors import WireError

__all__ = ["UPSTREAM_TOKEN_ID", "UpstreamConfig", "UpstreamEngine"]

log = logging.getLogger(__name__)

UPSTREAM_TOKEN_ID = -1  # TokenDelta.token_id of an upstream piece: the upstream sends no ids
_POLL_S = 0.1  # how often a waiting request checks whether it was cancelled


@dataclass(frozen=True)
class UpstreamConfig:
    url: str  # base URL of the OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1
    model: str | None = None  # the model name the upstream knows; None = the node's model id
    connect_timeout_s: float = 5.0  # to connect, at most
    read_timeout_s: float = 60.0  # between two pieces of an answer (and to the first), at most
    max_line_bytes: int = 64 * 1024  # one SSE line, or an error body, at most
    max_running: int = 8  # requests in flight upstream at once
    max_queue: int = 64  # requests waiting for a slot before `EngineOverloaded`
    api_key: str | None = None  # sent as a bearer token when the upstream wants one


class UpstreamEngine(Backend):
    """Chat requests served by an OpenAI-compatible server; thread-safe."""

    kind: ClassVar[str] = "upstream"
    weights_scope: ClassVar[str] = "declared"

    def __init__(
        self,
        config: UpstreamConfig,
        tokenizer: Any,
        files: ModelFiles,
        weights_sha256: str,
        context_length: int,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.files = files
        self._weights = weights_sha256
        self._context_length = context_length
        self.stats = EngineStats()
        self._closed = False
        self._pending = 0  # submitted, not yet finished
        self._lock = threading.Lock()
        self._url = config.url.rstrip("/") + "/chat/completions"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="veil-upstream", daemon=True
        )
        self._thread.start()
        self._client: httpx.AsyncClient = self._call(self._make_client())
        self._slots: asyncio.Semaphore = self._call(self._make_slots())

    @classmethod
    def open(
        cls,
        config: UpstreamConfig,
        path: str | os.PathLike[str] | None = None,
        model_id: str | None = None,
        *,
        context_length: int = 2048,
    ) -> UpstreamEngine:
        """Read the tokenizer of (and hash) the weights the upstream is declared to run."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoTokenizer

        files = locate_model(path, model_id)
        kwargs: dict[str, Any] = {"local_files_only": True}
        if files.gguf_file is not None:
            kwargs["gguf_file"] = files.gguf_file
        try:
            tokenizer = AutoTokenizer.from_pretrained(files.directory, **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot read the tokenizer in {files.directory}: {exc}") from exc
        if tokenizer.chat_template is None:
            raise ModelLoadError(f"model {files.model_id} has no chat template")
        return cls(config, tokenizer, files, weights_digest(files), context_length)

    # --- Backend -------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.files.model_id

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def weights_sha256(self) -> str:
        return self._weights

    @property
    def weights_source(self) -> str:
        files = self.files.weight_files
        where = files[0] if len(files) == 1 else self.files.directory
        return f"{where}, served by {self.config.url}"

    def encode_chat(self, messages: list[ChatMessage]) -> list[int]:
        return encode_chat(self.tokenizer, messages)

    def submit_chat(
        self, messages: list[ChatMessage], prompt_ids: list[int], params: SamplingParams
    ) -> GenerationHandle:
        n = len(prompt_ids)
        check_prompt_fits(n, self.context_length)
        with self._lock:
            if self._closed:
                raise EngineClosed("the engine is shut down")
            if self._pending >= self.config.max_running + self.config.max_queue:
                raise EngineOverloaded("too many requests are waiting; retry later")
            self._pending += 1
        handle = GenerationHandle(prompt_tokens=n)
        self.stats.requests += 1
        max_new = min(params.max_tokens, self.context_length - n)
        asyncio.run_coroutine_threadsafe(self._serve(handle, messages, params, max_new), self._loop)
        return handle

    @property
    def idle(self) -> bool:
        return self._pending == 0

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._call(self._shutdown(), timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._loop.close()

    # --- event-loop thread ---------------------------------------------------------------------
    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _make_client(self) -> httpx.AsyncClient:
        c = self.config
        headers = {"accept": "text/event-stream", "user-agent": "veil-node"}
        if c.api_key:
            headers["authorization"] = f"Bearer {c.api_key}"
        return httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(
                connect=c.connect_timeout_s,
                read=c.read_timeout_s,
                write=c.read_timeout_s,
                pool=c.read_timeout_s,
            ),
            limits=httpx.Limits(max_connections=c.max_running, max_keepalive_connections=4),
            follow_redirects=False,
            trust_env=False,  # no proxy or netrc from the environment
        )

    async def _make_slots(self) -> asyncio.Semaphore:
        return asyncio.Semaphore(self.config.max_running)

    async def _shutdown(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()

    def _body(self, messages: list[ChatMessage], params: SamplingParams, max_new: int) -> dict:
        body: dict[str, Any] = {
            "model": self.config.model or self.model_id,
            "messages": [
                {"role": "system" if m.role == "developer" else m.role, "content": m.content}
                for m in messages
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": max_new,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    async def _serve(
        self,
        handle: GenerationHandle,
        messages: list[ChatMessage],
        params: SamplingParams,
        max_new: int,
    ) -> None:
        outcome: Finished | Failed
        try:
            async with self._slots:
                outcome = await self._generate(handle, messages, params, max_new)
        except asyncio.CancelledError:  # the engine is closing
            outcome = Failed(EngineClosed("the engine is shut down"))
        except httpx.TimeoutException:
            outcome = Failed(UpstreamTimeout("the upstream engine did not answer in time"))
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            outcome = Failed(
                UpstreamUnavailable(f"the upstream engine is unreachable: {_name(exc)}")
            )
        except httpx.HTTPError as exc:
            outcome = Failed(UpstreamFailed(f"the upstream request failed: {_name(exc)}"))
        except EngineError as exc:
            outcome = Failed(exc)
        except Exception as exc:  # never leave a handle without its end
            log.exception("upstream request %d failed", handle.id)
            outcome = Failed(EngineError(f"inference failed: {type(exc).__name__}"))
        finally:
            with self._lock:
                self._pending -= 1
        if isinstance(outcome, Failed):
            log.warning("upstream request %d failed: %s", handle.id, type(outcome.error).__name__)
        handle.push(outcome)

    async def _generate(
        self,
        handle: GenerationHandle,
        messages: list[ChatMessage],
        params: SamplingParams,
        max_new: int,
    ) -> Finished:
        n = handle.prompt_tokens
        if handle.cancelled:
            return Finished("cancelled", n, 0)
        text = StreamedText(params.stop)
        body = self._body(messages, params, max_new)
        async with self._client.stream("POST", self._url, json=body) as response:
            if response.status_code != 200:
                raise await _status_error(response, self.config.max_line_bytes)
            reason: str | None = None
            reported: int | None = None
            async for event in self._events(response, handle):
                if event is None:  # cancelled
                    return Finished("cancelled", n, handle.completion_tokens)
                usage = event.get("usage")
                if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                    reported = usage["completion_tokens"]
                for piece, finish in _choices(event):
                    if piece:
                        handle.completion_tokens += 1
                        self.stats.tokens_generated += 1
                        self.stats.decode_steps += 1
                        delta = text.add(piece)
                        handle.push(TokenDelta(UPSTREAM_TOKEN_ID, delta))
                        if text.stopped:
                            return Finished("stop", n, handle.completion_tokens)
                        if handle.completion_tokens >= max_new:
                            return Finished("length", n, handle.completion_tokens, text.flush())
                    if finish is not None:
                        reason = "length" if finish == "length" else "stop"
            if reason is None:  # it closed (crashed, restarted) mid-answer
                raise UpstreamUnavailable("the upstream closed the stream mid-answer")
            # usage counts tokens an upstream may stream several to a piece: trust the larger
            count = max(handle.completion_tokens, min(reported or 0, max_new))
            return Finished(reason, n, count, text.flush())

    async def _events(self, response: httpx.Response, handle: GenerationHandle) -> Any:
        """Parsed `data:` events until `[DONE]` or the end; None once the handle is cancelled."""
        limit = self.config.max_line_bytes
        chunks = response.aiter_raw()
        buffer = b""
        while True:
            read = asyncio.ensure_future(anext(chunks, None))
            while not read.done():
                await asyncio.wait({read}, timeout=_POLL_S)
                if handle.cancelled and not read.done():
                    read.cancel()
                    yield None
                    return
            chunk = read.result()
            if handle.cancelled:
                yield None
                return
            if chunk is None:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            if len(buffer) > limit:
                raise UpstreamFailed(f"the upstream sent a line longer than {limit} bytes")
            for line in lines:
                line = line.rstrip(b"\r")
                if not line.startswith(b"data:"):
                    continue  # comments, event names, blank separators
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                yield _event(data, limit)
        if buffer.strip():
            raise UpstreamUnavailable("the upstream closed the stream mid-line")


def _event(data: bytes, limit: int) -> dict[str, Any]:
    try:
        event = boundedjson.loads(data, max_bytes=limit, what="an upstream event")
    except WireError as exc:
        raise UpstreamFailed(str(exc)) from None
    if not isinstance(event, dict):
        raise UpstreamFailed("an upstream event is not a JSON object")
    if "error" in event:
        raise UpstreamFailed("the upstream reported an error mid-stream")
    return event


def _choices(event: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(content piece, finish reason) of the first choice; [] for a usage-only event."""
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices:
        return []
    choice = choices[0]
    if not isinstance(choice, dict):
        raise UpstreamFailed("an upstream choice is not a JSON object")
    delta = choice.get("delta") or {}
    piece = delta.get("content") if isinstance(delta, dict) else None
    finish = choice.get("finish_reason")
    if piece is not None and not isinstance(piece, str):
        raise UpstreamFailed("an upstream delta's content is not a string")
    return [(piece or "", finish if isinstance(finish, str) else None)]


async def _status_error(response: httpx.Response, limit: int) -> UpstreamFailed:
    """An error status as a typed error; the body is read (bounded) only to drain it."""
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            break
    status = response.status_code
    what = "overloaded" if status in (429, 503) else "failed"
    return UpstreamFailed(f"the upstream engine {what} (HTTP {status})", status=status)


def _name(exc: BaseException) -> str:
    return type(exc).__name__
