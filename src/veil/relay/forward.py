"""What the relay lets through to a node and back, so that it carries OHTTP and nothing else.

Out, a `POST` only with a body that opens like an OHTTP request of a suite the network uses
(`veil.wire.ohttp.is_supported_request`; the app refuses anything else with a 400 before any
node is contacted), and `GET`s for three small public documents. Both are built bare: no
header of the caller's goes upstream.

Back, only:

* 200 with the OHTTP response media type matching the request (`message/ohttp-chunked-res`,
  streamed as it arrives; `message/ohttp-res`, read whole under a size cap first);
* a node gateway's own refusal (`application/problem+json`, a 4xx, whose type is one of the
  wire errors a client acts on: the RFC 9458 `ohttp-key` problem makes it refetch keys),
  re-encoded by the relay from the type alone, so no byte of the upstream body is reflected;
* for a `GET`, 200 with exactly the expected media type, under that document's size cap, and
  for the two documents whose media type says little (a key list, a ticket offer is plain
  `application/json`) a body that parses as one.

Everything else is one answer, `upstream_failed`: unreachable, a refused address
(`veil.relay.egress`), a refused connection, a timeout, a redirect, another status or media
type, a content encoding, too large, broken off before the answer began. Same status (502),
same body, so a caller cannot tell a closed port from an open one, or some HTTP service from
a node. Clients treat a relay 502 as a node failure and fail over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import httpx
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from veil.errors import VeilError
from veil.wire.errors import WireError, error_for_problem_type
from veil.wire.ohttp import (
    MEDIA_CHUNKED_REQUEST,
    MEDIA_CHUNKED_RESPONSE,
    MEDIA_RESPONSE,
    decode_key_configs,
)
from veil.wire.problem import MEDIA_PROBLEM, RELAY_PROBLEM_PREFIX, parse_problem, problem_body

__all__ = [
    "MAX_PROBLEM_BYTES",
    "UPSTREAM_FAILED",
    "fetch_small",
    "forward",
    "is_key_list",
    "is_ticket_params",
    "relay_problem",
    "upstream_failed",
]

log = logging.getLogger(__name__)

UPSTREAM_FAILED = "upstream-failed"  # the one problem code of every upstream failure
MAX_PROBLEM_BYTES = 16 * 1024  # a gateway's refusal is a few hundred bytes
_NO_STORE = {"cache-control": "no-store"}


def relay_problem(
    status: int, code: str, title: str, headers: dict[str, str] | None = None
) -> Response:
    """A refusal of the relay's own (`urn:veil:relay:<code>`)."""
    return Response(
        problem_body(RELAY_PROBLEM_PREFIX + code, title, status),
        status_code=status,
        media_type=MEDIA_PROBLEM,
        headers={**_NO_STORE, **(headers or {})},
    )


def upstream_failed(node_id: str, why: str) -> Response:
    """The relay's answer to every upstream failure; `why` goes to the relay's log only."""
    log.info("relay: node %s gave no usable answer (%s)", node_id, why)
    return relay_problem(
        502, UPSTREAM_FAILED, "the node could not be reached or gave no usable answer"
    )


def _media(answer: httpx.Response) -> str:
    return answer.headers.get("content-type", "").split(";")[0].strip().lower()


def _plain(answer: httpx.Response) -> bool:
    """No content encoding: the relay asks for none, and passes bytes on as they came."""
    return answer.headers.get("content-encoding", "identity").strip().lower() == "identity"


async def _read(answer: httpx.Response, limit: int) -> bytes | None:
    """The whole body, or None once it passes `limit` bytes (checked `_plain` first, so
    these are the bytes as sent)."""
    body = bytearray()
    async for piece in answer.aiter_bytes():
        body += piece
        if len(body) > limit:
            return None
    return bytes(body)


async def _gateway_refusal(answer: httpx.Response, node_id: str) -> Response:
    """A node gateway's wire-error problem, rebuilt from its type; anything else fails."""
    body = await _read(answer, MAX_PROBLEM_BYTES)
    problem_type = parse_problem(body or b"")[0]
    error = error_for_problem_type(problem_type)  # one of a fixed few types, or None
    if error is None:
        return upstream_failed(node_id, f"status {answer.status_code}, not a gateway refusal")
    title = f"the node's gateway refused the request ({error.code})"
    return Response(
        problem_body(problem_type, title, error.http_status),
        status_code=error.http_status,
        media_type=MEDIA_PROBLEM,
        headers=_NO_STORE,
    )


