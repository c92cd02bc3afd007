"""Oblivious HTTP (RFC 9458) and its chunked variant (draft-ietf-ohai-chunked-ohttp).

The API mirrors itself across the two ends:

* client: `encapsulate_request(config, msg)` -> (bytes, `ResponseOpener`);
  `encapsulate_chunked_request(...)` -> (bytes, `ChunkedResponseOpener`).
* gateway: `decapsulate_request(keys, data)` -> (msg, `ResponseSealer`);
  `decapsulate_chunked_request(keys, data)` -> (msg, `ChunkedResponseSealer`).

Key configurations and key pairs are in `veil.wire.ohttp_keys` (re-exported here).
HPKE (RFC 9180) comes from pyhpke, HKDF and the AEADs from `cryptography`; this module only
frames bytes and runs the key schedules the RFCs define. Only DHKEM(X25519, HKDF-SHA256),
HKDF-SHA256 and AES-128-GCM / ChaCha20-Poly1305 are implemented. Every failure is a
`veil.wire.errors.WireError`; library exceptions never escape.
"""

from __future__ import annotations

import os
import struct
from functools import cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey, KEMKeyPair
from pyhpke import ContextInterface as _HpkeContext

from veil.wire.errors import (
    DecryptionFailed,
    Malformed,
    MessageTooLarge,
    Truncated,
    UnknownKeyId,
    UnsupportedSuite,
)
from veil.wire.ohttp_keys import (
    AEAD_AES_128_GCM,
    AEAD_CHACHA20_POLY1305,
    AEAD_SIZES,
    DEFAULT_SUITES,
    KDF_HKDF_SHA256,
    KEM_X25519_HKDF_SHA256,
    NENC,
    KeyConfig,
    KeyLookup,
    KeyPair,
    SymmetricSuite,
    decode_key_configs,
    encode_key_configs,
)
from veil.wire.varint import encode_varint, peek_varint

__all__ = [
    "AEAD_AES_128_GCM",
    "AEAD_CHACHA20_POLY1305",
    "DEFAULT_SUITES",
    "GATEWAY_PATH",
    "KDF_HKDF_SHA256",
    "KEM_X25519_HKDF_SHA256",
    "KEYS_PATH",
    "MAX_CHUNK_PLAINTEXT",
    "MEDIA_CHUNKED_REQUEST",
    "MEDIA_CHUNKED_RESPONSE",
    "MEDIA_KEYS",
    "MEDIA_REQUEST",
    "MEDIA_RESPONSE",
    "ChunkedResponseOpener",
    "ChunkedResponseSealer",
    "KeyConfig",
    "KeyLookup",
    "KeyPair",
    "ResponseOpener",
    "ResponseSealer",
    "SymmetricSuite",
    "decapsulate_chunked_request",
    "decapsulate_request",
    "decode_key_configs",
    "encapsulate_chunked_request",
    "encapsulate_request",
    "encode_key_configs",
    "is_supported_request",
]

MEDIA_REQUEST = "message/ohttp-req"
MEDIA_RESPONSE = "message/ohttp-res"
MEDIA_CHUNKED_REQUEST = "message/ohttp-chunked-req"
MEDIA_CHUNKED_RESPONSE = "message/ohttp-chunked-res"
MEDIA_KEYS = "application/ohttp-keys"
# Where a Veil node serves its key list and its gateway (the relay derives both from a base URL).
KEYS_PATH = "/.well-known/ohttp-keys"
GATEWAY_PATH = "/gateway"

_REQUEST_LABEL = b"message/bhttp request"
_RESPONSE_LABEL = b"message/bhttp response"
_CHUNKED_REQUEST_LABEL = b"message/bhttp chunked request"
_CHUNKED_RESPONSE_LABEL = b"message/bhttp chunked response"
_FINAL_AAD = b"final"

_TAG = 16
_HEADER = struct.Struct(">BHHH")  # key id, KEM, KDF, AEAD

