"""QUIC variable-length integers (RFC 9000 section 16): the lengths of BHTTP and chunked OHTTP."""

from __future__ import annotations

from veil.wire.errors import Malformed

__all__ = ["MAX_VARINT", "decode_varint", "encode_varint", "peek_varint"]

MAX_VARINT = (1 << 62) - 1


def encode_varint(value: int) -> bytes:
    """The shortest encoding of `value` (0 <= value < 2**62)."""
    if value < 0 or value > MAX_VARINT:
        raise ValueError(f"varint out of range: {value}")
    if value < 0x40:
        return value.to_bytes(1, "big")
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x4000_0000:
        return (value | 0x8000_0000).to_bytes(4, "big")
    return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")


def peek_varint(data: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """(value, next position) of the varint at `pos`, or None if `data` ends before it does."""
    if pos >= len(data):
        return None
    first = data[pos]
    size = 1 << (first >> 6)
    if pos + size > len(data):
        return None
    value = first & 0x3F
    for i in range(1, size):
        value = (value << 8) | data[pos + i]
    return value, pos + size


def decode_varint(data: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int]:
    """Like `peek_varint`, but a varint cut short is `Malformed`."""
    got = peek_varint(data, pos)
    if got is None:
        raise Malformed("truncated variable-length integer")
    return got
