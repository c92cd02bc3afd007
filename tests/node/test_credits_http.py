"""Anonymous credits on the real model: buying a batch with one ticket, spending tokens instead
of tickets, every refusal (the node keeps serving), and what the node receives with a redemption
(nothing that names the wallet that bought the tokens)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from support.net import ServerThread
from support.payments import DOMAIN, TOKEN, FakeFundsSource, FakeRedeemTarget, account
from support.payments import write_ticket as _write
from veil.chain.payment import TICKET_PARAMS_HEADER, TicketParams
from veil.chain.tickets import win_prob_for
from veil.chain.types import SenderFunds
from veil.engine import PACKAGED_MODEL_ID
from veil.identity import NodeIdentity, Receipt, load_descriptor
from veil.identity.credits.errors import CreditMalformed
from veil.identity.credits.token import (
    Token,
    begin_issuance,
    decode_public_key,
    encode_token_header,
    finish_issuance,
    node_challenge,
    tokens_payment_id,
    verify_token,
)
from veil.identity.receipt import ZERO_TICKET
from veil.node.config import NodeConfig
from veil.node.keys import NodeKeys
from veil.node.payments import NodePayments, Redeemer, TicketDesk, TicketQueue
from veil.wire.http import (
    CREDITS_PATH,
    DESCRIPTOR_PATH,
    MEDIA_TOKEN_REQUEST,
    TICKET_HEADER,
    TOKEN_KEYS_PATH,
    TOKENS_HEADER,
)

pytestmark = pytest.mark.slow

WALLETS = [account(31), account(32)]
BODY = {
    "model": PACKAGED_MODEL_ID,
    "messages": [{"role": "user", "content": "Say hi"}],
    "max_tokens": 2,
    "temperature": 0,
}


class Recorder:
    """ASGI wrapper keeping the headers and body of every chat request: the node's view."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[dict[str, str], bytes]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return
        body = bytearray()

        async def recording_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
            return message

        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        await self.app(scope, recording_receive, send)
        self.seen.append((headers, bytes(body)))


@pytest.fixture(scope="module")
def node(engine, tmp_path_factory):  # type: ignore[no-untyped-def]
    from veil.node.api import create_app

    identity = NodeIdentity.generate()
    queue = TicketQueue(tmp_path_factory.mktemp("pay") / "tickets.jsonl")
    funds = FakeFundsSource({w.address: SenderFunds(100 * TOKEN, 0, 0) for w in WALLETS})
    desk = TicketDesk(identity.address, DOMAIN, funds, queue, win_prob=win_prob_for(0.5))
    payments = NodePayments(desk, Redeemer(queue, FakeRedeemTarget({}), desk.stats))
    config = NodeConfig(
        max_tokens_limit=16,
        default_max_tokens=2,
        credits_path=str(tmp_path_factory.mktemp("credits")),
    )
    app = create_app(engine, config, NodeKeys.generate(), identity, payments=payments)
    recorder = Recorder(app)
    with ServerThread(recorder) as server:
        server.identity, server.recorder, server.desk = identity, recorder, desk
        yield server


def _params(node) -> TicketParams:  # type: ignore[no-untyped-def]
    answer = httpx.post(node.url + "/v1/chat/completions", json=BODY, timeout=60)
    return TicketParams.from_header(answer.headers[TICKET_PARAMS_HEADER])


_nonce = iter(range(1000, 10**6))


def buy(node, wallet, count: int, *, face_value: int | None = None) -> list[Token]:  # type: ignore[no-untyped-def]
    """Buy `count` tokens with one ticket worth `count` requests (face value x win prob)."""
    key = httpx.get(node.url + TOKEN_KEYS_PATH).json()["keys"][0]
    public = bytes.fromhex(key["public_key"])
    pending = [begin_issuance(public, node_challenge(node.identity.address)) for _ in range(count)]
    params = _params(node)
    ticket = _write(
        params,
        wallet,
        next(_nonce),
        expiry=int(time.time()) + 3600,
        face_value=face_value if face_value is not None else 2 * count * TOKEN,
    )
    answer = httpx.post(
        node.url + CREDITS_PATH,
        content=b"".join(r.encode() for r, _ in pending),
        headers={"content-type": MEDIA_TOKEN_REQUEST, TICKET_HEADER: ticket.header_value()},
        timeout=60,
    )
    if answer.status_code != 200:
        raise AssertionError(answer.json()["error"]["code"])
    assert len(answer.content) == 256 * count
    return [
        finish_issuance(public, state, answer.content[i * 256 : (i + 1) * 256])
        for i, (_, state) in enumerate(pending)
    ]


def spend(node, tokens: list[Token] | str) -> httpx.Response:  # type: ignore[no-untyped-def]
    header = tokens if isinstance(tokens, str) else encode_token_header(tokens)
    return httpx.post(
        node.url + "/v1/chat/completions", json=BODY, headers={TOKENS_HEADER: header}, timeout=60
    )