MAX_CHUNK_PLAINTEXT = 16 * 1024  # what we send per chunk; the draft's must-accept size
_DEFAULT_MAX_CHUNK = 64 * 1024 + _TAG  # the largest sealed chunk we accept


@cache
def _hpke(kdf_id: int, aead_id: int) -> CipherSuite:
    return CipherSuite.new(KEMId(KEM_X25519_HKDF_SHA256), KDFId(kdf_id), AEADId(aead_id))


def _aead(aead_id: int, key: bytes) -> AESGCM | ChaCha20Poly1305:
    return AESGCM(key) if aead_id == AEAD_AES_128_GCM else ChaCha20Poly1305(key)


def _header(key_id: int, suite: SymmetricSuite) -> bytes:
    return _HEADER.pack(key_id, KEM_X25519_HKDF_SHA256, suite.kdf_id, suite.aead_id)


def _info(label: bytes, header: bytes) -> bytes:
    return label + b"\x00" + header


def _sender(
    config: KeyConfig,
    label: bytes,
    suite: SymmetricSuite | None,
    ephemeral_secret: bytes | None,
) -> tuple[bytes, bytes, _HpkeContext, SymmetricSuite]:
    """(header, enc, HPKE sender context, suite) for a request to `config`."""
    if config.kem_id != KEM_X25519_HKDF_SHA256:
        raise UnsupportedSuite(f"KEM {config.kem_id:#06x} is not supported")
    chosen = config.choose_suite(suite)
    header = _header(config.key_id, chosen)
    try:
        public = KEMKey.from_pyca_cryptography_key(
            X25519PublicKey.from_public_bytes(config.public_key)
        )
        eks = None
        if ephemeral_secret is not None:
            sk = X25519PrivateKey.from_private_bytes(ephemeral_secret)
            eks = KEMKeyPair(
                KEMKey.from_pyca_cryptography_key(sk),
                KEMKey.from_pyca_cryptography_key(sk.public_key()),
            )
        enc, ctx = _hpke(chosen.kdf_id, chosen.aead_id).create_sender_context(
            public, _info(label, header), eks=eks
        )
    except ValueError as err:  # bad public key length or a low-order point
        raise Malformed(f"unusable public key in key config: {err}") from None
    return header, enc, ctx, chosen


def _receiver(
    keys: KeyLookup, data: bytes, label: bytes
) -> tuple[bytes, _HpkeContext, SymmetricSuite, int]:
    """(enc, HPKE recipient context, suite, offset of the sealed part) for a request."""
    if len(data) < _HEADER.size:
        raise Malformed("encapsulated request shorter than its header")
    key_id, kem_id, kdf_id, aead_id = _HEADER.unpack_from(data)
    key = keys.get(key_id)
    if key is None:
        raise UnknownKeyId(f"no key with id {key_id}")
    suite = SymmetricSuite(kdf_id, aead_id)
    if kem_id != key.config.kem_id or not suite.supported or suite not in key.config.suites:
        raise UnsupportedSuite(
            f"suite {kem_id:#06x}/{kdf_id:#06x}/{aead_id:#06x} not offered by key {key_id}"
        )
    nenc = NENC[kem_id]
    start = _HEADER.size + nenc
    if len(data) < start:
        raise Malformed("encapsulated request shorter than its encapsulated key")
    enc = bytes(data[_HEADER.size : start])
    try:
        ctx = _hpke(kdf_id, aead_id).create_recipient_context(
            enc, key._hpke_secret, _info(label, bytes(data[: _HEADER.size]))
        )
    except Exception:  # pyhpke/cryptography refuse low-order or malformed points
        raise DecryptionFailed("could not decapsulate the request key") from None
    return enc, ctx, suite, start


def _response_key(
    ctx: _HpkeContext, label: bytes, enc: bytes, nonce: bytes, aead_id: int
) -> tuple[AESGCM | ChaCha20Poly1305, bytes]:
    """The response AEAD and base nonce (RFC 9458 section 4.4 key schedule)."""
    nk, nn = AEAD_SIZES[aead_id]
    secret = ctx.export(label, max(nn, nk))
    salt = enc + nonce

    def expand(info: bytes, length: int) -> bytes:
        return HKDF(hashes.SHA256(), length, salt, info).derive(secret)

    return _aead(aead_id, expand(b"key", nk)), expand(b"nonce", nn)


