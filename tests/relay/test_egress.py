"""The relay is not a request forger (issue 17): a staker's endpoint on the relay's own network
is never reached, only OHTTP goes out, only OHTTP comes back, and every upstream failure looks
the same.

`LoggingServer` is a real HTTP server on loopback that counts every connection it accepts:
"never reached" means not one TCP connection, not merely no answer passed on.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpcore
import httpx
import pytest

from support.net import free_port
from veil.client import AsyncOhttpTransport, RelayRefused, relay_keys_url
from veil.relay.app import RelayConfig, create_relay_app
from veil.relay.directory import ChainNodeDirectory, Node, StaticNodeDirectory
from veil.relay.egress import GuardedBackend, guarded_transport, refusal
from veil.wire import ohttp
from veil.wire.errors import OHTTP_KEY_PROBLEM

OPERATOR = "0x" + "Ab" * 20
KEY = ohttp.KeyPair.generate(1).config
PLAIN, _ = ohttp.encapsulate_request(KEY, b"\x00\x03GET\x00\x00\x08/healthz")
CHUNKED, _ = ohttp.encapsulate_chunked_request(KEY, b"\x00\x03GET\x00\x00\x08/healthz")
SECRET = b"INSIDE-ONLY"  # what a service on the relay's network would answer

_ANSWERS: dict[str, tuple[int, dict[str, str], bytes]] = {
    "text": (200, {"content-type": "text/plain"}, SECRET),
    "json": (200, {"content-type": "application/json"}, b'{"inside": "INSIDE-ONLY"}'),
    "redirect": (302, {"location": "http://127.0.0.1:1/"}, b""),
    "error": (500, {"content-type": "text/html"}, SECRET),
    "not-found-problem": (
        404,
        {"content-type": "application/problem+json"},
        json.dumps({"type": "about:blank", "title": "Not Found", "detail": "INSIDE-ONLY"}).encode(),
    ),
    "key-problem": (
        400,
        {"content-type": "application/problem+json"},
        json.dumps({"type": OHTTP_KEY_PROBLEM, "title": "t", "detail": "INSIDE-ONLY"}).encode(),
    ),
    "whole": (200, {"content-type": ohttp.MEDIA_RESPONSE}, b"\x01" * 100),
    "huge": (200, {"content-type": ohttp.MEDIA_RESPONSE}, b"\x01" * 4000),
    "gzip": (
        200,
        {"content-type": ohttp.MEDIA_RESPONSE, "content-encoding": "gzip"},
        gzip.compress(b"\x01" * 100),
    ),
    "slow": (200, {"content-type": ohttp.MEDIA_CHUNKED_RESPONSE}, b"\x01" * 100),
}


class LoggingServer:
    """A real HTTP server on 127.0.0.1 recording every connection and request; `mode` (a key
    of `_ANSWERS`) says how it answers."""

    def __init__(self, mode: str = "text") -> None:
        self.mode = mode
        self.connections = 0
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                outer.requests.append((self.command, self.path, dict(self.headers), body))
                status, headers, content = _ANSWERS[outer.mode]
                if outer.mode == "slow":
                    time.sleep(1.5)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = _answer

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request: object, client_address: object) -> bool:
                outer.connections += 1
                return True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[LoggingServer]:
    s = LoggingServer()
    yield s
    s.close()


def resolver(table: dict[str, Sequence[str]]):  # type: ignore[no-untyped-def]
    """A resolver seam: names from `table`, anything else unknown."""

    async def resolve(host: str, port: int) -> Sequence[str]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "unknown name")
        return table[host]

    return resolve


def relay_to(endpoint: str, *, allow_private: bool = False, resolve=None) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    """A relay whose registry lists one node, `OPERATOR`, at `endpoint`."""
    directory = ChainNodeDirectory(lambda: [(OPERATOR, endpoint)])
    directory.refresh()
    assert directory.get(OPERATOR) is not None  # canonical: the guard has to stop it
    config = RelayConfig(
        allow_private_endpoints=allow_private,
        connect_timeout_s=2.0,
        read_timeout_s=0.5,
        max_answer_bytes=1000,
    )
    app = create_relay_app(directory, config, resolve=resolve)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay")


async def every_way_in(relay: httpx.AsyncClient) -> list[tuple[int, str, bytes]]:
    """(status, content type, body) of each relay route to the node."""
    base = f"/relay/{OPERATOR}"
    answers = [
        await relay.post(base, content=PLAIN, headers={"content-type": ohttp.MEDIA_REQUEST}),
        await relay.post(
            base, content=CHUNKED, headers={"content-type": ohttp.MEDIA_CHUNKED_REQUEST}
        ),
        *[
            await relay.get(base + path)
            for path in ("/ohttp-keys", "/descriptor", "/ticket-params")
        ],
    ]
    return [(a.status_code, a.headers.get("content-type", ""), a.content) for a in answers]


async def upstream_failed_answer() -> tuple[int, str, bytes]:
    """The relay's answer to a node that cannot be reached: the one every failure must match."""
    async with relay_to(f"http://127.0.0.1:{free_port()}", allow_private=True) as relay:
        answer = await relay.get(f"/relay/{OPERATOR}/ohttp-keys")
    assert answer.status_code == 502
    assert answer.json()["type"] == "urn:veil:relay:upstream-failed"
    return answer.status_code, answer.headers["content-type"], answer.content


