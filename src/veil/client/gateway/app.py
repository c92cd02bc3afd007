"""The gateway's FastAPI app: the OpenAI routes, the request checks every mode shares, and the
listing of models and nodes. The answers themselves come from `direct` (`anonymous`, `tee`)
and `mpc`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from veil.attest.policy import PrivacyMode
from veil.client.credits import TokenWallet
from veil.client.discovery import (
    ChainReader,
    ChainView,
    Discovery,
    DiscoveryConfig,
    Selection,
)
from veil.client.errors import NoPartyQuorum
from veil.client.gateway.common import GatewayConfig, read_view, select
from veil.client.gateway.credits import CreditPurse
from veil.client.gateway.direct import DirectPath
from veil.client.gateway.guard import RequestGuard
from veil.client.gateway.mpc import MpcPath, SourceLoader
from veil.client.gateway.routing import Router
from veil.client.mpc import choose_parties, party_of
from veil.client.payer import Payer, Wallet
from veil.client.receipts import ReceiptStore
from veil.client.web import ChatHistory, add_web_routes
from veil.errors import VeilError
from veil.wire.boundedjson import MAX_JSON_DEPTH, check_depth
from veil.wire.chat import ChatRequestInvalid, parse_chat_request
from veil.wire.errors import MessageTooLarge
from veil.wire.http import (
    CHAT_PATH,
    MODE_HEADER,
    MODELS_PATH,
    OpenAIError,
    error_body,
    read_capped,
)

__all__ = ["create_gateway_app", "split_mode"]

log = logging.getLogger(__name__)

_LISTED_MODES = (PrivacyMode.ANONYMOUS, PrivacyMode.TEE)


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
            raise OpenAIError(
                400,
                f"unknown privacy mode {header.strip()!r} in {MODE_HEADER}; use "
                + ", ".join(m.value for m in PrivacyMode),
                code="invalid_mode",
                param=MODE_HEADER,
            ) from None
    if suffix is not None and stated is not None and suffix is not stated:
        raise OpenAIError(
            400,
            f"the model suffix asks for {suffix} but {MODE_HEADER} says {stated}; "
            "the gateway will not choose between them",
            code="mode_conflict",
            param="model",
        )
    return bare, suffix or stated or PrivacyMode.ANONYMOUS


async def _read_body(request: Request, limit: int) -> bytes:
    try:
        return await read_capped(request, limit)
    except MessageTooLarge:
        raise OpenAIError(
            413, f"the request body exceeds {limit} bytes", code="request_too_large"
        ) from None


def _precheck(raw: bytes) -> tuple[dict[str, Any], str, bool]:
    """(body, model, stream): the checks that name the gateway's own error codes (the mode
    is read from the model), before the full parse. The nesting is bounded before anything is
    decoded: the C decoder recurses once per level."""
    if not check_depth(raw, limit=MAX_JSON_DEPTH):
        raise OpenAIError(
            400,
            f"the request body nests deeper than {MAX_JSON_DEPTH} levels",
            code="invalid_request",
        )
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise OpenAIError(400, "the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "the request body must be a JSON object", code="invalid_request")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise OpenAIError(
            400, "you must provide a model parameter", code="missing_model", param="model"
        )
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise OpenAIError(400, "stream must be a boolean", code="invalid_request", param="stream")
    return body, model.strip(), bool(stream)


class _Gateway:
    """The state behind the app: discovery, the router, the payer and both answer paths."""

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
        mpc_source: SourceLoader | None = None,
        tokens: TokenWallet | None = None,
    ) -> None:
        self.chain = chain
        self.relay_url = relay_url
        self.config = config
        self.router = Router(
            down_s=config.discovery.down_s,
            down_max_s=config.discovery.down_max_s,
            ewma_alpha=config.discovery.ewma_alpha,
        )
        self.discovery = Discovery(
            chain,
            relay_url,
            store=store,
            descriptor_outer=descriptor_outer,
            config=config.discovery,
            down_for=self.router.down_for,
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
                timeout=config.discovery.fetch_timeout(),
            )
        self.purse: CreditPurse | None = None
        if self.payer is not None and config.credits is not None:
            self.purse = CreditPurse(tokens or TokenWallet(None), self.payer, chain, config.credits)
        self.direct = DirectPath(
            self.discovery,
            self.router,
            relay_url=relay_url,
            payer=self.payer,
            outer=outer,
            purse=self.purse,
        )
        self.mpc = MpcPath(self.discovery, self.router, config, mpc_source)

    def _chain_now(self) -> int:
        view = self.discovery.last_view
        return view.chain_now() if view is not None else int(time.time())

    async def aclose(self) -> None:
        if self.purse is not None:
            await self.purse.aclose()
        await self.direct.aclose()
        if self.payer is not None:
            await self.payer.aclose()
        self.discovery.close()

    async def chat(self, request: Request) -> Response:
        """Check the request (cheap checks, the mode, then the node's own parser), then
        answer it in its mode; nothing is fetched or paid for a request that fails a check."""
        raw = await _read_body(request, self.config.max_body_bytes)
        body, model, stream = _precheck(raw)
        bare, mode = split_mode(model, request.headers.get(MODE_HEADER))
        try:
            req = parse_chat_request(raw)
            sampling = req.to_sampling()
        except ChatRequestInvalid as err:
            raise OpenAIError(400, str(err), code="invalid_request", param=err.param) from None
        if mode is PrivacyMode.MPC:
            return await self.mpc.chat(request, req, sampling, bare, stream)
        body["model"] = bare
        payload = json.dumps(body, separators=(",", ":")).encode()
        return await self.direct.chat(payload, bare, mode, stream)

    async def _selections(self) -> tuple[ChainView, dict[PrivacyMode, Selection]]:
        """Every mode's nodes as far as known within `listing_deadline_s`: the modes share
        one deadline and one check per node, and a node not checked by then is listed as
        unavailable (its check goes on)."""
        view = await read_view(self.discovery)
        modes = (*_LISTED_MODES, PrivacyMode.MPC)
        wait_s = self.config.discovery.listing_deadline_s
        found = await asyncio.gather(
            *(select(self.discovery, mode, None, wait_s=wait_s, enough=None) for mode in modes)
        )
        return view, dict(zip(modes, found, strict=True))

    async def models(self) -> dict[str, Any]:
        """Models of the nodes eligible now: the bare id (anonymous) and one id per mode."""
        _view, selections = await self._selections()
        data: dict[str, dict[str, Any]] = {}
        for mode in _LISTED_MODES:
            for candidate in selections[mode].candidates:
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
        selection = selections[PrivacyMode.MPC]
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
        """The nodes (registry, verification per mode, MPC party, health) and the wallet."""
        view, selections = await self._selections()
        nodes = node_status(view, selections)
        for node in nodes:
            node.update(self.router.health(node["address"]))
        wallet: dict[str, Any] | None = None
        if self.wallet is not None:
            wallet = {"address": self.wallet.address}
            try:
                funds = await asyncio.to_thread(self.chain.sender_funds, self.wallet.address)
                wallet.update(deposit=str(funds.deposit), reserve=str(funds.reserve))
            except VeilError as err:
                wallet["error"] = type(err).__name__
            balance = {} if self.purse is None else self.purse.wallet.balance()
            if balance:  # usable tokens per node (anonymous credits), when there are any
                wallet["tokens"] = balance
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


def node_status(
    view: ChainView, selections: Mapping[PrivacyMode, Selection]
) -> list[dict[str, Any]]:
    """Every node of `view`: registry record, verification per mode (from the settled
    `selections`), or why not, and the MPC party it states (`/veil/status` adds health)."""
    out = []
    for info in view.nodes:
        verified: dict[str, Any] = {}
        for mode, selection in selections.items():
            found = next((c for c in selection.candidates if c.operator == info.operator), None)
            if found is not None:
                verified[str(mode)] = {
                    "verified": True,
                    "attestation": found.session.attestation_kind,
                    "isolation": found.session.report.isolation,
                }
            else:
                refusal = selection.refusals.get(info.operator)
                verified[str(mode)] = {
                    "verified": False,
                    "reason": refusal.reason if refusal else "not checked",
                }
        party = next(
            (
                c.session.report.descriptor.mpc
                for sel in selections.values()
                for c in sel.candidates
                if c.operator == info.operator and c.session.report.descriptor is not None
            ),
            None,
        )
        out.append(
            {
                "address": info.operator,
                "endpoint": info.endpoint,
                "stake": str(info.stake),
                "active": info.active,
                "models": [
                    {"id": m.model_id, "weights_sha256": m.weights_hash.hex()} for m in info.models
                ],
                "modes": verified,
                "mpc_party": None if party is None else party.to_json(),
            }
        )
    return out


async def _keep_view_fresh(discovery: Discovery, config: DiscoveryConfig) -> None:
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
    mpc_source: SourceLoader | None = None,
    history: Path | None = None,
    tokens: Path | TokenWallet | None = None,
) -> FastAPI:
    """The gateway app.

    `chain`: a `veil.chain.ChainClient` (read-only is enough) or anything with its read
    methods (`ChainReader`). `wallet`: pays nodes (None: no tickets are sent). `receipts`: a
    `ReceiptStore` or its path (opened when the app starts, in the server's thread).
    `outer` / `descriptor_outer`: the async / sync transports that reach the relay (tests).
    `mpc_source`: model id -> `veil.mpc.source.ModelSource` for `:mpc` requests (default:
    `source_for_model`, the packaged model; called once per model, in a thread).
    `history`: the chat page's conversation store (a private SQLite file; None: no history).
    `tokens`: the token wallet (or its journal's path) for anonymous credits, used with a
    `wallet` unless `config.credits` is None (default: in memory, lost at exit).
    """
    cfg = config or GatewayConfig()
    holder: dict[str, _Gateway] = {}
    stores: dict[str, ChatHistory] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        store = ReceiptStore.open(receipts) if isinstance(receipts, Path) else receipts
        journal: TokenWallet | None  # opened (and locked) from a path only with credits on
        if isinstance(tokens, Path):
            journal = TokenWallet(tokens) if cfg.credits is not None else None
        else:
            journal = tokens
        gateway = _Gateway(
            chain,
            relay_url,
            wallet=wallet,
            store=store,
            outer=outer,
            descriptor_outer=descriptor_outer,
            config=cfg,
            mpc_source=mpc_source,
            tokens=journal,
        )
        holder["gateway"] = gateway
        chats = ChatHistory(history) if history is not None else None
        if chats is not None:
            stores["history"] = chats
        keeper = asyncio.create_task(_keep_view_fresh(gateway.discovery, cfg.discovery))
        try:
            yield
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await gateway.aclose()
            if chats is not None:
                chats.close()
            if isinstance(receipts, Path) and store is not None:
                store.close()
            if isinstance(tokens, Path) and journal is not None:
                journal.close()
            holder.clear()
            stores.clear()

    app = FastAPI(
        title="Veil gateway", openapi_url=None, docs_url=None, redoc_url=None, lifespan=lifespan
    )
    app.add_middleware(RequestGuard, host_names=cfg.host_names, api_key=cfg.api_key)

    def gateway() -> _Gateway:
        if "gateway" not in holder:
            raise OpenAIError(503, "the gateway is starting", code="starting", type_="server_error")
        return holder["gateway"]

    @app.exception_handler(OpenAIError)
    async def _error(_: Request, exc: OpenAIError) -> JSONResponse:
        log.info("request refused: %d %s", exc.status, exc.code)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(404)
    async def _not_found(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body("no such route", code="not_found"), status_code=404)

    @app.exception_handler(405)
    async def _not_allowed(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            error_body("method not allowed", code="method_not_allowed"), status_code=405
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s while serving a request", type(exc).__name__)
        return JSONResponse(
            error_body("internal error", type_="server_error", code="internal_error"),
            status_code=500,
        )

    @app.post(CHAT_PATH)
    async def chat_completions(request: Request) -> Response:
        return await gateway().chat(request)

    @app.get(MODELS_PATH)
    async def models() -> dict[str, Any]:
        return await gateway().models()

    @app.get("/veil/status")
    async def status() -> dict[str, Any]:
        return await gateway().status()

    add_web_routes(
        app,
        status=lambda: gateway().status(),
        chain=lambda: chain,
        history=lambda: stores.get("history"),
    )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