def _nonce_len(aead_id: int) -> int:
    nk, nn = AEAD_SIZES[aead_id]
    return max(nk, nn)


def is_supported_request(data: bytes) -> bool:
    """Whether `data` opens like an encapsulated request, plain or chunked, of a suite Veil
    speaks: the RFC 9458 header (key id, KEM, KDF, AEAD) names a supported KEM and (KDF, AEAD)
    pair, followed by room for the encapsulated key and one AEAD tag.

    Needs no key: a relay checks this before forwarding, so it never carries arbitrary bytes.
    """
    if len(data) < _HEADER.size:
        return False
    _key_id, kem_id, kdf_id, aead_id = _HEADER.unpack_from(data)
    nenc = NENC.get(kem_id)
    if nenc is None or not SymmetricSuite(kdf_id, aead_id).supported:
        return False
    return len(data) >= _HEADER.size + nenc + _TAG


# --- whole messages ------------------------------------------------------------------------------


def encapsulate_request(
    config: KeyConfig,
    request: bytes,
    *,
    suite: SymmetricSuite | None = None,
    ephemeral_secret: bytes | None = None,
) -> tuple[bytes, ResponseOpener]:
    """Seal `request` (a BHTTP message) to `config`; the opener reads the matching response.

    `ephemeral_secret` fixes the HPKE ephemeral key: for test vectors only.
    """
    header, enc, ctx, chosen = _sender(config, _REQUEST_LABEL, suite, ephemeral_secret)
    try:
        sealed = ctx.seal(request)
    except Exception as err:  # pragma: no cover - sealing with a fresh context cannot fail
        raise Malformed(f"could not seal the request: {err}") from None
    return header + enc + sealed, ResponseOpener(ctx, enc, chosen.aead_id)


class ResponseOpener:
    """Client side: opens the one encapsulated response to a request."""

    def __init__(self, ctx: _HpkeContext, enc: bytes, aead_id: int) -> None:
        self._ctx, self._enc, self._aead_id = ctx, enc, aead_id

    def open(self, data: bytes) -> bytes:
        """The BHTTP response inside `data`; `DecryptionFailed` if anything was changed."""
        n = _nonce_len(self._aead_id)
        if len(data) < n + _TAG:
            raise Malformed("encapsulated response too short")
        aead, nonce = _response_key(self._ctx, _RESPONSE_LABEL, self._enc, data[:n], self._aead_id)
        try:
            return aead.decrypt(nonce, data[n:], b"")
        except InvalidTag:
            raise DecryptionFailed("response failed authentication") from None


def decapsulate_request(keys: KeyLookup, data: bytes) -> tuple[bytes, ResponseSealer]:
    """Open an encapsulated request; the sealer encapsulates the one response to it."""
    enc, ctx, suite, start = _receiver(keys, data, _REQUEST_LABEL)
    if len(data) - start < _TAG:
        raise Malformed("encapsulated request too short")
    try:
        request = ctx.open(bytes(data[start:]))
    except Exception:
        raise DecryptionFailed("request failed authentication") from None
    return request, ResponseSealer(ctx, enc, suite.aead_id)


class ResponseSealer:
    """Gateway side: seals the one response to a decapsulated request."""

    def __init__(self, ctx: _HpkeContext, enc: bytes, aead_id: int) -> None:
        self._ctx, self.enc, self._aead_id = ctx, enc, aead_id

    def seal(self, response: bytes, *, nonce: bytes | None = None) -> bytes:
        """The encapsulated response; `nonce` is fixed only to reproduce test vectors."""
        n = _nonce_len(self._aead_id)
        nonce = os.urandom(n) if nonce is None else nonce
        aead, aead_nonce = _response_key(self._ctx, _RESPONSE_LABEL, self.enc, nonce, self._aead_id)
        return nonce + aead.encrypt(aead_nonce, response, b"")


