"""The upstream backend behind a real node app, against FakeUpstream's misbehaviours: each
failure is a typed error at the client, quickly, and no prompt text reaches a log."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import httpx
import pytest

from support.net import ServerThread, free_port, wait_idle
from support.upstream import FakeUpstream
from veil.engine.upstream import UpstreamConfig, UpstreamEngine
from veil.node.api import create_app
from veil.node.config import NodeConfig

pytestmark = pytest.mark.slow  # reads the packaged model's tokenizer

SECRET = "my secret prompt about zebras 4817"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def declared() -> UpstreamEngine:
    """Tokenizer and weights hash of the packaged model (read once for the module)."""
    eng = UpstreamEngine.open(UpstreamConfig(url="http://127.0.0.1:9/v1"))
    eng.close()
    return eng


def node(
    declared: UpstreamEngine, url: str, **config: float
) -> tuple[UpstreamEngine, ServerThread]:
    engine = UpstreamEngine(
        UpstreamConfig(url=url, model="upstream-name", **config),  # type: ignore[arg-type]
        declared.tokenizer,
        declared.files,
        declared.weights_sha256,
        2048,
    )
    return engine, ServerThread(create_app(engine, NodeConfig()))


@pytest.fixture
def serve(declared: UpstreamEngine) -> Iterator:  # type: ignore[type-arg]
    opened: list = []  # type: ignore[type-arg]

    def start(url: str, **config: float) -> tuple[UpstreamEngine, str]:
        engine, server = node(declared, url, **config)
        server.__enter__()
        opened.append((engine, server))
        return engine, server.url

    yield start
    for engine, server in opened:
        server.__exit__()
        engine.close()


def chat(url: str, stream: bool, **extra: object) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": SECRET}], "stream": stream}
    body.update(extra)
    return httpx.post(
        f"{url}/v1/chat/completions",
        json=body,
        headers={"authorization": "Bearer client-secret", "cookie": "c=1", "x-client": "me"},
        timeout=30,
    )


def sse_events(response: httpx.Response) -> list[dict]:  # type: ignore[type-arg]
    return [
        json.loads(line[6:])
        for line in response.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def test_streams_with_receipt_and_forwards_no_client_header(serve, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    fake = FakeUpstream()
    engine, url = serve(fake.url)
    events = sse_events(chat(url, True))
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == "Hello there, friend."
    final = events[-1]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["usage"]["completion_tokens"] == 5
    assert final["veil_receipt"]["model_hash"].removeprefix("0x") == engine.weights_sha256
    (seen,) = fake.seen
    assert not {"authorization", "cookie", "x-client"} & set(seen.headers)
    assert seen.body["model"] == "upstream-name" and seen.body["stream"] is True
    assert seen.body["messages"] == [{"role": "user", "content": SECRET}]
    whole = chat(url, False).json()
    assert whole["choices"][0]["message"]["content"] == "Hello there, friend."
    assert SECRET not in caplog.text and "friend" not in caplog.text
    fake.close()


def test_stop_string_and_max_tokens_hold_on_the_node(serve) -> None:  # type: ignore[no-untyped-def]
    fake = FakeUpstream()
    _, url = serve(fake.url)
    whole = chat(url, False, stop=[" friend"]).json()
    assert whole["choices"][0]["message"]["content"] == "Hello there,"
    assert whole["choices"][0]["finish_reason"] == "stop"
    whole = chat(url, False, max_tokens=2).json()
    assert whole["choices"][0]["message"]["content"] == "Hello there"
    assert whole["choices"][0]["finish_reason"] == "length"
    assert whole["usage"]["completion_tokens"] == 2
    assert fake.seen[-1].body["max_tokens"] == 2 and fake.seen[0].body["stop"] == [" friend"]
    fake.close()


@pytest.mark.parametrize(
    ("mode", "status", "code"),
    [
        ("500", 502, "upstream_error"),
        ("hang", 504, "upstream_timeout"),
        ("long-line", 502, "upstream_error"),
        ("refused", 502, "upstream_unavailable"),
    ],
)
def test_failures_are_typed_and_quick(serve, caplog, mode: str, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    fake = FakeUpstream(mode=mode)
    target = f"http://127.0.0.1:{free_port()}/v1" if mode == "refused" else fake.url
    _, url = serve(target, read_timeout_s=1.0, connect_timeout_s=1.0)
    started = time.monotonic()
    response = chat(url, False)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    events = sse_events(chat(url, True))
    assert events[-1]["error"]["code"] == code
    assert time.monotonic() - started < 10
    assert SECRET not in caplog.text
    fake.close()


def test_upstream_dying_mid_answer_ends_the_stream_with_an_error(serve) -> None:  # type: ignore[no-untyped-def]
    fake = FakeUpstream(mode="die")
    _, url = serve(fake.url)
    events = sse_events(chat(url, True))
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if "choices" in e)
    assert text == "Hello there"
    assert events[-1]["error"]["code"] == "upstream_unavailable"
    assert "veil_receipt" not in json.dumps(events)  # no receipt for a broken answer
    fake.close()


def test_client_disconnect_cancels_the_upstream_request(serve) -> None:  # type: ignore[no-untyped-def]
    fake = FakeUpstream(pieces=tuple(f" w{i}" for i in range(100)), delay_s=0.2)
    engine, url = serve(fake.url)
    body = {"model": MODEL, "messages": [{"role": "user", "content": SECRET}], "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
        for n, _ in enumerate(response.iter_lines()):
            if n >= 6:
                break
    started = time.monotonic()
    wait_idle(engine, timeout=5)
    assert time.monotonic() - started < 3
    assert engine.stats.tokens_generated < 30
    fake.close()