async def forward(
    client: httpx.AsyncClient, url: str, body: bytes, media: str, node_id: str, limit: int
) -> Response:
    """POST an (already checked) encapsulated request to a node gateway; the vetted answer.

    `limit` caps a whole (`message/ohttp-res`) answer; a chunked one streams uncapped.
    """
    chunked = media == MEDIA_CHUNKED_REQUEST
    headers = {"content-type": media, **({"incremental": "?1"} if chunked else {})}
    # Built bare, so the HTTP client adds none of its default headers.
    try:
        answer = await client.send(
            httpx.Request("POST", url, content=body, headers=headers), stream=True
        )
    except httpx.HTTPError as err:
        return upstream_failed(node_id, type(err).__name__)
    streaming = False
    try:
        media_back = _media(answer)
        if not _plain(answer):
            return upstream_failed(node_id, "content encoding")
        if answer.status_code == 200 and chunked and media_back == MEDIA_CHUNKED_RESPONSE:
            streaming = True
            log.info("relay: node %s answered 200 (streamed)", node_id)
            return StreamingResponse(
                _pass_through(answer, node_id),
                media_type=MEDIA_CHUNKED_RESPONSE,
                headers={"incremental": "?1", **_NO_STORE},
                background=BackgroundTask(answer.aclose),
            )
        if answer.status_code == 200 and not chunked and media_back == MEDIA_RESPONSE:
            whole = await _read(answer, limit)
            if whole is None:
                return upstream_failed(node_id, f"answer over {limit} bytes")
            log.info("relay: node %s answered 200", node_id)
            return Response(whole, media_type=MEDIA_RESPONSE, headers=_NO_STORE)
        if 400 <= answer.status_code < 500 and media_back == MEDIA_PROBLEM:
            return await _gateway_refusal(answer, node_id)
        return upstream_failed(node_id, f"status {answer.status_code}, media {media_back!r}")
    except httpx.HTTPError as err:
        return upstream_failed(node_id, type(err).__name__)
    finally:
        if not streaming:
            await answer.aclose()


def is_key_list(body: bytes) -> bool:
    """An `application/ohttp-keys` body with a usable key config."""
    try:
        decode_key_configs(body)
    except WireError:
        return False
    return True


def is_ticket_params(body: bytes) -> bool:
    """A node's ticket offer, as payers parse it."""
    from veil.chain.payment import TicketParams  # the Ethereum libraries load on first use

    try:
        TicketParams.parse(body)
    except (VeilError, ValueError):
        return False
    return True


async def fetch_small(
    client: httpx.AsyncClient,
    url: str,
    media: str,
    limit: int,
    node_id: str,
    accept: Callable[[bytes], bool] | None = None,
    deadline_s: float | None = None,
) -> Response:
    """GET a small public document from a node (key list, descriptor, ticket offer): 200 with
    exactly `media`, at most `limit` bytes, taken by `accept`, or the one upstream failure.

    `deadline_s` bounds the whole fetch: a node that sends a byte a second never trips a read
    timeout, and the relay goes on waiting after its caller has given up (a handler is not
    cancelled when its client leaves), so without it each check of such a node would hold a
    connection and its buffers for hours."""
    try:
        async with asyncio.timeout(deadline_s):
            return await _fetch_small(client, url, media, limit, node_id, accept)
    except TimeoutError:
        return upstream_failed(node_id, f"no whole answer in {deadline_s} s")


async def _fetch_small(
    client: httpx.AsyncClient,
    url: str,
    media: str,
    limit: int,
    node_id: str,
    accept: Callable[[bytes], bool] | None,
) -> Response:
    try:
        answer = await client.send(
            httpx.Request("GET", url, headers={"accept": media}), stream=True
        )
    except httpx.HTTPError as err:
        return upstream_failed(node_id, type(err).__name__)
    try:
        if answer.status_code != 200 or _media(answer) != media or not _plain(answer):
            return upstream_failed(node_id, f"status {answer.status_code}, not {media}")
        body = await _read(answer, limit)
        if body is None:
            return upstream_failed(node_id, f"{media} over {limit} bytes")
        if accept is not None and not accept(body):
            return upstream_failed(node_id, f"not a valid {media} document")
    except httpx.HTTPError as err:
        return upstream_failed(node_id, type(err).__name__)
    finally:
        await answer.aclose()
    return Response(body, media_type=media, headers=_NO_STORE)


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
