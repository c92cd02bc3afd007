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
node's refusal, and nothing but public descriptor fetches has gone through the relay. `mpc` is
refused (`mode_unavailable`): it is not carried by the gateway yet.

Response headers: `x-veil-node` (operator address), `x-veil-mode`, `x-veil-attestation`
(e.g. `dev; no hardware isolation`), `x-veil-verification` (the checks passed),
`x-veil-receipt-id` (0x hex of the request digest the receipt signs), `x-veil-ticket-id` (when a
ticket was sent) and, for whole answers, `x-veil-receipt: verified`. The body passes unchanged
(with its `veil_receipt`). The caller's own headers are never forwarded.

`GET /v1/models` lists the models of nodes eligible now, each also with its mode suffixes;
`GET /veil/status` shows the nodes, their verification per mode, health, and the wallet.

No log line carries prompt or answer text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

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
    PriceAboveLimit,
    ReceiptRefused,
    RelayRefused,
    ResponseRefused,
)
from veil.client.payer import Payer, PayerConfig, Payment, Wallet
from veil.client.policy import PrivacyMode
from veil.client.receipts import ReceiptStore
from veil.client.session import INVALID_BASE_URL, TICKET_ID_EXTENSION
from veil.client.transport import REQUEST_DIGEST_EXTENSION
from veil.errors import VeilError

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
    body = _error_body(message, code, "server_error")
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


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
            raise _Error(
                400,
                "the mpc mode is not available through the gateway yet (use `veil mpc`); "
                "nothing was sent",
                "mode_unavailable",
                param="model",
            )
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
        return {"object": "list", "data": list(data.values())}

    async def status(self) -> dict[str, Any]:
        view = await self._view()
        nodes = await asyncio.to_thread(self.discovery.status, _LISTED_MODES)
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
) -> FastAPI:
    """The gateway app.

    `chain`: a `veil.chain.ChainClient` (read-only is enough) or anything with its read
    methods (`ChainReader`). `wallet`: pays nodes (None: no tickets are sent). `receipts`: a
    `ReceiptStore` or its path (opened when the app starts, in the server's thread).
    `outer` / `descriptor_outer`: the async / sync transports that reach the relay (tests).
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
