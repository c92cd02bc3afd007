"""The node's Oblivious HTTP gateway, in front of any inner ASGI app.

`gateway_router(inner_app, keys)` adds two routes:

* `GET /.well-known/ohttp-keys`: the node's key configs (current first, then previous).
* `POST /gateway`: an encapsulated request (`message/ohttp-req` or `message/ohttp-chunked-req`)
  is opened, turned into an in-process call of `inner_app`, and the answer sealed back. A chunked
  request gets a chunked answer, one sealed chunk per body piece the inner app sends, so streamed
  tokens leave as they are produced; a plain request gets one sealed answer.

What the inner app sees is only what the sealed message carried: method, path, headers minus
hop-by-hop and forwarding fields, body. The scope has no client address and no outer header.
Only allowlisted paths are reachable (the gateway is not an open proxy).

Receipts: the inner app gets the request digest, sha256 of the encapsulated request body as the
relay carried it (`veil.identity.request_digest`), as the `x-veil-request-digest` header (hex)
and in the scope's extensions (`REQUEST_DIGEST_EXTENSION`, raw bytes). Any such header inside
the client's sealed message is removed first: only the gateway states what was received.

Refusals before a request is opened (wrong media type, too large, unknown key id, unsupported
suite, failed decryption, replay) are `application/problem+json` errors the relay can see; an
unknown key id uses RFC 9458's `ohttp-key` problem type, which tells the client to refetch keys.
Errors after opening (a malformed inner message, a path not allowed, an inner failure) are sent
sealed, so the relay learns nothing from them.

Replay protection: the gateway remembers (key id, encapsulated key) of every request it opened
for `replay_window_s`, up to `replay_capacity` entries (the oldest are forgotten first). A replay
inside the window is refused. Older replays are bounded by key rotation: once a key is rotated
out twice it can open nothing. Rotate keys at least as often as the window for a full guarantee.
With `replay_path` the memory is a `veil.node.replay.ReplayLog`: each entry is fsynced before
its request is served, so replays are refused across restarts too (for keys that persist).

Inner requests are marked in the scope's extensions (`GATEWAY_EXTENSION`, see `via_gateway`);
a sealed message cannot set it, so the inner app can tell them from direct local requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from fastapi import APIRouter, FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from veil.identity.receipt import request_digest
from veil.node.keys import NodeKeys
from veil.node.replay import ReplayCache, ReplayLog
from veil.wire import bhttp
from veil.wire.errors import ReplayedRequest, WireError
from veil.wire.http import (
    CHAT_PATH,
    CREDITS_PATH,
    DESCRIPTOR_PATH,
    MODELS_PATH,
    MPC_PATH,
    PROBLEM_PREFIX,
    REQUEST_DIGEST_EXTENSION,
    TICKET_PARAMS_PATH,
    TOKEN_KEYS_PATH,
    read_capped,
)
from veil.wire.http import REQUEST_DIGEST_HEADER as _DIGEST_HEADER
from veil.wire.ohttp import (
    GATEWAY_PATH,
    KEYS_PATH,
    MEDIA_CHUNKED_REQUEST,
    MEDIA_CHUNKED_RESPONSE,
    MEDIA_KEYS,
    MEDIA_REQUEST,
    MEDIA_RESPONSE,
    ChunkedResponseSealer,
    ResponseSealer,
    decapsulate_chunked_request,
    decapsulate_request,
)
from veil.wire.problem import MEDIA_PROBLEM, problem_body

__all__ = [
    "DEFAULT_ALLOWED_PATHS",
    "GATEWAY_EXTENSION",
    "REQUEST_DIGEST_HEADER",
    "GatewayConfig",
    "ReplayCache",
    "create_gateway_app",
    "gateway_router",
    "pad_sse",
    "via_gateway",
]

log = logging.getLogger(__name__)

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]

DEFAULT_ALLOWED_PATHS = frozenset(
    {
        CHAT_PATH,
        MODELS_PATH,
        "/healthz",
        DESCRIPTOR_PATH,
        TICKET_PARAMS_PATH,
        MPC_PATH,  # MPC control frames (404 `mpc_unavailable` on a node without a party)
        TOKEN_KEYS_PATH,  # anonymous credits: the token keys, and buying a batch
        CREDITS_PATH,
    }
)
# How the gateway tells the inner app which request it answers (for the receipt).
REQUEST_DIGEST_HEADER = _DIGEST_HEADER.encode()
# Scope extension the gateway sets on every inner request: it came sealed, from anyone.
GATEWAY_EXTENSION = "veil.ohttp_gateway"

# Never passed to the inner app: connection-level, proxy and forwarding fields.
_DROPPED_REQUEST_FIELDS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"forwarded",
        b"via",
        b"x-real-ip",
        b"true-client-ip",
        b"cf-connecting-ip",
    }
)
_DROPPED_RESPONSE_FIELDS = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"trailer", b"content-length"}
)


@dataclass(frozen=True)
class GatewayConfig:
    """Limits and policy of the gateway."""

    allowed_paths: frozenset[str] = DEFAULT_ALLOWED_PATHS  # inner paths reachable, no query
    max_request_bytes: int = 1024 * 1024  # encapsulated request body
    bhttp_limits: bhttp.Limits = field(
        default_factory=lambda: bhttp.Limits(max_content_bytes=1024 * 1024)
    )
    max_response_chunk: int = 16 * 1024  # inner body bytes per sealed chunk (the draft's size)
    replay_window_s: float = 600.0  # how long an opened request's encapsulated key is remembered
    replay_capacity: int = 200_000  # entries remembered at most (32-byte keys)
    replay_path: str | None = None  # replay log file (0600) kept across restarts; None: memory
    keys_max_age_s: int = 60  # Cache-Control max-age of the key list
    # Streamed (SSE) answers: each body piece padded with an SSE comment to a multiple of this
    # many bytes, so sealed chunk sizes tell the relay the bucket, not the text (`pad`
    # shaping); None: unpadded (`off`, the default until the cost is measured across services)
    stream_pad_bytes: int | None = None


def _problem(status: int, problem_type: str, title: str) -> Response:
    return Response(
        problem_body(problem_type, title, status),
        status_code=status,
        media_type=MEDIA_PROBLEM,
        headers={"cache-control": "no-store"},
    )


def _wire_problem(err: WireError) -> Response:
    return _problem(err.http_status, err.problem_type, str(err) or err.code)


def _inner_problem(status: int, code: str, title: str) -> bhttp.Response:
    """A problem answer that is sealed back to the client (the relay does not see it)."""
    body = problem_body(PROBLEM_PREFIX + code, title, status)
    return bhttp.Response(status, ((b"content-type", MEDIA_PROBLEM.encode()),), body)


def _scope_for(breq: bhttp.Request, state: dict[str, Any], digest: bytes) -> dict[str, Any]:
    """A fresh ASGI scope carrying only what the sealed request carried, plus its digest."""
    raw_path, _, query = breq.path.partition("?")
    headers = [(n.lower(), v) for n, v in breq.headers]
    headers = [(n, v) for n, v in headers if n not in _DROPPED_REQUEST_FIELDS]
    headers = [(n, v) for n, v in headers if not n.startswith(b"x-forwarded-")]
    headers = [(n, v) for n, v in headers if n != REQUEST_DIGEST_HEADER]
    headers.append((b"content-length", str(len(breq.content)).encode()))
    headers.append((REQUEST_DIGEST_HEADER, digest.hex().encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": breq.method,
        "scheme": "https",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers,
        "client": None,
        "server": None,
        "state": state,
        "extensions": {REQUEST_DIGEST_EXTENSION: digest, GATEWAY_EXTENSION: True},
    }


def via_gateway(scope: MutableMapping[str, Any]) -> bool:
    """Whether a request came through the OHTTP gateway (from anyone) rather than directly."""
    return (scope.get("extensions") or {}).get(GATEWAY_EXTENSION) is True


def _response_fields(raw: list[tuple[bytes, bytes]]) -> bhttp.Fields:
    out = []
    for name, value in raw:
        name = name.lower()
        if name in _DROPPED_RESPONSE_FIELDS:
            continue
        if bhttp.valid_field_name(name) and bhttp.valid_field_value(value):
            out.append((name, value))
    return tuple(out)


class _InnerCall:
    """Runs the inner app on one request and hands its ASGI messages over as they come."""

    _DONE = object()

    def __init__(self, app: ASGIApp, scope: dict[str, Any], body: bytes) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._body: bytes | None = body
        self._disconnected = asyncio.Event()
        self._task = asyncio.create_task(self._run(app, scope))

    async def _receive(self) -> dict[str, Any]:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await self._disconnected.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Any) -> None:
        await self._queue.put(message)

    async def _run(self, app: ASGIApp, scope: dict[str, Any]) -> None:
        try:
            await app(scope, self._receive, self._send)
        except Exception as exc:  # its message could quote the request: log the type only
            log.error("inner app failed: %s", type(exc).__name__)
        finally:
            await self._queue.put(self._DONE)

    async def next(self) -> dict[str, Any] | None:
        """The next ASGI message, or None once the inner app has returned."""
        message = await self._queue.get()
        return None if message is self._DONE else message

    async def start(self) -> tuple[int, bhttp.Fields] | None:
        """Status and headers, skipping anything before `http.response.start`."""
        while (message := await self.next()) is not None:
            if message.get("type") == "http.response.start":
                return int(message["status"]), _response_fields(message.get("headers", []))
        return None

    async def close(self) -> None:
        self._disconnected.set()
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def gateway_router(
    inner_app: ASGIApp, keys: NodeKeys, config: GatewayConfig | None = None
) -> APIRouter:
    """The gateway's routes over `inner_app`; include it in the node app.

    `inner_app` may be the very app the router is included in (the allowlist keeps the gateway
    from calling itself); its lifespan `state` is handed to inner calls.
    """
    cfg = config or GatewayConfig()
    replay = (
        ReplayLog(cfg.replay_path, cfg.replay_window_s, cfg.replay_capacity)
        if cfg.replay_path
        else ReplayCache(cfg.replay_window_s, cfg.replay_capacity)
    )
    router = APIRouter()

    @router.get(KEYS_PATH, include_in_schema=False)
    async def ohttp_keys() -> Response:
        return Response(
            keys.encoded_configs(),
            media_type=MEDIA_KEYS,
            headers={"cache-control": f"max-age={cfg.keys_max_age_s}"},
        )

    @router.post(GATEWAY_PATH, include_in_schema=False)
    async def gateway(request: Request) -> Response:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in (MEDIA_REQUEST, MEDIA_CHUNKED_REQUEST):
            return _problem(415, PROBLEM_PREFIX + "media-type", "expected an OHTTP request")
        chunked = media == MEDIA_CHUNKED_REQUEST
        sealer: ResponseSealer | ChunkedResponseSealer
        try:
            body = await read_capped(request, cfg.max_request_bytes)
            if chunked:
                message, sealer = decapsulate_chunked_request(keys, body)
            else:
                message, sealer = decapsulate_request(keys, body)
            seen = body[:1] + sealer.enc
            if not replay.check_and_add(seen):
                raise ReplayedRequest("request already seen")
            await replay.commit(seen)  # durable before anything is served
        except WireError as err:
            log.info("gateway refused a request: %s", err.code)
            return _wire_problem(err)
        except ClientDisconnect:
            return Response(status_code=400)
        except OSError:  # the replay log cannot be written: refuse rather than risk a replay
            return _problem(503, PROBLEM_PREFIX + "unavailable", "the gateway cannot take requests")
        state = dict(request.scope.get("state") or {})
        answer = await _answer(inner_app, message, state, cfg, request_digest(body))
        if chunked:
            assert isinstance(sealer, ChunkedResponseSealer)
            return StreamingResponse(
                _stream_sealed(answer, sealer, cfg.max_response_chunk, cfg.stream_pad_bytes),
                media_type=MEDIA_CHUNKED_RESPONSE,
                headers={"incremental": "?1", "cache-control": "no-store"},
            )
        assert isinstance(sealer, ResponseSealer)
        whole = await _collect(answer)
        return Response(
            sealer.seal(bhttp.encode_response(whole)),
            media_type=MEDIA_RESPONSE,
            headers={"cache-control": "no-store"},
        )

    return router


@dataclass
class _Answer:
    """The inner app's answer: status and headers, then body pieces from `call` (if any)."""

    status: int
    headers: bhttp.Fields
    first_body: bytes = b""
    call: _InnerCall | None = None
    complete: bool = False  # True when `first_body` is the whole body


