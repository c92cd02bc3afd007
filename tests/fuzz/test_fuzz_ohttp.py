"""Fuzz: Oblivious HTTP (RFC 9458) and chunked OHTTP: key configs, requests, responses, chunks.

Property: every parser returns a value or raises a `WireError`; whatever plaintext comes out
is the plaintext that went in (a changed byte never yields other plaintext, and a chunked
opener never releases a byte it has not authenticated); valid key lists round-trip byte for
byte; a huge declared chunk length allocates nothing.
"""

from __future__ import annotations

import struct

from fuzzkit import (
    BIG_ENDIAN,
    bounded_memory,
    fuzz,
    maybe_mutated,
    mutated_bytes,
    outcome,
    splits,
)
from hypothesis import given
from hypothesis import strategies as st

from veil.wire import ohttp
from veil.wire.errors import WireError
from veil.wire.ohttp import (
    AEAD_AES_128_GCM,
    AEAD_CHACHA20_POLY1305,
    KDF_HKDF_SHA256,
    KEM_X25519_HKDF_SHA256,
    KeyConfig,
    KeyPair,
    SymmetricSuite,
)
from veil.wire.varint import MAX_VARINT, encode_varint, peek_varint

AES = SymmetricSuite(KDF_HKDF_SHA256, AEAD_AES_128_GCM)
CHACHA = SymmetricSuite(KDF_HKDF_SHA256, AEAD_CHACHA20_POLY1305)
KEYS = {1: KeyPair(1, bytes(range(32))), 7: KeyPair(7, bytes(range(32, 64)), (CHACHA,))}
SUITES = {1: [AES, CHACHA], 7: [CHACHA]}

u16 = st.integers(0, 0xFFFF)
suites = st.builds(
    SymmetricSuite,
    st.sampled_from([KDF_HKDF_SHA256, KDF_HKDF_SHA256, 0x0002, 0x0003]) | u16,
    st.sampled_from([AEAD_AES_128_GCM, AEAD_CHACHA20_POLY1305, 0x0002, 0xFFFF]) | u16,
)


@st.composite
def key_configs(draw: st.DrawFn) -> KeyConfig:
    kem = draw(st.sampled_from([KEM_X25519_HKDF_SHA256] * 3 + [0x0010, 0x0021]) | u16)
    size = 32 if kem == KEM_X25519_HKDF_SHA256 else draw(st.integers(0, 97))
    return KeyConfig(
        draw(st.integers(0, 255)),
        kem,
        draw(st.binary(min_size=size, max_size=size)),
        tuple(draw(st.lists(suites, min_size=1, max_size=4))),
    )


def _usable(config: KeyConfig) -> bool:
    return config.kem_id == KEM_X25519_HKDF_SHA256 and any(s.supported for s in config.suites)


@st.composite
def changed_config_length(draw: st.DrawFn, configs: list[KeyConfig]) -> bytes:
    """The key list with one of its 2-byte length fields (list entry or suites) changed."""
    pieces: list[bytes] = []
    lengths: list[int] = []
    for config in configs:
        raw = config.encode()
        lengths.append(len(pieces))
        pieces.append(struct.pack(">H", len(raw)))
        split = len(raw) - 4 * len(config.suites) - 2
        pieces.append(raw[:split])
        lengths.append(len(pieces))
        pieces += [raw[split : split + 2], raw[split + 2 :]]
    i = draw(st.sampled_from(lengths))
    (old,) = struct.unpack(">H", pieces[i])
    new = draw(st.sampled_from([0, 1, 3, max(old - 1, 0), min(old + 1, 0xFFFF), 0xFFFF]) | u16)
    pieces[i] = struct.pack(">H", new)
    return b"".join(pieces)