# --- chunked messages ----------------------------------------------------------------------------


class _ChunkFramer:
    """Splits a chunked OHTTP body into sealed chunks: varint length + bytes, then 0 + the rest."""

    def __init__(self, max_chunk: int) -> None:
        self._buf = bytearray()
        self._max = max_chunk
        self._final = False

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        if self._final:
            if len(self._buf) > self._max:
                raise MessageTooLarge("final chunk over the limit")
            return []
        chunks: list[bytes] = []
        pos = 0
        while True:
            got = peek_varint(self._buf, pos)
            if got is None:
                break
            length, after = got
            if length == 0:
                self._final = True
                pos = after
                break
            if length > self._max:
                raise MessageTooLarge("chunk over the limit")
            if after + length > len(self._buf):
                break
            chunks.append(bytes(self._buf[after : after + length]))
            pos = after + length
        del self._buf[:pos]
        if self._final and len(self._buf) > self._max:
            raise MessageTooLarge("final chunk over the limit")
        return chunks

    def close(self) -> bytes:
        """The sealed final chunk; `Truncated` if the stream never reached it."""
        if not self._final:
            raise Truncated("chunk stream ended before its final chunk")
        return bytes(self._buf)


def encapsulate_chunked_request(
    config: KeyConfig,
    request: bytes | list[bytes],
    *,
    suite: SymmetricSuite | None = None,
    chunk_size: int = MAX_CHUNK_PLAINTEXT,
    ephemeral_secret: bytes | None = None,
) -> tuple[bytes, ChunkedResponseOpener]:
    """Seal `request` as a chunked OHTTP request: pieces of `chunk_size` (or the pieces given
    as a list), then an empty final chunk.

    The empty final chunk costs 17 bytes and matches the draft's example byte for byte.
    """
    header, enc, ctx, chosen = _sender(config, _CHUNKED_REQUEST_LABEL, suite, ephemeral_secret)
    if isinstance(request, list):
        pieces = request
    else:
        pieces = [request[i : i + chunk_size] for i in range(0, len(request), chunk_size)]
    out = bytearray(header + enc)
    for piece in pieces:
        if not piece:
            raise ValueError("a non-final chunk cannot be empty")
        sealed = ctx.seal(piece)
        out += encode_varint(len(sealed)) + sealed
    out += b"\x00" + ctx.seal(b"", _FINAL_AAD)
    return bytes(out), ChunkedResponseOpener(ctx, enc, chosen.aead_id)


def decapsulate_chunked_request(
    keys: KeyLookup, data: bytes, *, max_chunk: int = _DEFAULT_MAX_CHUNK
) -> tuple[bytes, ChunkedResponseSealer]:
    """Open a whole chunked OHTTP request; the sealer streams the chunked response."""
    enc, ctx, suite, start = _receiver(keys, data, _CHUNKED_REQUEST_LABEL)
    framer = _ChunkFramer(max_chunk)
    sealed = framer.feed(bytes(data[start:]))
    final = framer.close()
    plain = bytearray()
    try:
        for chunk in sealed:
            piece = ctx.open(chunk)
            if not piece:
                raise DecryptionFailed("empty non-final chunk")
            plain += piece
        plain += ctx.open(final, _FINAL_AAD)
    except DecryptionFailed:
        raise
    except Exception:
        raise DecryptionFailed("request chunk failed authentication") from None
    return bytes(plain), ChunkedResponseSealer(ctx, enc, suite.aead_id)