@pytest.mark.parametrize(
    ("endpoint", "names"),
    [
        ("http://127.0.0.1:{port}", {}),
        ("http://localhost:{port}", None),  # the system resolver
        ("http://inside.example:{port}", {"inside.example": ["127.0.0.1"]}),
        ("http://inside.example:{port}", {"inside.example": ["::ffff:127.0.0.1"]}),
        ("http://mixed.example:{port}", {"mixed.example": ["8.8.8.8", "127.0.0.1"]}),
        ("http://[::1]:{port}", {}),
    ],
)
async def test_a_registered_endpoint_on_the_relays_network_is_never_reached(
    server: LoggingServer, endpoint: str, names: dict[str, list[str]] | None
) -> None:
    endpoint = endpoint.format(port=server.port)
    resolve = None if names is None else resolver({"127.0.0.1": ["127.0.0.1"], **names})
    if "[::1]" in endpoint:
        resolve = resolver({"::1": ["::1"]})
    failed = await upstream_failed_answer()
    async with relay_to(endpoint, resolve=resolve) as relay:
        answers = await every_way_in(relay)
    assert answers == [failed] * 5
    assert server.connections == 0 and server.requests == []


async def test_the_same_server_is_reached_with_the_devnet_flag(server: LoggingServer) -> None:
    """The control for the test above: the logging server works, and what it answers (not
    OHTTP) still comes back as the one upstream failure."""
    failed = await upstream_failed_answer()
    async with relay_to(
        "http://inside.example:" + str(server.port),
        allow_private=True,
        resolve=resolver({"inside.example": ["127.0.0.1"]}),
    ) as relay:
        answers = await every_way_in(relay)
    assert answers == [failed] * 5
    assert [(m, p) for m, p, _, _ in server.requests] == [
        ("POST", "/gateway"),
        ("POST", "/gateway"),
        ("GET", "/.well-known/ohttp-keys"),
        ("GET", "/.well-known/veil-node"),
        ("GET", "/.well-known/veil-ticket-params"),
    ]
    # Pinned to the checked address, yet the Host header is still the registered name.
    assert {h["Host"] for _, _, h, _ in server.requests} == {f"inside.example:{server.port}"}


def _with(sealed: bytes, offset: int, value: bytes) -> bytes:
    return sealed[:offset] + value + sealed[offset + len(value) :]


NOT_OHTTP = [
    b"",
    b"x",
    b"POST /admin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b'{"jsonrpc":"2.0","method":"eth_sendTransaction","params":[],"id":1}',
    _with(PLAIN, 1, b"\x00\x10"),  # KEM P-256: not one the network uses
    _with(PLAIN, 3, b"\x00\x02"),  # KDF HKDF-SHA384
    _with(PLAIN, 5, b"\x00\x02"),  # AEAD AES-256-GCM
    _with(PLAIN, 5, b"\xff\xff"),  # export-only
    PLAIN[: 7 + 32 + 15],  # header and key, but not even one AEAD tag
]