async def _answer(
    inner_app: ASGIApp, message: bytes, state: dict[str, Any], cfg: GatewayConfig, digest: bytes
) -> _Answer:
    try:
        breq = bhttp.decode_request(message, cfg.bhttp_limits)
    except WireError as err:
        p = _inner_problem(err.http_status, err.code, "malformed binary HTTP request")
        return _Answer(p.status, p.headers, p.content, complete=True)
    path = breq.path.partition("?")[0]
    if path not in cfg.allowed_paths:
        p = _inner_problem(404, "not-found", "this gateway serves no such path")
        return _Answer(p.status, p.headers, p.content, complete=True)
    call = _InnerCall(inner_app, _scope_for(breq, state, digest), breq.content)
    started = await call.start()
    if started is None:
        await call.close()
        p = _inner_problem(500, "inner-error", "the node failed to answer")
        return _Answer(p.status, p.headers, p.content, complete=True)
    return _Answer(started[0], started[1], call=call)


async def _body_pieces(answer: _Answer) -> AsyncIterator[bytes]:
    """Body bytes as the inner app sends them; raises if it stops before its last piece."""
    if answer.first_body:
        yield answer.first_body
    if answer.call is None:
        return
    while (message := await answer.call.next()) is not None:
        if message.get("type") != "http.response.body":
            continue
        if data := message.get("body", b""):
            yield data
        if not message.get("more_body", False):
            return
    raise _InnerStopped


