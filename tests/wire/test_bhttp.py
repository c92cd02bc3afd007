"""Binary HTTP (RFC 9292): the RFC's examples, round trips, limits, and arbitrary bytes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.wire import bhttp
from veil.wire.errors import Malformed, MessageTooLarge, Truncated, WireError

# RFC 9292 section 5: the example request, known-length and indeterminate-length (10 bytes
# of padding), and the indeterminate-length response with two interim responses.
KNOWN_REQUEST = bytes.fromhex(
    "0003474554056874747073000a2f68656c6c6f2e747874406c0a757365722d6167656e74346375726c2f372e"
    "31362e33206c69626375726c2f372e31362e33204f70656e53534c2f302e392e376c207a6c69622f312e322e"
    "3304686f73740f7777772e6578616d706c652e636f6d0f6163636570742d6c616e677561676506656e2c206d"
    "690000"
)
INDETERMINATE_REQUEST = bytes.fromhex(
    "0203474554056874747073000a2f68656c6c6f2e7478740a757365722d6167656e74346375726c2f372e3136"
    "2e33206c69626375726c2f372e31362e33204f70656e53534c2f302e392e376c207a6c69622f312e322e3304"
    "686f73740f7777772e6578616d706c652e636f6d0f6163636570742d6c616e677561676506656e2c206d6900"
    "000000000000000000000000"
)
INTERIM_RESPONSE = bytes.fromhex(
    "0340660772756e6e696e670a22736c65657020313522004067046c696e6b233c2f7374796c652e6373733e3b"
    "2072656c3d7072656c6f61643b2061733d7374796c65046c696e6b243c2f7363726970742e6a733e3b207265"
    "6c3d7072656c6f61643b2061733d7363726970740040c804646174651d4d6f6e2c203237204a756c20323030"
    "392031323a32383a353320474d5406736572766572064170616368650d6c6173742d6d6f6469666965641d57"
    "65642c203232204a756c20323030392031393a31353a353620474d5404657461671422333461613338372d64"
    "2d3135363865623030220d6163636570742d72616e6765730562797465730e636f6e74656e742d6c656e6774"
    "6802353104766172790f4163636570742d456e636f64696e670c636f6e74656e742d747970650a746578742f"
    "706c61696e003348656c6c6f20576f726c6421204d7920636f6e74656e7420696e636c756465732061207472"
    "61696c696e672043524c462e0d0a0000"
)
KNOWN_RESPONSE_WITH_TRAILER = bytes.fromhex(
    "0140c8001d5468697320636f6e74656e7420636f6e7461696e732043524c462e0d0a0d07747261696c6572"
    "0474657874"
)

EXPECTED_REQUEST = bhttp.Request(
    "GET",
    "https",
    "",
    "/hello.txt",
    (
        (b"user-agent", b"curl/7.16.3 libcurl/7.16.3 OpenSSL/0.9.7l zlib/1.2.3"),
        (b"host", b"www.example.com"),
        (b"accept-language", b"en, mi"),
    ),
)


def test_rfc_known_length_request_decodes_and_reencodes() -> None:
    assert bhttp.decode_request(KNOWN_REQUEST) == EXPECTED_REQUEST
    assert bhttp.encode_request(EXPECTED_REQUEST) == KNOWN_REQUEST


@pytest.mark.parametrize("cut", [1, 2])
def test_rfc_request_truncations_mean_the_same(cut: int) -> None:
    assert bhttp.decode_request(KNOWN_REQUEST[:-cut]) == EXPECTED_REQUEST


def test_rfc_indeterminate_request_with_padding() -> None:
    assert bhttp.decode_request(INDETERMINATE_REQUEST) == EXPECTED_REQUEST
    assert bhttp.encode_request(EXPECTED_REQUEST, indeterminate=True) == INDETERMINATE_REQUEST[:-10]
    for cut in range(13):  # RFC: up to 12 bytes can be removed without changing the meaning
        assert bhttp.decode_request(INDETERMINATE_REQUEST[: len(INDETERMINATE_REQUEST) - cut])


def test_rfc_interim_response() -> None:
    response = bhttp.decode_response(INTERIM_RESPONSE)
    assert [i.status for i in response.informational] == [102, 103]
    assert response.informational[1].headers[1] == (
        b"link",
        b"</script.js>; rel=preload; as=script",
    )
    assert response.status == 200
    assert response.header(b"content-type") == b"text/plain"
    assert response.content == b"Hello World! My content includes a trailing CRLF.\r\n"
    assert bhttp.encode_response(response, indeterminate=True) == INTERIM_RESPONSE


def test_rfc_known_length_response_with_trailer() -> None:
    response = bhttp.decode_response(KNOWN_RESPONSE_WITH_TRAILER)
    assert response.trailers == ((b"trailer", b"text"),)
    assert bhttp.encode_response(response) == KNOWN_RESPONSE_WITH_TRAILER


def test_streamed_response_parses_byte_by_byte() -> None:
    head = bhttp.encode_response_head(200, ((b"content-type", b"text/event-stream"),))
    wire = head + bhttp.encode_content_chunk(b"data: a\n\n") + bhttp.encode_content_chunk(b"b")
    wire += bhttp.encode_response_tail()
    parser = bhttp.MessageParser("response")
    events = []
    for byte in wire:
        events += parser.feed(bytes([byte]))
    events += parser.close()
    assert isinstance(events[0], bhttp.ResponseHead) and events[0].status == 200
    assert b"".join(e.data for e in events if isinstance(e, bhttp.Content)) == b"data: a\n\nb"
    assert isinstance(events[-1], bhttp.End) and parser.done


def test_head_arrives_before_content_is_complete() -> None:
    parser = bhttp.MessageParser("response")
    events = parser.feed(bhttp.encode_response_head(200) + bhttp.encode_content_chunk(b"tok"))
    assert [type(e) for e in events] == [bhttp.ResponseHead, bhttp.Content]
    with pytest.raises(Truncated):  # content chunks without their terminator
        parser.close()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", Truncated),
        (b"\x04", Malformed),  # unknown framing indicator
        (b"\x01", Truncated),  # response cut before its status
        (b"\x01\x40\x64", Truncated),  # 100 Continue with no final response
        (b"\x01\x42\x58", Malformed),  # status 600
        (b"\x01\x40\xc8\x03\x01A\x00", Malformed),  # uppercase field name
        (b"\x01\x40\xc8\x04\x01a\x01\n", Malformed),  # LF in a value
        (b"\x01\x40\xc8\x00\x05ab", Truncated),  # content shorter than its length
        (b"\x01\x40\xc8\x00\x00\x00\x01", Malformed),  # non-zero padding
        (b"\x01\x40\xc8\x03\x01a\x05", Malformed),  # value overruns its section
        (b"\x03\x40\xc8\x00\x02ab", Truncated),  # chunk without content terminator
    ],
)
def test_bad_messages_get_typed_errors(data: bytes, error: type[WireError]) -> None:
    with pytest.raises(error):
        bhttp.decode_response(data)


def test_pseudo_fields_and_bad_methods_refused() -> None:
    with pytest.raises(Malformed):
        bhttp.decode_request(b"\x00\x03GET\x00\x00\x01/\x05\x07:method\x03GET")
    with pytest.raises(Malformed):
        bhttp.decode_request(b"\x00\x03G T\x00\x00\x01/")


def test_limits() -> None:
    small = bhttp.Limits(max_fields=2, max_section_bytes=64, max_content_bytes=4)
    many = bhttp.Response(200, tuple((b"a", b"b") for _ in range(3)))
    with pytest.raises(MessageTooLarge):
        bhttp.decode_response(bhttp.encode_response(many), small)
    big_section = bhttp.Response(200, ((b"a", b"x" * 100),))
    for indeterminate in (False, True):
        with pytest.raises(MessageTooLarge):
            bhttp.decode_response(
                bhttp.encode_response(big_section, indeterminate=indeterminate), small
            )
        with pytest.raises(MessageTooLarge):
            body = bhttp.Response(200, content=b"12345")
            bhttp.decode_response(bhttp.encode_response(body, indeterminate=indeterminate), small)
    with pytest.raises(MessageTooLarge):
        bhttp.decode_request(b"\x00\x03GET\x00\x00\x4f\xff", bhttp.Limits(max_control_bytes=100))
    interim = bhttp.Response(200, informational=(bhttp.Informational(103),) * 3)
    with pytest.raises(MessageTooLarge):
        bhttp.decode_response(bhttp.encode_response(interim), bhttp.Limits(max_informational=2))


def test_encoder_refuses_what_the_decoder_would() -> None:
    with pytest.raises(ValueError):
        bhttp.encode_response(bhttp.Response(200, ((b"Upper", b"x"),)))
    with pytest.raises(ValueError):
        bhttp.encode_response(bhttp.Response(99))
    with pytest.raises(ValueError):
        bhttp.encode_content_chunk(b"")


_names = st.text("abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=12).map(str.encode)
_values = st.binary(max_size=40).filter(bhttp.valid_field_value)
_fields = st.lists(st.tuples(_names, _values), max_size=6).map(tuple)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["GET", "POST", "PUT"]),
    st.text("abcdefghijklmnopqrstuvwxyz/?=&0123456789", max_size=30),
    _fields,
    st.binary(max_size=200),
    _fields,
    st.booleans(),
)
def test_request_round_trip(
    method: str, path: str, headers: bhttp.Fields, body: bytes, trailers: bhttp.Fields, ind: bool
) -> None:
    request = bhttp.Request(method, "https", "veil.invalid", "/" + path, headers, body, trailers)
    assert bhttp.decode_request(bhttp.encode_request(request, indeterminate=ind)) == request


@settings(max_examples=150, deadline=None)
@given(
    st.integers(200, 599),
    _fields,
    st.lists(st.binary(min_size=1, max_size=50), max_size=5),
    st.lists(st.tuples(st.integers(100, 199), _fields), max_size=3),
    st.integers(1, 7),
)
def test_streamed_response_round_trip_any_split(
    status: int, headers: bhttp.Fields, chunks: list[bytes], interim: list, step: int
) -> None:
    informational = tuple(bhttp.Informational(s, h) for s, h in interim)
    wire = bhttp.encode_response_head(status, headers, informational)
    wire += b"".join(bhttp.encode_content_chunk(c) for c in chunks) + bhttp.encode_response_tail()
    parser = bhttp.MessageParser("response")
    events = []
    for i in range(0, len(wire), step):
        events += parser.feed(wire[i : i + step])
    events += parser.close()
    expected = bhttp.Response(status, headers, b"".join(chunks), (), informational)
    assert bhttp.decode_response(wire) == expected
    assert events[0] == bhttp.ResponseHead(status, headers, informational)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["request", "response"]))
def test_arbitrary_bytes_only_typed_errors(data: bytes, kind: str) -> None:
    decode = bhttp.decode_request if kind == "request" else bhttp.decode_response
    with contextlib.suppress(WireError):
        decode(data, bhttp.Limits(max_fields=8, max_section_bytes=256, max_content_bytes=256))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=120))
def test_arbitrary_suffix_after_valid_prefix(data: bytes) -> None:
    with contextlib.suppress(WireError):
        bhttp.decode_response(b"\x03\x40\xc8" + data)
