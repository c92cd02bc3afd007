"""Oblivious HTTP key configurations (RFC 9458 section 3): what a gateway publishes at
`application/ohttp-keys`, and the key pairs behind them.

Only DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and AES-128-GCM / ChaCha20-Poly1305 are
implemented; configurations offering only other algorithms are skipped when a list is read.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pyhpke import KEMKey

from veil.wire.errors import Malformed, MessageTooLarge, UnsupportedSuite

__all__ = [
    "AEAD_AES_128_GCM",
    "AEAD_CHACHA20_POLY1305",
    "AEAD_SIZES",
    "DEFAULT_SUITES",
    "KDF_HKDF_SHA256",
    "KEM_X25519_HKDF_SHA256",
    "NENC",
    "KeyConfig",
    "KeyLookup",
    "KeyPair",
    "SymmetricSuite",
    "decode_key_configs",
    "encode_key_configs",
]

KEM_X25519_HKDF_SHA256 = 0x0020
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_128_GCM = 0x0001
AEAD_CHACHA20_POLY1305 = 0x0003

NENC = {KEM_X25519_HKDF_SHA256: 32}  # encapsulated key (= public key) length per KEM
AEAD_SIZES = {AEAD_AES_128_GCM: (16, 12), AEAD_CHACHA20_POLY1305: (32, 12)}  # (Nk, Nn)


@dataclass(frozen=True)
class SymmetricSuite:
    """One (KDF, AEAD) pair a key configuration offers."""

    kdf_id: int
    aead_id: int

    @property
    def supported(self) -> bool:
        return self.kdf_id == KDF_HKDF_SHA256 and self.aead_id in AEAD_SIZES


DEFAULT_SUITES = (
    SymmetricSuite(KDF_HKDF_SHA256, AEAD_AES_128_GCM),
    SymmetricSuite(KDF_HKDF_SHA256, AEAD_CHACHA20_POLY1305),
)


@dataclass(frozen=True)
class KeyConfig:
    """A gateway's public key configuration (RFC 9458 section 3)."""

    key_id: int
    kem_id: int
    public_key: bytes
    suites: tuple[SymmetricSuite, ...]

    def encode(self) -> bytes:
        algs = b"".join(struct.pack(">HH", s.kdf_id, s.aead_id) for s in self.suites)
        return (
            struct.pack(">BH", self.key_id, self.kem_id)
            + self.public_key
            + struct.pack(">H", len(algs))
            + algs
        )

    @classmethod
    def decode(cls, data: bytes) -> KeyConfig:
        """One encoded key config, exactly; an unknown KEM is `UnsupportedSuite`."""
        if len(data) < 3:
            raise Malformed("key config too short")
        key_id, kem_id = struct.unpack_from(">BH", data)
        npk = NENC.get(kem_id)
        if npk is None:
            raise UnsupportedSuite(f"KEM {kem_id:#06x} is not supported")
        if len(data) < 3 + npk + 2:
            raise Malformed("key config too short")
        public_key = bytes(data[3 : 3 + npk])
        (algs_len,) = struct.unpack_from(">H", data, 3 + npk)
        algs = data[5 + npk :]
        if algs_len < 4 or algs_len % 4 or len(algs) != algs_len:
            raise Malformed("bad symmetric algorithms length in key config")
        suites = tuple(
            SymmetricSuite(*struct.unpack_from(">HH", algs, i)) for i in range(0, algs_len, 4)
        )
        return cls(key_id, kem_id, public_key, suites)

    def choose_suite(self, preferred: SymmetricSuite | None = None) -> SymmetricSuite:
        """`preferred` if offered and supported, else the first supported suite offered."""
        usable = [s for s in self.suites if s.supported]
        if preferred is not None:
            if preferred not in usable:
                raise UnsupportedSuite(f"key config does not offer {preferred}")
            return preferred
        if not usable:
            raise UnsupportedSuite("key config offers no supported KDF/AEAD pair")
        return usable[0]


def encode_key_configs(configs: Iterable[KeyConfig]) -> bytes:
    """The `application/ohttp-keys` body: each config with a 2-byte length prefix."""
    out = bytearray()
    for config in configs:
        raw = config.encode()
        out += struct.pack(">H", len(raw)) + raw
    return bytes(out)


def decode_key_configs(data: bytes, *, max_configs: int = 32) -> tuple[KeyConfig, ...]:
    """The usable configs of an `application/ohttp-keys` body.

    Configs for KEMs or suites this side lacks are skipped (RFC 9458 lets a client ignore
    them); a body with none left is `UnsupportedSuite`, a broken one `Malformed`.
    """
    configs: list[KeyConfig] = []
    pos = count = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise Malformed("truncated key config length")
        (length,) = struct.unpack_from(">H", data, pos)
        end = pos + 2 + length
        if length == 0 or end > len(data):
            raise Malformed("key config length overruns the list")
        count += 1
        if count > max_configs:
            raise MessageTooLarge("too many key configs")
        try:
            config = KeyConfig.decode(data[pos + 2 : end])
        except UnsupportedSuite:
            config = None
        if config is not None and any(s.supported for s in config.suites):
            configs.append(config)
        pos = end
    if not configs:
        raise UnsupportedSuite("no usable key configuration in the list")
    return tuple(configs)


class KeyPair:
    """A gateway's private key and the public config it publishes."""

    def __init__(
        self, key_id: int, secret: bytes, suites: tuple[SymmetricSuite, ...] = DEFAULT_SUITES
    ) -> None:
        if not 0 <= key_id <= 255:
            raise ValueError("key id must fit in one byte")
        private = X25519PrivateKey.from_private_bytes(secret)
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.secret = secret
        self.config = KeyConfig(key_id, KEM_X25519_HKDF_SHA256, public, suites)
        self._hpke_secret = KEMKey.from_pyca_cryptography_key(private)

    @classmethod
    def generate(cls, key_id: int, suites: tuple[SymmetricSuite, ...] = DEFAULT_SUITES) -> KeyPair:
        """A fresh X25519 key pair."""
        secret = X25519PrivateKey.generate().private_bytes_raw()
        return cls(key_id, secret, suites)

    @property
    def key_id(self) -> int:
        return self.config.key_id

    def __repr__(self) -> str:  # never print the secret
        return f"KeyPair(key_id={self.key_id})"


class KeyLookup(Protocol):
    """What the gateway needs from a key store: the key pair for a key id, or None.

    A plain `dict[int, KeyPair]` is one.
    """

    def get(self, key_id: int, /) -> KeyPair | None: ...
