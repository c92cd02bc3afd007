"""Padding: bytes and time of a streamed answer (stream shaping off vs pad), and the bytes of
sealed requests (unpadded vs padded to size buckets).

Run: .venv/bin/python benchmarks/padding.py [--rounds 5] [--tokens 64]

One answer of `--tokens` SSE chunks in the node's own format (`veil.wire.chat.Completion`),
sealed by the real gateway (chunked OHTTP) over an in-process ASGI transport and opened by the
client's decapsulator; `off` is the baseline, `pad` pads each chunk to 256-byte buckets.
A/B interleaved per round (the machine is shared); medians printed. Requests: chat bodies of
prompts from 10 to 4,000 characters, with a token header, sealed with and without
`veil.wire.padding.pad_to_bucket` (sizes are exact; no timing needed: padding is a copy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from veil.node.api import STREAM_PAD_BYTES
from veil.node.gateway import GatewayConfig, create_gateway_app
from veil.node.keys import NodeKeys
from veil.wire import bhttp, ohttp
from veil.wire.chat import Completion
from veil.wire.padding import pad_to_bucket

WORDS = ["The", " answer", " is", " forty", "-two", ",", " of", " course", "."]


def inner(tokens: int) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> Any:
        completion = Completion("smollm2-135m-instruct")

        async def events() -> Any:
            yield completion.chunk({"role": "assistant", "content": ""})
            for i in range(tokens):
                yield completion.chunk({"content": WORDS[i % len(WORDS)]})
            yield completion.chunk({}, "stop", veil_receipt={"signature": "0x" + "ab" * 65})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


async def one(app: FastAPI, keys: NodeKeys) -> tuple[int, float]:
    body = json.dumps({"model": "m", "stream": True, "messages": []}).encode()
    message = bhttp.encode_request(
        bhttp.Request("POST", "https", "n.invalid", "/v1/chat/completions", (), body)
    )
    sealed, opener = ohttp.encapsulate_chunked_request(keys.current.config, message)
    start = time.perf_counter()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://n") as c:
        answer = await c.post(
            "/gateway", content=sealed, headers={"content-type": ohttp.MEDIA_CHUNKED_REQUEST}
        )
    [*opener.feed(answer.content), opener.close()]
    return len(answer.content), time.perf_counter() - start


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    keys = NodeKeys.generate()
    apps = {
        mode: create_gateway_app(inner(args.tokens), keys, GatewayConfig(stream_pad_bytes=pad))
        for mode, pad in (("off", None), ("pad", STREAM_PAD_BYTES))
    }
    sizes: dict[str, list[int]] = {m: [] for m in apps}
    times: dict[str, list[float]] = {m: [] for m in apps}
    for _ in range(args.rounds):
        for mode, app in apps.items():  # A/B interleaved
            size, took = await one(app, keys)
            sizes[mode].append(size)
            times[mode].append(took)
    print(f"one streamed answer of {args.tokens} tokens, median of {args.rounds} rounds\n")
    print(f"{'mode':<6} {'bytes on the wire':>18} {'ms to seal + open':>18}")
    for mode in apps:
        ms = statistics.median(times[mode]) * 1000
        print(f"{mode:<6} {statistics.median(sizes[mode]):>18.0f} {ms:>18.1f}")
    ratio = statistics.median(sizes["pad"]) / statistics.median(sizes["off"])
    extra = (statistics.median(times["pad"]) - statistics.median(times["off"])) * 1000
    print(f"\npad: {ratio:.2f}x the bytes of off; {extra:+.1f} ms per answer")
    requests(keys)


def requests(keys: NodeKeys) -> None:
    """Sealed request sizes for prompts of several lengths, unpadded and padded."""
    print("\nsealed chat requests (with one token's x-veil-tokens header)\n")
    print(f"{'prompt chars':>12} {'unpadded':>9} {'padded':>9} {'overhead':>9}")
    plain_total = padded_total = 0
    for chars in (10, 60, 200, 500, 1000, 2000, 4000):
        body = json.dumps(
            {
                "model": "smollm2-135m-instruct",
                "stream": True,
                "max_tokens": 256,
                "messages": [{"role": "user", "content": "w" * chars}],
            }
        ).encode()
        headers = ((b"content-type", b"application/json"), (b"x-veil-tokens", b"t" * 472))
        message = bhttp.encode_request(
            bhttp.Request("POST", "https", "n.invalid", "/v1/chat/completions", headers, body)
        )
        sizes = []
        for padded in (message, pad_to_bucket(message)):
            sealed, _ = ohttp.encapsulate_chunked_request(keys.current.config, padded)
            sizes.append(len(sealed))
        plain_total += sizes[0]
        padded_total += sizes[1]
        print(f"{chars:>12} {sizes[0]:>9} {sizes[1]:>9} {sizes[1] / sizes[0]:>8.2f}x")
    print(f"\nrequest padding: {padded_total / plain_total:.2f}x the bytes over these prompts")


if __name__ == "__main__":
    asyncio.run(main())