class ChunkedResponseSealer:
    """Gateway side of a chunked response: `start()`, then `seal_chunk()`s, then `seal_final()`."""

    def __init__(self, ctx: _HpkeContext, enc: bytes, aead_id: int) -> None:
        self._ctx, self.enc, self._aead_id = ctx, enc, aead_id
        self._aead: AESGCM | ChaCha20Poly1305 | None = None
        self._nonce = b""
        self._counter = 0
        self._finished = False

    def start(self, *, nonce: bytes | None = None) -> bytes:
        """The response nonce, which opens the response body; `nonce` only for test vectors."""
        if self._aead is not None:
            raise RuntimeError("response already started")
        n = _nonce_len(self._aead_id)
        nonce = os.urandom(n) if nonce is None else nonce
        self._aead, self._nonce = _response_key(
            self._ctx, _CHUNKED_RESPONSE_LABEL, self.enc, nonce, self._aead_id
        )
        return nonce

    def _seal(self, data: bytes, aad: bytes) -> bytes:
        if self._aead is None or self._finished:
            raise RuntimeError("seal outside start()..seal_final()")
        nonce = _xor_counter(self._nonce, self._counter)
        self._counter += 1
        return self._aead.encrypt(nonce, data, aad)

    def seal_chunk(self, data: bytes) -> bytes:
        """A non-final chunk; `data` must not be empty (the draft forbids that)."""
        if not data:
            raise ValueError("a non-final chunk cannot be empty")
        sealed = self._seal(data, b"")
        return encode_varint(len(sealed)) + sealed

    def seal_final(self, data: bytes = b"") -> bytes:
        """The final chunk, marked by a zero length and the AAD "final"."""
        sealed = self._seal(data, _FINAL_AAD)
        self._finished = True
        return b"\x00" + sealed


class ChunkedResponseOpener:
    """Client side of a chunked response: `feed` bytes as they arrive, then `close`.

    Each chunk is authenticated before its plaintext is returned; `close` raises `Truncated`
    unless the final chunk (zero length, AAD "final") arrived and opened.
    """

    def __init__(
        self, ctx: _HpkeContext, enc: bytes, aead_id: int, *, max_chunk: int = _DEFAULT_MAX_CHUNK
    ) -> None:
        self._ctx, self._enc, self._aead_id = ctx, enc, aead_id
        self._framer = _ChunkFramer(max_chunk)
        self._head = bytearray()
        self._aead: AESGCM | ChaCha20Poly1305 | None = None
        self._nonce = b""
        self._counter = 0
        self._spent = False

    def feed(self, data: bytes) -> list[bytes]:
        """Plaintext of the chunks that `data` completes (possibly none)."""
        self._check_usable()
        if self._aead is None:
            self._head += data
            n = _nonce_len(self._aead_id)
            if len(self._head) < n:
                return []
            self._aead, self._nonce = _response_key(
                self._ctx, _CHUNKED_RESPONSE_LABEL, self._enc, bytes(self._head[:n]), self._aead_id
            )
            data = bytes(self._head[n:])
            self._head.clear()
        try:
            out = []
            for chunk in self._framer.feed(data):
                piece = self._open(chunk, b"")
                if not piece:
                    raise DecryptionFailed("empty non-final chunk")
                out.append(piece)
            return out
        except Exception:
            self._spent = True
            raise

    def close(self) -> bytes:
        """Plaintext of the final chunk; raises if the stream was cut or changed."""
        self._check_usable()
        self._spent = True  # one close only
        if self._aead is None:
            raise Truncated("response ended before its nonce")
        return self._open(self._framer.close(), _FINAL_AAD)

    def _check_usable(self) -> None:
        if self._spent:
            raise RuntimeError("response opener already failed or closed")

    def _open(self, chunk: bytes, aad: bytes) -> bytes:
        assert self._aead is not None
        nonce = _xor_counter(self._nonce, self._counter)
        self._counter += 1
        try:
            return self._aead.decrypt(nonce, chunk, aad)
        except InvalidTag:
            raise DecryptionFailed("response chunk failed authentication") from None


def _xor_counter(nonce: bytes, counter: int) -> bytes:
    if counter >= 1 << 32:  # far below 256**Nn; no response has this many chunks
        raise MessageTooLarge("too many chunks")
    return (int.from_bytes(nonce, "big") ^ counter).to_bytes(len(nonce), "big")
