"""The relay's HTTP surface.

* `POST /relay/{node_id}`: an encapsulated request (`message/ohttp-req` or
  `message/ohttp-chunked-req`) is forwarded to that node's gateway; the answer is streamed back
  piece by piece as it arrives, never buffered whole.
* `GET /relay/{node_id}/ohttp-keys`: the node's key list, fetched for the client so the node
  does not see who asks.
* `GET /relay/{node_id}/descriptor`: the node's signed descriptor, fetched the same way. The
  relay does not vouch for it: the client verifies its signature and evidence itself.
* `GET /relay/{node_id}/ticket-params`: the node's payment offer (`veil.chain.payment`), fetched
  the same way; the payer checks it against the chain.

Privacy rules: only the content type goes upstream (no client header, no forwarding header, no
client address); only content type and `incremental` come back; no body is logged and no client
address is logged (the rate limiter keeps addresses in memory only). Not an open proxy: nodes
come from a `NodeDirectory`. Every refusal is `application/problem+json` with a
`urn:veil:relay:*` type (and an OpenAI-style `error` member).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from fastapi import FastAPI
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from veil.relay.directory import NodeDirectory, valid_node_id
from veil.wire.errors import MessageTooLarge
from veil.wire.http import MEDIA_DESCRIPTOR, MEDIA_TICKET_PARAMS, TICKET_PARAMS_PATH, read_capped
from veil.wire.ohttp import MEDIA_CHUNKED_REQUEST, MEDIA_KEYS, MEDIA_REQUEST
from veil.wire.problem import MEDIA_PROBLEM, RELAY_PROBLEM_PREFIX, problem_body

__all__ = ["RELAY_PROBLEM_PREFIX", "RateLimiter", "RelayConfig", "create_relay_app"]

log = logging.getLogger(__name__)

_PASSED_BACK = ("content-type", "incremental", "retry-after")


@dataclass(frozen=True)
class RelayConfig:
    """Limits of the relay."""

    max_body_bytes: int = 1024 * 1024  # encapsulated request body
    rate_per_s: float = 5.0  # sustained requests per second per client address
    burst: int = 20  # requests a client may make at once
    max_clients: int = 100_000  # rate-limiter entries kept (least recently seen dropped)
    connect_timeout_s: float = 5.0  # to the node gateway
    read_timeout_s: float = 120.0  # longest wait for the next piece of the answer
    max_keys_bytes: int = 64 * 1024  # key list size accepted from a node
    max_descriptor_bytes: int = 512 * 1024  # descriptor size accepted from a node (TDX quotes)
    max_ticket_params_bytes: int = 16 * 1024  # ticket params size accepted from a node


class RateLimiter:
    """Token bucket per client address, in memory only."""

    def __init__(self, rate: float, burst: int, max_clients: int, clock=time.monotonic) -> None:
        self._rate, self._burst, self._max, self._clock = rate, burst, max_clients, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str) -> float:
        """0 if the request may go, else seconds until it may."""
        now = self._clock()
        tokens, last = self._buckets.pop(client, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - last) * self._rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self._rate
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait


def _problem(status: int, code: str, title: str, headers: dict[str, str] | None = None) -> Response:
    return Response(
        problem_body(RELAY_PROBLEM_PREFIX + code, title, status),
        status_code=status,
        media_type=MEDIA_PROBLEM,
        headers={"cache-control": "no-store", **(headers or {})},
    )


def create_relay_app(
    directory: NodeDirectory,
    config: RelayConfig | None = None,
    upstream: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """The relay app; `upstream` replaces the transport to the nodes (tests)."""
    cfg = config or RelayConfig()
    limiter = RateLimiter(cfg.rate_per_s, cfg.burst, cfg.max_clients)
    timeout = httpx.Timeout(cfg.read_timeout_s, connect=cfg.connect_timeout_s)
    holder: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(
            transport=upstream or httpx.AsyncHTTPTransport(),
            timeout=timeout,
            follow_redirects=False,
        ) as client:
            holder["client"] = client
            yield
        holder.clear()

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan)

    def _client() -> httpx.AsyncClient:
        # Without lifespan (bare ASGI use) make one lazily.
        if "client" not in holder:
            holder["client"] = httpx.AsyncClient(
                transport=upstream or httpx.AsyncHTTPTransport(),
                timeout=timeout,
                follow_redirects=False,
            )
        return holder["client"]

    def _gate(request: Request, node_id: str) -> Response | str:
        """Rate limit and node lookup; the node URL, or a refusal."""
        address = request.client.host if request.client else "unknown"
        wait = limiter.allow(address)
        if wait > 0:
            return _problem(
                429, "rate-limited", "too many requests", {"retry-after": str(int(wait) + 1)}
            )
        node = directory.get(node_id) if valid_node_id(node_id) else None
        if node is None:
            return _problem(404, "unknown-node", "no such node behind this relay")
        return node.url

    @app.post("/relay/{node_id}")
    async def relay(node_id: str, request: Request) -> Response:
        gate = _gate(request, node_id)
        if isinstance(gate, Response):
            return gate
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in (MEDIA_REQUEST, MEDIA_CHUNKED_REQUEST):
            return _problem(415, "media-type", "expected an OHTTP request")
        try:
            body = await read_capped(request, cfg.max_body_bytes)
        except MessageTooLarge:
            return _problem(413, "too-large", "request body over the relay's limit")
        except ClientDisconnect:
            return Response(status_code=400)
        node = directory.get(node_id)
        assert node is not None
        headers = {"content-type": media}
        if media == MEDIA_CHUNKED_REQUEST:
            headers["incremental"] = "?1"
        # Built bare, so the HTTP client adds none of its default headers.
        outgoing = httpx.Request("POST", node.gateway_url, content=body, headers=headers)
        try:
            answer = await _client().send(outgoing, stream=True)
        except httpx.TimeoutException:
            log.info("relay: node %s timed out", node_id)
            return _problem(504, "upstream-timeout", "the node did not answer in time")
        except httpx.HTTPError:
            log.info("relay: node %s unreachable", node_id)
            return _problem(502, "upstream-unreachable", "the node could not be reached")
        log.info("relay: node %s answered %d", node_id, answer.status_code)
        back = {k: answer.headers[k] for k in _PASSED_BACK if k in answer.headers}
        return StreamingResponse(
            _pass_through(answer, node_id),
            status_code=answer.status_code,
            headers={**back, "cache-control": "no-store"},
            background=BackgroundTask(answer.aclose),
        )

    async def fetch_small(url: str, media: str, limit: int, what: str) -> Response:
        """GET a small public document from a node (key list, descriptor), capped while read."""
        try:
            answer = await _client().send(
                httpx.Request("GET", url, headers={"accept": media}), stream=True
            )
        except httpx.TimeoutException:
            return _problem(504, "upstream-timeout", "the node did not answer in time")
        except httpx.HTTPError:
            return _problem(502, "upstream-unreachable", "the node could not be reached")
        try:
            got = answer.headers.get("content-type", "").split(";")[0].strip().lower()
            if answer.status_code != 200 or got != media:
                return _problem(502, "bad-upstream", f"the node gave no {what}")
            body = bytearray()
            async for piece in answer.aiter_bytes():
                body += piece
                if len(body) > limit:
                    return _problem(502, "bad-upstream", f"the node's {what} is too large")
        except httpx.HTTPError:
            return _problem(502, "upstream-unreachable", f"the node's {what} broke off")
        finally:
            await answer.aclose()
        return Response(bytes(body), media_type=media, headers={"cache-control": "no-store"})

    @app.get("/relay/{node_id}/ohttp-keys")
    async def keys(node_id: str, request: Request) -> Response:
        gate = _gate(request, node_id)
        if isinstance(gate, Response):
            return gate
        node = directory.get(node_id)
        assert node is not None
        return await fetch_small(node.keys_url, MEDIA_KEYS, cfg.max_keys_bytes, "key list")

    @app.get("/relay/{node_id}/descriptor")
    async def descriptor(node_id: str, request: Request) -> Response:
        gate = _gate(request, node_id)
        if isinstance(gate, Response):
            return gate
        node = directory.get(node_id)
        assert node is not None
        return await fetch_small(
            node.descriptor_url, MEDIA_DESCRIPTOR, cfg.max_descriptor_bytes, "descriptor"
        )

    @app.get("/relay/{node_id}/ticket-params")
    async def ticket_params(node_id: str, request: Request) -> Response:
        gate = _gate(request, node_id)
        if isinstance(gate, Response):
            return gate
        return await fetch_small(
            gate + TICKET_PARAMS_PATH,
            MEDIA_TICKET_PARAMS,
            cfg.max_ticket_params_bytes,
            "ticket params",
        )

    return app


async def _pass_through(answer: httpx.Response, node_id: str) -> AsyncIterator[bytes]:
    """The node's answer as it arrives; a broken upstream just ends the stream (the client's
    chunked-OHTTP check reports the cut)."""
    try:
        async for piece in answer.aiter_raw():
            yield piece
    except httpx.HTTPError:
        log.info("relay: answer from node %s broke off", node_id)
    finally:
        await answer.aclose()
