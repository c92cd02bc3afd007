"""Oblivious HTTP (RFC 9458) and chunked OHTTP: published vectors, round trips, tampering."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.wire import ohttp
from veil.wire.errors import (
    DecryptionFailed,
    Malformed,
    MessageTooLarge,
    Truncated,
    UnknownKeyId,
    UnsupportedSuite,
    WireError,
)
from veil.wire.ohttp import (
    AEAD_AES_128_GCM,
    AEAD_CHACHA20_POLY1305,
    KDF_HKDF_SHA256,
    KeyConfig,
    KeyPair,
    SymmetricSuite,
)

DATA = Path(__file__).resolve().parents[1] / "data"
RFC9458 = json.loads((DATA / "ohttp" / "rfc9458-appendix-a.json").read_text())
AES = SymmetricSuite(KDF_HKDF_SHA256, AEAD_AES_128_GCM)
CHACHA = SymmetricSuite(KDF_HKDF_SHA256, AEAD_CHACHA20_POLY1305)
SUITES = [AES, CHACHA]
h = bytes.fromhex

# draft-ietf-ohai-chunked-ohttp, Appendix A (the example exchange).
CHUNKED = {
    "skR": "1c190d72acdbe4dbc69e680503bb781a932c70a12c8f3754434c67d8640d8698",
    "key_config": "010020668eb21aace159803974a4c67f08b4152d29bed10735fd08f98ccdd6fe"
    "09570800080001000100010003",
    "request": "00034745540568747470730b6578616d706c652e636f6d012f",
    "skE": "b26d565f3f875ed480d1abced3d665159650c99174fd0b124ac4bda0c64ae324",
    "encapsulated_request": "01002000010001"
    "8811eb457e100811c40a0aa71340a1b81d804bb986f736f2f566a7199761a032"
    "1c2ad24942d4d692563012f2980c8fef437a336b9b2fc938ef77a5834f"
    "1d2e33d8fd25577afe31bd1c79d094f76b6250ae6549b473ecd950501311"
    "001c6c1395d0ef7c1022297966307b8a7f",
    "response_nonce": "bcce7f4cb921309ba5d62edf1769ef09",
    "encapsulated_response": "bcce7f4cb921309ba5d62edf1769ef09"
    "1179bf1cc87fa0e2c02de4546945aa3d1e48"
    "12b348b5bd4c594c16b6170b07b475845d1f32"
    "00ed9d8a796617a5b27265f4d73247f639",
}


def rfc_key() -> KeyPair:
    return KeyPair(1, h(RFC9458["skR"]), (AES, CHACHA))


def test_rfc9458_key_config() -> None:
    key = rfc_key()
    assert key.config.encode().hex() == RFC9458["key_config"]
    assert KeyConfig.decode(h(RFC9458["key_config"])) == key.config


def test_rfc9458_gateway_direction() -> None:
    """The gateway opens the published request and seals the published response."""
    request, sealer = ohttp.decapsulate_request({1: rfc_key()}, h(RFC9458["encapsulated_request"]))
    assert request.hex() == RFC9458["bhttp_request"]
    sealed = sealer.seal(h(RFC9458["bhttp_response"]), nonce=h(RFC9458["response_nonce"]))
    assert sealed.hex() == RFC9458["encapsulated_response"]


def test_rfc9458_client_direction() -> None:
    """The client reproduces the published request and opens the published response."""
    sealed, opener = ohttp.encapsulate_request(
        rfc_key().config, h(RFC9458["bhttp_request"]), ephemeral_secret=h(RFC9458["skE"])
    )
    assert sealed.hex() == RFC9458["encapsulated_request"]
    assert opener.open(h(RFC9458["encapsulated_response"])).hex() == RFC9458["bhttp_response"]


def test_chunked_draft_example_both_directions() -> None:
    key = KeyPair(1, h(CHUNKED["skR"]), (AES, CHACHA))
    assert key.config.encode().hex() == CHUNKED["key_config"]
    req = h(CHUNKED["request"])
    sealed, opener = ohttp.encapsulate_chunked_request(
        key.config, [req[:12], req[12:]], ephemeral_secret=h(CHUNKED["skE"])
    )
    assert sealed.hex() == CHUNKED["encapsulated_request"]
    request, sealer = ohttp.decapsulate_chunked_request({1: key}, sealed)
    assert request == req
    out = sealer.start(nonce=h(CHUNKED["response_nonce"]))
    out += sealer.seal_chunk(b"\x01") + sealer.seal_chunk(b"\x40\xc8") + sealer.seal_final()
    assert out.hex() == CHUNKED["encapsulated_response"]
    assert opener.feed(out) == [b"\x01", b"\x40\xc8"]
    assert opener.close() == b""


@pytest.mark.parametrize("suite", SUITES, ids=["aes128gcm", "chacha20poly1305"])
def test_round_trip_fresh_keys(suite: SymmetricSuite) -> None:
    key = KeyPair.generate(7)
    sealed, opener = ohttp.encapsulate_request(key.config, b"hello", suite=suite)
    request, sealer = ohttp.decapsulate_request({7: key}, sealed)
    assert request == b"hello"
    assert opener.open(sealer.seal(b"answer")) == b"answer"


@pytest.mark.parametrize("suite", SUITES, ids=["aes128gcm", "chacha20poly1305"])
def test_chunked_round_trip_fresh_keys(suite: SymmetricSuite) -> None:
    key = KeyPair.generate(9)
    body = bytes(range(256)) * 200  # several request chunks
    sealed, opener = ohttp.encapsulate_chunked_request(key.config, body, suite=suite)
    request, sealer = ohttp.decapsulate_chunked_request({9: key}, sealed)
    assert request == body
    stream = sealer.start() + b"".join(sealer.seal_chunk(b"tok%d" % i) for i in range(50))
    stream += sealer.seal_final(b"end")
    pieces = []
    for i in range(0, len(stream), 5):  # arrives in small pieces
        pieces += opener.feed(stream[i : i + 5])
    assert pieces == [b"tok%d" % i for i in range(50)]
    assert opener.close() == b"end"


def _every_byte_flipped(data: bytes) -> list[bytes]:
    return [data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :] for i in range(len(data))]


def test_any_changed_request_byte_is_refused() -> None:
    key = KeyPair.generate(3)
    sealed, _ = ohttp.encapsulate_request(key.config, b"GET me")
    for bad in _every_byte_flipped(sealed):
        with pytest.raises((DecryptionFailed, UnknownKeyId, UnsupportedSuite)):
            ohttp.decapsulate_request({3: key}, bad)


def test_any_changed_response_byte_is_refused() -> None:
    key = KeyPair.generate(3)
    sealed, opener = ohttp.encapsulate_request(key.config, b"q")
    _, sealer = ohttp.decapsulate_request({3: key}, sealed)
    response = sealer.seal(b"the answer")
    for bad in _every_byte_flipped(response):
        with pytest.raises(DecryptionFailed):
            opener.open(bad)


def test_any_changed_chunked_request_byte_is_refused() -> None:
    key = KeyPair.generate(3)
    sealed, _ = ohttp.encapsulate_chunked_request(key.config, [b"part one", b"part two"])
    for bad in _every_byte_flipped(sealed):
        with pytest.raises(WireError):
            ohttp.decapsulate_chunked_request({3: key}, bad)


def test_any_changed_chunk_byte_is_refused() -> None:
    key = KeyPair.generate(3)
    sealed, new_opener = _sealed_with_openers(key)
    _, sealer = ohttp.decapsulate_chunked_request({3: key}, sealed)
    stream = sealer.start() + sealer.seal_chunk(b"one") + sealer.seal_chunk(b"two")
    stream += sealer.seal_final(b"three")
    for bad in _every_byte_flipped(stream):
        opener = new_opener()
        with pytest.raises(WireError):
            opener.feed(bad)
            opener.close()


_EPHEMERAL = bytes(range(1, 33))


def _sealed_with_openers(key: KeyPair) -> tuple[bytes, object]:
    """A chunked request, and a factory of fresh client openers for it (fixed ephemeral key)."""

    def seal() -> tuple[bytes, ohttp.ChunkedResponseOpener]:
        return ohttp.encapsulate_chunked_request(key.config, b"q", ephemeral_secret=_EPHEMERAL)

    return seal()[0], lambda: seal()[1]


def test_chunk_reorder_and_final_marking_are_authenticated() -> None:
    key = KeyPair.generate(4)
    sealed, new_opener = _sealed_with_openers(key)
    _, sealer = ohttp.decapsulate_chunked_request({4: key}, sealed)
    nonce = sealer.start()
    one, two = sealer.seal_chunk(b"one"), sealer.seal_chunk(b"two")
    final = sealer.seal_final()
    opener = new_opener()
    with pytest.raises(DecryptionFailed):  # swapped chunks
        opener.feed(nonce + two + one)
    opener = new_opener()
    with pytest.raises(DecryptionFailed):  # a non-final chunk passed off as final
        opener.feed(nonce + one + b"\x00" + two[1:])
        opener.close()
    opener = new_opener()
    assert opener.feed(nonce + one + two + final) == [b"one", b"two"]
    assert opener.close() == b""


@pytest.mark.parametrize("cut", [0, 5, 16, 30, -1])
def test_chunk_stream_cut_midway_is_truncated(cut: int) -> None:
    key = KeyPair.generate(4)
    sealed, new_opener = _sealed_with_openers(key)
    _, sealer = ohttp.decapsulate_chunked_request({4: key}, sealed)
    stream = sealer.start() + sealer.seal_chunk(b"one") + sealer.seal_chunk(b"two")
    stream += sealer.seal_final(b"x")
    opener = new_opener()
    part = stream[:cut] if cut >= 0 else stream[: len(stream) - 25]  # drops the final chunk
    with pytest.raises((Truncated, DecryptionFailed)):
        opener.feed(part)
        opener.close()


def test_wrong_key_unknown_id_and_suite() -> None:
    key, other = KeyPair.generate(1), KeyPair.generate(1)
    sealed, _ = ohttp.encapsulate_request(key.config, b"x")
    with pytest.raises(DecryptionFailed):
        ohttp.decapsulate_request({1: other}, sealed)
    with pytest.raises(UnknownKeyId) as info:
        ohttp.decapsulate_request({2: key}, sealed)
    assert info.value.is_key_error() and info.value.problem_type.endswith("#ohttp-key")
    aes_only = KeyPair(5, key.secret, (AES,))
    sealed, _ = ohttp.encapsulate_request(
        KeyPair(5, key.secret, (AES, CHACHA)).config, b"x", suite=CHACHA
    )
    with pytest.raises(UnsupportedSuite):
        ohttp.decapsulate_request({5: aes_only}, sealed)
    with pytest.raises(UnsupportedSuite):  # AES-256-GCM is not implemented
        ohttp.encapsulate_request(key.config, b"x", suite=SymmetricSuite(1, 2))


def test_truncated_and_oversized() -> None:
    key = KeyPair.generate(1)
    sealed, opener = ohttp.encapsulate_request(key.config, b"x")
    for n in (0, 3, 7, 20, 39, 50):
        with pytest.raises((Malformed, DecryptionFailed)):
            ohttp.decapsulate_request({1: key}, sealed[:n])
    with pytest.raises(Malformed):
        opener.open(b"\x00" * 20)
    chunked, _ = ohttp.encapsulate_chunked_request(key.config, b"x" * 100, chunk_size=100)
    with pytest.raises(MessageTooLarge):
        ohttp.decapsulate_chunked_request({1: key}, chunked, max_chunk=64)


def test_key_list_format() -> None:
    a, b = KeyPair.generate(1), KeyPair.generate(2)
    body = ohttp.encode_key_configs([a.config, b.config])
    assert body[:2] == len(a.config.encode()).to_bytes(2, "big")
    assert ohttp.decode_key_configs(body) == (a.config, b.config)
    unknown_kem = b"\x00\x07\x09\x00\x10\x00\x00\x04\x00"  # KEM 0x0010 is skipped
    assert ohttp.decode_key_configs(unknown_kem + body) == (a.config, b.config)
    with pytest.raises(UnsupportedSuite):
        ohttp.decode_key_configs(unknown_kem)
    for bad in (body[:-1], body + b"\x00", b"\x00\x00", body[:1], b"\xff\xff" + body):
        with pytest.raises(Malformed):
            ohttp.decode_key_configs(bad)
    with pytest.raises(MessageTooLarge):
        ohttp.decode_key_configs(body * 20, max_configs=8)


def test_low_order_public_key_is_refused() -> None:
    config = KeyConfig(1, 0x20, b"\x00" * 32, (AES,))
    with pytest.raises(Malformed):
        ohttp.encapsulate_request(config, b"x")


def test_key_pair_repr_hides_secret() -> None:
    key = KeyPair.generate(1)
    assert key.secret.hex() not in repr(key)


_KEY = KeyPair.generate(1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_gateway_parsers(data: bytes) -> None:
    for parse in (ohttp.decapsulate_request, ohttp.decapsulate_chunked_request):
        with contextlib.suppress(WireError):
            parse({1: _KEY}, b"\x01\x00\x20\x00\x01\x00\x01" + data)
        with contextlib.suppress(WireError):
            parse({1: _KEY}, data)
    with contextlib.suppress(WireError):
        ohttp.decode_key_configs(data)


_SEALED, _CLIENT = ohttp.encapsulate_chunked_request(_KEY.config, b"q")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_arbitrary_bytes_response_openers(data: bytes, chunked: bool) -> None:
    ctx, enc = _CLIENT._ctx, _CLIENT._enc
    try:
        if chunked:
            opener = ohttp.ChunkedResponseOpener(ctx, enc, AEAD_AES_128_GCM)
            opener.feed(data)
            opener.close()
        else:
            ohttp.ResponseOpener(ctx, enc, AEAD_AES_128_GCM).open(data)
    except WireError:
        pass
