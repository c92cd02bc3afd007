"""The node's OHTTP gateway in front of an inner app: keys, plain and chunked answers, refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest

from veil.node.gateway import GatewayConfig, ReplayCache, create_gateway_app
from veil.node.keys import NodeKeys
from veil.wire import bhttp, ohttp
from veil.wire.errors import OHTTP_KEY_PROBLEM, PROBLEM_PREFIX

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.ohttp import ANSWER, ANSWER_TOKENS, make_inner_app


@pytest.fixture
def keys() -> NodeKeys:
    return NodeKeys.generate(key_id=10)


@pytest.fixture
def seen() -> list:
    return []


@pytest.fixture
def http(keys: NodeKeys, seen: list) -> httpx.AsyncClient:
    config = GatewayConfig(max_request_bytes=4096)
    app = create_gateway_app(make_inner_app(seen), keys, config)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 5555))
    return httpx.AsyncClient(transport=transport, base_url="http://node")


def chat_request(stream: bool, extra: bhttp.Fields = ()) -> bytes:
    body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    return bhttp.encode_request(
        bhttp.Request(
            "POST",
            "https",
            "node.veil.invalid",
            "/v1/chat/completions",
            ((b"content-type", b"application/json"), *extra),
            json.dumps(body).encode(),
        )
    )


async def post(http: httpx.AsyncClient, data: bytes, media: str, **headers: str) -> httpx.Response:
    return await http.post("/gateway", content=data, headers={"content-type": media, **headers})


async def test_key_list(http: httpx.AsyncClient, keys: NodeKeys) -> None:
    answer = await http.get("/.well-known/ohttp-keys")
    assert answer.headers["content-type"] == ohttp.MEDIA_KEYS
    assert ohttp.decode_key_configs(answer.content) == (keys.current.config,)
    keys.rotate()
    answer = await http.get("/.well-known/ohttp-keys")
    assert [c.key_id for c in ohttp.decode_key_configs(answer.content)] == [11, 10]


async def test_plain_request_and_inner_sees_no_client(
    http: httpx.AsyncClient, keys: NodeKeys, seen: list
) -> None:
    smuggled = ((b"x-forwarded-for", b"198.51.100.1"), (b"forwarded", b"for=x"), (b"host", b"h"))
    sealed, opener = ohttp.encapsulate_request(keys.current.config, chat_request(False, smuggled))
    answer = await post(
        http, sealed, ohttp.MEDIA_REQUEST, **{"x-client-secret": "s", "user-agent": "u"}
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == ohttp.MEDIA_RESPONSE
    inner = bhttp.decode_response(opener.open(answer.content))
    assert inner.status == 200
    assert json.loads(inner.content)["choices"][0]["message"]["content"] == ANSWER
    assert seen[0]["client"] is None
    names = {name for name, _ in seen[0]["headers"]}
    assert names == {"content-type", "content-length", "x-veil-request-digest"}


async def test_chunked_request_streams_sealed_chunks(
    http: httpx.AsyncClient, keys: NodeKeys
) -> None:
    sealed, opener = ohttp.encapsulate_chunked_request(keys.current.config, chat_request(True))
    answer = await post(http, sealed, ohttp.MEDIA_CHUNKED_REQUEST)
    assert answer.headers["content-type"] == ohttp.MEDIA_CHUNKED_RESPONSE
    assert answer.headers["incremental"] == "?1"
    pieces = [*opener.feed(answer.content), opener.close()]
    assert len(pieces) >= len(ANSWER_TOKENS) + 1  # head, then one sealed chunk per SSE event
    response = bhttp.decode_response(b"".join(pieces))
    assert response.header(b"content-type").startswith(b"text/event-stream")
    text = response.content.decode()
    assert (
        "".join(
            json.loads(line[6:])["choices"][0]["delta"]["content"]
            for line in text.split("\n\n")
            if line.startswith("data: {")
        )
        == ANSWER
    )


async def test_unknown_key_and_rotation(http: httpx.AsyncClient, keys: NodeKeys) -> None:
    old = keys.current.config
    keys.rotate()
    sealed, _ = ohttp.encapsulate_request(old, chat_request(False))
    assert (await post(http, sealed, ohttp.MEDIA_REQUEST)).status_code == 200  # previous key
    keys.rotate()
    sealed, _ = ohttp.encapsulate_request(old, chat_request(False))
    answer = await post(http, sealed, ohttp.MEDIA_REQUEST)
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == OHTTP_KEY_PROBLEM


async def test_replay_refused_then_service_continues(
    http: httpx.AsyncClient, keys: NodeKeys
) -> None:
    sealed, _ = ohttp.encapsulate_chunked_request(keys.current.config, chat_request(False))
    assert (await post(http, sealed, ohttp.MEDIA_CHUNKED_REQUEST)).status_code == 200
    replay = await post(http, sealed, ohttp.MEDIA_CHUNKED_REQUEST)
    assert replay.status_code == 400 and replay.json()["type"] == PROBLEM_PREFIX + "replayed"
    fresh, _ = ohttp.encapsulate_chunked_request(keys.current.config, chat_request(False))
    assert (await post(http, fresh, ohttp.MEDIA_CHUNKED_REQUEST)).status_code == 200


@pytest.mark.parametrize(
    ("mutate", "status", "code"),
    [
        (lambda b: b[:20], 400, "malformed"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), 400, "decryption-failed"),
        (lambda b: b[:1] + b"\x00\x20\x00\x01\x00\x02" + b[7:], 400, "unsupported-suite"),
        (lambda b: b + b"\x00" * 5000, 413, "too-large"),
        (lambda b: b"\x0a\x00", 400, "malformed"),
    ],
    ids=["truncated", "bit-flipped", "wrong-suite", "oversized", "short-header"],
)
async def test_bad_requests_get_typed_problems(
    http: httpx.AsyncClient, keys: NodeKeys, mutate, status: int, code: str
) -> None:
    sealed, _ = ohttp.encapsulate_request(keys.current.config, chat_request(False))
    answer = await post(http, mutate(sealed), ohttp.MEDIA_REQUEST)
    assert answer.status_code == status
    assert answer.json()["type"] == PROBLEM_PREFIX + code
    fresh, _ = ohttp.encapsulate_request(keys.current.config, chat_request(False))
    assert (await post(http, fresh, ohttp.MEDIA_REQUEST)).status_code == 200


async def test_wrong_media_type(http: httpx.AsyncClient) -> None:
    assert (await post(http, b"x", "application/json")).status_code == 415


async def test_not_an_open_proxy(http: httpx.AsyncClient, keys: NodeKeys, seen: list) -> None:
    for path in ("/admin", "/gateway", "/.well-known/ohttp-keys", "//evil.example/v1/models"):
        message = bhttp.encode_request(bhttp.Request("GET", "https", "x", path))
        sealed, opener = ohttp.encapsulate_request(keys.current.config, message)
        answer = await post(http, sealed, ohttp.MEDIA_REQUEST)
        assert bhttp.decode_response(opener.open(answer.content)).status == 404
    assert seen == []


async def test_malformed_inner_message_is_answered_sealed(
    http: httpx.AsyncClient, keys: NodeKeys
) -> None:
    sealed, opener = ohttp.encapsulate_request(keys.current.config, b"\x00\x03GET")
    answer = await post(http, sealed, ohttp.MEDIA_REQUEST)
    assert answer.status_code == 200  # the relay learns nothing
    assert bhttp.decode_response(opener.open(answer.content)).status == 400


def test_replay_cache_window_and_capacity() -> None:
    now = [0.0]
    cache = ReplayCache(window_s=10, capacity=3, clock=lambda: now[0])
    assert cache.check_and_add(b"a") and not cache.check_and_add(b"a")
    now[0] = 11
    assert cache.check_and_add(b"a")  # outside the window
    for v in (b"b", b"c", b"d"):
        assert cache.check_and_add(v)
    assert len(cache) == 3


def test_node_keys_save_load(tmp_path: Path) -> None:
    keys = NodeKeys.generate(3)
    keys.rotate()
    path = tmp_path / "keys.json"
    keys.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    again = NodeKeys.load(path)
    assert again.configs() == keys.configs()