class _InnerStopped(Exception):
    """The inner app returned or failed before finishing its body."""


async def _collect(answer: _Answer) -> bhttp.Response:
    try:
        body = b"".join([piece async for piece in _body_pieces(answer)])
    except _InnerStopped:
        p = _inner_problem(502, "inner-error", "the node's answer broke off")
        return p
    finally:
        if answer.call is not None:
            await answer.call.close()
    return bhttp.Response(answer.status, answer.headers, body)


def pad_sse(piece: bytes, bucket: int) -> bytes:
    """`piece` (whole SSE lines) plus one SSE comment line (`:...`), which every SSE reader
    ignores, making its length the next multiple of `bucket`; a piece that ends mid-line is
    left alone (a comment there would join that line)."""
    if not piece.endswith(b"\n"):
        return piece
    target = -(-(len(piece) + 2) // bucket) * bucket
    return piece + b":" + b" " * (target - len(piece) - 2) + b"\n"


async def _stream_sealed(
    answer: _Answer, sealer: ChunkedResponseSealer, max_chunk: int, pad: int | None = None
) -> AsyncIterator[bytes]:
    """The chunked OHTTP answer: nonce + head, one sealed chunk per body piece, final chunk.

    With `pad`, an event-stream's pieces are padded to multiples of `pad` bytes (`pad_sse`).

    If the inner app breaks off, the stream ends without its final chunk, which the client
    reports as a truncated answer rather than taking a partial one for complete.
    """
    try:
        yield sealer.start() + sealer.seal_chunk(
            bhttp.encode_response_head(answer.status, answer.headers)
        )
        sse = any(
            k.lower() == b"content-type" and v.lower().startswith(b"text/event-stream")
            for k, v in answer.headers
        )
        async for piece in _body_pieces(answer):
            if pad is not None and sse:
                piece = pad_sse(piece, pad)
            for i in range(0, len(piece), max_chunk):
                yield sealer.seal_chunk(bhttp.encode_content_chunk(piece[i : i + max_chunk]))
        yield sealer.seal_final(bhttp.encode_response_tail())
    except _InnerStopped:
        log.warning("inner app broke off a streamed answer")
    finally:
        if answer.call is not None:
            await answer.call.close()


def create_gateway_app(
    inner_app: ASGIApp, keys: NodeKeys, config: GatewayConfig | None = None
) -> FastAPI:
    """A stand-alone app exposing only the gateway and key list over `inner_app`.

    The inner app's lifespan is not run here; prefer `app.include_router(gateway_router(app,
    keys))` for an inner app that needs startup state.
    """
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.include_router(gateway_router(inner_app, keys, config))
    return app
