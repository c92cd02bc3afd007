"""The client transports: the unchanged openai SDK over OHTTP, key refetch, fail-closed paths."""

from __future__ import annotations

import json
import sys

import httpx
import openai
import pytest

from support.ohttp import ANSWER, SECRET_PROMPT, FakeRelay, make_inner_app
from veil.client import (
    AsyncOhttpTransport,
    GatewayRefused,
    KeyConfigError,
    OhttpTransport,
    RelayRefused,
    ResponseRefused,
    TruncatedResponse,
    relay_keys_url,
)
from veil.node.gateway import create_gateway_app
from veil.node.keys import NodeKeys
from veil.wire import ohttp

RELAY = "http://relay.test"
BASE = "https://node.veil.invalid/v1"


@pytest.fixture
def keys() -> NodeKeys:
    return NodeKeys.generate(key_id=1)


@pytest.fixture
def seen() -> list:
    return []


@pytest.fixture
def stand_in(keys: NodeKeys, seen: list) -> FakeRelay:
    return FakeRelay(create_gateway_app(make_inner_app(seen), keys))


def sdk(stand_in: FakeRelay, **kw) -> openai.OpenAI:
    transport = OhttpTransport(
        RELAY,
        "node-a",
        keys_url=relay_keys_url(RELAY, "node-a"),
        outer=httpx.MockTransport(stand_in),
        **kw,
    )
    return openai.OpenAI(
        base_url=BASE,
        api_key="sk-do-not-send",
        max_retries=0,
        http_client=httpx.Client(transport=transport),
    )


def ask(client: openai.OpenAI, stream: bool):
    return client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": SECRET_PROMPT}], stream=stream
    )


def assert_no_plaintext_sent(stand_in: FakeRelay) -> None:
    for _url, headers, body in stand_in.sent:
        assert SECRET_PROMPT.encode() not in body
        assert b"sk-do-not-send" not in body and "sk-do-not-send" not in str(headers)
        assert set(headers) <= {"host", "content-type", "content-length", "accept"}


@pytest.mark.parametrize("chunked", [True, False])
def test_openai_sdk_plain_and_streamed(stand_in: FakeRelay, seen: list, chunked: bool) -> None:
    client = sdk(stand_in, chunked=chunked)
    assert ask(client, False).choices[0].message.content == ANSWER
    tokens = [c.choices[0].delta.content for c in ask(client, True) if c.choices[0].delta.content]
    assert "".join(tokens) == ANSWER and len(tokens) > 1
    assert [m.id for m in client.models.list()] == ["m"]
    assert_no_plaintext_sent(stand_in)
    assert seen[0]["prompt"] == SECRET_PROMPT
    for entry in seen:  # no SDK fingerprint or credential reaches the node
        assert {k for k, _ in entry["headers"]} <= {
            "content-type",
            "accept",
            "content-length",
            "x-veil-request-digest",  # set by the gateway, not the client
        }
        assert entry["client"] is None


def test_refetch_and_retry_once_after_rotation(stand_in: FakeRelay, keys: NodeKeys) -> None:
    client = sdk(stand_in)
    ask(client, False)
    keys.rotate()
    keys.rotate()  # the client's key is now gone
    assert ask(client, False).choices[0].message.content == ANSWER
    key_fetches = [u for u, _, _ in stand_in.sent if u.endswith("/ohttp-keys")]
    assert len(key_fetches) == 2
    assert_no_plaintext_sent(stand_in)


def test_unknown_key_twice_raises(stand_in: FakeRelay, keys: NodeKeys) -> None:
    stale = keys.current.config
    transport = OhttpTransport(
        RELAY, "node-a", key_configs=[stale], outer=httpx.MockTransport(stand_in)
    )
    keys.rotate()
    keys.rotate()
    with pytest.raises(GatewayRefused) as info, httpx.Client(transport=transport) as http:
        http.post(BASE + "/chat/completions", json={"messages": [{"content": SECRET_PROMPT}]})
    assert info.value.problem_type.endswith("#ohttp-key")
    assert_no_plaintext_sent(stand_in)


