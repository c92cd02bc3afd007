"""Fuzz: MPC control-channel frames (`veil.mpc.channel`), from a buffer and from a socket.

Property: `decode_frame` returns (header, blobs) or raises `ProtocolViolation`; `recv_frame`
does the same or raises `ConnectionError` when the stream ends, agrees with `decode_frame`,
and never waits for bytes that will not come; neither allocates what a header merely
declares; valid frames round-trip byte for byte. (Named without "mpc": it needs no parties.)
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fuzzkit import (
    BIG_ENDIAN,
    JSON_VALUES,
    bounded_memory,
    deep_json,
    fuzz,
    maybe_mutated,
    mutated_json,
    outcome,
)
from hypothesis import given
from hypothesis import strategies as st

import veil
from veil.mpc.channel import MAGIC, MAX_BLOB, MAX_HEADER, decode_frame, encode_frame, recv_frame
from veil.mpc.errors import ProtocolViolation

headers = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4)
blob_lists = st.lists(st.binary(max_size=64), max_size=4)
SIZES = [-1, 0, 1, MAX_BLOB, MAX_BLOB + 1, 2**64, True, 1.5, "1", None]


def _frame(header_text: bytes, tail: bytes) -> bytes:
    return MAGIC + struct.pack(">I", len(header_text)) + header_text + tail


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """A real frame, then mutated: as bytes, in its header JSON, its blob list or its length."""
    header, blobs = draw(headers), draw(blob_lists)
    wire = encode_frame(header, blobs)
    head = json.loads(wire[8 : 8 + struct.unpack(">I", wire[4:8])[0]])
    tail = b"".join(blobs)
    how = draw(st.sampled_from(["bytes", "json", "sizes", "length"]))
    if how == "bytes":
        return draw(maybe_mutated(wire))
    if how == "json":
        return _frame(draw(mutated_json(head)), tail)
    if how == "sizes":
        sizes = draw(st.lists(st.sampled_from(SIZES) | st.integers(0, 80), max_size=20))
        return _frame(json.dumps(dict(head, blobs=sizes)).encode(), tail)
    at = draw(st.sampled_from([4, 6]))
    return wire[:at] + draw(st.sampled_from(BIG_ENDIAN)) + wire[at + 2 :]


def _received(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """`recv_frame` on a stream that carries `data` and then ends."""
    writer, reader = socket.socketpair()
    with writer, reader:
        reader.settimeout(10)  # a wait for bytes that never come fails the property
        writer.sendall(data)
        writer.shutdown(socket.SHUT_WR)
        return recv_frame(reader)


def _check(data: bytes) -> None:
    got, _ = outcome(lambda: decode_frame(data), ProtocolViolation)
    if got is not None:
        header, blobs = got
        assert header["blobs"] == [len(b) for b in blobs]
        assert decode_frame(encode_frame(header, blobs)) == got
    if len(data) <= 128 * 1024:  # what a socket pair buffers without a reader
        streamed, _ = outcome(lambda: _received(data), (ProtocolViolation, ConnectionError))
        if got is not None:
            assert streamed == got


@fuzz(1)
@given(headers, blob_lists)
def test_round_trip(header: dict[str, Any], blobs: list[bytes]) -> None:
    wire = encode_frame(header, blobs)
    got = decode_frame(wire)
    assert got == (dict(header, blobs=[len(b) for b in blobs]), blobs)
    assert encode_frame(*got) == wire
    assert _received(wire) == got


@fuzz(6)
@given(frames())
def test_mutated_frames(data: bytes) -> None:
    _check(data)


@fuzz(1)
@given(deep_json(MAX_HEADER))
def test_deep_header(raw: bytes) -> None:
    _check(_frame(raw, b""))


@fuzz(1)
@given(st.binary(max_size=256))
def test_random_bytes(data: bytes) -> None:
    _check(data)
    _check(MAGIC + data)


@fuzz(0.5)
@given(st.lists(st.sampled_from([MAX_BLOB, MAX_BLOB // 2, 2**20]), min_size=1, max_size=16))
def test_declared_blobs_allocate_nothing(sizes: list[int]) -> None:
    data = _frame(json.dumps({"blobs": sizes}).encode(), b"x" * 100)
    with bounded_memory(4 * 1024 * 1024):
        outcome(lambda: decode_frame(data), ProtocolViolation)
        outcome(lambda: _received(data), ConnectionError)


def test_regression_deep_header_does_not_crash_the_process() -> None:
    """Found by this target: a header of 64 KB of "[" went straight to json.loads, which under
    py_ecc's recursion limit (100,000, set when a node imports the chain libraries) overflowed
    the C stack and killed the process (SIGSEGV); under a limit of 1,000 it was RecursionError."""
    code = (
        "import struct, sys; sys.setrecursionlimit(100_000)\n"
        "from veil.mpc.channel import decode_frame, ProtocolViolation\n"
        "raw = b'[' * 65536\n"
        "try:\n"
        "    decode_frame(b'VMPC' + struct.pack('>I', len(raw)) + raw)\n"
        "except ProtocolViolation:\n"
        "    print('refused')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(veil.__file__).parents[1])}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=60, text=True, env=env
    )
    assert (run.returncode, run.stdout.strip()) == (0, "refused"), run.stderr[-500:]
    with pytest.raises(ProtocolViolation, match="nest"):
        decode_frame(_frame(b"[" * 1500, b""))


def test_regression_declared_blob_is_not_allocated_up_front() -> None:
    """Found by this target: `recv_frame` allocated each blob's declared size (up to 64 MiB)
    before a byte of it arrived."""
    data = _frame(json.dumps({"blobs": [MAX_BLOB]}).encode(), b"x" * 10)
    with bounded_memory(4 * 1024 * 1024), pytest.raises(ConnectionError):
        _received(data)
