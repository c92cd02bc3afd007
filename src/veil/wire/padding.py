"""Size buckets for sealed requests, so a ciphertext's length says little about the prompt.

Binary HTTP (RFC 9292 section 3.8) lets a message end in zero bytes that carry nothing: a
client pads each encoded request to the next bucket before sealing it, and the relay and any
network observer see only the bucket. Buckets double from 1 KiB to 16 KiB, then step by
16 KiB, so padding costs at most half of a small request and under 16 KiB of a large one.
"""

from __future__ import annotations

__all__ = ["MIN_BUCKET", "STEP_BUCKET", "pad_to_bucket", "request_bucket"]

MIN_BUCKET = 1024
STEP_BUCKET = 16 * 1024


def request_bucket(length: int) -> int:
    """The padded length of an encoded request of `length` bytes."""
    if length < 0:
        raise ValueError("length must not be negative")
    if length > STEP_BUCKET:
        return -(-length // STEP_BUCKET) * STEP_BUCKET
    bucket = MIN_BUCKET
    while bucket < length:
        bucket *= 2
    return bucket


def pad_to_bucket(message: bytes) -> bytes:
    """`message` (a whole binary HTTP message) followed by zero bytes up to its bucket."""
    return message + bytes(request_bucket(len(message)) - len(message))