def test_keys_are_listed_and_a_bought_batch_verifies(node) -> None:  # type: ignore[no-untyped-def]
    keys = httpx.get(node.url + TOKEN_KEYS_PATH).json()["keys"]
    assert len(keys) == 1 and keys[0]["not_before"] <= time.time() < keys[0]["not_after"]
    tokens = buy(node, WALLETS[0], 4)
    public = decode_public_key(bytes.fromhex(keys[0]["public_key"]))
    for token in tokens:
        verify_token(public, token)
    assert len({t.nonce for t in tokens}) == 4


def test_the_signed_descriptor_commits_the_token_keys(node) -> None:  # type: ignore[no-untyped-def]
    keys = httpx.get(node.url + TOKEN_KEYS_PATH).json()["keys"]
    signed = load_descriptor(httpx.get(node.url + DESCRIPTOR_PATH).content, int(time.time()))
    assert signed.signer() == node.identity.address
    assert signed.descriptor.token_keys == tuple(bytes.fromhex(k["key_id"]) for k in keys)


def test_a_batch_whose_ticket_fails_is_refused_and_nothing_is_issued(node) -> None:  # type: ignore[no-untyped-def]
    issued = node.desk.stats.snapshot()["accepted"]
    with pytest.raises(AssertionError, match="insufficient_payment"):
        buy(node, WALLETS[0], 4, face_value=TOKEN)  # worth 0.5 requests, not 4
    with pytest.raises(AssertionError, match="sender_unfunded"):
        buy(node, account(99), 1)
    assert node.desk.stats.snapshot()["accepted"] == issued
    malformed = httpx.post(node.url + CREDITS_PATH, content=b"\x00\x02junk", timeout=10)
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "token_request_malformed"


def test_spending_tokens_and_every_refusal(node) -> None:  # type: ignore[no-untyped-def]
    tokens = buy(node, WALLETS[0], 3)
    answer = spend(node, tokens[:1])
    assert answer.status_code == 200, answer.text
    # the receipt names the tokens spent, as it would name a ticket: one token, one id
    paid = Receipt.from_json(answer.json()["veil_receipt"]).ticket_id
    assert paid == tokens_payment_id(tokens[:1]) != tokens_payment_id(tokens[1:2])
    assert paid != ZERO_TICKET
    good = tokens[1]
    forged = Token(good.nonce, good.challenge_digest, good.token_key_id, bytes(256))
    unknown = Token(good.nonce, good.challenge_digest, bytes(32), good.authenticator)
    other = Token(good.nonce, bytes(32), good.token_key_id, good.authenticator)
    cases = [
        (tokens[:1], "token_spent"),
        ("%%%", "token_malformed"),
        (encode_token_header([good])[:-3], "token_malformed"),
        ([forged], "token_invalid"),
        ([unknown], "token_unknown_epoch"),
        ([other], "token_wrong_node"),
    ]
    before = httpx.get(node.url + "/healthz").json()["requests"]
    for value, code in cases:
        refused = spend(node, value)
        assert refused.status_code == 402, refused.text
        assert refused.json()["error"] == {
            "message": refused.json()["error"]["message"],
            "type": "payment_error",
            "param": None,
            "code": code,
        }
    assert httpx.get(node.url + "/healthz").json()["requests"] == before
    assert spend(node, [good]).status_code == 200  # the node kept serving; nothing was spent
    assert spend(node, tokens[2:]).status_code == 200


def test_a_truncated_issuance_response_is_refused_by_the_client(node) -> None:  # type: ignore[no-untyped-def]
    key = httpx.get(node.url + TOKEN_KEYS_PATH).json()["keys"][0]
    public = bytes.fromhex(key["public_key"])
    _, state = begin_issuance(public, node_challenge(node.identity.address))
    with pytest.raises(CreditMalformed):
        finish_issuance(public, state, bytes(200))


def test_redemptions_carry_nothing_that_names_the_buying_wallet(node) -> None:  # type: ignore[no-untyped-def]
    bought = {w.address: buy(node, w, 4) for w in WALLETS}
    tickets_before = len(node.recorder.seen)
    order = [(w.address, i) for i in range(4) for w in WALLETS]  # interleaved
    for address, i in order:
        assert spend(node, [bought[address][i]]).status_code == 200
    seen = node.recorder.seen[tickets_before:]
    assert len(seen) == len(order)
    views: dict[str, set[tuple[object, ...]]] = {w.address: set() for w in WALLETS}
    for (address, _), (headers, body) in zip(order, seen, strict=True):
        assert TICKET_HEADER not in headers
        text = json.dumps(headers).lower() + body.decode()
        for wallet in WALLETS:
            assert wallet.address.lower()[2:] not in text
        token = Token.decode(__import__("base64").urlsafe_b64decode(headers[TOKENS_HEADER] + "=="))
        # Everything the node gets, except the random nonce and the signature over it:
        views[address].add(
            (
                tuple(sorted(k for k in headers if k != "content-length")),
                headers["content-length"],
                len(headers[TOKENS_HEADER]),
                token.token_key_id,
                token.challenge_digest,
                body,
            )
        )
    # The two wallets' redemptions look the same: any classifier of them is at chance.
    assert views[WALLETS[0].address] == views[WALLETS[1].address]
    assert len(views[WALLETS[0].address]) == 1
