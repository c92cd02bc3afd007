"""The local gateway against fake paying nodes behind the real relay, with an in-memory chain.

Everything runs over loopback HTTP (uvicorn threads): the openai SDK talks to the gateway, the
gateway reads the fake chain, verifies descriptors through the relay, pays with tickets, and
checks receipts. The model-backed, anvil-backed run is in test_client_gateway_chain.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from support.gateway import (
    ANSWER,
    DOMAIN,
    MODEL,
    SECRET_PROMPT,
    TOKEN,
    TOKENS,
    WEIGHTS,
    FakeChainReader,
    FakeNodeApi,
    RecordingApp,
    approve,
)
from support.net import ServerThread, until
from veil.attest.policy import PrivacyMode
from veil.chain.payment import TicketParams
from veil.client.discovery import DiscoveryConfig
from veil.client.errors import PriceAboveLimit
from veil.client.gateway import GatewayConfig, Router, create_gateway_app, split_mode
from veil.client.payer import TICKET_LIFETIME_S, Payer, Wallet
from veil.identity import NodeIdentity
from veil.relay.app import RelayConfig, create_relay_app
from veil.relay.directory import Node, StaticNodeDirectory

MESSAGES = [{"role": "user", "content": SECRET_PROMPT}]


class Network:
    def __init__(self) -> None:
        self.chain = FakeChainReader()
        approve(self.chain)
        self.a, self.b = FakeNodeApi(), FakeNodeApi()
        self.bad_hash = FakeNodeApi()  # registers other weights than it serves
        self.impostor = NodeIdentity.generate().address  # its relay id leads to node a
        self.servers = [ServerThread(n.app) for n in (self.a, self.b, self.bad_hash)]
        for s in self.servers:
            s.__enter__()
        for node in (self.a, self.b):
            self.chain.register(node.address, [(MODEL, WEIGHTS)], 200 * TOKEN)
        self.chain.register(self.bad_hash.address, [(MODEL, b"\x01" * 32)], 200 * TOKEN)
        self.chain.register(self.impostor, [(MODEL, WEIGHTS)], 200 * TOKEN)
        directory = StaticNodeDirectory(
            [
                Node(self.a.address, self.servers[0].url),
                Node(self.b.address, self.servers[1].url),
                Node(self.bad_hash.address, self.servers[2].url),
                Node(self.impostor, self.servers[0].url),
            ]
        )
        self.relay_app = RecordingApp(
            create_relay_app(
                directory,
                RelayConfig(rate_per_s=1000, burst=1000, allow_private_endpoints=True),
            )
        )
        self.relay = ServerThread(self.relay_app).__enter__()
        self.wallet = Wallet(NodeIdentity.generate().private_key)
        self.chain.deposits[self.wallet.address] = 5 * TOKEN

    def close(self) -> None:
        self.relay.__exit__()
        for s in self.servers:
            s.__exit__()


@pytest.fixture(scope="module")
def net() -> Iterator[Network]:
    network = Network()
    yield network
    network.close()


@pytest.fixture
def gateway(net: Network) -> Iterator[ServerThread]:
    for node in (net.a, net.b, net.bad_hash):
        node.knob = None
        node.seen.clear()
    net.relay_app.calls.clear()
    app = create_gateway_app(net.chain, net.relay.url, wallet=net.wallet, config=GatewayConfig())
    with ServerThread(app) as server:
        yield server


def sdk(gateway: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def post(gateway: ServerThread, body: Any, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json", **kwargs.pop("headers", {})},
        timeout=30,
        **kwargs,
    )


def events(text: str) -> list[Any]:
    out = []
    for block in text.split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                payload = line[6:]
                out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def answering(net: Network) -> FakeNodeApi:
    [node] = [n for n in (net.a, net.b) if n.seen]
    return node


def test_openai_sdk_streamed_and_whole_with_receipts_and_tickets(
    net: Network, gateway: ServerThread
) -> None:
    client = sdk(gateway)
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=MESSAGES, stream=True
    ) as raw:
        headers = raw.headers
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    assert chunks[-1].model_extra["veil_receipt"]["ticket_id"] == headers["x-veil-ticket-id"]
    node = answering(net)
    assert headers["x-veil-node"] == node.address
    assert headers["x-veil-mode"] == "anonymous"
    assert headers["x-veil-attestation"] == "dev; no hardware isolation"
    assert "release" in headers["x-veil-verification"]
    assert headers["x-veil-receipt-id"] == "0x" + node.seen[-1]["digest"].hex()
    assert "x-veil-receipt" not in headers  # a stream's receipt is checked before [DONE]

    ticket = node.seen[-1]["ticket"]
    assert ticket.signer(DOMAIN) == net.wallet.address
    assert ticket.ticket.recipient == node.address
    assert ticket.ticket.recipient_rand_hash == node.rand_hash
    assert abs(ticket.ticket.expiry - net.chain.chain_time() - TICKET_LIFETIME_S) < 30
    assert "0x" + ticket.ticket_id(DOMAIN).hex() == headers["x-veil-ticket-id"]
    assert node.seen[-1]["model"] == MODEL

    raw_whole = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    whole = raw_whole.parse()
    assert whole.choices[0].message.content == ANSWER
    assert raw_whole.headers["x-veil-receipt"] == "verified"
    assert whole.model_extra["veil_receipt"]["ticket_id"] == raw_whole.headers["x-veil-ticket-id"]
    tickets = [s["ticket"] for n in (net.a, net.b) for s in n.seen]
    assert len({t.ticket.sender_nonce for t in tickets}) == 2  # a fresh nonce per request
    # what the node saw: the bare model, only sealed headers, nothing of the caller
    seen_headers = [s["headers"] for n in (net.a, net.b) for s in n.seen]
    assert all("user-agent" not in h and "authorization" not in h for h in seen_headers)


def test_mode_suffix_is_stripped_and_header_agrees(net: Network, gateway: ServerThread) -> None:
    r = post(gateway, {"model": MODEL + ":anonymous", "messages": MESSAGES})
    assert r.status_code == 200 and r.headers["x-veil-mode"] == "anonymous"
    r = post(
        gateway,
        {"model": MODEL, "messages": MESSAGES},
        headers={"x-veil-mode": "anonymous"},
    )
    assert r.status_code == 200
    assert [s["model"] for n in (net.a, net.b) for s in n.seen] == [MODEL, MODEL]


def test_tee_in_a_dev_network_is_refused_and_nothing_is_sent(
    net: Network, gateway: ServerThread
) -> None:
    for request in (
        {"body": {"model": MODEL + ":tee", "messages": MESSAGES}},
        {"body": {"model": MODEL, "messages": MESSAGES}, "headers": {"x-veil-mode": "tee"}},
    ):
        r = post(gateway, request["body"], headers=request.get("headers", {}))
        assert r.status_code == 403
        error = r.json()["error"]
        assert error["code"] == "no_node_satisfies_policy"
        for node in (net.a, net.b, net.bad_hash):
            assert node.address in error["message"]
        assert "dev evidence" in error["message"]
    assert not net.a.seen and not net.b.seen
    assert all(m == "GET" and p.endswith("/descriptor") for m, p in net.relay_app.calls)


def test_mode_errors(gateway: ServerThread) -> None:
    r = post(
        gateway,
        {"model": MODEL + ":tee", "messages": MESSAGES},
        headers={"x-veil-mode": "anonymous"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "mode_conflict"
    # no node here hosts an MPC party: refused, never answered in another mode
    r = post(gateway, {"model": MODEL + ":mpc", "messages": MESSAGES})
    assert r.status_code == 503 and r.json()["error"]["code"] == "mpc_unavailable"
    assert "no verified node hosts an MPC party" in r.json()["error"]["message"]
    r = post(gateway, {"model": MODEL, "messages": MESSAGES}, headers={"x-veil-mode": "weak"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_mode"


def test_split_mode() -> None:
    assert split_mode("m", None) == ("m", PrivacyMode.ANONYMOUS)
    assert split_mode("m:tee", None) == ("m", PrivacyMode.TEE)
    assert split_mode("m:tee", "TEE") == ("m", PrivacyMode.TEE)
    assert split_mode("llama3:8b", None) == ("llama3:8b", PrivacyMode.ANONYMOUS)


def test_failover_before_the_first_byte(net: Network, gateway: ServerThread) -> None:
    net.a.knob = "503"
    for stream in (True, False):
        r = post(gateway, {"model": MODEL, "messages": MESSAGES, "stream": stream})
        assert r.status_code == 200, r.text
        assert r.headers["x-veil-node"] == net.b.address
    assert len(net.a.seen) == 1  # tried once (first, or as the least measured), then skipped
    status = httpx.get(gateway.url + "/veil/status").json()
    [a] = [n for n in status["nodes"] if n["address"] == net.a.address]
    assert a["down_for_s"] > 20 and a["in_flight"] == 0


def test_no_available_node_is_a_503_naming_each_failure(
    net: Network, gateway: ServerThread
) -> None:
    net.a.knob = net.b.knob = "503"
    r = post(gateway, {"model": MODEL, "messages": MESSAGES})
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "no_node_available"
    assert net.a.address in error["message"] and net.b.address in error["message"]
    r = post(gateway, {"model": MODEL, "messages": MESSAGES})  # both down now
    assert r.status_code == 503 and "failed recently" in r.json()["error"]["message"]


def test_a_node_asking_more_than_the_limit_is_skipped_and_never_paid(
    net: Network, gateway: ServerThread
) -> None:
    net.a.knob = "dear"
    for _ in range(2):
        r = post(gateway, {"model": MODEL, "messages": MESSAGES})
        assert r.status_code == 200, r.text
        assert r.headers["x-veil-node"] == net.b.address
    assert net.a.seen == []  # no request (so no ticket) ever reached it
    net.b.knob = "dear"  # its answers now carry the dear offer: the cached one is dropped
    post(gateway, {"model": MODEL, "messages": MESSAGES})  # may still go at the old price
    r = post(gateway, {"model": MODEL, "messages": MESSAGES})
    assert r.status_code == 503
    assert "asks too much" in r.json()["error"]["message"]


def test_mid_stream_failure_is_an_error_event_not_a_silent_cut(
    net: Network, gateway: ServerThread
) -> None:
    net.a.knob = net.b.knob = "midstream"
    r = post(gateway, {"model": MODEL, "messages": MESSAGES, "stream": True})
    assert r.status_code == 200
    got = events(r.text)
    assert "[DONE]" not in got
    assert got[-1]["error"]["code"] == "node_failed_mid_stream"
    assert "".join(
        e["choices"][0]["delta"].get("content", "") for e in got[:-1] if e.get("choices")
    ) == "".join(TOKENS[:2])  # what arrived before the cut, then the error


def test_receipt_must_name_the_ticket(net: Network, gateway: ServerThread) -> None:
    net.a.knob = net.b.knob = "zero_ticket"
    r = post(gateway, {"model": MODEL, "messages": MESSAGES})
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "receipt_refused" and ANSWER not in r.text
    assert "ticket_id" in r.json()["error"]["message"]
    r = post(gateway, {"model": MODEL, "messages": MESSAGES, "stream": True})
    got = events(r.text)
    assert "[DONE]" not in got and got[-1]["error"]["code"] == "receipt_refused"


def test_stale_ticket_params_are_refreshed_and_retried_once(
    net: Network, gateway: ServerThread
) -> None:
    assert post(gateway, {"model": MODEL, "messages": MESSAGES}).status_code == 200
    node = answering(net)
    other = net.b if node is net.a else net.a
    other.knob = "503"  # keep the next request on `node`
    node.knob = "stale"
    old = node.rand_hash
    node.rand_hash = b"\x09" * 32  # it redeemed a winner: new params
    r = post(gateway, {"model": MODEL, "messages": MESSAGES})
    assert r.status_code == 200, r.text
    stale, paid = node.seen[-2]["ticket"], node.seen[-1]["ticket"]
    assert stale.ticket.recipient_rand_hash == old
    assert paid.ticket.recipient_rand_hash == node.rand_hash


@pytest.mark.parametrize(("moves", "status"), [(3, 200), (4, 402)])
def test_an_offer_that_keeps_moving_is_retried_a_bounded_number_of_times(
    net: Network, gateway: ServerThread, moves: int, status: int
) -> None:
    """Under load each winning ticket retires a node's offer, so a retry can find it moved
    again; refused tickets are never charged, so the gateway retries up to three times."""
    assert post(gateway, {"model": MODEL, "messages": MESSAGES}).status_code == 200
    node = answering(net)
    other = net.b if node is net.a else net.a
    other.knob = "503"  # keep the requests on `node`
    node.knob, node.moves = "moving", moves
    before = len(node.seen)
    r = post(gateway, {"model": MODEL, "messages": MESSAGES})
    assert r.status_code == status, r.text
    assert len(node.seen) - before == 4  # the first send and three retries, never more


def test_other_payment_refusals_pass_through(net: Network, gateway: ServerThread) -> None:
    net.a.knob = net.b.knob = "insufficient"
    r = post(gateway, {"model": MODEL, "messages": MESSAGES})
    assert r.status_code == 402
    assert r.json()["error"] == {
        "message": "insufficient_payment",
        "type": "payment_error",
        "param": None,
        "code": "insufficient_payment",
    }
    assert len(net.a.seen) + len(net.b.seen) == 1  # not retried, not failed over


def test_a_node_without_params_gets_no_ticket(net: Network, gateway: ServerThread) -> None:
    net.a.knob = net.b.knob = "no_params"
    r = post(gateway, {"model": MODEL, "messages": MESSAGES})
    assert r.status_code == 200 and "x-veil-ticket-id" not in r.headers
    assert answering(net).seen[-1]["ticket"] is None


def test_bad_input_gets_openai_errors_and_the_gateway_keeps_serving(
    gateway: ServerThread,
) -> None:
    cases = [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_request"),
        (json.dumps({"messages": MESSAGES}).encode(), 400, "missing_model"),
        (json.dumps({"model": "", "messages": MESSAGES}).encode(), 400, "missing_model"),
        (
            json.dumps({"model": "no-such-model", "messages": MESSAGES}).encode(),
            404,
            "model_not_found",
        ),
        (json.dumps({"model": MODEL, "stream": "yes"}).encode(), 400, "invalid_request"),
        (b"x" * ((1 << 20) + 1), 413, "request_too_large"),
    ]
    for body, status, code in cases:
        r = post(gateway, body)
        assert r.status_code == status, (body[:30], r.text)
        assert r.json()["error"]["code"] == code
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.NotFoundError):
        sdk(gateway).chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert post(gateway, {"model": MODEL, "messages": MESSAGES}).status_code == 200


def test_requests_the_node_would_refuse_are_400s_before_anything_is_fetched_or_paid(
    net: Network, gateway: ServerThread
) -> None:
    for body, param in [
        ({"model": MODEL, "messages": MESSAGES, "temperature": 5}, "temperature"),
        ({"model": MODEL, "messages": MESSAGES, "top_p": 0, "stream": True}, "top_p"),
        ({"model": MODEL, "messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": MODEL + ":tee", "messages": MESSAGES, "seed": 2**64}, "seed"),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": []}, "messages"),
    ]:
        r = post(gateway, body)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert error["code"] == "invalid_request" and error["param"] == param, error
        assert "x-veil-node" not in r.headers
    deep = b"[" * 100_000 + b"]" * 100_000  # never given to the recursive decoder
    r = post(gateway, deep)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    assert net.relay_app.calls == []  # no descriptor, ticket-params or sealed request
    assert not net.a.seen and not net.b.seen and not net.bad_hash.seen
    assert post(gateway, {"model": MODEL, "messages": MESSAGES}).status_code == 200


def test_models_and_status(net: Network, gateway: ServerThread) -> None:
    models = sdk(gateway).models.list()
    ids = sorted(m.id for m in models.data)
    assert ids == [MODEL, MODEL + ":anonymous"]  # no tee variant: no node satisfies tee
    [bare] = [m for m in models.data if m.id == MODEL]
    assert sorted(bare.model_extra["veil_nodes"]) == sorted([net.a.address, net.b.address])

    status = httpx.get(gateway.url + "/veil/status").json()
    assert status["wallet"] == {
        "address": net.wallet.address,
        "deposit": str(5 * TOKEN),
        "reserve": "0",
    }
    nodes = {n["address"]: n for n in status["nodes"]}
    assert set(nodes) == {net.a.address, net.b.address, net.bad_hash.address, net.impostor}
    a = nodes[net.a.address]
    assert a["modes"]["anonymous"] == {
        "verified": True,
        "attestation": "dev",
        "isolation": "no hardware isolation",
    }
    assert a["modes"]["tee"]["verified"] is False
    assert "dev evidence" in a["modes"]["tee"]["reason"]
    assert a["stake"] == str(200 * TOKEN) and a["in_flight"] == 0
    assert "weights hash" in nodes[net.bad_hash.address]["modes"]["anonymous"]["reason"]
    assert "not the operator" in nodes[net.impostor]["modes"]["anonymous"]["reason"]


def test_stake_below_minimum_is_refused(net: Network, gateway: ServerThread) -> None:
    net.chain.minimum = 300 * TOKEN
    try:
        r = post(gateway, {"model": MODEL, "messages": MESSAGES})
        assert r.status_code == 403
        assert "below the minimum" in r.json()["error"]["message"]
    finally:
        net.chain.minimum = 100 * TOKEN
    assert not net.a.seen and not net.b.seen


def test_no_log_line_carries_prompt_or_answer(
    net: Network, gateway: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert post(gateway, {"model": MODEL, "messages": MESSAGES}).status_code == 200
    r = post(gateway, {"model": MODEL, "messages": MESSAGES, "stream": True})
    assert "[DONE]" in r.text
    net.a.knob = net.b.knob = "zero_ticket"
    post(gateway, {"model": MODEL, "messages": MESSAGES, "stream": True})
    post(gateway, b'{"model": "x", "messages": "' + SECRET_PROMPT.encode() + b'"')
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records  # the gateway did log
    for secret in (SECRET_PROMPT, "cobalt-lantern", "quartz-9907", ANSWER):
        assert secret not in text


async def test_payer_refuses_params_it_must_not_pay() -> None:
    node = FakeNodeApi()
    wallet = Wallet(NodeIdentity.generate().private_key)
    payer = Payer(wallet, "http://relay.test", DOMAIN, chain_now=lambda: 1_000)
    good = node.params()
    assert payer.check(node.address, good) is None
    other = NodeIdentity.generate().address
    assert "not the node's operator" in payer.check(other, good)
    wrong_chain = TicketParams(**{**good.__dict__, "chain_id": 1})
    assert "another chain" in payer.check(node.address, wrong_chain)
    expired = TicketParams(**{**good.__dict__, "expires_at": 10})
    assert "expired" in payer.check(node.address, expired)
    assert not payer.update_from_header(other, good.header_value())
    assert payer.known(other) is None
    assert payer.update_from_header(node.address, good.header_value())
    payment = payer.pay(payer.known(node.address))
    assert payment.ticket.signer(DOMAIN) == wallet.address
    dear = TicketParams(**{**good.__dict__, "win_prob": 2**255, "face_value": 3 * TOKEN})
    assert "1.5 VEIL on average, above the limit of 1 VEIL" in payer.limit_reason(dear)
    huge = TicketParams(**{**good.__dict__, "face_value": 101 * TOKEN})
    assert "101 VEIL, above the limit of 100 VEIL" in payer.limit_reason(huge)
    with pytest.raises(PriceAboveLimit):  # a raised price drops the cached offer
        payer.update_from_header(node.address, huge.header_value())
    assert payer.known(node.address) is None
    assert payment.ticket.ticket.expiry >= 1_000 + TICKET_LIFETIME_S
    await payer.aclose()


def test_cached_sessions_are_verified_again_off_the_loop(net: Network) -> None:
    net.relay_app.calls.clear()
    config = GatewayConfig(discovery=DiscoveryConfig(reverify_s=0))
    app = create_gateway_app(net.chain, net.relay.url, config=config)
    with ServerThread(app) as gateway:
        for _ in range(2):
            r = post(gateway, {"model": MODEL, "messages": MESSAGES})
            assert r.status_code == 200 and "x-veil-ticket-id" not in r.headers  # no wallet
        node = r.headers["x-veil-node"]

        def fetches() -> int:
            return sum(p == f"/relay/{node}/descriptor" for _m, p in net.relay_app.calls)

        assert until(lambda: fetches() >= 2, 5)  # the second in the background, not waited for


def test_pick_prefers_fewer_in_flight_then_lower_latency() -> None:
    from types import SimpleNamespace

    router = Router()
    a, b, c = (SimpleNamespace(operator=f"0x{i}") for i in "abc")
    candidates: list[Any] = [a, b, c]
    assert router.pick(candidates) is a  # nothing measured: registration order
    router.record_ttfb("0xa", 0.5)
    router.record_ttfb("0xb", 0.2)
    router.record_ttfb("0xc", 0.3)
    assert router.pick(candidates) is b
    router.started("0xb")
    assert router.pick(candidates) is c
    router.mark_down("0xc", "test")
    assert router.pick(candidates) is a
    assert router.pick(candidates, exclude=["0xA"]) is b
    router.finished("0xb")
    assert router.pick(candidates) is b


def test_a_web_page_cannot_spend_the_wallet(net: Network, gateway: ServerThread) -> None:
    """A browser's simple cross-origin POST, a foreign Origin and a rebound Host are refused
    before anything is sent; the user's own SDK still gets its answer."""
    body = json.dumps({"model": MODEL, "messages": MESSAGES}).encode()
    url = gateway.url + "/v1/chat/completions"
    plain = httpx.post(url, content=body, headers={"content-type": "text/plain"})
    foreign = httpx.post(
        url, content=body, headers={"content-type": "application/json", "origin": "https://x.test"}
    )
    rebound = httpx.post(
        url, content=body, headers={"content-type": "application/json", "host": "evil.test"}
    )
    assert (plain.status_code, foreign.status_code, rebound.status_code) == (415, 403, 421)
    assert net.relay_app.calls == []
    assert net.a.seen == [] and net.b.seen == []
    answer = sdk(gateway).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert answer.choices[0].message.content
