"""Paid chat requests on the real model: the node's HTTP surface for tickets (no chain: fakes).

Direct plaintext requests and sealed ones through the OHTTP gateway; the redeemer runs with
the app's lifespan against a fake chain.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from support.net import ServerThread
from support.payments import TOKEN, FakeFundsSource, FakeRedeemTarget, account
from support.payments import write_ticket as _write
from veil.chain.payment import (
    TICKET_HEADER,
    TICKET_PARAMS_HEADER,
    TICKET_PARAMS_PATH,
    TicketParams,
)
from veil.chain.tickets import win_prob_for
from veil.chain.types import SenderFunds
from veil.engine import PACKAGED_MODEL_ID
from veil.identity import NodeIdentity, Receipt, check_receipt, request_digest
from veil.identity.receipt import ZERO_TICKET
from veil.node.config import NodeConfig
from veil.node.keys import NodeKeys
from veil.node.payments import NodePayments, Redeemer, TicketDesk, TicketQueue
from veil.wire import bhttp, ohttp

pytestmark = pytest.mark.slow

SENDER = account(21)
BODY = {
    "model": PACKAGED_MODEL_ID,
    "messages": [{"role": "user", "content": "Say hi"}],
    "max_tokens": 3,
    "temperature": 0,
}


@pytest.fixture(scope="module")
def node(engine, tmp_path_factory):  # type: ignore[no-untyped-def]
    from veil.node.api import create_app

    identity = NodeIdentity.generate()
    keys = NodeKeys.generate()
    queue = TicketQueue(tmp_path_factory.mktemp("pay") / "tickets.jsonl")
    funds = FakeFundsSource({SENDER.address: SenderFunds(100 * TOKEN, 0, 0)})
    desk = TicketDesk(
        identity.address,
        _domain(),
        funds,
        queue,
        face_value=TOKEN,
        win_prob=win_prob_for(0.5),
    )
    chain = FakeRedeemTarget({})
    payments = NodePayments(desk, Redeemer(queue, chain, desk.stats, interval_s=0.05))
    app = create_app(
        engine,
        NodeConfig(max_tokens_limit=64, default_max_tokens=16),
        keys,
        identity,
        payments=payments,
    )
    with ServerThread(app) as server:
        server.identity, server.keys, server.chain, server.funds = identity, keys, chain, funds
        yield server


def _domain():  # type: ignore[no-untyped-def]
    from support.payments import DOMAIN

    return DOMAIN


def params_of(response: httpx.Response) -> TicketParams:
    return TicketParams.from_header(response.headers[TICKET_PARAMS_HEADER])


def chat(node, ticket: str | None = None, **body: object) -> httpx.Response:  # type: ignore[no-untyped-def]
    headers = {TICKET_HEADER: ticket} if ticket is not None else {}
    return httpx.post(
        node.url + "/v1/chat/completions",
        content=json.dumps(BODY | body).encode(),
        headers=headers,
        timeout=60,
    )


def test_params_endpoint(node) -> None:  # type: ignore[no-untyped-def]
    answer = httpx.get(node.url + TICKET_PARAMS_PATH)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "no-store"
    params = TicketParams.parse(answer.content)
    assert params.recipient == node.identity.address and params.face_value == TOKEN


def test_unpaid_and_bad_tickets_get_402_and_the_node_keeps_serving(node) -> None:  # type: ignore[no-untyped-def]
    before = httpx.get(node.url + "/healthz").json()["requests"]
    unpaid = chat(node)
    assert unpaid.status_code == 402
    assert unpaid.json()["error"]["type"] == "payment_error"
    assert unpaid.json()["error"]["code"] == "payment_required"
    params = params_of(unpaid)
    cases = [
        ("garbage!", "invalid_ticket"),
        (write_ticket(params, SENDER, 1, expiry=int(time.time()) + 60), "ticket_expired"),
        (write_ticket(params, SENDER, 2, face_value=TOKEN // 10), "insufficient_payment"),
        (write_ticket(params, account(22), 3), "sender_unfunded"),
    ]
    for ticket, code in cases:
        header = ticket if isinstance(ticket, str) else ticket.header_value()
        answer = chat(node, header)
        assert answer.status_code == 402, answer.text
        assert answer.json()["error"]["code"] == code
        assert TICKET_PARAMS_HEADER in answer.headers
    bad_request = chat(node, "garbage!", max_tokens=10**6)  # validation comes first
    assert bad_request.status_code == 400 and TICKET_PARAMS_HEADER in bad_request.headers
    health = httpx.get(node.url + "/healthz").json()
    assert health["requests"] == before  # nothing reached the engine
    assert health["payments"]["refused"] >= 5


def _expiry() -> int:
    return int(time.time()) + 3600


def write_ticket(params, sender, nonce, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("expiry", _expiry())  # real time here, not support.payments' fixed clock
    return _write(params, sender, nonce, **kw)


def test_paid_requests_streamed_or_not_carry_the_ticket_in_the_receipt(node) -> None:  # type: ignore[no-untyped-def]
    params = params_of(chat(node))
    paid = write_ticket(params, SENDER, 100)
    answer = chat(node, paid.header_value())
    assert answer.status_code == 200, answer.text
    receipt = Receipt.from_json(answer.json()["veil_receipt"])
    assert receipt.ticket_id == paid.ticket_id(_domain()) != ZERO_TICKET
    check_receipt(
        receipt,
        node.identity.address,
        answer_text=answer.json()["choices"][0]["message"]["content"],
    )
    replay = chat(node, paid.header_value())
    assert replay.status_code == 402
    assert replay.json()["error"]["code"] in ("ticket_replayed", "ticket_params_stale")

    params = params_of(answer)  # a winner retires the rand: the header names the new one
    streamed_ticket = write_ticket(params, SENDER, 101)
    with httpx.stream(
        "POST",
        node.url + "/v1/chat/completions",
        content=json.dumps(BODY | {"stream": True}).encode(),
        headers={TICKET_HEADER: streamed_ticket.header_value()},
        timeout=60,
    ) as streamed:
        assert streamed.status_code == 200 and TICKET_PARAMS_HEADER in streamed.headers
        events = [line for line in streamed.iter_lines() if line.startswith("data: {")]
    final = json.loads(events[-1][6:])
    assert Receipt.from_json(final["veil_receipt"]).ticket_id == streamed_ticket.ticket_id(
        _domain()
    )


def test_winners_are_redeemed_by_the_lifespan_redeemer(node) -> None:  # type: ignore[no-untyped-def]
    params = TicketParams.parse(httpx.get(node.url + TICKET_PARAMS_PATH).content)
    won = 0
    for nonce in range(200, 260):  # until two winners: at p = 0.5, 60 tries all but never fail
        paid = write_ticket(params, SENDER, nonce)
        answer = chat(node, paid.header_value(), max_tokens=1)
        assert answer.status_code == 200, answer.text
        fresh = params_of(answer)
        won += fresh.recipient_rand_hash != params.recipient_rand_hash
        params = fresh
        if won >= 2:
            break
    assert won > 0  # 60 losses in a row: probability 2^-60
    deadline = time.monotonic() + 10
    while httpx.get(node.url + "/healthz").json()["payments"]["pending"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    health = httpx.get(node.url + "/healthz").json()["payments"]
    assert health["redeemed"] == health["winners"] >= won
    assert int(health["redeemed_face_value"]) == health["redeemed"] * TOKEN


def test_sealed_paid_request_through_the_gateway(node) -> None:  # type: ignore[no-untyped-def]
    config = node.keys.current.config

    def sealed(path: str, method: str = "GET", headers=(), body: bytes = b""):  # type: ignore[no-untyped-def]
        message = bhttp.encode_request(
            bhttp.Request(method, "https", "node.veil.invalid", path, tuple(headers), body)
        )
        data, opener = ohttp.encapsulate_request(config, message)
        answer = httpx.post(
            node.url + "/gateway",
            content=data,
            headers={"content-type": ohttp.MEDIA_REQUEST},
            timeout=60,
        )
        assert answer.status_code == 200
        return data, bhttp.decode_response(opener.open(answer.content))

    _, inner = sealed(TICKET_PARAMS_PATH)
    assert inner.status == 200
    params = TicketParams.parse(inner.content)
    paid = write_ticket(params, SENDER, 300)
    data, inner = sealed(
        "/v1/chat/completions",
        "POST",
        (
            (b"content-type", b"application/json"),
            (TICKET_HEADER.encode(), paid.header_value().encode()),
        ),
        json.dumps(BODY).encode(),
    )
    assert inner.status == 200, inner.content
    assert inner.header(TICKET_PARAMS_HEADER.encode())
    receipt = Receipt.from_json(json.loads(inner.content)["veil_receipt"])
    assert receipt.ticket_id == paid.ticket_id(_domain())
    assert receipt.request_digest == request_digest(data)
