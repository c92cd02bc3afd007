"""Test pieces for the gateway: an in-memory chain, paying fake nodes, a recording relay.

The fake node is the real OHTTP gateway and descriptor issuer in front of a small inner app
that checks the payment ticket it is sent, signs receipts naming it (as a paying node will)
and serves its ticket params; knobs make it fail or cheat. `SlowNode` is an endpoint a staker
registers that never answers: a tarpit (accepts TCP, stays silent) or a trickle (an HTTP
head, then a byte a second, never done).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from veil.chain.payment import (
    TICKET_HEADER,
    TICKET_PARAMS_HEADER,
    TICKET_PARAMS_PATH,
    PaymentTicket,
    TicketParams,
)
from veil.chain.tickets import TicketDomain
from veil.chain.types import ModelEntry as ChainModelEntry
from veil.chain.types import NodeInfo, SenderFunds, TokenKeys
from veil.identity import (
    DESCRIPTOR_PATH,
    MEDIA_DESCRIPTOR,
    ModelEntry,
    NodeIdentity,
    sign_receipt,
)
from veil.identity.credits.token import decode_token_header, tokens_payment_id
from veil.node.api import STREAM_PAD_BYTES
from veil.node.descriptor import DescriptorIssuer, software_claim
from veil.node.gateway import GatewayConfig, gateway_router
from veil.node.keys import NodeKeys
from veil.wire.http import REQUEST_DIGEST_EXTENSION, TOKENS_HEADER

MODEL = "smollm2-135m-instruct"
WEIGHTS = bytes.fromhex("ab" * 32)
SECRET_PROMPT = "cobalt-lantern-5521 is my secret prompt"
TOKENS = ["Lime", " otters", " hum", " quartz-9907", "."]
ANSWER = "".join(TOKENS)
TOKEN = 10**18
DOMAIN = TicketDomain(31337, "0x" + "42" * 20)


@dataclass
class FakeChainReader:
    """The registry, release log and broker reads the gateway makes, in memory."""

    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    minimum: int = 100 * TOKEN
    releases: set[tuple[bytes, bytes]] = field(default_factory=set)
    time_offset: int = 0
    deposits: dict[str, int] = field(default_factory=dict)
    reads: int = 0
    token_key_ids: dict[str, bytes] = field(default_factory=dict)  # operator -> committed key

    def register(self, operator: str, models: list[tuple[str, bytes]], stake: int) -> None:
        self.nodes[operator] = NodeInfo(
            operator=operator,
            endpoint=f"http://{operator.lower()}.test",
            ohttp_keys_hash=bytes(32),
            attestation_digest=bytes(32),
            stake=stake,
            unbonding=0,
            unbonding_ends_at=0,
            registered=True,
            active=stake >= self.minimum,
            models=tuple(ChainModelEntry(m, h) for m, h in models),
        )

    def set_stake(self, operator: str, stake: int) -> None:
        self.nodes[operator] = replace(self.nodes[operator], stake=stake)

    def get_node(self, operator: str) -> NodeInfo:
        return self.nodes[operator]

    def active_nodes(self) -> list[NodeInfo]:
        self.reads += 1
        return [n for n in self.nodes.values() if n.active]

    def min_stake(self) -> int:
        return self.minimum

    def chain_time(self) -> int:
        return int(time.time()) + self.time_offset

    def is_release_approved(self, model_hash: bytes, measurement: bytes) -> bool:
        return (model_hash, measurement) in self.releases

    def ticket_domain(self) -> TicketDomain:
        return DOMAIN

    def sender_funds(self, sender: str | None = None) -> SenderFunds:
        return SenderFunds(deposit=self.deposits.get(sender or "", 0), reserve=0, withdraw_at=0)

    def token_keys(self, operator: str) -> TokenKeys:
        key_id = self.token_key_ids.get(operator)
        return TokenKeys(key_id or bytes(32), bytes(32), 0 if key_id is None else 1)


class FakeNodeApi:
    """A node that takes tickets; `knob` picks a failure: `503`, `stale` (its params moved on),
    `insufficient`, `midstream`, `zero_ticket` (receipt names no ticket), `no_params`,
    `dear` (it asks 500 VEIL per request), `slow` (a tenth of a second between events),
    `deep_array` / `deep_object` (its answer nests 100,000 deep: a stack bomb for a decoder
    that recurses). `tokens`: the answer it streams (and signs)."""

    def __init__(self, model: str = MODEL, weights: bytes = WEIGHTS) -> None:
        self.identity = NodeIdentity.generate()
        self.keys = NodeKeys.generate()
        self.model, self.weights = model, weights
        self.knob: str | None = None
        self.moves = 0  # knob "moving": how many more requests find the offer moved on
        self.rand_hash = secrets.token_bytes(32)
        self.seen: list[dict[str, Any]] = []
        self.tokens = list(TOKENS)
        self.issuer = DescriptorIssuer(
            self.identity, self.keys, endpoint="fake", models=[ModelEntry(model, weights)]
        )
        self.app = self._app()

    @property
    def address(self) -> str:
        return self.identity.address

    def params(self) -> TicketParams:
        dear = self.knob == "dear"
        return TicketParams(
            recipient=self.address,
            face_value=1000 * TOKEN if dear else TOKEN // 100,
            win_prob=2**255 if dear else 2**250,
            recipient_rand_hash=self.rand_hash,
            expires_at=int(time.time()) + 3600,
            chain_id=DOMAIN.chain_id,
            broker=DOMAIN.verifying_contract,
        )

    def _app(self) -> FastAPI:
        app = FastAPI()
        node = self

        def refuse(status: int, code: str) -> JSONResponse:
            body = {
                "error": {"message": code, "type": "payment_error", "param": None, "code": code}
            }
            headers = {TICKET_PARAMS_HEADER: node.params().header_value()}
            return JSONResponse(body, status_code=status, headers=headers)

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            digest = request.scope["extensions"][REQUEST_DIGEST_EXTENSION]
            body = await request.json()
            header = request.headers.get(TICKET_HEADER)
            ticket = PaymentTicket.from_header(header) if header else None
            node.seen.append(
                {
                    "digest": digest,
                    "model": body.get("model"),
                    "ticket": ticket,
                    "headers": dict(request.headers),
                }
            )
            if node.knob == "503":
                return JSONResponse({"error": {"message": "busy", "code": "overloaded"}}, 503)
            if node.knob == "insufficient":
                return refuse(402, "insufficient_payment")
            if node.knob == "moving" and node.moves > 0:  # each winner retires its offer
                node.moves -= 1
                node.rand_hash = bytes([node.moves + 1]) * 32
                return refuse(402, "ticket_params_stale")
            if node.knob == "stale" and (
                ticket is None or ticket.ticket.recipient_rand_hash != node.rand_hash
            ):
                return refuse(402, "ticket_params_stale")
            ticket_id = None
            if ticket is not None and node.knob != "zero_ticket":
                ticket_id = ticket.ticket_id(DOMAIN)
            spent = request.headers.get(TOKENS_HEADER)  # checked by a subclass's desk, if any
            if spent is not None and node.knob != "zero_ticket":
                ticket_id = tokens_payment_id(decode_token_header(spent, 64))
            usage = {"prompt_tokens": 9, "completion_tokens": len(node.tokens), "total_tokens": 14}
            receipt = sign_receipt(
                node.identity,
                digest,
                "".join(node.tokens),
                node.weights,
                9,
                len(node.tokens),
                ticket_id,
            ).to_json()
            headers = {TICKET_PARAMS_HEADER: node.params().header_value()}
            if node.knob in ("deep_array", "deep_object"):
                bomb = deep_json(node.knob)
                if not body.get("stream"):
                    return Response(bomb, media_type="application/json", headers=headers)
                sse = [b"data: " + bomb + b"\n\n", b"data: [DONE]\n\n"]
                return StreamingResponse(iter(sse), media_type="text/event-stream")
            if not body.get("stream"):
                return JSONResponse(
                    {
                        "id": "c1",
                        "object": "chat.completion",
                        "created": 0,
                        "model": node.model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": "".join(node.tokens)},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": usage,
                        "veil_receipt": receipt,
                    },
                    headers=headers,
                )

            def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
                c = {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": node.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    **extra,
                }
                return f"data: {json.dumps(c)}\n\n"

            async def events() -> Any:
                yield chunk({"role": "assistant", "content": ""})
                for i, token in enumerate(node.tokens):
                    if node.knob == "midstream" and i == 2:
                        raise RuntimeError("the node fell over")
                    if node.knob == "slow":
                        await asyncio.sleep(0.1)
                    yield chunk({"content": token})
                yield chunk({}, "stop", usage=usage, veil_receipt=receipt)
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

        @app.get(DESCRIPTOR_PATH)
        async def descriptor() -> Response:
            return Response(node.issuer.current().encode(), media_type=MEDIA_DESCRIPTOR)

        @app.get(TICKET_PARAMS_PATH)
        async def ticket_params() -> Response:
            if node.knob == "no_params":
                return JSONResponse({"error": "no"}, status_code=404)
            return Response(node.params().encode(), media_type="application/json")

        # streams padded as a real node's are by default (`NodeConfig.stream_shaping`)
        padded = GatewayConfig(stream_pad_bytes=STREAM_PAD_BYTES)
        app.include_router(gateway_router(app, self.keys, padded))
        return app


class RecordingApp:
    """ASGI wrapper that records (method, path) of every HTTP request (the relay's view), in
    `sizes` the (path, body length) of each one, and in `sent` the sizes of the body pieces
    it answered with."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls: list[tuple[str, str]] = []
        self.sizes: list[tuple[str, int]] = []
        self.sent: list[list[int]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.calls.append((scope["method"], scope["path"]))
        entry = len(self.sizes)
        self.sizes.append((scope["path"], 0))

        async def counted() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                path, size = self.sizes[entry]
                self.sizes[entry] = (path, size + len(message.get("body", b"")))
            return message

        pieces: list[int] = []
        self.sent.append(pieces)

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                pieces.append(len(message["body"]))
            await send(message)

        await self.app(scope, counted, sending)


def approve(chain: FakeChainReader, weights: bytes = WEIGHTS) -> None:
    chain.releases.add((weights, software_claim()))


def deep_json(kind: str, depth: int = 100_000) -> bytes:
    """A JSON document nested `depth` deep (arrays, or objects) inside a chat completion's
    shape, built as bytes (building it as Python objects would recurse too)."""
    if kind == "deep_array":
        inner = b"[" * depth + b"]" * depth
    else:
        inner = b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"choices":[{"index":0,"delta":{},"message":' + inner + b'}],"veil_receipt":{}}'


class SlowNode:
    """A loopback endpoint that never answers: `tarpit` accepts TCP and stays silent;
    `trickle` reads the request, sends a 200 head (descriptor media type, a megabyte long)
    and then one byte a second, never finishing."""

    def __init__(self, kind: str) -> None:
        assert kind in ("tarpit", "trickle")
        self.kind = kind
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            if self.kind == "trickle":
                threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        head = (
            f"HTTP/1.1 200 OK\r\ncontent-type: {MEDIA_DESCRIPTOR}\r\n"
            "content-length: 1000000\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            conn.recv(65536)
            conn.sendall(head.encode())
            while not self._stop.wait(1.0):
                conn.sendall(b" ")

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()