@pytest.mark.parametrize(
    "tamper",
    [lambda b: b[:20] + bytes([b[20] ^ 0x80]) + b[21:], lambda b: b[: len(b) // 2]],
    ids=["early-byte", "cut-in-half"],
)
@pytest.mark.parametrize("chunked", [True, False])
def test_tampered_answers_raise_through_the_sdk(
    keys: NodeKeys, seen: list, tamper, chunked: bool
) -> None:
    stand_in = FakeRelay(create_gateway_app(make_inner_app(seen), keys), tamper=tamper)
    client = sdk(stand_in, chunked=chunked)
    got: list[str] = []
    with pytest.raises(ResponseRefused):  # the SDK passes transport errors through unchanged
        for chunk in ask(client, True):
            got.append(chunk.choices[0].delta.content or "")
    if not chunked:
        assert got == []  # a whole answer is checked before any of it is shown
    assert ANSWER not in "".join(got)


@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        (lambda b: b[:-19], TruncatedResponse),  # the final chunk (0 + 18 sealed bytes) dropped
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), ResponseRefused),  # final chunk changed
        (lambda b: b[:-3], ResponseRefused),  # final chunk cut short
    ],
    ids=["final-dropped", "final-flipped", "final-cut"],
)
def test_final_chunk_is_checked_when_the_body_is_read_to_its_end(
    keys: NodeKeys, seen: list, tamper, error: type
) -> None:
    """Every piece handed out was authenticated; the end of the answer is checked at its end.

    (The openai SDK stops reading at `data: [DONE]`, itself inside an authenticated chunk, so
    it never reaches a damaged final chunk; a reader that goes to the end gets the error.)
    """
    stand_in = FakeRelay(create_gateway_app(make_inner_app(seen), keys), tamper=tamper)
    transport = OhttpTransport(
        RELAY,
        "node-a",
        keys_url=relay_keys_url(RELAY, "node-a"),
        outer=httpx.MockTransport(stand_in),
    )
    body = {"messages": [{"role": "user", "content": "x"}], "stream": True}
    with (
        httpx.Client(transport=transport) as http,
        pytest.raises(error),
        http.stream("POST", BASE + "/chat/completions", json=body) as response,
    ):
        for _ in response.iter_bytes():
            pass


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (
            httpx.Response(200, content=b"\x00\x01", headers={"content-type": "text/plain"}),
            KeyConfigError,
        ),
        (
            httpx.Response(200, content=b"\x00\x00", headers={"content-type": ohttp.MEDIA_KEYS}),
            KeyConfigError,
        ),
        (httpx.Response(503), KeyConfigError),
    ],
)
def test_bad_key_lists_refused_and_nothing_sent(answer: httpx.Response, error: type) -> None:
    sent: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.read())
        return answer

    transport = OhttpTransport(
        RELAY, "node-a", keys_url=RELAY + "/k", outer=httpx.MockTransport(handler)
    )
    with httpx.Client(transport=transport) as http, pytest.raises(error):
        http.post(BASE + "/chat/completions", content=SECRET_PROMPT.encode())
    assert sent == [b""]  # only the key fetch went out


def test_key_check_can_refuse(stand_in: FakeRelay) -> None:
    def pin(configs):
        raise KeyConfigError("not the pinned key")

    client = sdk(stand_in, key_check=pin)
    with pytest.raises(KeyConfigError):
        ask(client, False)
    assert all(not b for _, _, b in stand_in.sent)


def test_relay_refusal_is_typed(keys: NodeKeys) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/ohttp-keys"):
            return httpx.Response(
                200, content=keys.encoded_configs(), headers={"content-type": ohttp.MEDIA_KEYS}
            )
        body = {"type": "urn:veil:relay:rate-limited", "title": "too many requests", "status": 429}
        return httpx.Response(429, json=body, headers={"content-type": "application/problem+json"})

    transport = OhttpTransport(
        RELAY,
        "node-a",
        keys_url=relay_keys_url(RELAY, "node-a"),
        outer=httpx.MockTransport(handler),
    )
    with httpx.Client(transport=transport) as http, pytest.raises(RelayRefused) as info:
        http.get(BASE + "/models")
    assert info.value.status == 429


def test_a_deeply_nested_refusal_is_a_typed_error_not_a_crash(keys: NodeKeys) -> None:
    """An error body 100,000 levels deep from whatever answers for the relay is never given
    to the recursive decoder (the recursion limit here is the Ethereum libraries' 100,000)."""

    def handler(request: httpx.Request) -> httpx.Response:
        bomb = b'{"type":' * 50_000 + b"1" + b"}" * 50_000 + b"[" * 50_000 + b"]" * 50_000
        return httpx.Response(502, content=bomb, headers={"content-type": "application/json"})

    transport = OhttpTransport(
        RELAY, "node-a", key_configs=[keys.current.config], outer=httpx.MockTransport(handler)
    )
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        with httpx.Client(transport=transport) as http, pytest.raises(RelayRefused) as info:
            http.get(BASE + "/models")
    finally:
        sys.setrecursionlimit(limit)
    assert info.value.status == 502 and info.value.problem_type == ""


def test_wrong_media_type_answer_refused(keys: NodeKeys) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=json.dumps({"plaintext": True}).encode())

    transport = OhttpTransport(
        RELAY, "node-a", key_configs=[keys.current.config], outer=httpx.MockTransport(handler)
    )
    with httpx.Client(transport=transport) as http, pytest.raises(ResponseRefused):
        http.get(BASE + "/models")


class AsyncStandIn(httpx.AsyncBaseTransport):
    def __init__(self, app) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.sent: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        self.sent.append(body)
        if request.url.path.endswith("/ohttp-keys"):
            forward = httpx.Request("GET", "http://node/.well-known/ohttp-keys")
        else:
            media = request.headers["content-type"]
            forward = httpx.Request(
                "POST", "http://node/gateway", content=body, headers={"content-type": media}
            )
        return await self.inner.handle_async_request(forward)


async def test_async_openai_streaming_and_refetch(keys: NodeKeys, seen: list) -> None:
    stand_in = AsyncStandIn(create_gateway_app(make_inner_app(seen), keys))
    transport = AsyncOhttpTransport(
        RELAY, "node-a", keys_url=relay_keys_url(RELAY, "node-a"), outer=stand_in
    )
    client = openai.AsyncOpenAI(
        base_url=BASE,
        api_key="x",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=transport),
    )
    stream = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": SECRET_PROMPT}], stream=True
    )
    tokens = [c.choices[0].delta.content async for c in stream if c.choices[0].delta.content]
    assert "".join(tokens) == ANSWER
    keys.rotate()
    keys.rotate()
    done = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": SECRET_PROMPT}]
    )
    assert done.choices[0].message.content == ANSWER
    assert all(SECRET_PROMPT.encode() not in body for body in stand_in.sent)
