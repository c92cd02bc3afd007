"""The relay: forwards only to known nodes, strips headers, enforces limits, typed refusals."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from support.ohttp import ANSWER, SECRET_PROMPT, make_inner_app
from veil.client import AsyncOhttpTransport, RelayRefused, relay_keys_url
from veil.node.gateway import create_gateway_app
from veil.node.keys import NodeKeys
from veil.relay.app import RateLimiter, RelayConfig, create_relay_app
from veil.relay.directory import Node, NodeConfigError, StaticNodeDirectory, load_nodes
from veil.wire import ohttp


class Recorder(httpx.AsyncBaseTransport):
    """The node side of the relay: records what arrives, answers with the gateway app."""

    def __init__(self, app) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.seen: list[tuple[str, dict[str, str], bytes]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        self.seen.append((str(request.url), dict(request.headers), body))
        return await self.inner.handle_async_request(request)


@pytest.fixture
def keys() -> NodeKeys:
    return NodeKeys.generate(1)


@pytest.fixture
def node_side(keys: NodeKeys) -> Recorder:
    return Recorder(create_gateway_app(make_inner_app([]), keys))


def relay_client(node_side: Recorder, **config) -> httpx.AsyncClient:
    directory = StaticNodeDirectory([Node("node-a", "http://node-a.test")])
    app = create_relay_app(directory, RelayConfig(**config), upstream=node_side)
    transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 4000))
    return httpx.AsyncClient(transport=transport, base_url="http://relay")


async def test_chat_through_relay_and_headers_stripped(node_side: Recorder) -> None:
    relay = relay_client(node_side)
    transport = AsyncOhttpTransport(
        "http://relay",
        "node-a",
        keys_url=relay_keys_url("http://relay", "node-a"),
        outer=relay._transport,
    )
    async with httpx.AsyncClient(transport=transport) as http:
        answer = await http.post(
            "https://node.veil.invalid/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": SECRET_PROMPT}]},
            headers={"x-client-secret": "yes", "user-agent": "me"},
        )
    assert answer.json()["choices"][0]["message"]["content"] == ANSWER
    posts = [s for s in node_side.seen if s[0].endswith("/gateway")]
    assert posts and all(SECRET_PROMPT.encode() not in body for _, _, body in posts)
    for _url, headers, _ in node_side.seen:
        assert set(headers) <= {"host", "content-type", "content-length", "incremental", "accept"}
        assert "198.51.100.7" not in str(headers)


async def test_outer_client_headers_are_not_forwarded(node_side: Recorder, keys: NodeKeys) -> None:
    relay = relay_client(node_side)
    sealed, _ = ohttp.encapsulate_request(keys.current.config, b"\x00\x03GET\x00\x00\x08/healthz")
    answer = await relay.post(
        "/relay/node-a",
        content=sealed,
        headers={
            "content-type": ohttp.MEDIA_REQUEST,
            "cookie": "c=1",
            "x-forwarded-for": "10.0.0.1",
            "authorization": "Bearer t",
            "user-agent": "client/1",
        },
    )
    assert answer.status_code == 200
    assert set(answer.headers) <= {"content-type", "cache-control", "content-length", "date"}
    _, headers, _ = node_side.seen[-1]
    assert set(headers) == {"host", "content-type", "content-length"}


@pytest.mark.parametrize(
    ("path", "media", "body", "status", "code"),
    [
        ("/relay/nobody", ohttp.MEDIA_REQUEST, b"x", 404, "unknown-node"),
        ("/relay/NODE-A", ohttp.MEDIA_REQUEST, b"x", 404, "unknown-node"),
        ("/relay/node-a", "application/json", b"{}", 415, "media-type"),
        ("/relay/node-a", ohttp.MEDIA_REQUEST, b"x" * 2000, 413, "too-large"),
        ("/relay/node-a", ohttp.MEDIA_REQUEST, b"x", 400, "not-ohttp"),
    ],
)
async def test_refusals(node_side: Recorder, path, media, body, status, code) -> None:
    relay = relay_client(node_side, max_body_bytes=1000)
    answer = await relay.post(path, content=body, headers={"content-type": media})
    assert answer.status_code == status
    assert answer.json()["type"] == "urn:veil:relay:" + code
    assert answer.json()["error"]["message"]
    assert node_side.seen == []


async def test_rate_limit(node_side: Recorder) -> None:
    relay = relay_client(node_side, rate_per_s=0.001, burst=2)
    statuses = [
        (
            await relay.post(
                "/relay/nobody", content=b"x", headers={"content-type": ohttp.MEDIA_REQUEST}
            )
        ).status_code
        for _ in range(3)
    ]
    assert statuses == [404, 404, 429]


async def test_unreachable_node_is_502(keys: NodeKeys) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    directory = StaticNodeDirectory([Node("node-a", "http://node-a.test")])
    app = create_relay_app(directory, upstream=httpx.MockTransport(refuse))
    sealed, _ = ohttp.encapsulate_request(keys.current.config, b"\x00\x03GET\x00\x00\x08/healthz")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://r"
    ) as relay:
        answer = await relay.post(
            "/relay/node-a", content=sealed, headers={"content-type": ohttp.MEDIA_REQUEST}
        )
        assert answer.status_code == 502
        assert (await relay.get("/relay/node-a/ohttp-keys")).status_code == 502
    transport = AsyncOhttpTransport(
        "http://r",
        "node-a",
        keys_url="http://r/relay/node-a/ohttp-keys",
        outer=httpx.ASGITransport(app=app),
    )
    with pytest.raises(Exception) as info:
        await transport.handle_async_request(httpx.Request("GET", "https://n.invalid/v1/models"))
    assert not isinstance(info.value, RelayRefused) or info.value.status == 502


async def test_path_tricks_reach_no_node(node_side: Recorder) -> None:
    relay = relay_client(node_side)
    for path in ("/relay/..%2Fadmin", "/relay/node-a/../x", "/relay/http:%2F%2Fevil"):
        answer = await relay.post(path, content=b"x", headers={"content-type": ohttp.MEDIA_REQUEST})
        assert answer.status_code in (404, 405)
    assert node_side.seen == []


def test_rate_limiter_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=1.0, burst=1, max_clients=2, clock=lambda: now[0])
    assert limiter.allow("a") == 0 and limiter.allow("a") > 0
    now[0] = 1.0
    assert limiter.allow("a") == 0


def test_node_list_files(tmp_path: Path) -> None:
    toml = tmp_path / "nodes.toml"
    toml.write_text('[[nodes]]\nid = "node-a"\nurl = "http://127.0.0.1:8001"\n')
    assert load_nodes(toml).get("node-a") == Node("node-a", "http://127.0.0.1:8001")
    js = tmp_path / "nodes.json"
    js.write_text('{"nodes": [{"id": "b", "url": "https://b.example"}]}')
    assert load_nodes(js).get("b").gateway_url == "https://b.example/gateway"
    for bad in (
        '{"nodes": [{"id": "a/b", "url": "http://x"}]}',
        '{"nodes": [{"id": "a", "url": "ftp://x"}]}',
        '{"nodes": [{"id": "a", "url": "http://x.example/"}]}',  # endpoints are host and port
        '{"nodes": 3}',
        "not json",
    ):
        js.write_text(bad)
        with pytest.raises(NodeConfigError):
            load_nodes(js)


async def test_descriptor_forwarded_bare_and_checked() -> None:
    from veil.identity import DESCRIPTOR_PATH, MEDIA_DESCRIPTOR

    seen: list[httpx.Request] = []
    answers = {"media": MEDIA_DESCRIPTOR, "body": b'{"descriptor": {}, "signature": "0x"}'}

    def node(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, headers={"content-type": answers["media"]}, content=answers["body"]
        )

    directory = StaticNodeDirectory([Node("node-a", "http://node-a.test")])
    app = create_relay_app(directory, RelayConfig(), upstream=httpx.MockTransport(node))
    transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as relay:
        r = await relay.get("/relay/node-a/descriptor", headers={"user-agent": "me"})
        assert r.status_code == 200 and r.content == answers["body"]
        assert r.headers["content-type"] == MEDIA_DESCRIPTOR
        assert seen[0].url.path == DESCRIPTOR_PATH
        assert "user-agent" not in seen[0].headers  # nothing of the client goes upstream
        answers["media"] = "text/html"
        r = await relay.get("/relay/node-a/descriptor")
        assert r.status_code == 502
        answers.update(media=MEDIA_DESCRIPTOR, body=b"x" * (600 * 1024))
        r = await relay.get("/relay/node-a/descriptor")
        assert r.status_code == 502
        r = await relay.get("/relay/nobody/descriptor")
        assert r.status_code == 404


async def test_ticket_params_forwarded_bare_and_capped() -> None:
    from veil.chain.payment import MEDIA_TICKET_PARAMS, TICKET_PARAMS_PATH, TicketParams

    offer = TicketParams(
        "0x" + "11" * 20, 10**15, 2**200, b"\x07" * 32, 2**31, 31337, "0x" + "22" * 20
    )
    seen: list[httpx.Request] = []
    answers = {"media": MEDIA_TICKET_PARAMS, "body": offer.encode()}

    def node(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, headers={"content-type": answers["media"]}, content=answers["body"]
        )

    directory = StaticNodeDirectory([Node("node-a", "http://node-a.test")])
    app = create_relay_app(directory, RelayConfig(), upstream=httpx.MockTransport(node))
    transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://relay") as relay:
        r = await relay.get("/relay/node-a/ticket-params", headers={"user-agent": "me"})
        assert r.status_code == 200 and r.content == answers["body"]
        assert r.headers["content-type"] == MEDIA_TICKET_PARAMS
        assert seen[0].url.path == TICKET_PARAMS_PATH
        assert "user-agent" not in seen[0].headers
        answers["media"] = "text/html"
        assert (await relay.get("/relay/node-a/ticket-params")).status_code == 502
        answers.update(media=MEDIA_TICKET_PARAMS, body=b'{"recipient": "0x00"}')  # JSON, no offer
        assert (await relay.get("/relay/node-a/ticket-params")).status_code == 502
        answers.update(media=MEDIA_TICKET_PARAMS, body=b"x" * (17 * 1024))
        assert (await relay.get("/relay/node-a/ticket-params")).status_code == 502
        assert (await relay.get("/relay/nobody/ticket-params")).status_code == 404


@pytest.mark.parametrize("kind", ["tarpit", "trickle"])
async def test_a_slow_node_costs_a_document_fetch_its_deadline_only(kind: str) -> None:
    """A node that never answers, or trickles, holds the relay no longer than the fetch
    deadline (not the long read timeout chat answers get), whoever waits for it."""
    import time

    from support.gateway import SlowNode

    slow = SlowNode(kind)
    try:
        directory = StaticNodeDirectory([Node("slow", slow.url)])
        config = RelayConfig(allow_private_endpoints=True, read_timeout_s=60, fetch_deadline_s=0.5)
        app = create_relay_app(directory, config)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),  # its upstream client, closed at the end
            httpx.AsyncClient(transport=transport, base_url="http://relay") as relay,
        ):
            for path in ("descriptor", "ohttp-keys", "ticket-params"):
                began = time.monotonic()
                answer = await relay.get(f"/relay/slow/{path}")
                assert answer.status_code == 502
                assert time.monotonic() - began < 5
        assert slow.accepted == 3
    finally:
        slow.close()
