"""The local OpenAI-compatible gateway: `veil gateway`, for the unchanged `openai` SDK.

    client = openai.OpenAI(base_url="http://127.0.0.1:8787/v1", api_key="unused")

For each `POST /v1/chat/completions` (streamed or not) the gateway

1. reads the registry and release log from the chain (`veil.client.discovery`, cached a few
   seconds) and keeps the nodes that pass the policy of the request's privacy mode: active
   with enough stake, descriptor verified through the relay, the descriptor's address the
   registered operator's, the served weights hash the registered one and an approved release;
2. picks one (fewest requests in flight, then lowest time to first byte);
3. attaches a payment ticket from the user's wallet inside the sealed request
   (`veil.client.payer`), and requires the node's receipt to name it;
4. sends the request sealed with OHTTP through the relay and streams the answer back as it
   arrives; the receipt is verified before `[DONE]` (a refused one ends the stream with an
   error event instead), and a whole answer whose receipt fails is never returned;
5. fails over to another node when the chosen one fails before the first byte (connection,
   relay 502/504, node 5xx), marking it down for a while; a failure mid-stream ends the stream
   with an error event (`node_failed_mid_stream`) and no `[DONE]`, never a silent cut.

Privacy mode: a model suffix (`smollm2-135m-instruct:tee`) or the `x-veil-mode` header;
default `anonymous`; both given and different is a 400. Nothing is weakened silently: when no
node satisfies the mode's policy the answer is a 403 `no_node_satisfies_policy` listing every
node's refusal, and nothing but public descriptor fetches has gone through the relay.

`mpc` (`smollm2-135m-instruct:mpc`): the gateway itself is the MPC client (`veil.mpc.api`). It
picks three nodes verified under the `mpc` policy whose signed descriptors state a party for
the model with the same protocol (`aby3`) and layer weights, of three distinct operators
(`veil.client.mpc.choose_parties`); tokenizes, embeds and samples here, and sends each node
only its own share, sealed to that node's key, through the relay. The model's public parts
(tokenizer, embeddings, LM head) load once, on the first `:mpc` request, in a thread; every
blocking MPC call runs on a thread of its own, off the event loop. Answers have the same
OpenAI shapes as the other modes (`veil.wire.chat`), streamed or whole, with `x-veil-mode: mpc`,
`x-veil-nodes` (the three operators, rank order) and `x-veil-mpc-protocol`, and no receipt (no
node sees the answer, so none can sign it). Fewer than three such nodes is a 503
`mpc_unavailable` and nothing is sent; parties already running a session of this gateway (one
session at a time per party) or another client's give a 503 `mpc_parties_busy` (with
`retry-after`); a party that fails before the first token is a 502 `mpc_party_failed`, after
it an error event (`node_failed_mid_stream`) and no `[DONE]`. Never another mode instead.
MPC requests are not paid: the parties' route takes no ticket yet (docs/mpc.md).

Response headers: `x-veil-node` (operator address), `x-veil-mode`, `x-veil-attestation`
(e.g. `dev; no hardware isolation`), `x-veil-verification` (the checks passed),
`x-veil-receipt-id` (0x hex of the request digest the receipt signs), `x-veil-ticket-id` (when a
ticket was sent) and, for whole answers, `x-veil-receipt: verified`. The body passes unchanged
(with its `veil_receipt`). The caller's own headers are never forwarded.

`GET /v1/models` lists the models of nodes eligible now, each also with its mode suffixes
(`:mpc` where three party nodes would serve it); `GET /veil/status` shows the nodes, their
verification per mode, the MPC party each states, health, and the wallet.

No log line carries prompt or answer text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from veil.attest.policy import PrivacyMode
from veil.chain.payment import TICKET_HEADER, TICKET_PARAMS_HEADER
from veil.client.discovery import (
    POLICY,
    Candidate,
    ChainReader,
    Discovery,
    DiscoveryConfig,
    serves,
    verification_summary,
)
from veil.client.errors import (
    ClientError,
    DescriptorUnavailable,
    GatewayRefused,
    KeyConfigError,
    NodeRejected,
    NoPartyQuorum,
    PartiesBusy,
    PriceAboveLimit,
    ReceiptRefused,
    RelayRefused,
    ResponseRefused,
)
from veil.client.mpc import PartyChoice, choose_parties, parties_of, party_of
from veil.client.payer import Payer, PayerConfig, Payment, Wallet
from veil.client.receipts import ReceiptStore
from veil.client.session import INVALID_BASE_URL, TICKET_ID_EXTENSION
from veil.client.transport import REQUEST_DIGEST_EXTENSION
from veil.errors import VeilError
from veil.wire.chat import (
    SSE_DONE,
    ChatCompletionRequest,
    ChatRequestInvalid,
    Completion,
    parse_chat_request,
    sse,
    usage,
)

__all__ = [
    "GatewayConfig",
    "create_gateway_app",
    "split_mode",
]

log = logging.getLogger(__name__)

MODE_HEADER = "x-veil-mode"
_MEDIA_SSE = "text/event-stream"
_LISTED_MODES = (PrivacyMode.ANONYMOUS, PrivacyMode.TEE)
# 402 codes after which the request is sent again once, with fresh params, to the same node.
_RETRY_PAYMENT = frozenset({"ticket_params_stale"})


@dataclass(frozen=True)
class GatewayConfig:
    max_body_bytes: int = 1 << 20  # request bodies above this get 413
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    payer: PayerConfig = field(default_factory=PayerConfig)
    mpc_protocol: str = "aby3"  # MPC sessions: three parties, honest majority, no dealer
    mpc_default_max_tokens: int = 32  # an :mpc request without max_tokens (~10 s per token)
    mpc_max_tokens: int = 256  # the largest max_tokens an :mpc request may ask for
    mpc_timeout_s: float = 600.0  # one party request at most (a real-model prefill: ~75 s)
    mpc_retry_after_s: int = 30  # the retry-after of a 503 mpc_parties_busy


class _Error(Exception):
    """An OpenAI-style error answer."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.type, self.param, self.headers = type_, param, headers or {}

    def body(self) -> dict[str, Any]:
        return _error_body(self.message, self.code, self.type, self.param)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _error_body(
    message: str, code: str, type_: str = "invalid_request_error", param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _sse_error(message: str, code: str) -> bytes:
    return sse(_error_body(message, code, "server_error"))


def split_mode(model: str, header: str | None) -> tuple[str, PrivacyMode]:
    """(bare model id, mode) from a model id with an optional `:mode` suffix and the
    `x-veil-mode` header; raises a 400 for an unknown header value or a conflict."""
    bare, suffix = model, None
    head, sep, tail = model.rpartition(":")
    if sep and head and tail in {m.value for m in PrivacyMode}:
        bare, suffix = head, PrivacyMode(tail)
    stated = None
    if header is not None and header.strip():
        try:
            stated = PrivacyMode(header.strip().lower())
        except ValueError:
            raise _Error(
                400,
                f"unknown privacy mode {header.strip()!r} in {MODE_HEADER}; use "
                + ", ".join(m.value for m in PrivacyMode),
                "invalid_mode",
                param=MODE_HEADER,
            ) from None
    if suffix is not None and stated is not None and suffix is not stated:
        raise _Error(
            400,
            f"the model suffix asks for {suffix} but {MODE_HEADER} says {stated}; "
            "the gateway will not choose between them",
            "mode_conflict",
            param="model",
        )
    return bare, suffix or stated or PrivacyMode.ANONYMOUS


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    too_large = _Error(413, f"the request body exceeds {limit} bytes", "request_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _parse_chat(raw: bytes) -> tuple[dict[str, Any], str, bool]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _Error(400, "the request body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise _Error(400, "the request body must be a JSON object", "invalid_request")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _Error(400, "you must provide a model parameter", "missing_model", param="model")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _Error(400, "stream must be a boolean", "invalid_request", param="stream")
    return body, model.strip(), bool(stream)


class _Failover(Exception):
    """The node failed before the first byte: try another."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class _Gateway:
    """The state behind the app: discovery, payer, one HTTP client per verified session."""

    def __init__(
        self,
        chain: ChainReader,
        relay_url: str,
        *,
        wallet: Wallet | None,
        store: ReceiptStore | None,
        outer: httpx.AsyncBaseTransport | None,
        descriptor_outer: httpx.BaseTransport | None,
        config: GatewayConfig,
        mpc_source: Callable[[str], Any] | None = None,
    ) -> None:
        self.chain = chain
        self.relay_url = relay_url
        self.config = config
        self.outer = outer
        self.discovery = Discovery(
            chain,
            relay_url,
            store=store,
            descriptor_outer=descriptor_outer,
            config=config.discovery,
        )
        self.wallet = wallet
        self.payer: Payer | None = None
        if wallet is not None:
            self.payer = Payer(
                wallet,
                relay_url,
                chain.ticket_domain(),
                chain_now=self._chain_now,
                outer=outer,
                config=config.payer,
            )
        self._clients: dict[tuple[str, PrivacyMode], tuple[Any, httpx.AsyncClient]] = {}
        # mpc: model sources (public parts) by model id, loaded once; operators in a session
        self._mpc_loader = mpc_source or _default_mpc_source
        self._mpc_sources: dict[str, Any] = {}
        self._mpc_loading: dict[str, asyncio.Lock] = {}
        self._mpc_busy: set[str] = set()
        self._mpc_lock = threading.Lock()

    def _chain_now(self) -> int:
        view = self.discovery.last_view
        return view.chain_now() if view is not None else int(time.time())

    async def aclose(self) -> None:
        for _session, client in self._clients.values():
            await client.aclose()
        self._clients.clear()
        if self.payer is not None:
            await self.payer.aclose()
        self.discovery.close()

    def client_for(self, candidate: Candidate) -> httpx.AsyncClient:
        key = (candidate.operator, candidate.mode)
        held = self._clients.get(key)
        if held is not None and held[0] is candidate.session:
            return held[1]
        client = httpx.AsyncClient(
            transport=candidate.session.async_transport(outer=self.outer), timeout=None
        )
        self._clients[key] = (candidate.session, client)
        if held is not None:
            asyncio.get_running_loop().create_task(held[1].aclose())
        return client

    # ------------------------------------------------------------------ one request

    async def chat(self, request: Request) -> Response:
        raw = await _read_body(request, self.config.max_body_bytes)
        body, model, stream = _parse_chat(raw)
        bare, mode = split_mode(model, request.headers.get(MODE_HEADER))
        if mode is PrivacyMode.MPC:
            return await self._mpc_chat(request, raw, bare, stream)
        body["model"] = bare
        payload = json.dumps(body, separators=(",", ":")).encode()
        view = self.discovery.fresh_view() or await self._view()
        if not any(serves(n, bare) for n in view.nodes):
            raise _Error(
                404,
                f"the model {bare!r} is not served by any active node in the registry",
                "model_not_found",
                param="model",
            )
        # From the cache on the event loop when it can; a thread when a fetch is due.
        selection = self.discovery.eligible_cached(mode, bare)
        if selection is None:
            selection = await asyncio.to_thread(self.discovery.eligible, mode, bare)
        if not selection.candidates:
            if all(r.kind == POLICY for r in selection.refusals.values()):
                raise _Error(
                    403,
                    f"no node serving {bare!r} satisfies the {mode} policy; nothing was sent. "
                    f"Refusals: {selection.reasons()}",
                    "no_node_satisfies_policy",
                    type_="policy_error",
                )
            raise _Error(
                503,
                f"no node serving {bare!r} is available under the {mode} policy now. "
                f"Refusals: {selection.reasons()}",
                "no_node_available",
                type_="server_error",
            )
        tried: list[str] = []
        failures: list[str] = []
        while True:
            candidate = self.discovery.pick(selection.candidates, exclude=tried)
            if candidate is None:
                raise _Error(
                    503,
                    f"every eligible node failed for {bare!r}: {'; '.join(failures)}",
                    "no_node_available",
                    type_="server_error",
                )
            tried.append(candidate.operator)
            try:
                return await self._attempt(candidate, payload, stream, view.min_stake)
            except _Failover as failed:
                self.discovery.mark_down(candidate.operator, failed.why)
                failures.append(f"{candidate.operator}: {failed.why}")

    async def _view(self) -> Any:
        try:
            return await asyncio.to_thread(self.discovery.view)
        except VeilError as err:
            log.warning("chain unavailable: %s", type(err).__name__)
            raise _Error(
                503,
                f"the chain cannot be read ({type(err).__name__}); no node can be verified",
                "chain_unavailable",
                type_="server_error",
            ) from None

    async def _payment(self, operator: str) -> Payment | None:
        if self.payer is None:
            return None
        try:
            params = await self.payer.params_for(operator)
        except PriceAboveLimit as err:  # try a node that asks less
            raise _Failover(str(err)) from None
        return None if params is None else self.payer.pay(params)

    def _headers(
        self, candidate: Candidate, min_stake: int, response: httpx.Response | None
    ) -> dict[str, str]:
        session = candidate.session
        headers = {
            "x-veil-node": candidate.operator,
            "x-veil-mode": str(candidate.mode),
            "x-veil-attestation": f"{session.attestation_kind}; {session.report.isolation}",
            "x-veil-verification": verification_summary(candidate, min_stake),
            "cache-control": "no-store",
        }
        if response is not None:
            digest = response.extensions.get(REQUEST_DIGEST_EXTENSION)
            if isinstance(digest, bytes):
                headers["x-veil-receipt-id"] = "0x" + digest.hex()
        return headers

    async def _send(
        self, candidate: Candidate, payload: bytes, stream: bool, payment: Payment | None
    ) -> httpx.Response:
        headers = {
            "content-type": "application/json",
            "accept": _MEDIA_SSE if stream else "application/json",
        }
        extensions: dict[str, Any] = {}
        if payment is not None:
            headers[TICKET_HEADER] = payment.header_value()
            extensions[TICKET_ID_EXTENSION] = payment.ticket_id
        request = httpx.Request(
            "POST",
            INVALID_BASE_URL + "/chat/completions",
            content=payload,
            headers=headers,
            extensions=extensions,
        )
        client = self.client_for(candidate)
        op = candidate.operator
        try:
            return await client.send(request, stream=True)
        except ReceiptRefused as err:  # a whole answer whose receipt failed: never returned
            self.discovery.mark_down(op, f"receipt refused ({err.check})")
            raise _Error(
                502,
                f"the answer of node {op} failed receipt verification ({err.check}) and was "
                "not returned",
                "receipt_refused",
                type_="server_error",
            ) from None
        except RelayRefused as err:
            if err.status == 429:
                raise _Error(
                    429, "the relay is rate-limiting this client", "rate_limited"
                ) from None
            if err.status == 413:
                raise _Error(
                    413, "the sealed request is over the relay's limit", "request_too_large"
                ) from None
            why = f"relay answered {err.status} ({err.problem_type or 'no type'})"
            raise _Failover(why) from None
        except (KeyConfigError, NodeRejected, DescriptorUnavailable) as err:
            self.discovery.drop_session(op, candidate.mode)
            raise _Failover(f"node no longer verifies: {type(err).__name__}") from None
        except (GatewayRefused, ResponseRefused) as err:
            raise _Failover(f"{type(err).__name__}: {err}") from None
        except httpx.HTTPError as err:
            raise _Error(
                502,
                f"the relay at {self.relay_url} cannot be reached ({type(err).__name__})",
                "relay_unreachable",
                type_="server_error",
            ) from None
        except VeilError as err:  # e.g. the chain could not be read while verifying again
            raise _Failover(f"{type(err).__name__}: {err}") from None

    async def _attempt(
        self, candidate: Candidate, payload: bytes, stream: bool, min_stake: int
    ) -> Response:
        op = candidate.operator
        payment = await self._payment(op)
        self.discovery.started(op)
        handed_over = False
        try:
            for paid_retry in (False, True):
                started = time.monotonic()
                response = await self._send(candidate, payload, stream, payment)
                if self.payer is not None:
                    with contextlib.suppress(PriceAboveLimit):  # forgotten: the next request
                        # to this node fetches its offer again and fails over on it
                        self.payer.update_from_header(
                            op, response.headers.get(TICKET_PARAMS_HEADER)
                        )
                if response.status_code == 402 and not paid_retry:
                    retry = await self._payment_retry(op, response, payment)
                    if retry is not None:
                        payment = retry
                        continue
                break
            headers = self._headers(candidate, min_stake, response)
            if payment is not None:
                headers["x-veil-ticket-id"] = "0x" + payment.ticket_id.hex()
            status = response.status_code
            if status >= 500:
                await response.aclose()
                raise _Failover(f"node answered {status}")
            if status != 200:
                content = await response.aread()
                await response.aclose()
                log.info("node %s answered %d", op, status)
                return Response(
                    content,
                    status_code=status,
                    media_type=response.headers.get("content-type", "application/json"),
                    headers=headers,
                )
            if response.headers.get("content-type", "").split(";")[0].strip() != _MEDIA_SSE:
                content = await response.aread()  # verified whole by the receipt check
                await response.aclose()
                self.discovery.record_ttfb(op, time.monotonic() - started)
                headers["x-veil-receipt"] = "verified"
                log.info("node %s answered 200 (whole, receipt verified)", op)
                return Response(
                    content,
                    status_code=200,
                    media_type=response.headers.get("content-type", "application/json"),
                    headers=headers,
                )
            pieces = response.aiter_raw()
            try:
                first = await pieces.__anext__()
            except StopAsyncIteration:
                first = b""
            except ReceiptRefused as err:
                await response.aclose()
                self.discovery.mark_down(op, f"receipt refused ({err.check})")
                raise _Error(
                    502,
                    f"the answer of node {op} failed receipt verification ({err.check})",
                    "receipt_refused",
                    type_="server_error",
                ) from None
            except (ClientError, httpx.HTTPError) as err:
                await response.aclose()
                why = f"the answer broke before its first byte: {type(err).__name__}"
                raise _Failover(why) from None
            self.discovery.record_ttfb(op, time.monotonic() - started)
            handed_over = True
            return StreamingResponse(
                self._relay_stream(op, response, first, pieces),
                status_code=200,
                media_type=_MEDIA_SSE,
                headers={**headers, "x-accel-buffering": "no"},
            )
        finally:
            if not handed_over:
                self.discovery.finished(op)

    async def _payment_retry(
        self, op: str, response: httpx.Response, sent: Payment | None
    ) -> Payment | None:
        """A fresh payment when a 402 says the params were stale (or asks for payment the
        gateway could not make for lack of params) and the answer carried new ones."""
        if self.payer is None:
            return None
        content = await response.aread()
        try:
            code = json.loads(content)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        fresh = response.headers.get(TICKET_PARAMS_HEADER)
        retry = code in _RETRY_PAYMENT or (code == "payment_required" and sent is None)
        if not retry or not fresh:
            return None
        try:
            taken = self.payer.update_from_header(op, fresh)
        except PriceAboveLimit as err:
            await response.aclose()
            raise _Failover(str(err)) from None
        if not taken:
            return None
        params = self.payer.known(op)
        if params is None:
            return None
        await response.aclose()
        log.info("node %s asked for payment (%s); retrying once with its new params", op, code)
        return self.payer.pay(params)

    async def _relay_stream(
        self, op: str, response: httpx.Response, first: bytes, pieces: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        """The checked answer as it arrives; a failure becomes an error event, never a cut."""
        try:
            if first:
                yield first
            async for piece in pieces:
                yield piece
            log.info("node %s answered 200 (streamed, receipt verified)", op)
        except ReceiptRefused as err:
            self.discovery.mark_down(op, f"receipt refused ({err.check})")
            yield _sse_error(
                f"the answer of node {op} failed receipt verification ({err.check}); "
                "do not trust the text above",
                "receipt_refused",
            )
        except (VeilError, httpx.HTTPError) as err:
            self.discovery.mark_down(op, f"failed mid-stream ({type(err).__name__})")
            yield _sse_error(
                f"node {op} failed mid-stream ({type(err).__name__}); the answer is incomplete",
                "node_failed_mid_stream",
            )
        finally:
            with contextlib.suppress(Exception):
                await response.aclose()
            self.discovery.finished(op)

    # ------------------------------------------------------------------ mpc

    async def _mpc_chat(self, request: Request, raw: bytes, bare: str, stream: bool) -> Response:
        """An `:mpc` answer: this gateway is the MPC client; three verified party nodes
        compute the layers on shares. Nothing goes to any node before the parties are
        chosen and the request is checked; no other mode is ever used instead."""
        try:
            req = parse_chat_request(raw)
        except ChatRequestInvalid as err:
            raise _Error(400, str(err), "invalid_request", param=err.param) from None
        max_tokens = self._mpc_max_tokens(req)
        if self.discovery.fresh_view() is None:
            await self._view()
        selection = self.discovery.eligible_cached(PrivacyMode.MPC, None)
        if selection is None:
            selection = await asyncio.to_thread(self.discovery.eligible, PrivacyMode.MPC, None)
        ranked = self.discovery.rank(selection.candidates)
        with self._mpc_lock:  # choose and claim at once: two requests never share a party
            try:
                choice = choose_parties(
                    ranked, bare, protocol=self.config.mpc_protocol, busy=self._mpc_busy
                )
            except PartiesBusy as err:
                raise self._mpc_busy_error(str(err)) from None
            except NoPartyQuorum as err:
                raise _Error(
                    503,
                    f"{err}; nothing was sent. Refusals: {selection.reasons()}",
                    "mpc_unavailable",
                    type_="server_error",
                ) from None
            self._mpc_busy.update(op.lower() for op in choice.operators)
        for op in choice.operators:
            self.discovery.started(op)
        run = _MpcRun()
        chat: Any = None
        handed_over = False
        try:
            source = await self._mpc_source(bare, choice)
            chat = await run.call(self._mpc_start, source, choice, req, max_tokens)
            headers = self._mpc_headers(choice)
            completion = Completion(bare)
            log.info("mpc session on %s started", ",".join(choice.operators))
            if not stream:
                return await self._mpc_whole(request, run, chat, completion, headers)
            try:
                first = await run.next(chat)  # opens the session, runs the prefill
            except VeilError as err:
                raise self._mpc_error(err) from None
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            handed_over = True
            return StreamingResponse(
                self._mpc_stream(run, chat, completion, first, include_usage, choice),
                status_code=200,
                media_type=_MEDIA_SSE,
                headers={**headers, "x-accel-buffering": "no"},
            )
        finally:
            if not handed_over:
                run.end(chat, lambda: self._mpc_release(choice))

    def _mpc_max_tokens(self, req: ChatCompletionRequest) -> int:
        requested = req.completion_limit
        if requested is None:
            return self.config.mpc_default_max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        if not 1 <= requested <= self.config.mpc_max_tokens:
            raise _Error(
                400,
                f"{param} is {requested}; an mpc answer takes 1 to {self.config.mpc_max_tokens} "
                "tokens (each is seconds of secret-shared computation)",
                "invalid_request",
                param=param,
            )
        return requested

    def _mpc_busy_error(self, why: str) -> _Error:
        return _Error(
            503,
            f"{why}; nothing was sent, try again later",
            "mpc_parties_busy",
            type_="server_error",
            headers={"retry-after": str(self.config.mpc_retry_after_s)},
        )

    def _mpc_error(self, err: VeilError) -> _Error:
        """The answer for an MPC failure before the first token (nothing was shown yet)."""
        from veil.mpc.errors import (
            InvalidRequest,
            MpcConfigError,
            PartyBusy,
            PartyUnavailable,
        )

        if isinstance(err, InvalidRequest):
            return _Error(400, str(err), "invalid_request", param=err.param)
        if isinstance(err, PartyBusy):
            return self._mpc_busy_error(f"an MPC party is busy with another session ({err})")
        if isinstance(err, MpcConfigError | PartyUnavailable):
            return _Error(
                503,
                f"the chosen MPC parties cannot run this session: {err}",
                "mpc_unavailable",
                type_="server_error",
            )
        log.warning("mpc session failed before its first token: %s", type(err).__name__)
        return _Error(
            502,
            f"an MPC party failed before the first token ({type(err).__name__}: {err}); "
            "nothing was answered",
            "mpc_party_failed",
            type_="server_error",
        )

    async def _mpc_source(self, model_id: str, choice: PartyChoice) -> Any:
        """The model's public parts for the client side (loaded once, in a thread); they
        must be the layer weights the chosen parties state."""
        lock = self._mpc_loading.setdefault(model_id, asyncio.Lock())
        async with lock:
            source = self._mpc_sources.get(model_id)
            if source is None:
                try:
                    source = await asyncio.to_thread(self._mpc_loader, model_id)
                except VeilError as err:
                    raise _Error(
                        503,
                        f"this gateway cannot run {model_id!r} in the mpc mode: {err}",
                        "mpc_unavailable",
                        type_="server_error",
                    ) from None
                self._mpc_sources[model_id] = source
        if source.tokenizer is None:
            raise _Error(
                503,
                f"this gateway has no tokenizer for {model_id!r} ({source.name}); nothing was sent",
                "mpc_unavailable",
                type_="server_error",
            )
        if source.weights_sha256 != choice.weights_sha256:
            raise _Error(
                503,
                f"the MPC parties for {model_id!r} serve other layer weights "
                f"({choice.weights_sha256[:16]}...) than this gateway's model "
                f"({source.weights_sha256[:16]}...); nothing was sent",
                "mpc_unavailable",
                type_="server_error",
            )
        return source

    def _mpc_start(
        self, source: Any, choice: PartyChoice, req: ChatCompletionRequest, max_tokens: int
    ) -> Any:
        """The answer, checked and encoded (on the run's thread; nothing is sent yet)."""
        from veil.mpc.api import MpcChatBackend
        from veil.mpc.runtime import MpcConfig

        try:
            backend = MpcChatBackend(
                source,
                parties_of(
                    [c.session for c in choice.candidates], timeout_s=self.config.mpc_timeout_s
                ),
                MpcConfig(protocol=choice.protocol),
                timeout_s=self.config.mpc_timeout_s,
            )
            return backend.start(
                [(m.role, m.text()) for m in req.messages],
                max_tokens=max_tokens,
                temperature=1.0 if req.temperature is None else req.temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                stop=req.stop_sequences,
                seed=req.seed,
            )
        except VeilError as err:
            raise self._mpc_error(err) from None

    def _mpc_headers(self, choice: PartyChoice) -> dict[str, str]:
        kinds = sorted(
            {
                f"{c.session.attestation_kind}; {c.session.report.isolation}"
                for c in choice.candidates
            }
        )
        verification = (
            f"{len(choice.candidates)} party nodes of distinct operators, each: registry active "
            "with enough stake, descriptor verified under the mpc policy, operator and weights "
            f"hash match the registry; their descriptors agree on protocol {choice.protocol} "
            f"and layer weights {choice.weights_sha256[:16]}...; no receipt (no node sees the "
            "answer)"
        )
        return {
            "x-veil-mode": str(PrivacyMode.MPC),
            "x-veil-nodes": ",".join(choice.operators),
            "x-veil-mpc-protocol": choice.protocol,
            "x-veil-attestation": ", ".join(kinds).encode("ascii", "replace").decode("ascii"),
            "x-veil-verification": verification,
            "x-veil-receipt": "none",
            "cache-control": "no-store",
        }

    def _mpc_release(self, choice: PartyChoice) -> None:
        """The session is closed: its parties are free again (any thread)."""
        with self._mpc_lock:
            self._mpc_busy.difference_update(op.lower() for op in choice.operators)
        for op in choice.operators:
            self.discovery.finished(op)

    async def _mpc_whole(
        self,
        request: Request,
        run: _MpcRun,
        chat: Any,
        completion: Completion,
        headers: dict[str, str],
    ) -> Response:
        async def watch_disconnect() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            chat.cancel()  # stops after the token in progress

        watcher = asyncio.create_task(watch_disconnect())
        try:
            deltas = await run.call(list, chat)
        except VeilError as err:
            raise self._mpc_error(err) from None
        finally:
            watcher.cancel()
        if chat.finish_reason == "cancelled":
            return Response(status_code=499)
        log.info("mpc answer whole: %d completion tokens", chat.completion_tokens)
        body = completion.whole(
            "".join(d.text for d in deltas),
            chat.finish_reason,
            usage(chat.prompt_tokens, chat.completion_tokens),
        )
        return JSONResponse(body, headers=headers)

    async def _mpc_stream(
        self,
        run: _MpcRun,
        chat: Any,
        completion: Completion,
        first: Any,
        include_usage: bool,
        choice: PartyChoice,
    ) -> AsyncIterator[bytes]:
        """The answer as tokens arrive; a failure becomes an error event, never a cut."""
        try:
            yield completion.chunk({"role": "assistant", "content": ""})
            delta = first
            while delta is not None:
                yield completion.chunk({"content": delta.text})
                delta = await run.next(chat)
            counts = usage(chat.prompt_tokens, chat.completion_tokens)
            yield completion.chunk({}, chat.finish_reason, usage=counts)
            if include_usage:
                yield completion.usage_chunk(counts)
            yield SSE_DONE
            log.info("mpc answer streamed: %d completion tokens", chat.completion_tokens)
        except Exception as err:  # any failure mid-answer is an error event, never a cut
            log.warning("mpc session failed mid-stream: %s", type(err).__name__)
            yield _sse_error(
                f"the MPC parties {', '.join(choice.operators)} failed mid-stream "
                f"({type(err).__name__}); the answer is incomplete",
                "node_failed_mid_stream",
            )
        finally:
            run.end(chat, lambda: self._mpc_release(choice))

    # ------------------------------------------------------------------ listing

    async def models(self) -> dict[str, Any]:
        """Models of the nodes eligible now: the bare id (anonymous) and one id per mode."""
        await self._view()
        data: dict[str, dict[str, Any]] = {}
        for mode in _LISTED_MODES:
            selection = await asyncio.to_thread(self.discovery.eligible, mode, None)
            for candidate in selection.candidates:
                for entry in candidate.info.models:
                    ids = [f"{entry.model_id}:{mode}"]
                    if mode is PrivacyMode.ANONYMOUS:
                        ids.insert(0, entry.model_id)
                    for model_id in ids:
                        item = data.setdefault(
                            model_id,
                            {
                                "id": model_id,
                                "object": "model",
                                "created": 0,
                                "owned_by": "veil",
                                "weights_sha256": entry.weights_hash.hex(),
                                "veil_mode": str(mode),
                                "veil_nodes": [],
                            },
                        )
                        if candidate.operator not in item["veil_nodes"]:
                            item["veil_nodes"].append(candidate.operator)
        selection = await asyncio.to_thread(self.discovery.eligible, PrivacyMode.MPC, None)
        hosted = {p.model_id for c in selection.candidates if (p := party_of(c.session))}
        for model_id in sorted(hosted):
            try:
                choice = choose_parties(
                    selection.candidates, model_id, protocol=self.config.mpc_protocol
                )
            except NoPartyQuorum:  # fewer than three would serve it: not listed
                continue
            data[f"{model_id}:mpc"] = {
                "id": f"{model_id}:mpc",
                "object": "model",
                "created": 0,
                "owned_by": "veil",
                "weights_sha256": choice.weights_sha256,
                "veil_mode": str(PrivacyMode.MPC),
                "veil_nodes": [
                    c.operator
                    for c in selection.candidates
                    if (p := party_of(c.session)) is not None and p.model_id == model_id
                ],
            }
        return {"object": "list", "data": list(data.values())}

    async def status(self) -> dict[str, Any]:
        view = await self._view()
        nodes = await asyncio.to_thread(self.discovery.status, (*_LISTED_MODES, PrivacyMode.MPC))
        wallet: dict[str, Any] | None = None
        if self.wallet is not None:
            wallet = {"address": self.wallet.address}
            try:
                funds = await asyncio.to_thread(self.chain.sender_funds, self.wallet.address)
                wallet.update(deposit=str(funds.deposit), reserve=str(funds.reserve))
            except VeilError as err:
                wallet["error"] = type(err).__name__
        return {
            "relay": self.relay_url,
            "chain": {
                "min_stake": str(view.min_stake),
                "chain_time": view.chain_time,
                "view_age_s": round(time.monotonic() - view.read_at, 1),
            },
            "wallet": wallet,
            "nodes": nodes,
        }


class _MpcRun:
    """One MPC answer's blocking calls, in order, on a thread of its own (off the event loop).

    `end` cancels the answer and closes its session after the call in progress, then runs
    `then` (freeing the parties), without waiting: a client that went away costs no wait."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, "veil-mpc")

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    async def next(self, chat: Any) -> Any:
        """The next text delta, or None at the end (raises the run's `VeilError`)."""
        return await self.call(next, chat, None)

    def end(self, chat: Any, then: Callable[[], None]) -> None:
        def close() -> None:
            try:
                if chat is not None:
                    chat.close()
            except Exception as exc:  # a close that fails has nothing left to tell the client
                log.info("mpc session close: %s", type(exc).__name__)
            finally:
                then()

        if chat is not None:
            chat.cancel()
        self._pool.submit(close)
        self._pool.shutdown(wait=False)


def _default_mpc_source(model_id: str) -> Any:
    """The public parts of the model the parties serve layers of (veil.mpc.source)."""
    from veil.mpc.source import source_for_model

    return source_for_model(model_id)


async def _keep_view_fresh(discovery: Any, config: Any) -> None:
    """Read the chain view again before it goes stale, so no request waits for the read."""
    while True:
        await asyncio.sleep(config.view_ttl_s / 2)
        try:
            await asyncio.to_thread(discovery.view, force=True)
        except VeilError as err:  # requests report the outage; keep trying
            log.info("background chain read failed: %s", type(err).__name__)


def create_gateway_app(
    chain: ChainReader,
    relay_url: str,
    *,
    wallet: Wallet | None = None,
    receipts: Path | ReceiptStore | None = None,
    outer: httpx.AsyncBaseTransport | None = None,
    descriptor_outer: httpx.BaseTransport | None = None,
    config: GatewayConfig | None = None,
    mpc_source: Callable[[str], Any] | None = None,
) -> FastAPI:
    """The gateway app.

    `chain`: a `veil.chain.ChainClient` (read-only is enough) or anything with its read
    methods (`ChainReader`). `wallet`: pays nodes (None: no tickets are sent). `receipts`: a
    `ReceiptStore` or its path (opened when the app starts, in the server's thread).
    `outer` / `descriptor_outer`: the async / sync transports that reach the relay (tests).
    `mpc_source`: model id -> `veil.mpc.source.ModelSource` for `:mpc` requests (default:
    `source_for_model`, the packaged model; called once per model, in a thread).
    """
    cfg = config or GatewayConfig()
    holder: dict[str, _Gateway] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        store = ReceiptStore.open(receipts) if isinstance(receipts, Path) else receipts
        gateway = _Gateway(
            chain,
            relay_url,
            wallet=wallet,
            store=store,
            outer=outer,
            descriptor_outer=descriptor_outer,
            config=cfg,
            mpc_source=mpc_source,
        )
        holder["gateway"] = gateway
        keeper = asyncio.create_task(_keep_view_fresh(gateway.discovery, cfg.discovery))
        try:
            yield
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await gateway.aclose()
            if isinstance(receipts, Path) and store is not None:
                store.close()
            holder.clear()

    app = FastAPI(
        title="Veil gateway", openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan
    )

    def gateway() -> _Gateway:
        if "gateway" not in holder:
            raise _Error(503, "the gateway is starting", "starting", type_="server_error")
        return holder["gateway"]

    @app.exception_handler(_Error)
    async def _error(_: Request, exc: _Error) -> JSONResponse:
        log.info("request refused: %d %s", exc.status, exc.code)
        return exc.response()

    @app.exception_handler(404)
    async def _not_found(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(_error_body("no such route", "not_found"), status_code=404)

    @app.exception_handler(405)
    async def _not_allowed(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            _error_body("method not allowed", "method_not_allowed"), status_code=405
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s while serving a request", type(exc).__name__)
        return JSONResponse(
            _error_body("internal error", "internal_error", "server_error"), status_code=500
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await gateway().chat(request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return await gateway().models()

    @app.get("/veil/status")
    async def status() -> dict[str, Any]:
        return await gateway().status()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