@pytest.mark.parametrize("media", [ohttp.MEDIA_REQUEST, ohttp.MEDIA_CHUNKED_REQUEST])
async def test_a_body_that_is_not_ohttp_is_refused_before_any_node_is_contacted(
    server: LoggingServer, media: str
) -> None:
    async with relay_to(f"http://127.0.0.1:{server.port}", allow_private=True) as relay:
        for body in NOT_OHTTP:
            answer = await relay.post(
                f"/relay/{OPERATOR}", content=body, headers={"content-type": media}
            )
            assert answer.status_code == 400, body
            assert answer.json()["type"] == "urn:veil:relay:not-ohttp"
        assert server.connections == 0
        sealed = CHUNKED if media == ohttp.MEDIA_CHUNKED_REQUEST else PLAIN
        await relay.post(f"/relay/{OPERATOR}", content=sealed, headers={"content-type": media})
    assert [body for _, _, _, body in server.requests] == [sealed]  # the control


@pytest.mark.parametrize(
    "mode", ["text", "json", "redirect", "error", "not-found-problem", "huge", "gzip", "slow"]
)
async def test_every_upstream_failure_gives_the_same_answer(
    server: LoggingServer, mode: str
) -> None:
    """Open or closed, HTTP or not, slow or huge: a caller learns nothing it could tell apart."""
    server.mode = mode
    failed = await upstream_failed_answer()
    async with relay_to(f"http://127.0.0.1:{server.port}", allow_private=True) as relay:
        answers = await every_way_in(relay)
    assert answers == [failed] * 5
    assert len(server.requests) == 5
    assert all(SECRET not in body for _, _, body in answers)


async def test_refused_unresolvable_and_closed_look_alike(server: LoggingServer) -> None:
    failed = await upstream_failed_answer()
    cases = [
        relay_to(f"http://127.0.0.1:{server.port}"),  # refused address
        relay_to("http://nowhere.example:8001", resolve=resolver({})),  # no such name
        relay_to("http://empty.example:8001", resolve=resolver({"empty.example": []})),
        relay_to(f"http://127.0.0.1:{free_port()}", allow_private=True),  # closed port
    ]
    for relay in cases:
        async with relay:
            assert await every_way_in(relay) == [failed] * 5
    assert server.connections == 0


async def test_only_the_answer_matching_the_request_passes(server: LoggingServer) -> None:
    server.mode = "whole"
    failed = await upstream_failed_answer()
    async with relay_to(f"http://127.0.0.1:{server.port}", allow_private=True) as relay:
        plain, chunked, *_ = await every_way_in(relay)
    assert plain == (200, ohttp.MEDIA_RESPONSE, b"\x01" * 100)
    assert chunked == failed  # a whole answer to a chunked request


async def test_a_gateway_key_refusal_is_passed_on_rebuilt(server: LoggingServer) -> None:
    """The client needs the `ohttp-key` problem to refetch keys; it gets the type, and none of
    the upstream body."""
    server.mode = "key-problem"
    failed = await upstream_failed_answer()
    async with relay_to(f"http://127.0.0.1:{server.port}", allow_private=True) as relay:
        plain, chunked, keys, *_ = await every_way_in(relay)
    for status, media, body in (plain, chunked):
        assert (status, media) == (400, "application/problem+json")
        assert json.loads(body)["type"] == OHTTP_KEY_PROBLEM
        assert SECRET not in body
    assert keys == failed  # a GET takes only its document


async def test_a_client_sees_a_refused_node_as_a_failed_node(server: LoggingServer) -> None:
    """The uniform failure is a relay 502, which the client gateway fails over on."""
    relay = relay_to(f"http://127.0.0.1:{server.port}")
    transport = AsyncOhttpTransport(
        "http://relay", OPERATOR, key_configs=[KEY], outer=relay._transport
    )
    with pytest.raises(RelayRefused) as info:
        await transport.handle_async_request(httpx.Request("GET", "https://n.invalid/v1/models"))
    assert info.value.status == 502
    assert info.value.problem_type == "urn:veil:relay:upstream-failed"
    keys_transport = AsyncOhttpTransport(
        "http://relay",
        OPERATOR,
        keys_url=relay_keys_url("http://relay", OPERATOR),
        outer=relay._transport,
    )
    with pytest.raises(Exception, match="502"):
        await keys_transport.refresh_keys()
    assert server.connections == 0


