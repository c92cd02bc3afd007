"""The node's plaintext OpenAI-compatible API (the inner surface the OHTTP gateway carries).

No handler logs message or completion text; logs carry ids, token counts and timings only.

Every answer ends with a receipt signed by the node's identity (`veil.identity.sign_receipt`):
`veil_receipt` on the final streamed chunk (the one with `finish_reason`) or top-level in a
non-streamed answer. It covers the request digest (from the OHTTP gateway: sha256 of the
encapsulated request; for a direct plaintext request, sha256 of its raw body; a client's own
`x-veil-request-digest` header is never believed), the answer text exactly as sent (all deltas
joined), the weights hash and the token counts. Signing takes about 0.5 ms (coincurve), so it
runs inline on the event loop.

With OHTTP keys the node also serves its signed descriptor at `DESCRIPTOR_PATH`; keys loaded
from a file are aged (`veil.node.rotation`) before the descriptor states them, and the
gateway's replay memory is then kept in a log beside the key file (`veil.node.replay`).

`/healthz` shows its traffic counters only to direct requests, never through the gateway.

Payments (`veil.node.payments`), when the node has a chain deployment: the node serves its
ticket params at `TICKET_PARAMS_PATH`; a chat request's `x-veil-ticket` is checked after the
request is parsed and validated and before the engine starts (refusals are 402
`payment_error`s); the receipt's ticket id is the accepted ticket's id (zero when unpaid);
every chat answer, errors included, carries the current params in `x-veil-ticket-params`.
Without a deployment there are no payment checks.

Credits (`veil.node.credits`), when the node takes payments: `POST CREDITS_PATH` sells a
batch of RFC 9578 tokens (concatenated TokenRequests in, concatenated blind signatures out)
for one ticket worth the batch; `TOKEN_KEYS_PATH` lists the accepted token keys; a chat
request may pay with `x-veil-tokens` instead of a ticket (its receipt then names no ticket).

MPC (`veil.node.mpc`): with a `party` the node is one party of the `mpc` mode and
`POST /v1/mpc` takes one control frame and answers one (runs go off the event loop); without
one that route answers 404 `mpc_unavailable`. Frames are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from veil.attest.producer import EvidenceProducer
from veil.engine import (
    Backend,
    ChatMessage,
    ContextLengthExceeded,
    EngineClosed,
    EngineOverloaded,
    Failed,
    Finished,
    GenerationHandle,
    InvalidGenerationRequest,
    SamplingParams,
    TokenDelta,
)
from veil.engine.errors import UpstreamFailed, UpstreamTimeout, UpstreamUnavailable
from veil.errors import VeilError
from veil.identity import ModelEntry, NodeIdentity, request_digest, sign_receipt
from veil.identity.credits.token import TOKEN_REQUEST_LEN
from veil.node.config import NodeConfig
from veil.node.credits import SpentSet, TokenDesk, TokenKeyring
from veil.node.credits.commit import commit_token_key, keep_token_key_committed
from veil.node.descriptor import DescriptorIssuer, load_node_identity
from veil.node.errors import PaymentRefused
from veil.node.gateway import GatewayConfig, gateway_router, via_gateway
from veil.node.keys import NodeKeys
from veil.node.mpc import NodeParty
from veil.node.payments import AcceptedTicket, NodePayments, open_payments
from veil.node.replay import replay_log_path
from veil.node.rotation import age_keys_at_start, replay_window_for, rotate_periodically
from veil.node.schemas import ChatCompletionRequest, parse_chat_request
from veil.wire import bhttp
from veil.wire.chat import SSE_DONE, ChatRequestInvalid, Completion, sse, usage
from veil.wire.errors import MessageTooLarge
from veil.wire.http import (
    CHAT_PATH,
    CREDITS_PATH,
    DESCRIPTOR_PATH,
    MEDIA_DESCRIPTOR,
    MEDIA_MPC,
    MEDIA_SSE,
    MEDIA_TICKET_PARAMS,
    MEDIA_TOKEN_RESPONSE,
    MODELS_PATH,
    MPC_PATH,
    REQUEST_DIGEST_EXTENSION,
    TICKET_HEADER,
    TICKET_PARAMS_PATH,
    TOKEN_KEYS_PATH,
    TOKENS_HEADER,
    OpenAIError,
    error_body,
    read_capped,
)
from veil.wire.padding import request_bucket

__all__ = ["STREAM_PAD_BYTES", "create_app", "open_credits"]

STREAM_PAD_BYTES = 256  # `pad` stream shaping: a token's SSE event (~200 bytes) fits one bucket

log = logging.getLogger("veil.node")


async def _read_body(request: Request, limit: int) -> bytes:
    try:
        return await read_capped(request, limit)
    except MessageTooLarge as err:
        raise OpenAIError(413, str(err), code="request_too_large") from None


def _sampling(
    req: ChatCompletionRequest, prompt_tokens: int, engine: Backend, config: NodeConfig
) -> SamplingParams:
    try:
        checked = req.to_sampling(max_tokens_limit=config.max_tokens_limit)
    except ChatRequestInvalid as exc:
        raise OpenAIError(400, str(exc), param=exc.param) from None
    requested, param = checked.max_tokens, req.limit_param
    if prompt_tokens >= engine.context_length:
        raise OpenAIError(
            400,
            f"this model's context window is {engine.context_length} tokens, but the messages "
            f"take {prompt_tokens} tokens",
            param="messages",
            code="context_length_exceeded",
        )
    room = engine.context_length - prompt_tokens
    if requested is not None and requested > room:
        raise OpenAIError(
            400,
            f"this model's context window is {engine.context_length} tokens; the messages take "
            f"{prompt_tokens} and {param} asks for {requested} more",
            param=param,
            code="context_length_exceeded",
        )
    try:
        return SamplingParams(
            max_tokens=requested if requested is not None else min(config.default_max_tokens, room),
            temperature=checked.temperature,
            top_p=checked.top_p,
            stop=checked.stop,
            seed=checked.seed,
        )
    except InvalidGenerationRequest as exc:
        raise OpenAIError(400, str(exc), param=exc.param) from None


class _Signer:
    """Signs the receipt that ends one answer."""

    def __init__(
        self,
        identity: NodeIdentity,
        digest: bytes,
        weights_sha256: str,
        ticket_id: bytes | None = None,
    ) -> None:
        self.identity, self.digest, self.weights = identity, digest, weights_sha256
        self.ticket_id = ticket_id

    def receipt(self, answer_text: str, fin: Finished) -> dict[str, Any]:
        return sign_receipt(
            self.identity,
            self.digest,
            answer_text,
            self.weights,
            fin.prompt_tokens,
            fin.completion_tokens,
            self.ticket_id,
        ).to_json()


def _request_digest(request: Request, body: bytes) -> bytes:
    """The gateway's digest of the encapsulated request, else the digest of this raw body.

    Only the gateway can put a value in the scope's extensions; a header a client sent
    directly is ignored.
    """
    stated = (request.scope.get("extensions") or {}).get(REQUEST_DIGEST_EXTENSION)
    if isinstance(stated, bytes) and len(stated) == 32:
        return stated
    return request_digest(body)


def _usage(fin: Finished) -> dict[str, int]:
    return usage(fin.prompt_tokens, fin.completion_tokens)


def _failure(event: Failed) -> OpenAIError:
    error = event.error
    if isinstance(error, EngineClosed):
        return OpenAIError(
            503, "the node is shutting down", type_="server_error", code="unavailable"
        )
    if isinstance(error, UpstreamTimeout):
        return OpenAIError(504, str(error), type_="server_error", code="upstream_timeout")
    if isinstance(error, UpstreamUnavailable):
        return OpenAIError(502, str(error), type_="server_error", code="upstream_unavailable")
    if isinstance(error, UpstreamFailed):
        overloaded = error.status in (429, 503)
        return OpenAIError(
            503 if overloaded else 502,
            str(error),
            type_="server_error",
            code="overloaded" if overloaded else "upstream_error",
        )
    return OpenAIError(500, str(event.error), type_="server_error", code="inference_failed")


def _payment_error(err: PaymentRefused) -> OpenAIError:
    """The answer to a refused payment: 402 `payment_error`, or 503 `server_error`."""
    return OpenAIError(err.status, err.message, type_=err.type, code=err.code)


class _NodeApp:
    """What the node's routes share: engine, config, identity, payments, MPC party, keys.

    Each route is one method; `create_app` builds the FastAPI app and points the routes here.
    """

    def __init__(
        self,
        engine: Backend,
        config: NodeConfig,
        identity: NodeIdentity,
        *,
        keys: NodeKeys | None,
        producer: EvidenceProducer | None,
        payments: NodePayments | None,
        party: NodeParty | None,
        credits: TokenDesk | None = None,
    ) -> None:
        self.engine, self.config, self.identity = engine, config, identity
        self.keys, self.payments, self.party = keys, payments, party
        self.credits = credits
        self.weights_sha256 = engine.weights_sha256
        self.model_info = {
            "id": engine.model_id,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "veil-node",
            "weights_sha256": self.weights_sha256,
            "context_length": engine.context_length,
            "engine": engine.kind,
            "weights_scope": engine.weights_scope,
        }
        self.keys_path = Path(config.keys_path) if config.keys_path else None
        if keys is not None and config.key_rotation_s:  # before the descriptor states them
            age_keys_at_start(keys, config.key_rotation_s, self.keys_path)
        self.issuer: DescriptorIssuer | None = None
        if keys is not None:
            self.issuer = DescriptorIssuer(
                identity,
                keys,
                endpoint=config.endpoint or f"http://{config.host}:{config.port}",
                models=[
                    ModelEntry(
                        engine.model_id,
                        bytes.fromhex(self.weights_sha256),
                        engine=engine.kind,
                        weights_scope=engine.weights_scope,
                    )
                ],
                producer=producer,
                lifetime_s=config.descriptor_lifetime_s,
                mpc=None if party is None else party.descriptor_entry(engine.model_id),
                token_keys=None if credits is None else credits.key_ids,
            )
            self.issuer.current()  # issue at start: a producer that cannot make evidence fails

    @contextlib.asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        """Key rotation, the redeemer and the MPC reaper run while the app serves."""
        rotating = None
        if self.keys is not None and self.config.key_rotation_s:
            rotating = asyncio.create_task(
                rotate_periodically(self.keys, self.config.key_rotation_s, self.keys_path)
            )
        if self.payments is not None:
            self.payments.start()
        committing = None
        if self.credits is not None and self.payments is not None and self.payments.client:
            # the token key goes on chain before the first buyer can ask for it
            keyring, registry = self.credits.keyring, self.payments.client
            address = self.identity.address
            with contextlib.suppress(VeilError):  # logged and retried by the loop
                await asyncio.to_thread(commit_token_key, keyring, registry, address)
            committing = asyncio.create_task(
                keep_token_key_committed(
                    keyring, registry, address, self.config.reconcile_interval_s
                )
            )
        if self.party is not None:
            self.party.start()
        yield
        if committing is not None:
            committing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committing
        if self.party is not None:
            self.party.stop()
        if self.payments is not None:
            await asyncio.to_thread(self.payments.stop)
        if rotating is not None:
            rotating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rotating

    async def healthz(self, request: Request) -> dict[str, Any]:
        """Liveness and the public model identity; the counters only for a direct request.

        Request, token and payment counts reveal traffic volume: anyone can ask through the
        OHTTP gateway, so there only the operator's own (direct) requests see them.
        """
        health: dict[str, Any] = {
            "status": "ok",
            "model": self.engine.model_id,
            "weights_sha256": self.weights_sha256,
        }
        if via_gateway(request.scope):
            return health
        health["requests"] = self.engine.stats.requests
        health["tokens_generated"] = self.engine.stats.tokens_generated
        if self.payments is not None:
            health["payments"] = self.payments.health()
        if self.credits is not None:
            health["credits"] = {"issued": self.credits.issued, "redeemed": self.credits.redeemed}
        return health

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self.model_info]}

    async def model(self, model_id: str) -> dict[str, Any]:
        if model_id != self.engine.model_id:
            raise OpenAIError(
                404, f"the model {model_id!r} does not exist", param="model", code="model_not_found"
            )
        return self.model_info

    async def ticket_params(self) -> Response:
        """Routed only when the node takes payments."""
        assert self.payments is not None
        return Response(
            self.payments.params().encode(),
            media_type=MEDIA_TICKET_PARAMS,
            headers={"cache-control": "no-store"},
        )

    async def token_keys(self) -> Response:
        """Routed only when the node sells tokens: the keys whose tokens it accepts now."""
        assert self.credits is not None
        keys = await asyncio.to_thread(self.credits.key_list)  # may create this epoch's key
        return JSONResponse({"keys": keys}, headers={"cache-control": "no-store"})

    async def buy_credits(self, request: Request) -> Response:
        """Sell a batch of tokens for one ticket worth the batch (checked before signing)."""
        assert self.credits is not None and self.payments is not None
        credits, payments = self.credits, self.payments
        try:
            body = await read_capped(request, credits.max_batch * TOKEN_REQUEST_LEN)
        except MessageTooLarge as err:
            raise OpenAIError(413, str(err), code="request_too_large") from None
        try:
            batch = credits.parse_batch(body)
            await asyncio.to_thread(credits.check_batch, batch)
            paid = await payments.check(request.headers.get(TICKET_HEADER), units=len(batch))
        except PaymentRefused as err:
            raise _payment_error(err) from None
        try:
            key, sigs = await asyncio.to_thread(credits.issue, batch)
        except PaymentRefused as err:
            payments.unanswered(paid, "the token batch was not issued")
            raise _payment_error(err) from None
        await payments.answered(paid)
        log.info("sold %d tokens of epoch %d", len(batch), key.epoch)
        response = Response(
            sigs, media_type=MEDIA_TOKEN_RESPONSE, headers={"cache-control": "no-store"}
        )
        response.headers.update(payments.params_header())
        return response

    async def descriptor(self) -> Response:
        """Routed only when the node has OHTTP keys (and so an issuer)."""
        assert self.issuer is not None
        if self.issuer.needs_issue():  # a hardware quote may take a while: off the loop
            signed = await asyncio.to_thread(self.issuer.current)
        else:
            signed = self.issuer.current()
        return Response(
            signed.encode(), media_type=MEDIA_DESCRIPTOR, headers={"cache-control": "no-store"}
        )

    async def mpc(self, request: Request) -> Response:
        if self.party is None:
            raise OpenAIError(404, "this node hosts no MPC party", code="mpc_unavailable")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != MEDIA_MPC:
            raise OpenAIError(415, f"the body must be {MEDIA_MPC}", code="unsupported_media_type")
        body = await _read_body(request, self.config.max_body_bytes)
        status, frame = await self.party.answer(body)
        return Response(
            frame, status_code=status, media_type=MEDIA_MPC, headers={"cache-control": "no-store"}
        )

    async def chat_completions(self, request: Request) -> Response:
        if self.payments is None:
            return await self._chat(request)
        try:
            response = await self._chat(request)
        except OpenAIError as err:  # refusals too tell the payer the current params
            response = JSONResponse(err.body(), status_code=err.status)
        response.headers.update(self.payments.params_header())
        return response

    async def _chat(self, request: Request) -> Response:
        engine = self.engine
        raw = await _read_body(request, self.config.max_body_bytes)
        req = parse_chat_request(raw)
        if req.model != engine.model_id:
            raise OpenAIError(
                404,
                f"the model {req.model!r} does not exist on this node; "
                f"it serves {engine.model_id!r}",
                param="model",
                code="model_not_found",
            )
        messages = [ChatMessage(m.role, m.text()) for m in req.messages]
        prompt_ids = await asyncio.to_thread(engine.encode_chat, messages)
        params = _sampling(req, len(prompt_ids), engine, self.config)
        paid, payment_id = await self._check_payment(request)
        signer = _Signer(
            self.identity, _request_digest(request, raw), self.weights_sha256, payment_id
        )
        try:
            handle = engine.submit_chat(messages, prompt_ids, params)
        except EngineOverloaded as exc:
            raise OpenAIError(503, str(exc), type_="server_error", code="overloaded") from None
        except EngineClosed:
            raise OpenAIError(
                503, "the node is shutting down", type_="server_error", code="unavailable"
            ) from None
        except ContextLengthExceeded as exc:
            raise OpenAIError(
                400, str(exc), param="messages", code="context_length_exceeded"
            ) from None
        completion = Completion(engine.model_id)
        started = time.monotonic()
        log.info(
            "request %s accepted: %d prompt tokens, stream=%s",
            completion.id,
            len(prompt_ids),
            req.stream,
        )
        charge = _Charge(self.payments, paid)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                _stream(handle, completion, include_usage, started, signer, charge),
                media_type=MEDIA_SSE,
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )
        return await _whole(request, handle, completion, started, signer, charge)

    async def _check_payment(self, request: Request) -> tuple[AcceptedTicket | None, bytes | None]:
        """The request's ticket, checked, and what its receipt names as paid: the ticket id,
        or the tokens' payment id. Only a valid request gets here (a refused one costs no
        ticket)."""
        if self.payments is None:
            return None, None
        tokens = request.headers.get(TOKENS_HEADER)
        try:
            if tokens is not None and self.credits is not None:
                spent = await self.credits.redeem(tokens)  # spent (fsynced) before the engine
                return None, spent.payment_id
            ticket = await self.payments.check(request.headers.get(TICKET_HEADER))
            return ticket, None if ticket is None else ticket.ticket_id
        except PaymentRefused as err:
            raise _payment_error(err) from None


def _gateway_config(config: NodeConfig) -> GatewayConfig:
    return GatewayConfig(
        # a whole request (body, head, OHTTP framing) is padded by the client to its bucket
        max_request_bytes=request_bucket(config.max_body_bytes + 4096) + 256,
        bhttp_limits=bhttp.Limits(max_content_bytes=config.max_body_bytes),
        replay_window_s=replay_window_for(config.key_rotation_s or 3600),
        # keys that outlive the process need a replay memory that does too
        replay_path=str(replay_log_path(config.keys_path)) if config.keys_path else None,
        stream_pad_bytes=STREAM_PAD_BYTES if config.stream_shaping == "pad" else None,
    )


async def _openai_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenAIError)
    log.info("request refused: %d %s", exc.status, exc.code)  # codes only, never input
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return JSONResponse(error_body(str(exc.detail), code=code), status_code=exc.status_code)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(error_body(f"invalid request: {exc.errors()[0]['msg']}"), status_code=400)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected %s while serving a request", type(exc).__name__)
    return JSONResponse(
        error_body("internal error", type_="server_error", code="internal_error"),
        status_code=500,
    )


def create_app(
    engine: Backend,
    config: NodeConfig | None = None,
    keys: NodeKeys | None = None,
    identity: NodeIdentity | None = None,
    *,
    producer: EvidenceProducer | None = None,
    payments: NodePayments | None = None,
    party: NodeParty | None = None,
    credits: TokenDesk | None = None,
) -> FastAPI:
    """The FastAPI app serving `engine` (any `veil.engine.Backend`); with `keys`, also the
    OHTTP gateway in front of it and the signed descriptor.

    `identity` signs receipts and the descriptor (default: the keystore at
    `config.identity_path`, else an in-memory one, with a warning). `producer` makes the
    descriptor's evidence (default: `DevProducer`, "no hardware isolation").

    `payments` checks tickets and redeems winners (its redeemer runs with the app's
    lifespan); without it, a config naming a deployment builds one (`open_payments`, which
    connects to the chain), and a config without one serves every request unpaid.

    `party` (`veil.node.mpc.build_party`) serves the MPC route; its reaper runs with the
    app's lifespan, and shutdown wipes its sessions.
    """
    config = config or NodeConfig()
    if identity is None:
        path = config.identity_path
        identity = load_node_identity(None if path is None else Path(path))
    if payments is None and config.deployment_path:
        payments = open_payments(config, identity)
    if credits is None and payments is not None:
        credits = open_credits(config, identity)
    node = _NodeApp(
        engine,
        config,
        identity,
        keys=keys,
        producer=producer,
        payments=payments,
        party=party,
        credits=credits,
    )
    app = FastAPI(
        title="Veil node", docs_url=None, redoc_url=None, openapi_url=None, lifespan=node.lifespan
    )
    app.state.engine = engine
    app.state.config = config
    app.state.identity = identity
    app.state.payments = payments
    app.state.credits = credits
    app.add_exception_handler(OpenAIError, _openai_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_api_route("/healthz", node.healthz, methods=["GET"])
    app.add_api_route(MODELS_PATH, node.models, methods=["GET"])
    app.add_api_route(MODELS_PATH + "/{model_id}", node.model, methods=["GET"])
    if payments is not None:
        app.add_api_route(TICKET_PARAMS_PATH, node.ticket_params, methods=["GET"])
    if payments is not None and credits is not None:
        app.add_api_route(TOKEN_KEYS_PATH, node.token_keys, methods=["GET"])
        app.add_api_route(CREDITS_PATH, node.buy_credits, methods=["POST"])
    app.add_api_route(MPC_PATH, node.mpc, methods=["POST"])
    app.add_api_route(CHAT_PATH, node.chat_completions, methods=["POST"])
    if keys is not None:
        app.state.descriptor_issuer = node.issuer
        app.add_api_route(DESCRIPTOR_PATH, node.descriptor, methods=["GET"])
        app.include_router(gateway_router(app, keys, _gateway_config(config)))
    return app


def open_credits(config: NodeConfig, identity: NodeIdentity) -> TokenDesk:
    """The token desk from `config`: keys and spent sets in `credits_path`, else `credits/`
    beside the identity keystore, else in memory (tokens then die with the process)."""
    if config.credits_path:
        directory: Path | None = Path(config.credits_path)
    elif config.identity_path:
        directory = Path(config.identity_path).parent / "credits"
    else:
        directory = None
        log.warning("token keys and spent tokens are in memory only (no --identity)")
    keyring = TokenKeyring(directory, epoch_s=config.token_epoch_s, grace_s=config.token_grace_s)
    return TokenDesk(
        identity.address,
        keyring,
        SpentSet(directory),
        price_tokens=config.token_price,
        max_batch=config.token_batch_max,
    )


def _log_done(completion: Completion, fin: Finished, started: float) -> None:
    log.info(
        "request %s finished: reason=%s prompt_tokens=%d completion_tokens=%d in %.2fs",
        completion.id,
        fin.reason,
        fin.prompt_tokens,
        fin.completion_tokens,
        time.monotonic() - started,
    )


class _Charge:
    """Whether a request's ticket may be charged: a winner is redeemed only once its answer
    (the final chunk, with the receipt) went out; a request that ends otherwise is free."""

    def __init__(self, payments: NodePayments | None, paid: AcceptedTicket | None) -> None:
        self.payments, self.paid, self.done = payments, paid, False

    async def answered(self) -> None:
        self.done = True
        if self.payments is not None:
            await self.payments.answered(self.paid)

    def abandon(self, reason: str) -> None:
        if not self.done and self.payments is not None:
            self.done = True
            self.payments.unanswered(self.paid, reason)


async def _stream(
    handle: GenerationHandle,
    completion: Completion,
    include_usage: bool,
    started: float,
    signer: _Signer,
    charge: _Charge,
) -> AsyncIterator[bytes]:
    parts: list[str] = []
    try:
        yield completion.chunk({"role": "assistant", "content": ""})
        async for event in handle:
            if isinstance(event, TokenDelta):
                if event.text:
                    parts.append(event.text)
                    yield completion.chunk({"content": event.text})
            elif isinstance(event, Finished):
                _log_done(completion, event, started)
                if event.text:
                    parts.append(event.text)
                    yield completion.chunk({"content": event.text})
                counts = _usage(event)
                receipt = signer.receipt("".join(parts), event)
                yield completion.chunk({}, event.reason, usage=counts, veil_receipt=receipt)
                await charge.answered()  # the final chunk, with its receipt, was handed on
                if include_usage:
                    yield completion.usage_chunk(counts)
            else:
                err = _failure(event)
                log.warning("request %s failed: %s", completion.id, err.code)
                yield sse(err.body())
        yield SSE_DONE
    finally:
        charge.abandon("the stream ended before its receipt")
        handle.cancel()  # no-op when finished; stops decoding when the client went away


async def _whole(
    request: Request,
    handle: GenerationHandle,
    completion: Completion,
    started: float,
    signer: _Signer,
    charge: _Charge,
) -> Response:
    async def watch_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        handle.cancel()

    watcher = asyncio.create_task(watch_disconnect())
    parts: list[str] = []
    try:
        async for event in handle:
            if isinstance(event, TokenDelta):
                parts.append(event.text)
            elif isinstance(event, Finished):
                parts.append(event.text)
                _log_done(completion, event, started)
                if event.reason == "cancelled":
                    return Response(status_code=499)
                text = "".join(parts)
                answer = JSONResponse(
                    completion.whole(
                        text,
                        event.reason,
                        _usage(event),
                        veil_receipt=signer.receipt(text, event),
                    )
                )
                await charge.answered()
                return answer
            else:
                raise _failure(event)
        raise OpenAIError(500, "the generation ended without a result", type_="server_error")
    finally:
        charge.abandon("the request ended without an answer")
        watcher.cancel()
        handle.cancel()