@fuzz(2)
@given(st.lists(key_configs(), min_size=1, max_size=4), st.data())
def test_key_configs(configs: list[KeyConfig], data: st.DataObject) -> None:
    wire = ohttp.encode_key_configs(configs)
    expected = tuple(c for c in configs if _usable(c))
    got, err = outcome(lambda: ohttp.decode_key_configs(wire), WireError)
    assert got == (expected or None), err
    if expected and len(expected) == len(configs):
        assert ohttp.encode_key_configs(got or ()) == wire
    changed = data.draw(st.one_of(maybe_mutated(wire), changed_config_length(configs)))
    got, _ = outcome(lambda: ohttp.decode_key_configs(changed, max_configs=3), WireError)
    for config in got or ():
        assert _usable(config) and len(got or ()) <= 3
        config.choose_suite()
        outcome(lambda c=config: ohttp.encapsulate_request(c, b"x"), WireError)  # type: ignore[misc]
    outcome(lambda: KeyConfig.decode(changed), WireError)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bytes | list[bytes], bool, SymmetricSuite]:
    """(encapsulated request, its plaintext, chunked?, suite), sealed by the real encoder."""
    key_id = draw(st.sampled_from(sorted(KEYS)))
    suite = draw(st.sampled_from(SUITES[key_id]))
    secret = draw(st.binary(min_size=32, max_size=32))
    config = KEYS[key_id].config
    if draw(st.booleans()):
        plain: bytes | list[bytes] = draw(st.binary(max_size=96))
        sealed, _ = ohttp.encapsulate_request(config, plain, suite=suite, ephemeral_secret=secret)
        return sealed, plain, False, suite
    pieces = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=4))
    sealed, _ = ohttp.encapsulate_chunked_request(
        config, pieces, suite=suite, ephemeral_secret=secret
    )
    return sealed, pieces, True, suite


def _chunk_lengths(stream: bytes, start: int) -> list[int]:
    """Offsets of the chunk length varints of a valid chunk stream beginning at `start`."""
    out, pos = [], start
    while pos < len(stream):
        out.append(pos)
        length, after = peek_varint(stream, pos) or (0, len(stream))
        if length == 0:
            break
        pos = after + length
    return out


@st.composite
def changed_chunk_length(draw: st.DrawFn, stream: bytes, start: int) -> bytes:
    """The stream with one chunk length varint replaced (smaller, larger, zero, huge)."""
    offsets = _chunk_lengths(stream, start)
    if not offsets:
        return stream
    pos = draw(st.sampled_from(offsets))
    old, after = peek_varint(stream, pos) or (0, pos + 1)
    new = draw(st.sampled_from([0, 1, 15, 16, 17, max(old - 1, 0), old + 1, 2**30, MAX_VARINT]))
    return stream[:pos] + encode_varint(new) + stream[after:]


def _header_changes(data: bytes) -> st.SearchStrategy[bytes]:
    """The request with its key id, KEM, KDF or AEAD field rewritten."""
    return st.builds(
        lambda at, value: data[:at] + value + data[at + len(value) :],
        st.sampled_from([0, 1, 3, 5]),
        st.sampled_from([b"\x07", b"\x01", b"\x02", b"\x00\x20", b"\x00\x01", b"\x00\x03"])
        | st.sampled_from(BIG_ENDIAN),
    )


@fuzz(4)
@given(requests(), st.data())
def test_encapsulated_requests(
    case: tuple[bytes, bytes | list[bytes], bool, SymmetricSuite], data: st.DataObject
) -> None:
    wire, plain, chunked, _ = case
    whole = b"".join(plain) if isinstance(plain, list) else plain
    changed = data.draw(
        st.one_of(
            maybe_mutated(wire),
            _header_changes(wire),
            changed_chunk_length(wire, 7 + 32) if chunked else st.just(wire),
        )
    )
    max_chunk = data.draw(st.sampled_from([64 * 1024 + 16, 40]))
    for as_chunked in (False, True):
        if as_chunked:
            got, err = outcome(
                lambda: ohttp.decapsulate_chunked_request(KEYS, changed, max_chunk=max_chunk),
                WireError,
            )
        else:
            got, err = outcome(lambda: ohttp.decapsulate_request(KEYS, changed), WireError)
        if got is not None:
            assert as_chunked == chunked and got[0] == whole  # nothing but the sealed plaintext
        elif changed == wire and as_chunked == chunked:
            assert chunked and max_chunk == 40, err  # a sealed chunk over the small limit


