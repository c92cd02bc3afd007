"""The relay's HTTP surface.

* `POST /relay/{node_id}`: an encapsulated request (`message/ohttp-req` or
  `message/ohttp-chunked-req`) is forwarded to that node's gateway; a chunked answer is
  streamed back piece by piece as it arrives, a whole one is read first under a size cap.
* `GET /relay/{node_id}/ohttp-keys`: the node's key list, fetched for the client so the node
  does not see who asks.
* `GET /relay/{node_id}/descriptor`: the node's signed descriptor, fetched the same way. The
  relay does not vouch for it: the client verifies its signature and evidence itself.
* `GET /relay/{node_id}/ticket-params`: the node's payment offer (`veil.chain.payment`), fetched
  the same way; the payer checks it against the chain.

Privacy rules: only the content type goes upstream (no client header, no forwarding header, no
client address); only content type and `incremental` come back; no body is logged and no client
address is logged (the rate limiter keeps addresses in memory only). Every refusal is
`application/problem+json` with a `urn:veil:relay:*` type (and an OpenAI-style `error` member).

Not an open proxy, nor a request forger: nodes come from a `NodeDirectory` of canonical
endpoints (`veil.wire.endpoint`); connections go only to public addresses, resolved once and
pinned (`veil.relay.egress`; `allow_private_endpoints` for devnets); only OHTTP requests go out
and only OHTTP answers come back, every other upstream outcome being one and the same 502
(`veil.relay.forward`). docs/security.md has the threat.
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
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from veil.relay.directory import Node, NodeDirectory, valid_node_id
from veil.relay.egress import GuardedBackend, Resolver, guarded_transport, system_resolve
from veil.relay.forward import (
    fetch_small,
    forward,
    is_key_list,
    is_ticket_params,
    relay_problem,
)
from veil.wire.errors import MessageTooLarge
from veil.wire.http import MEDIA_DESCRIPTOR, MEDIA_TICKET_PARAMS, TICKET_PARAMS_PATH, read_capped
from veil.wire.ohttp import MEDIA_CHUNKED_REQUEST, MEDIA_KEYS, MEDIA_REQUEST, is_supported_request
from veil.wire.problem import RELAY_PROBLEM_PREFIX

__all__ = ["RELAY_PROBLEM_PREFIX", "RateLimiter", "RelayConfig", "create_relay_app"]

log = logging.getLogger(__name__)


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
    # A key list, descriptor or ticket offer whole, at most (a node may trickle its bytes):
    fetch_deadline_s: float = 15.0
    max_answer_bytes: int = 16 * 1024 * 1024  # a whole (not chunked) answer; the client's cap
    # Connect to loopback and private addresses too (never cloud metadata): devnets only.
    allow_private_endpoints: bool = False


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


def create_relay_app(
    directory: NodeDirectory,
    config: RelayConfig | None = None,
    upstream: httpx.AsyncBaseTransport | None = None,
    resolve: Resolver | None = None,
) -> FastAPI:
    """The relay app.

    Test seams: `resolve` replaces the DNS resolver behind the address guard; `upstream`
    replaces the whole transport to the nodes, guard included (for tests of what the relay
    forwards, not where it connects).
    """
    cfg = config or RelayConfig()
    limiter = RateLimiter(cfg.rate_per_s, cfg.burst, cfg.max_clients)
    timeout = httpx.Timeout(cfg.read_timeout_s, connect=cfg.connect_timeout_s)
    holder: dict[str, httpx.AsyncClient] = {}

    def _new_client() -> httpx.AsyncClient:
        backend = GuardedBackend(
            allow_private=cfg.allow_private_endpoints, resolve=resolve or system_resolve
        )
        return httpx.AsyncClient(
            transport=upstream or guarded_transport(backend),
            timeout=timeout,
            follow_redirects=False,
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with _new_client() as client:
            holder["client"] = client
            yield
        holder.clear()

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan)

    def _client() -> httpx.AsyncClient:
        # Without lifespan (bare ASGI use) make one lazily.
        if "client" not in holder:
            holder["client"] = _new_client()
        return holder["client"]

    def _gate(request: Request, node_id: str) -> Response | Node:
        """Rate limit and node lookup; the node, or a refusal."""
        address = request.client.host if request.client else "unknown"
        wait = limiter.allow(address)
        if wait > 0:
            return relay_problem(
                429, "rate-limited", "too many requests", {"retry-after": str(int(wait) + 1)}
            )
        node = directory.get(node_id) if valid_node_id(node_id) else None
        if node is None:
            return relay_problem(404, "unknown-node", "no such node behind this relay")
        return node

    @app.post("/relay/{node_id}")
    async def relay(node_id: str, request: Request) -> Response:
        node = _gate(request, node_id)
        if isinstance(node, Response):
            return node
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in (MEDIA_REQUEST, MEDIA_CHUNKED_REQUEST):
            return relay_problem(415, "media-type", "expected an OHTTP request")
        try:
            body = await read_capped(request, cfg.max_body_bytes)
        except MessageTooLarge:
            return relay_problem(413, "too-large", "request body over the relay's limit")
        except ClientDisconnect:
            return Response(status_code=400)
        if not is_supported_request(body):  # the relay carries OHTTP, not arbitrary bytes
            return relay_problem(
                400, "not-ohttp", "the body is not an OHTTP request of a suite this network uses"
            )
        return await forward(
            _client(), node.gateway_url, body, media, node_id, cfg.max_answer_bytes
        )

    @app.get("/relay/{node_id}/ohttp-keys")
    async def keys(node_id: str, request: Request) -> Response:
        node = _gate(request, node_id)
        if isinstance(node, Response):
            return node
        return await fetch_small(
            _client(),
            node.keys_url,
            MEDIA_KEYS,
            cfg.max_keys_bytes,
            node_id,
            is_key_list,
            cfg.fetch_deadline_s,
        )

    @app.get("/relay/{node_id}/descriptor")
    async def descriptor(node_id: str, request: Request) -> Response:
        node = _gate(request, node_id)
        if isinstance(node, Response):
            return node
        return await fetch_small(
            _client(),
            node.descriptor_url,
            MEDIA_DESCRIPTOR,
            cfg.max_descriptor_bytes,
            node_id,
            deadline_s=cfg.fetch_deadline_s,
        )

    @app.get("/relay/{node_id}/ticket-params")
    async def ticket_params(node_id: str, request: Request) -> Response:
        node = _gate(request, node_id)
        if isinstance(node, Response):
            return node
        return await fetch_small(
            _client(),
            node.url + TICKET_PARAMS_PATH,
            MEDIA_TICKET_PARAMS,
            cfg.max_ticket_params_bytes,
            node_id,
            is_ticket_params,
            cfg.fetch_deadline_s,
        )

    return app
