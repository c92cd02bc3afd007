"""Faults the gateway must tell apart (issue 17): the relay's failures are not the node's, and a
node's hostile answer is a typed error, after which the gateway goes on serving.

One fake paying node behind the real relay. The gateway reaches the relay through `RelayHop`,
which can break the connection mid-answer or answer sealed requests with a relay problem, as
a failing relay would; the node's knobs make it fail mid-stream or answer with nesting 100,000
levels deep.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from support.gateway import (
    ANSWER,
    MODEL,
    SECRET_PROMPT,
    TOKEN,
    WEIGHTS,
    FakeChainReader,
    FakeNodeApi,
    approve,
)
from support.net import ServerThread
from veil.client.discovery import DiscoveryConfig
from veil.client.gateway import GatewayConfig, create_gateway_app
from veil.client.payer import Wallet
from veil.identity import NodeIdentity
from veil.relay.app import RelayConfig, create_relay_app
from veil.relay.directory import Node, StaticNodeDirectory
from veil.wire.problem import MEDIA_PROBLEM, RELAY_PROBLEM_PREFIX, problem_body

MESSAGES = [{"role": "user", "content": SECRET_PROMPT}]


class _Cut(httpx.AsyncByteStream):
    """Passes the answer's first pieces, then breaks as a dropped relay connection does."""

    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self.inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        started, pieces = time.monotonic(), 0
        async for piece in self.inner:
            pieces += 1
            if pieces > 2 and time.monotonic() - started > 0.25:
                raise httpx.ReadError("connection to the relay lost")
            yield piece

    async def aclose(self) -> None:
        await self.inner.aclose()


class RelayHop(httpx.AsyncBaseTransport):
    """The gateway's way to the relay; `fault` on sealed requests: `cut` (the connection
    breaks mid-answer), `refuse` (the relay's own 503), `upstream` (the relay reports that the
    node could not be reached)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.fault: str | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sealed = request.method == "POST" and request.url.path.startswith("/relay/")
        if sealed and self.fault in ("refuse", "upstream"):
            refuse = self.fault == "refuse"
            status, code = (503, "overloaded") if refuse else (502, "upstream-unreachable")
            body = problem_body(RELAY_PROBLEM_PREFIX + code, "injected", status)
            return httpx.Response(status, content=body, headers={"content-type": MEDIA_PROBLEM})
        response = await self.inner.handle_async_request(request)
        if sealed and self.fault == "cut":
            assert isinstance(response.stream, httpx.AsyncByteStream)
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                stream=_Cut(response.stream),
                extensions=response.extensions,
            )
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Net:
    node: FakeNodeApi
    chain: FakeChainReader
    relay: ServerThread
    wallet: Wallet


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    node = FakeNodeApi()
    server = ServerThread(node.app).__enter__()
    chain = FakeChainReader()
    approve(chain)
    chain.register(node.address, [(MODEL, WEIGHTS)], 200 * TOKEN)
    directory = StaticNodeDirectory([Node(node.address, server.url)])
    relay = ServerThread(
        create_relay_app(
            directory, RelayConfig(rate_per_s=1000, burst=1000, allow_private_endpoints=True)
        )
    )
    relay.__enter__()
    yield Net(node, chain, relay, Wallet(NodeIdentity.generate().private_key))
    relay.__exit__()
    server.__exit__()


@contextmanager
def gateway_for(net: Net, hop: RelayHop, down_s: float = 30.0) -> Iterator[ServerThread]:
    net.node.knob = None
    config = GatewayConfig(discovery=DiscoveryConfig(down_s=down_s))
    app = create_gateway_app(net.chain, net.relay.url, wallet=net.wallet, outer=hop, config=config)
    with ServerThread(app) as server:
        yield server


def chat(gateway: ServerThread, stream: bool) -> httpx.Response:
    body = {"model": MODEL, "messages": MESSAGES, "stream": stream}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30)


def events(r: httpx.Response) -> list[Any]:
    lines = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def down_for_s(gateway: ServerThread, net: Net) -> float:
    status = httpx.get(gateway.url + "/veil/status", timeout=30).json()
    [node] = [n for n in status["nodes"] if n["address"] == net.node.address]
    return float(node["down_for_s"])


def test_a_relay_breaking_mid_stream_does_not_mark_the_node_down(net: Net) -> None:
    hop = RelayHop()
    with gateway_for(net, hop) as gateway:
        assert chat(gateway, stream=False).status_code == 200  # verified, measured
        net.node.knob, hop.fault = "slow", "cut"
        r = chat(gateway, stream=True)
        assert r.status_code == 200
        got = events(r)
        assert "[DONE]" not in got and got[-1]["error"]["code"] == "relay_failed_mid_stream"
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in got if "choices" in e)
        assert text and ANSWER.startswith(text) and text != ANSWER  # cut, and said so
        assert down_for_s(gateway, net) == 0  # the node did nothing wrong
        hop.fault = None
        r = chat(gateway, stream=True)
        assert r.status_code == 200 and events(r)[-1] == "[DONE]"
        assert r.headers["x-veil-node"] == net.node.address


def test_a_relay_refusal_is_not_the_nodes_but_an_upstream_one_is(net: Net) -> None:
    hop = RelayHop()
    with gateway_for(net, hop) as gateway:
        hop.fault = "refuse"  # the relay's own trouble
        r = chat(gateway, stream=False)
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_node_available"
        assert "overloaded" in r.json()["error"]["message"]
        assert down_for_s(gateway, net) == 0
        hop.fault = "upstream"  # the relay says the node could not be reached
        r = chat(gateway, stream=False)
        assert r.status_code == 503 and "upstream" in r.json()["error"]["message"]
        assert down_for_s(gateway, net) > 20


def test_a_node_failing_mid_stream_is_marked_down(net: Net) -> None:
    with gateway_for(net, RelayHop()) as gateway:
        net.node.knob = "midstream"
        got = events(chat(gateway, stream=True))
        assert got[-1]["error"]["code"] == "node_failed_mid_stream"
        assert down_for_s(gateway, net) > 20


@pytest.mark.parametrize("bomb", ["deep_array", "deep_object"])
def test_a_deeply_nested_answer_is_a_typed_error_and_the_gateway_goes_on(
    net: Net, bomb: str
) -> None:
    """With the recursion limit the Ethereum libraries set, a recursive decoder would take the
    gateway down (a segfault); the answer is refused as malformed instead."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        with gateway_for(net, RelayHop(), down_s=0.01) as gateway:
            net.node.knob = bomb
            for stream in (False, True):  # the bomb is the stream's first event: a 502 too
                r = chat(gateway, stream=stream)
                assert r.status_code == 502, r.text
                error = r.json()["error"]
                assert error["code"] == "receipt_refused" and "(malformed)" in error["message"]
                time.sleep(0.05)  # the node is marked down for a moment after a bad receipt
            net.node.knob = None
            r = chat(gateway, stream=False)
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == ANSWER
    finally:
        sys.setrecursionlimit(limit)