# --- the address rules and the pinning, below the app ------------------------------------


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.9.9.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),  # ULA
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", ""),  # reserved
        ("192.0.2.1", ""),  # documentation
        ("198.18.0.1", ""),  # benchmarking
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("100.100.100.200", "metadata"),
        ("not-an-address", "not an IP"),
    ],
)
def test_addresses_the_relay_refuses(address: str, why: str) -> None:
    reason = refusal(address)
    assert reason is not None and why in reason


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(address) is None


def test_the_devnet_flag_lifts_all_but_the_metadata_refusal() -> None:
    for address in ("127.0.0.1", "::1", "10.0.0.1", "fd12::1", "100.64.0.1", "0.0.0.0"):
        assert refusal(address, allow_private=True) is None
    for address in ("169.254.169.254", "fd00:ec2::254", "::ffff:169.254.169.254"):
        assert refusal(address, allow_private=True) == "a cloud metadata address"


class Connects(httpcore.AsyncNetworkBackend):
    """The network below the guard: records what it is asked to connect to, connects nowhere."""

    def __init__(self) -> None:
        self.hosts: list[str] = []

    async def connect_tcp(self, host: str, port: int, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        self.hosts.append(host)
        raise httpcore.ConnectError("no network in this test")

    async def connect_unix_socket(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        raise AssertionError("no unix sockets")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def test_the_checked_address_is_the_one_connected_to() -> None:
    """DNS rebinding: the name answers a public address, then loopback. Each connection
    resolves once and connects to exactly the address it checked, never to the name."""
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])
    calls: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    below = Connects()
    backend = GuardedBackend(resolve=rebinding, inner=below)
    with pytest.raises(httpcore.ConnectError, match="no network"):
        await backend.connect_tcp("rebind.example", 443, timeout=1.0)
    assert below.hosts == ["93.184.215.14"]
    with pytest.raises(httpcore.ConnectError, match="refused address"):
        await backend.connect_tcp("rebind.example", 443, timeout=1.0)
    assert below.hosts == ["93.184.215.14"]  # loopback was never tried
    assert calls == ["rebind.example", "rebind.example"]


async def test_metadata_is_refused_even_on_a_devnet_and_before_any_connect() -> None:
    below = Connects()
    backend = GuardedBackend(
        allow_private=True,
        resolve=resolver({"meta.example": ["10.0.0.5", "169.254.169.254"]}),
        inner=below,
    )
    with pytest.raises(httpcore.ConnectError, match="refused address"):
        await backend.connect_tcp("meta.example", 80, timeout=1.0)
    assert below.hosts == []


async def test_a_resolver_that_hangs_is_a_connect_timeout() -> None:
    async def hangs(host: str, port: int) -> list[str]:
        await asyncio.sleep(10)
        return ["8.8.8.8"]

    backend = GuardedBackend(resolve=hangs, inner=Connects())
    started = time.monotonic()
    with pytest.raises(httpcore.ConnectTimeout):
        await backend.connect_tcp("slow.example", 443, timeout=0.2)
    assert time.monotonic() - started < 2


async def test_every_request_of_the_transport_goes_through_the_guard(server: LoggingServer) -> None:
    """Not only the app's routes: any request on the guarded transport, redirects not followed."""
    backend = GuardedBackend(resolve=resolver({"node.example": ["127.0.0.1"]}))
    async with httpx.AsyncClient(transport=guarded_transport(backend)) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://node.example:{server.port}/")
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{server.port}/")
    assert server.connections == 0
    backend.allow_private = True
    async with httpx.AsyncClient(transport=guarded_transport(backend)) as client:
        assert (await client.get(f"http://node.example:{server.port}/x")).content == SECRET
    assert server.requests[0][2]["Host"] == f"node.example:{server.port}"


def test_static_nodes_are_guarded_too(server: LoggingServer) -> None:
    """A node list file goes through the same guard as the chain."""
    directory = StaticNodeDirectory([Node("n1", f"http://127.0.0.1:{server.port}")])
    app = create_relay_app(directory)

    async def go() -> int:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://relay"
        ) as relay:
            return (await relay.get("/relay/n1/ohttp-keys")).status_code

    assert asyncio.run(go()) == 502
    assert server.connections == 0
