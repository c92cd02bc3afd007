"""Binary HTTP messages (RFC 9292): the plaintext that Oblivious HTTP seals.

Both framings are supported in both directions: known-length (indicators 0/1) and
indeterminate-length (2/3), with informational (1xx) responses. Decoding goes through one
incremental push parser (`MessageParser`), so a streamed response can be read as its chunks are
opened; `decode_request`/`decode_response` are that parser fed a whole message. Every size the
peer controls is bounded by `Limits`, and any bad input ends in a `WireError`, never another
exception. Field names must be lowercase tokens and values free of NUL/CR/LF (RFC 9292 section 3.6
by way of RFC 9113 section 8.2.1); pseudo-fields are refused altogether.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Literal

from veil.wire.errors import Malformed, MessageTooLarge, Truncated
from veil.wire.varint import encode_varint, peek_varint

__all__ = [
    "Content",
    "End",
    "Fields",
    "Informational",
    "Limits",
    "MessageParser",
    "Request",
    "RequestHead",
    "Response",
    "ResponseHead",
    "decode_request",
    "decode_response",
    "encode_content_chunk",
    "encode_request",
    "encode_response",
    "encode_response_head",
    "encode_response_tail",
    "valid_field_name",
    "valid_field_value",
]

Fields = tuple[tuple[bytes, bytes], ...]
"""Field lines in order: (lowercase name, value) as bytes."""

_KNOWN_REQUEST, _KNOWN_RESPONSE, _INDET_REQUEST, _INDET_RESPONSE = 0, 1, 2, 3
_TCHAR_LOWER = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_TOKEN = _TCHAR_LOWER + b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VCHAR = bytes(range(0x21, 0x7F))


@dataclass(frozen=True)
class Limits:
    """Bounds on what a peer may make a parser hold; going over one is `MessageTooLarge`."""

    max_fields: int = 128  # field lines in one header or trailer section
    max_section_bytes: int = 64 * 1024  # encoded bytes of one field section
    max_control_bytes: int = 8 * 1024  # method + scheme + authority + path, encoded
    max_content_bytes: int = 16 * 1024 * 1024  # message content (body), all chunks together
    max_informational: int = 8  # 1xx responses before the final one


DEFAULT_LIMITS = Limits()


def valid_field_name(name: bytes) -> bool:
    """A non-empty lowercase token (no pseudo-fields, no uppercase)."""
    return bool(name) and not name.translate(None, _TCHAR_LOWER)


def valid_field_value(value: bytes) -> bool:
    """No NUL, CR or LF, and no leading or trailing whitespace."""
    if b"\x00" in value or b"\r" in value or b"\n" in value:
        return False
    return not value or (value[0] not in b" \t" and value[-1] not in b" \t")


def _header(fields: Fields, name: bytes) -> bytes | None:
    for key, value in fields:
        if key == name:
            return value
    return None


@dataclass(frozen=True)
class Request:
    """An HTTP request as RFC 9292 carries it."""

    method: str
    scheme: str
    authority: str
    path: str
    headers: Fields = ()
    content: bytes = b""
    trailers: Fields = ()

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lowercase), if present."""
        return _header(self.headers, name)


@dataclass(frozen=True)
class Informational:
    """An interim (1xx) response."""

    status: int
    headers: Fields = ()


@dataclass(frozen=True)
class Response:
    """An HTTP response as RFC 9292 carries it, with any interim responses before it."""

    status: int
    headers: Fields = ()
    content: bytes = b""
    trailers: Fields = ()
    informational: tuple[Informational, ...] = ()

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lowercase), if present."""
        return _header(self.headers, name)


# --- parser events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestHead:
    """Control data and header section of a request."""

    method: str
    scheme: str
    authority: str
    path: str
    headers: Fields


@dataclass(frozen=True)
class ResponseHead:
    """Final status and header section of a response, with the interim responses before it."""

    status: int
    headers: Fields
    informational: tuple[Informational, ...] = ()


@dataclass(frozen=True)
class Content:
    """A piece of message content, in order; pieces do not follow the sender's chunking."""

    data: bytes


@dataclass(frozen=True)
class End:
    """The message is complete; `trailers` is its trailer section."""

    trailers: Fields = ()


Event = RequestHead | ResponseHead | Content | End


# --- encoding ------------------------------------------------------------------------------------


