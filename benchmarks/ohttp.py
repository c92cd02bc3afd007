"""OHTTP cost per message: encapsulate/decapsulate of requests, responses and chunks.

Run: `PYTHONPATH=src python benchmarks/ohttp.py`. The lead extends this with the model path
(time to first token and tokens/s, direct vs through the relay).
"""

# ruff: noqa: B023  (each lambda is called within its own loop iteration)
from __future__ import annotations

import time
from collections.abc import Callable

from veil.wire import bhttp, ohttp
from veil.wire.ohttp import (
    AEAD_AES_128_GCM,
    AEAD_CHACHA20_POLY1305,
    KDF_HKDF_SHA256,
    SymmetricSuite,
)


def per_call_us(fn: Callable[[], object], n: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    key = ohttp.KeyPair.generate(1)
    keys = {1: key}
    request = bhttp.encode_request(
        bhttp.Request(
            "POST",
            "https",
            "node.veil.invalid",
            "/v1/chat/completions",
            ((b"content-type", b"application/json"),),
            b"x" * 1024,
        )
    )
    token = bhttp.encode_content_chunk(b'data: {"choices":[{"delta":{"content":" word"}}]}\n\n')
    print(f"{'suite':<18}{'operation':<34}{'us/op':>10}")
    for name, aead in (
        ("AES-128-GCM", AEAD_AES_128_GCM),
        ("ChaCha20-Poly1305", AEAD_CHACHA20_POLY1305),
    ):
        suite = SymmetricSuite(KDF_HKDF_SHA256, aead)
        sealed, opener = ohttp.encapsulate_request(key.config, request, suite=suite)
        _, sealer = ohttp.decapsulate_request(keys, sealed)
        response = sealer.seal(b"y" * 1024)
        csealed, _ = ohttp.encapsulate_chunked_request(key.config, request, suite=suite)
        _, csealer = ohttp.decapsulate_chunked_request(keys, csealed)
        csealer.start()
        rows = {
            "encapsulate request (1 KiB)": lambda: ohttp.encapsulate_request(
                key.config, request, suite=suite
            ),
            "decapsulate request (1 KiB)": lambda: ohttp.decapsulate_request(keys, sealed),
            "seal response (1 KiB)": lambda: sealer.seal(b"y" * 1024),
            "open response (1 KiB)": lambda: opener.open(response),
            "encapsulate chunked request": lambda: ohttp.encapsulate_chunked_request(
                key.config, request, suite=suite
            ),
            "decapsulate chunked request": lambda: ohttp.decapsulate_chunked_request(keys, csealed),
            "seal one token chunk": lambda: csealer.seal_chunk(token),
        }
        for op, fn in rows.items():
            print(f"{name:<18}{op:<34}{per_call_us(fn, 300):>10.1f}")
        # Opening chunks: a fresh stream of 300 token chunks, timed per chunk.
        csealed2, copener = ohttp.encapsulate_chunked_request(key.config, request, suite=suite)
        _, s2 = ohttp.decapsulate_chunked_request(keys, csealed2)
        stream = [s2.start()] + [s2.seal_chunk(token) for _ in range(300)]
        copener.feed(stream[0])
        start = time.perf_counter()
        for piece in stream[1:]:
            copener.feed(piece)
        per = (time.perf_counter() - start) / 300 * 1e6
        print(f"{name:<18}{'open one token chunk':<34}{per:>10.1f}")


if __name__ == "__main__":
    main()