@st.composite
def responses(draw: st.DrawFn) -> tuple[object, bytes, list[bytes], bool]:
    """(opener, sealed response, plaintext pieces, chunked?) from a real exchange."""
    key_id = draw(st.sampled_from(sorted(KEYS)))
    suite = draw(st.sampled_from(SUITES[key_id]))
    secret = draw(st.binary(min_size=32, max_size=32))
    nonce = draw(st.binary(min_size=32, max_size=32))
    pieces = draw(st.lists(st.binary(min_size=1, max_size=48), max_size=4))
    final = draw(st.binary(max_size=16))
    config = KEYS[key_id].config
    if draw(st.booleans()):
        request, opener = ohttp.encapsulate_request(
            config, b"q", suite=suite, ephemeral_secret=secret
        )
        _, sealer = ohttp.decapsulate_request(KEYS, request)
        body = b"".join(pieces) + final
        return opener, sealer.seal(body, nonce=nonce[: 16 if suite == AES else 32]), [body], False
    request, chunked_opener = ohttp.encapsulate_chunked_request(
        config, b"q", suite=suite, ephemeral_secret=secret
    )
    _, chunked_sealer = ohttp.decapsulate_chunked_request(KEYS, request)
    stream = chunked_sealer.start(nonce=nonce[: 16 if suite == AES else 32])
    stream += b"".join(chunked_sealer.seal_chunk(p) for p in pieces)
    stream += chunked_sealer.seal_final(final)
    return chunked_opener, stream, [*pieces, final], True


@fuzz(4)
@given(responses(), st.data())
def test_encapsulated_responses(
    case: tuple[object, bytes, list[bytes], bool], data: st.DataObject
) -> None:
    opener, wire, pieces, chunked = case
    whole = b"".join(pieces)
    if not chunked:
        assert isinstance(opener, ohttp.ResponseOpener)
        changed = data.draw(maybe_mutated(wire))
        got, err = outcome(lambda: opener.open(changed), WireError)
        assert got == whole if got is not None else changed != wire, err
        return
    assert isinstance(opener, ohttp.ChunkedResponseOpener)
    changed = data.draw(maybe_mutated(wire) | _chunked_length_changes(wire))
    released: list[bytes] = []

    def run() -> bytes:
        for piece in data.draw(splits(changed)):
            released.extend(opener.feed(piece))
        return opener.close()

    final, err = outcome(run, WireError)
    assert whole.startswith(b"".join(released))  # only authenticated plaintext comes out
    if final is not None:
        assert b"".join(released) + final == whole
    else:
        assert changed != wire, err


def _chunked_length_changes(stream: bytes) -> st.SearchStrategy[bytes]:
    """A chunked response with a chunk length changed (the nonce is 16 or 32 bytes)."""
    return st.sampled_from([16, 32]).flatmap(lambda n: changed_chunk_length(stream, n))


@fuzz(1)
@given(st.sampled_from(sorted(KEYS)), st.binary(max_size=8), st.data())
def test_huge_chunk_lengths_allocate_nothing(key_id: int, tail: bytes, data: st.DataObject) -> None:
    huge = encode_varint(data.draw(st.sampled_from([2**20, 2**30, MAX_VARINT])))
    request, opener = ohttp.encapsulate_chunked_request(KEYS[key_id].config, b"q")
    gateway_input = request[: 7 + 32] + huge + tail
    with bounded_memory(512 * 1024):
        outcome(lambda: ohttp.decapsulate_chunked_request(KEYS, gateway_input), WireError)
        outcome(lambda: opener.feed(bytes(32) + huge + tail), WireError)


@fuzz(2)
@given(st.binary(max_size=256), st.data())
def test_random_bytes(wire: bytes, data: st.DataObject) -> None:
    request, opener = ohttp.encapsulate_request(KEYS[1].config, b"q")
    _, chunked_opener = ohttp.encapsulate_chunked_request(KEYS[1].config, b"q")
    outcome(lambda: ohttp.decode_key_configs(wire), WireError)
    outcome(lambda: ohttp.decapsulate_request(KEYS, wire), WireError)
    outcome(lambda: ohttp.decapsulate_chunked_request(KEYS, wire), WireError)
    outcome(lambda: opener.open(wire), WireError)

    def stream() -> bytes:
        for piece in data.draw(splits(wire)):
            assert chunked_opener.feed(piece) == []  # nothing authenticates by chance
        return chunked_opener.close()

    outcome(stream, WireError)
    del request
    outcome(lambda: ohttp.decapsulate_request(KEYS, data.draw(mutated_bytes(wire))), WireError)
