"""The node's OpenAI-compatible API on the real model: SDK compatibility, errors, privacy."""

from __future__ import annotations

import json
import logging
import time

import httpx
import openai
import pytest

from support.net import wait_idle
from veil.engine import PACKAGED_MODEL_ID

pytestmark = pytest.mark.slow

PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def sdk(node_server) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=node_server.url + "/v1", api_key="unused", max_retries=0)


def test_openai_sdk_non_streamed(sdk: openai.OpenAI) -> None:
    out = sdk.chat.completions.create(
        model=PACKAGED_MODEL_ID,
        messages=[{"role": "user", "content": PROMPT}],
        temperature=0,
        max_tokens=20,
    )
    assert out.object == "chat.completion"
    assert "Paris" in out.choices[0].message.content
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 10
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_openai_sdk_streamed_matches_non_streamed(sdk: openai.OpenAI) -> None:
    kwargs = {
        "model": PACKAGED_MODEL_ID,
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "max_tokens": 20,
    }
    whole = sdk.chat.completions.create(**kwargs)
    chunks = list(
        sdk.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].usage.completion_tokens == whole.usage.completion_tokens
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3


def test_models_and_health(node_server, loaded_model) -> None:  # type: ignore[no-untyped-def]
    models = httpx.get(node_server.url + "/v1/models").json()
    assert models["data"][0]["id"] == PACKAGED_MODEL_ID
    assert models["data"][0]["weights_sha256"] == loaded_model.weights_sha256
    health = httpx.get(node_server.url + "/healthz").json()
    assert health["status"] == "ok"


GOOD = {
    "model": PACKAGED_MODEL_ID,
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 2,
}


def _with(**changes: object) -> bytes:
    body = dict(GOOD)
    for k, v in changes.items():
        if v is ...:
            body.pop(k)
        else:
            body[k] = v
    return json.dumps(body).encode()


BAD_REQUESTS = [
    ("invalid json", b'{"model": ', 400, None),
    ("not an object", b"[1, 2]", 400, None),
    ("lone surrogate", _with(messages=[{"role": "user", "content": "\ud800"}]), 400, None),
    ("invalid utf-8", b'{"model": "\xff\xfe"}', 400, None),
    ("missing messages", _with(messages=...), 400, "messages"),
    ("empty messages", _with(messages=[]), 400, "messages"),
    ("messages not a list", _with(messages="hi"), 400, "messages"),
    ("unknown role", _with(messages=[{"role": "wizard", "content": "x"}]), 400, "messages[0].role"),
    ("content missing", _with(messages=[{"role": "user"}]), 400, "messages[0].content"),
    (
        "image content",
        _with(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
        400,
        None,
    ),
    ("unknown model", _with(model="gpt-5"), 404, "model"),
    ("missing model", _with(model=...), 400, "model"),
    ("max_tokens above limit", _with(max_tokens=100_000), 400, "max_tokens"),
    ("max_tokens zero", _with(max_tokens=0), 400, "max_tokens"),
    ("max_tokens a string", _with(max_tokens="ten"), 400, "max_tokens"),
    ("negative temperature", _with(temperature=-1), 400, "temperature"),
    ("absurd temperature", _with(temperature=1e9), 400, "temperature"),
    (
        "nan temperature",
        b'{"model": "%s", "messages": [{"role": "user", "content": "x"}], '
        b'"temperature": NaN}' % PACKAGED_MODEL_ID.encode(),
        400,
        "temperature",
    ),
    ("top_p zero", _with(top_p=0), 400, "top_p"),
    ("top_p above one", _with(top_p=3), 400, "top_p"),
    ("empty stop", _with(stop=[""]), 400, "stop"),
    ("too many stops", _with(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("n above one", _with(n=3), 400, "n"),
    ("tools", _with(tools=[{"type": "function"}]), 400, "tools"),
    ("seed not an integer", _with(seed="x"), 400, "seed"),
    ("stream not a boolean", _with(stream="yes"), 400, "stream"),
    (
        "prompt beyond context",
        _with(messages=[{"role": "user", "content": "word " * 3000}]),
        400,
        "messages",
    ),
    (
        "prompt plus max_tokens beyond context",
        _with(messages=[{"role": "user", "content": "word " * 1900}], max_tokens=500),
        400,
        "max_tokens",
    ),
]


@pytest.mark.parametrize(
    ("name", "body", "status", "param"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_requests_get_openai_errors_and_the_node_keeps_serving(
    node_server,
    name: str,
    body: bytes,
    status: int,
    param: str | None,  # type: ignore[no-untyped-def]
) -> None:
    r = httpx.post(
        node_server.url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param, err
    ok = httpx.post(node_server.url + "/v1/chat/completions", content=_with(), timeout=60)
    assert ok.status_code == 200


def test_oversized_body_is_413(node_server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(node_server.url + "/v1/chat/completions", content=b"x" * (2 << 20))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


def test_unknown_path_and_method_are_openai_errors(node_server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(node_server.url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(node_server.url + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_disconnect_stops_decoding(node_server, engine) -> None:  # type: ignore[no-untyped-def]
    wait_idle(engine)
    before = engine.stats.tokens_generated
    body = _with(
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=400,
        temperature=0.8,
        seed=1,
        stream=True,
    )
    with httpx.stream("POST", node_server.url + "/v1/chat/completions", content=body) as r:
        lines = r.iter_lines()
        seen = 0
        for line in lines:
            if line.startswith("data:"):
                seen += 1
            if seen >= 4:
                break
    wait_idle(engine)
    produced = engine.stats.tokens_generated - before
    assert produced < 60, f"decoding went on after the client left ({produced} tokens)"
    time.sleep(0.3)
    assert engine.stats.tokens_generated - before == produced


def test_no_prompt_or_answer_text_in_any_log(node_server, sdk, caplog) -> None:  # type: ignore[no-untyped-def]
    secret_prompt = "Please repeat the phrase: purple giraffe umbrella"
    caplog.set_level(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        whole = sdk.chat.completions.create(
            model=PACKAGED_MODEL_ID,
            messages=[{"role": "user", "content": secret_prompt}],
            temperature=0,
            max_tokens=16,
        )
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in sdk.chat.completions.create(
                model=PACKAGED_MODEL_ID,
                messages=[{"role": "user", "content": secret_prompt}],
                temperature=0,
                max_tokens=16,
                stream=True,
            )
            if c.choices
        )
    finally:
        root.setLevel(old_level)
    answer = whole.choices[0].message.content
    assert answer and answer == streamed
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "request" in logged  # the node did log the requests (ids and counts)
    for needle in ("purple giraffe", secret_prompt, answer.strip()[:20]):
        assert needle not in logged