def _check_field(name: bytes, value: bytes) -> None:
    if not valid_field_name(name):
        raise ValueError(f"invalid field name {name!r}")
    if not valid_field_value(value):
        raise ValueError(f"invalid value for field {name!r}")


def _field_lines(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    out = bytearray()
    for name, value in fields:
        _check_field(name, value)
        out += encode_varint(len(name)) + name + encode_varint(len(value)) + value
    return bytes(out)


def _section(fields: Iterable[tuple[bytes, bytes]], indeterminate: bool) -> bytes:
    lines = _field_lines(fields)
    return lines + b"\x00" if indeterminate else encode_varint(len(lines)) + lines


def _string(value: str) -> bytes:
    raw = value.encode("ascii")
    return encode_varint(len(raw)) + raw


def _status(status: int, informational: bool) -> bytes:
    low, high = (100, 199) if informational else (200, 599)
    if not low <= status <= high:
        raise ValueError(f"status {status} outside {low}..{high}")
    return encode_varint(status)


def encode_request(request: Request, *, indeterminate: bool = False) -> bytes:
    """The request in known-length (default) or indeterminate-length form, untruncated."""
    method = request.method.encode("ascii")
    if not method or method.translate(None, _TOKEN):
        raise ValueError(f"invalid method {request.method!r}")
    out = bytearray(encode_varint(_INDET_REQUEST if indeterminate else _KNOWN_REQUEST))
    for part in (request.method, request.scheme, request.authority, request.path):
        out += _string(part)
    out += _section(request.headers, indeterminate)
    out += _content(request.content, indeterminate)
    out += _section(request.trailers, indeterminate)
    return bytes(out)


def _content(content: bytes, indeterminate: bool) -> bytes:
    if not indeterminate:
        return encode_varint(len(content)) + content
    return (encode_content_chunk(content) if content else b"") + b"\x00"


def encode_response(response: Response, *, indeterminate: bool = False) -> bytes:
    """The response in known-length (default) or indeterminate-length form, untruncated."""
    out = bytearray(encode_varint(_INDET_RESPONSE if indeterminate else _KNOWN_RESPONSE))
    for info in response.informational:
        out += _status(info.status, True) + _section(info.headers, indeterminate)
    out += _status(response.status, False) + _section(response.headers, indeterminate)
    out += _content(response.content, indeterminate)
    out += _section(response.trailers, indeterminate)
    return bytes(out)


def encode_response_head(
    status: int, headers: Fields = (), informational: Iterable[Informational] = ()
) -> bytes:
    """Start of an indeterminate-length response; follow with content chunks and the tail."""
    out = bytearray(encode_varint(_INDET_RESPONSE))
    for info in informational:
        out += _status(info.status, True) + _section(info.headers, True)
    out += _status(status, False) + _section(headers, True)
    return bytes(out)


def encode_content_chunk(data: bytes) -> bytes:
    """One indeterminate-length content chunk; `data` must not be empty (0 ends the content)."""
    if not data:
        raise ValueError("a content chunk cannot be empty")
    return encode_varint(len(data)) + data


def encode_response_tail(trailers: Fields = ()) -> bytes:
    """End of an indeterminate-length message: content terminator and trailer section."""
    return b"\x00" + _section(trailers, True)


# --- decoding ------------------------------------------------------------------------------------


class _NeedMore(Exception):
    """Internal: the buffer ends inside the item being parsed."""


class _State(Enum):
    FRAMING = auto()
    CONTROL = auto()
    HEADERS = auto()
    CONTENT = auto()
    TRAILERS = auto()
    PADDING = auto()


class MessageParser:
    """Incremental RFC 9292 decoder: `feed` bytes as they arrive, get events, then `close`.

    Events: one `RequestHead` or `ResponseHead`, then `Content` pieces, then `End`. `close`
    accepts the truncations RFC 9292 allows (empty trailing sections left out) and raises
    `Malformed` for a message cut anywhere else.
    """

    def __init__(
        self, kind: Literal["request", "response"], limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self._kind = kind
        self._limits = limits
        self._buf = bytearray()
        self._pos = 0
        self._state = _State.FRAMING
        self._indeterminate = False
        self._control: tuple[str, str, str, str] | None = None
        self._status = 0
        self._informational: list[Informational] = []
        self._awaiting_info_headers = False
        self._content_left = 0  # known-length: bytes still to come; indeterminate: of this chunk
        self._content_length_read = False
        self._content_started = False
        self._content_total = 0
        self._done = False
        self._closed = False

    @property
    def done(self) -> bool:
        """True once `End` has been produced."""
        return self._done

    def feed(self, data: bytes) -> list[Event]:
        """Consume `data`; return the events it completes."""
        if self._closed:
            raise Malformed("data after the end of the message")
        self._buf += data
        events: list[Event] = []
        try:
            while self._step(events):
                pass
        except _NeedMore:
            pass
        del self._buf[: self._pos]
        self._pos = 0
        return events

    def close(self) -> list[Event]:
        """The stream ended: return the final events, or raise if the cut was not allowed."""
        if self._closed:
            return []
        self._closed = True
        if self._done or self._state is _State.PADDING:
            return []
        pending = len(self._buf) > self._pos
        events: list[Event] = []
        if self._state is _State.HEADERS and not pending and not self._awaiting_info_headers:
            events.append(self._head(()))
            events.append(End())
        elif not pending and (
            (self._state is _State.CONTENT and not self._mid_content())
            or self._state is _State.TRAILERS
        ):
            events.append(End())
        else:
            raise Truncated("message truncated")
        self._done = True
        return events

    def _mid_content(self) -> bool:
        if self._indeterminate:
            return self._content_started
        return self._content_length_read

    # Each _step parses one item and returns True, or raises _NeedMore.
    def _step(self, events: list[Event]) -> bool:
        state = self._state
        if state is _State.FRAMING:
            return self._parse_framing()
        if state is _State.CONTROL:
            return self._parse_control()
        if state is _State.HEADERS:
            fields = self._parse_section()
            if self._awaiting_info_headers:
                self._informational.append(Informational(self._status, fields))
                self._awaiting_info_headers = False
                self._state = _State.CONTROL
            else:
                events.append(self._head(fields))
                self._state = _State.CONTENT
            return True
        if state is _State.CONTENT:
            return self._parse_content(events)
        if state is _State.TRAILERS:
            events.append(End(self._parse_section()))
            self._done = True
            self._state = _State.PADDING
            return True
        # PADDING: only zero bytes may follow.
        rest = self._buf[self._pos :]
        if rest.count(0) != len(rest):
            raise Malformed("non-zero bytes after the end of the message")
        self._pos = len(self._buf)
        raise _NeedMore

    def _varint(self) -> int:
        got = peek_varint(self._buf, self._pos)
        if got is None:
            raise _NeedMore
        value, self._pos = got
        return value

    def _parse_framing(self) -> bool:
        indicator = self._varint()
        expected = (
            (_KNOWN_REQUEST, _INDET_REQUEST)
            if self._kind == "request"
            else (_KNOWN_RESPONSE, _INDET_RESPONSE)
        )
        if indicator not in expected:
            raise Malformed(f"framing indicator {indicator} is not a {self._kind}")
        self._indeterminate = indicator == expected[1]
        self._state = _State.CONTROL
        return True

    def _parse_control(self) -> bool:
        start = self._pos
        try:
            if self._kind == "request":
                parts = tuple(self._control_string(i == 0) for i in range(4))
                self._control = (parts[0], parts[1], parts[2], parts[3])
            else:
                self._parse_status()
        except _NeedMore:
            if len(self._buf) - start > self._limits.max_control_bytes:
                raise MessageTooLarge("control data over the limit") from None
            self._pos = start
            raise
        if self._pos - start > self._limits.max_control_bytes:  # whatever the bytes' split
            raise MessageTooLarge("control data over the limit")
        self._state = _State.HEADERS
        return True

    def _parse_status(self) -> None:
        status = self._varint()
        if 100 <= status <= 199:
            if len(self._informational) >= self._limits.max_informational:
                raise MessageTooLarge("too many informational responses")
            self._awaiting_info_headers = True
        elif not 200 <= status <= 599:
            raise Malformed(f"status code {status} out of range")
        self._status = status

    def _control_string(self, is_method: bool) -> str:
        length = self._varint()
        if length > self._limits.max_control_bytes:
            raise MessageTooLarge("control data over the limit")
        end = self._pos + length
        if end > len(self._buf):
            raise _NeedMore
        raw = bytes(self._buf[self._pos : end])
        self._pos = end
        if is_method:
            if not raw or raw.translate(None, _TOKEN):
                raise Malformed("invalid method")
        elif raw.translate(None, _VCHAR):
            raise Malformed("invalid characters in request control data")
        return raw.decode("ascii")

    def _parse_section(self) -> Fields:
        start = self._pos
        limit = self._limits.max_section_bytes
        try:
            if self._indeterminate:
                fields = self._field_lines(None)
            else:
                length = self._varint()
                if length > limit:
                    raise MessageTooLarge("field section over the limit")
                if self._pos + length > len(self._buf):
                    raise _NeedMore
                fields = self._field_lines(self._pos + length)
        except _NeedMore:
            if len(self._buf) - start > limit + 8:
                raise MessageTooLarge("field section over the limit") from None
            self._pos = start
            raise
        if self._pos - start > limit + 8:
            raise MessageTooLarge("field section over the limit")
        return fields

    def _field_lines(self, end: int | None) -> Fields:
        """Field lines up to `end` (known-length) or up to a zero name length (indeterminate)."""
        fields: list[tuple[bytes, bytes]] = []
        while end is None or self._pos < end:
            name_len = self._varint()
            if name_len == 0:
                if end is None:
                    return tuple(fields)
                raise Malformed("empty field name")
            name = self._bytes(name_len, end)
            value = self._bytes(self._varint(), end)
            if end is not None and self._pos > end:
                raise Malformed("field line overruns its section")
            if not valid_field_name(name):
                raise Malformed("invalid field name")
            if not valid_field_value(value):
                raise Malformed("invalid field value")
            fields.append((name, value))
            if len(fields) > self._limits.max_fields:
                raise MessageTooLarge("too many field lines")
        if self._pos != end:
            raise Malformed("field line overruns its section")
        return tuple(fields)

    def _bytes(self, length: int, end: int | None) -> bytes:
        stop = self._pos + length
        if end is not None and stop > end:
            raise Malformed("field line overruns its section")
        if length > self._limits.max_section_bytes:
            raise MessageTooLarge("field line over the limit")
        if stop > len(self._buf):
            raise _NeedMore
        out = bytes(self._buf[self._pos : stop])
        self._pos = stop
        return out

    def _head(self, headers: Fields) -> RequestHead | ResponseHead:
        if self._kind == "request":
            assert self._control is not None
            return RequestHead(*self._control, headers=headers)
        return ResponseHead(self._status, headers, tuple(self._informational))

    def _parse_content(self, events: list[Event]) -> bool:
        if self._content_left == 0:
            length = self._varint()
            if self._indeterminate:
                self._content_started = True
                if length == 0:
                    self._state = _State.TRAILERS
                    return True
            else:
                self._content_length_read = True
                if length == 0:
                    self._state = _State.TRAILERS
                    return True
            self._content_total += length
            if self._content_total > self._limits.max_content_bytes:
                raise MessageTooLarge("content over the limit")
            self._content_left = length
        available = min(self._content_left, len(self._buf) - self._pos)
        if available == 0:
            raise _NeedMore
        events.append(Content(bytes(self._buf[self._pos : self._pos + available])))
        self._pos += available
        self._content_left -= available
        if self._content_left == 0 and not self._indeterminate:
            self._state = _State.TRAILERS
        return True


def _collect(
    kind: Literal["request", "response"], data: bytes, limits: Limits
) -> tuple[RequestHead | ResponseHead, bytes, Fields]:
    parser = MessageParser(kind, limits)
    events = parser.feed(data) + parser.close()
    head = events[0]
    assert isinstance(head, RequestHead | ResponseHead)
    content = b"".join(e.data for e in events if isinstance(e, Content))
    end = events[-1]
    assert isinstance(end, End)
    return head, content, end.trailers


def decode_request(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Request:
    """A whole binary request, either framing; raises `Malformed`/`MessageTooLarge`."""
    head, content, trailers = _collect("request", data, limits)
    assert isinstance(head, RequestHead)
    return Request(
        head.method, head.scheme, head.authority, head.path, head.headers, content, trailers
    )


def decode_response(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Response:
    """A whole binary response, either framing; raises `Malformed`/`MessageTooLarge`."""
    head, content, trailers = _collect("response", data, limits)
    assert isinstance(head, ResponseHead)
    return Response(head.status, head.headers, content, trailers, head.informational)
