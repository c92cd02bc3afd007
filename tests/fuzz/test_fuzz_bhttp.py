"""Fuzz: Binary HTTP (RFC 9292) requests and responses, whole and fed in pieces.

Property: `decode_request`/`decode_response` and `MessageParser` return a message or raise a
`WireError`; a decoded message respects the `Limits` and re-encodes; the result does not depend
on how the bytes were split; a huge declared length allocates nothing; valid messages round-trip
byte for byte (encode(decode(x)) == x).
"""

from __future__ import annotations

from typing import Literal

import pytest
from fuzzkit import bounded_memory, fuzz, maybe_mutated, mutated_bytes, outcome, splits
from hypothesis import given
from hypothesis import strategies as st

from veil.wire import bhttp
from veil.wire.errors import MessageTooLarge, WireError
from veil.wire.varint import MAX_VARINT, encode_varint, peek_varint

Kind = Literal["request", "response"]
Message = bhttp.Request | bhttp.Response
Token = tuple[str, bytes]  # ("len", varint) or ("data", bytes)

_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))

names = st.text(_TCHAR, min_size=1, max_size=10).map(str.encode)
values = st.binary(max_size=16).filter(bhttp.valid_field_value)
fields = st.lists(st.tuples(names, values), max_size=4).map(tuple)
requests = st.builds(
    bhttp.Request,
    method=st.text(_TCHAR + "ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=8),
    scheme=st.text(_VCHAR, max_size=8),
    authority=st.text(_VCHAR, max_size=16),
    path=st.text(_VCHAR, max_size=24),
    headers=fields,
    content=st.binary(max_size=64),
    trailers=fields,
)
responses = st.builds(
    bhttp.Response,
    status=st.integers(200, 599),
    headers=fields,
    content=st.binary(max_size=64),
    trailers=fields,
    informational=st.lists(
        st.builds(bhttp.Informational, st.integers(100, 199), fields), max_size=3
    ).map(tuple),
)
SMALL = bhttp.Limits(
    max_fields=3,
    max_section_bytes=48,
    max_control_bytes=24,
    max_content_bytes=40,
    max_informational=1,
)
limits = st.sampled_from([bhttp.DEFAULT_LIMITS, SMALL])


# --- a token-level encoder: every length field is a token a mutation can change ---------------


def _v(n: int) -> Token:
    return ("len", encode_varint(n))


def _section(lines: bhttp.Fields, indeterminate: bool) -> list[Token]:
    out: list[Token] = []
    for name, value in lines:
        out += [_v(len(name)), ("data", name), _v(len(value)), ("data", value)]
    if indeterminate:
        return [*out, _v(0)]
    return [_v(sum(len(b) for _, b in out)), *out]


def _content(content: bytes, indeterminate: bool) -> list[Token]:
    if not indeterminate:
        return [_v(len(content)), ("data", content)]
    return ([_v(len(content)), ("data", content)] if content else []) + [_v(0)]


def tokens(message: Message, indeterminate: bool) -> list[Token]:
    """`message` as RFC 9292 encodes it, one token per field."""
    if isinstance(message, bhttp.Request):
        out = [_v(2 if indeterminate else 0)]
        for part in (message.method, message.scheme, message.authority, message.path):
            raw = part.encode()
            out += [_v(len(raw)), ("data", raw)]
    else:
        out = [_v(3 if indeterminate else 1)]
        for info in message.informational:
            out += [_v(info.status), *_section(info.headers, indeterminate)]
        out.append(_v(message.status))
    out += _section(message.headers, indeterminate)
    out += _content(message.content, indeterminate)
    return out + _section(message.trailers, indeterminate)


def _varint_sized(value: int, size: int) -> bytes:
    """`value` as a varint of `size` bytes (non-minimal where it would fit in fewer)."""
    prefix = {1: 0, 2: 0x40, 4: 0x80, 8: 0xC0}[size]
    return ((prefix << (8 * size - 8)) | value).to_bytes(size, "big")


@st.composite
def changed_length(draw: st.DrawFn, toks: list[Token]) -> bytes:
    """The encoding with one length field (or status, or framing) changed."""
    lens = [i for i, (kind, _) in enumerate(toks) if kind == "len"]
    i = draw(st.sampled_from(lens))
    old, _ = peek_varint(toks[i][1], 0) or (0, 0)
    new = draw(
        st.sampled_from([0, 1, max(old - 1, 0), old + 1, 0x3FFF, 2**30, MAX_VARINT])
        | st.integers(0, MAX_VARINT)
    )
    size = draw(st.sampled_from([s for s in (1, 2, 4, 8) if new < 1 << (8 * s - 2)]))
    out = [*toks]
    out[i] = ("len", _varint_sized(new, size))
    return b"".join(b for _, b in out)


def _encode(message: Message, indeterminate: bool) -> bytes:
    if isinstance(message, bhttp.Request):
        return bhttp.encode_request(message, indeterminate=indeterminate)
    return bhttp.encode_response(message, indeterminate=indeterminate)


def _decode(kind: Kind, data: bytes, lim: bhttp.Limits) -> Message:
    if kind == "request":
        return bhttp.decode_request(data, lim)
    return bhttp.decode_response(data, lim)


def _decode_pieces(kind: Kind, pieces: list[bytes], lim: bhttp.Limits) -> Message:
    parser = bhttp.MessageParser(kind, lim)
    events: list[bhttp.Event] = []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.close()
    head, end = events[0], events[-1]
    assert isinstance(end, bhttp.End)
    content = b"".join(e.data for e in events if isinstance(e, bhttp.Content))
    assert all(isinstance(e, bhttp.Content) for e in events[1:-1])
    if isinstance(head, bhttp.RequestHead):
        return bhttp.Request(
            head.method, head.scheme, head.authority, head.path, head.headers, content, end.trailers
        )
    assert isinstance(head, bhttp.ResponseHead)
    return bhttp.Response(head.status, head.headers, content, end.trailers, head.informational)


def _within(message: Message, lim: bhttp.Limits) -> None:
    sections = [message.headers, message.trailers]
    if isinstance(message, bhttp.Response):
        assert len(message.informational) <= lim.max_informational
        sections += [i.headers for i in message.informational]
    else:
        control = (message.method, message.scheme, message.authority, message.path)
        assert sum(len(p) + len(encode_varint(len(p))) for p in control) <= lim.max_control_bytes
    for section in sections:
        assert len(section) <= lim.max_fields
    assert len(message.content) <= lim.max_content_bytes


@st.composite
def inputs(draw: st.DrawFn) -> tuple[Kind, bytes]:
    """A request or response, valid, with a length field changed, or mutated as bytes."""
    kind: Kind = draw(st.sampled_from(["request", "response"]))
    message = draw(requests if kind == "request" else responses)
    indeterminate = draw(st.booleans())
    toks = tokens(message, indeterminate)
    valid = b"".join(b for _, b in toks)
    data = draw(st.one_of(maybe_mutated(valid), changed_length(toks)))
    if draw(st.booleans()):  # RFC 9292 padding, or garbage after the message
        data += draw(st.sampled_from([b"\x00" * 4, b"\x00\x01", b"\xff"]))
    return kind, data


@fuzz(2)
@given(st.one_of(requests, responses), st.booleans())
def test_round_trip(message: Message, indeterminate: bool) -> None:
    wire = _encode(message, indeterminate)
    assert b"".join(b for _, b in tokens(message, indeterminate)) == wire
    kind: Kind = "request" if isinstance(message, bhttp.Request) else "response"
    decoded = _decode(kind, wire, bhttp.DEFAULT_LIMITS)
    assert decoded == message
    assert _encode(decoded, indeterminate) == wire


@fuzz(6)
@given(inputs(), limits, st.data())
def test_mutated_messages(case: tuple[Kind, bytes], lim: bhttp.Limits, data: st.DataObject) -> None:
    kind, wire = case
    whole, err = outcome(lambda: _decode(kind, wire, lim), WireError)
    pieces = data.draw(splits(wire))
    split, split_err = outcome(lambda: _decode_pieces(kind, pieces, lim), WireError)
    assert (whole, err is None) == (split, split_err is None), (err, split_err)
    if whole is None:
        return
    _within(whole, lim)
    for indeterminate in (False, True):  # anything accepted can be sent on
        assert _decode(kind, _encode(whole, indeterminate), lim) == whole


@fuzz(2)
@given(st.sampled_from(["request", "response"]), st.binary(max_size=512))
def test_random_bytes(kind: Kind, wire: bytes) -> None:
    outcome(lambda: _decode(kind, wire, bhttp.DEFAULT_LIMITS), WireError)


@fuzz(1)
@given(st.one_of(requests, responses), st.booleans(), st.data())
def test_huge_declared_lengths_allocate_nothing(
    message: Message, indeterminate: bool, data: st.DataObject
) -> None:
    toks = tokens(message, indeterminate)
    lens = [i for i, (kind, _) in enumerate(toks) if kind == "len"]
    i = data.draw(st.sampled_from(lens[1:]))
    huge = data.draw(st.sampled_from([2**30, 2**40, MAX_VARINT]))
    wire = b"".join(b for _, b in toks[:i]) + encode_varint(huge)
    wire += data.draw(mutated_bytes(b"".join(b for _, b in toks[i + 1 :])))
    kind: Kind = "request" if isinstance(message, bhttp.Request) else "response"
    with bounded_memory(256 * 1024 + 4 * len(wire)):
        outcome(lambda: _decode(kind, wire, bhttp.DEFAULT_LIMITS), WireError)


def test_regression_control_limit_is_on_the_total() -> None:
    """Found by this target: four control strings each under `max_control_bytes` but over it
    together passed when they arrived at once and failed when they arrived byte by byte."""
    wire = bhttp.encode_request(bhttp.Request("GET", "https", "a" * 10, "/" + "p" * 10))
    lim = bhttp.Limits(max_control_bytes=24)
    with pytest.raises(MessageTooLarge):
        _decode("request", wire, lim)
    with pytest.raises(MessageTooLarge):
        _decode_pieces("request", [wire[i : i + 1] for i in range(len(wire))], lim)
    assert _decode("request", wire, bhttp.Limits(max_control_bytes=40)).authority == "a" * 10
