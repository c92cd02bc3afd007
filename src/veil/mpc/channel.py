"""Framing of the client <-> party control channel: a JSON header plus binary blobs (shares).

    frame = b"VMPC" | u32 header length | header (JSON object) | blob 0 | blob 1 | ...

The header lists the blob lengths under "blobs". Limits are checked before anything is
allocated, so a peer cannot make a party reserve memory by announcing a huge frame.

Two carriers: a plain TCP stream of frames (`send_frame`/`recv_frame`; `veil mpc party`, for
loopback and tests), and one frame per HTTP request and answer (`encode_frame`/`decode_frame`,
media type `MEDIA_MPC`, at `MPC_PATH` of a node), which in the network travels inside Oblivious
HTTP sealed to that node's key, so the relay and the other nodes see only ciphertext.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Sequence
from typing import Any

from veil.mpc.errors import ProtocolViolation
from veil.wire import boundedjson
from veil.wire.errors import WireError
from veil.wire.http import MEDIA_MPC, MPC_PATH

__all__ = [
    "MAGIC",
    "MAX_BLOB",
    "MAX_HEADER",
    "MEDIA_MPC",
    "MPC_PATH",
    "decode_frame",
    "encode_frame",
    "recv_frame",
    "send_frame",
    "share_blobs",
    "shares_from",
]

MAGIC = b"VMPC"
MAX_HEADER = 64 * 1024  # bytes
MAX_BLOB = 64 * 1024 * 1024  # bytes; the largest share the client sends is a few hundred KB
MAX_BLOBS = 16


def encode_frame(header: dict[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
    head = dict(header, blobs=[len(b) for b in blobs])
    raw = json.dumps(head, separators=(",", ":")).encode()
    return b"".join([MAGIC, struct.pack(">I", len(raw)), raw, *blobs])


def send_frame(sock: socket.socket, header: dict[str, Any], blobs: Sequence[bytes] = ()) -> None:
    sock.sendall(encode_frame(header, blobs))


_RECV_PIECE = 1024 * 1024


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    """`n` bytes; memory grows with what arrives, not with what the peer announced."""
    buf = bytearray()
    while len(buf) < n:
        piece = sock.recv(min(n - len(buf), _RECV_PIECE))
        if not piece:
            raise ConnectionError("peer closed the connection")
        buf += piece
    return bytes(buf)


def _header_length(prefix: bytes) -> int:
    if prefix[:4] != MAGIC:
        raise ProtocolViolation("not a Veil MPC frame")
    (n,) = struct.unpack(">I", prefix[4:])
    if n > MAX_HEADER:
        raise ProtocolViolation(f"header of {n} bytes exceeds {MAX_HEADER}")
    return int(n)


def _header(raw: bytes) -> tuple[dict[str, Any], list[int]]:
    try:
        header = boundedjson.loads(raw, max_bytes=MAX_HEADER, max_depth=8, what="frame header")
    except WireError as exc:
        raise ProtocolViolation(f"header: {exc}") from None
    sizes = header.get("blobs") if isinstance(header, dict) else None
    if (
        not isinstance(sizes, list)
        or len(sizes) > MAX_BLOBS
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_BLOB
                   for s in sizes)
    ):  # fmt: skip
        raise ProtocolViolation("bad blob list in header")
    return header, sizes


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], list[bytes]]:
    """Read one frame; ConnectionError when the peer is gone, ProtocolViolation when malformed."""
    n = _header_length(_recv_exact(sock, 8))
    header, sizes = _header(_recv_exact(sock, n))
    return header, [_recv_exact(sock, s) for s in sizes]


def decode_frame(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """One whole frame from a buffer (an HTTP body); ProtocolViolation unless it is exactly one."""
    if len(data) < 8:
        raise ProtocolViolation("frame shorter than its prefix")
    n = _header_length(data[:8])
    if len(data) < 8 + n:
        raise ProtocolViolation("frame shorter than its header")
    header, sizes = _header(data[8 : 8 + n])
    if 8 + n + sum(sizes) != len(data):
        raise ProtocolViolation("frame length does not match its blob list")
    blobs, i = [], 8 + n
    for s in sizes:
        blobs.append(data[i : i + s])
        i += s
    return header, blobs


def share_blobs(shares: Sequence[Any]) -> tuple[list[int], list[bytes]]:
    """Flatten SPU shares to blobs: per share its meta, then its chunks."""
    counts, blobs = [], []
    for s in shares:
        chunks = list(s.share_chunks)
        counts.append(len(chunks))
        blobs.append(bytes(s.meta))
        blobs.extend(bytes(c) for c in chunks)
    return counts, blobs


def shares_from(counts: Any, blobs: Sequence[bytes]) -> list[Any]:
    """Rebuild SPU shares from `share_blobs` output; ProtocolViolation if the counts lie."""
    from veil.mpc.runtime import make_share

    if not isinstance(counts, list) or not all(isinstance(c, int) and c >= 0 for c in counts):
        raise ProtocolViolation("bad share counts")
    if sum(counts) + len(counts) != len(blobs):
        raise ProtocolViolation("share counts do not match the blobs sent")
    out, i = [], 0
    for c in counts:
        out.append(make_share(blobs[i], blobs[i + 1 : i + 1 + c]))
        i += 1 + c
    return out
