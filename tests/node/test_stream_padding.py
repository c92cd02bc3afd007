"""`pad` stream shaping at the node's OHTTP gateway: every sealed chunk of a streamed answer
has a size that depends on the bucket, not on the text; SSE readers still read it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from veil.node.gateway import GatewayConfig, create_gateway_app, pad_sse
from veil.node.keys import NodeKeys
from veil.wire import bhttp, ohttp

BUCKET = 256
ANSWERS = {"short": ["Hi", "!"], "long": ["A", " considerably", " longer", " answer", "", "."]}


def inner_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        tokens = ANSWERS[body["messages"][-1]["content"]]

        async def events() -> Any:
            for token in tokens:
                chunk = {"choices": [{"index": 0, "delta": {"content": token}}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def sealed_sizes(keys: NodeKeys, pad: int | None, prompt: str) -> tuple[list[int], str]:
    """The sizes of the sealed chunks the relay would see, and the decrypted SSE text."""
    app = create_gateway_app(inner_app(), keys, GatewayConfig(stream_pad_bytes=pad))
    body = json.dumps(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    )
    request = bhttp.encode_request(
        bhttp.Request(
            "POST",
            "https",
            "node.veil.invalid",
            "/v1/chat/completions",
            ((b"content-type", b"application/json"),),
            body.encode(),
        )
    )
    sealed, opener = ohttp.encapsulate_chunked_request(keys.current.config, request)

    async def send() -> bytes:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://n") as http:
            answer = await http.post(
                "/gateway", content=sealed, headers={"content-type": ohttp.MEDIA_CHUNKED_REQUEST}
            )
            assert answer.status_code == 200
            return answer.content

    raw = asyncio.run(send())
    pieces = [*opener.feed(raw), opener.close()]
    text = bhttp.decode_response(b"".join(pieces)).content.decode()
    # Each plaintext piece is sealed as varint(len) + ciphertext (len + 16): its size is a
    # function of the piece's size; the head and the final chunk are the same for every answer.
    return [len(p) for p in pieces[1:-1]], text


@pytest.fixture(scope="module")
def keys() -> NodeKeys:
    return NodeKeys.generate()


def test_padded_chunks_have_one_size_whatever_the_text(keys: NodeKeys) -> None:
    short, short_text = sealed_sizes(keys, BUCKET, "short")
    long, long_text = sealed_sizes(keys, BUCKET, "long")
    assert set(short) == set(long) and len(set(short)) == 1  # one size: the bucket's
    for text, tokens in ((short_text, ANSWERS["short"]), (long_text, ANSWERS["long"])):
        content = [
            json.loads(line[6:])["choices"][0]["delta"]["content"]
            for line in text.split("\n")
            if line.startswith("data: {")
        ]
        assert content == tokens  # the comments hide nothing from an SSE reader
    plain, _ = sealed_sizes(keys, None, "long")
    assert len(set(plain)) > 1  # unpadded, the sizes follow the text


def test_pad_sse() -> None:
    assert len(pad_sse(b"data: x\n\n", 64)) == 64
    assert len(pad_sse(b"d" * 63 + b"\n", 64)) == 128  # no room for ":\n": the next bucket
    assert pad_sse(b"data: partial", 64) == b"data: partial"  # mid-line: left alone
    assert pad_sse(b"data: x\n\n", 64).endswith(b"\n") and b"\n:" in pad_sse(b"data: x\n\n", 64)


def test_a_node_pads_its_streams_by_default() -> None:
    from veil.node.api import STREAM_PAD_BYTES, _gateway_config
    from veil.node.config import NodeConfig

    assert _gateway_config(NodeConfig()).stream_pad_bytes == STREAM_PAD_BYTES == BUCKET
    assert _gateway_config(NodeConfig(stream_shaping="off")).stream_pad_bytes is None
