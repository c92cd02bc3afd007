"""`/healthz`: the operator's direct request sees the counters, a sealed one only liveness."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import httpx

from support.payments import DOMAIN, TOKEN, FakeFundsSource, FakeRedeemTarget
from veil.chain.tickets import win_prob_for
from veil.identity import NodeIdentity
from veil.node.api import create_app
from veil.node.config import NodeConfig
from veil.node.keys import NodeKeys
from veil.node.payments import NodePayments, Redeemer, TicketDesk, TicketQueue
from veil.wire import bhttp, ohttp

PUBLIC = {"status", "model", "weights_sha256"}


def node() -> tuple[httpx.AsyncClient, NodeKeys]:
    identity = NodeIdentity.generate()
    engine = SimpleNamespace(
        model_id="stub-model",
        context_length=2048,
        weights_sha256="ab" * 32,
        kind="builtin",
        weights_scope="loaded",
        stats=SimpleNamespace(requests=41, tokens_generated=9000),
    )
    queue = TicketQueue(None)
    desk = TicketDesk(
        identity.address,
        DOMAIN,
        FakeFundsSource(),
        queue,
        face_value=TOKEN,
        win_prob=win_prob_for(0.5),
    )
    payments = NodePayments(desk, Redeemer(queue, FakeRedeemTarget({})))
    keys = NodeKeys.generate()
    app: Any = create_app(engine, NodeConfig(), keys, identity, payments=payments)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8700"), keys


async def sealed_health(http: httpx.AsyncClient, keys: NodeKeys, *headers: bytes) -> Any:
    fields = tuple((h.split(b":")[0], h.split(b":")[1].strip()) for h in headers)
    message = bhttp.encode_request(bhttp.Request("GET", "https", "node", "/healthz", fields))
    sealed, opener = ohttp.encapsulate_request(keys.current.config, message)
    answer = await http.post(
        "/gateway", content=sealed, headers={"content-type": ohttp.MEDIA_REQUEST}
    )
    assert answer.status_code == 200
    inner = bhttp.decode_response(opener.open(answer.content))
    assert inner.status == 200
    return json.loads(inner.content)


async def test_the_local_operator_sees_the_counters() -> None:
    http, _ = node()
    health = (await http.get("/healthz")).json()
    assert health["requests"] == 41 and health["tokens_generated"] == 9000
    assert health["payments"]["pending"] == 0 and "accepted" in health["payments"]
    await http.aclose()


async def test_through_the_gateway_only_liveness_and_the_public_model_identity() -> None:
    http, keys = node()
    health = await sealed_health(http, keys)
    assert health == {"status": "ok", "model": "stub-model", "weights_sha256": "ab" * 32}
    # nothing a sealed request carries turns it into a local one
    spoof = await sealed_health(
        http, keys, b"x-forwarded-for: 127.0.0.1", b"forwarded: for=127.0.0.1", b"host: 127.0.0.1"
    )
    assert set(spoof) == PUBLIC
    await http.aclose()
