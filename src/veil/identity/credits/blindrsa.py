"""RSA blind signatures, RFC 9474: Blind / BlindSign / Finalize / Verify.

Why here and not a library: no maintained Python library implements RFC 9474. The primitives come
from libraries: `cryptography` holds the keys, hashes with SHA-384 and runs RSASSA-PSS-VERIFY
(RFC 8017 8.1.2) for Finalize and Verify; the signer's private operation is RSASP1 with CRT
over gmpy2's `powmod_sec` (constant-time modular exponentiation). What is written here is the
protocol glue the RFC specifies: EMSA-PSS-ENCODE with a chosen salt (the client side needs it
before there is a signature), blinding by r^e, and unblinding by r^-1. The RFC's Appendix A
vectors pin all of it (tests/identity/test_blindrsa.py).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import gmpy2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from veil.identity.credits.errors import BlindingFailed, CreditMalformed, CreditSignatureInvalid

__all__ = [
    "PSSZERO_DETERMINISTIC",
    "PSSZERO_RANDOMIZED",
    "PSS_DETERMINISTIC",
    "PSS_RANDOMIZED",
    "BlindSigner",
    "Variant",
    "blind",
    "emsa_pss_encode",
    "finalize",
    "prepare",
    "verify",
]

_HASH_LEN = 48  # SHA-384
_PREFIX_LEN = 32  # PrepareRandomize's msg_prefix


@dataclass(frozen=True)
class Variant:
    """One of RFC 9474's four RSABSSA-SHA384 variants (section 5)."""

    name: str
    salt_length: int  # bytes of PSS salt: 48 (PSS) or 0 (PSSZERO)
    randomize: bool  # PrepareRandomize (32-byte random prefix) rather than PrepareIdentity


PSS_RANDOMIZED = Variant("RSABSSA-SHA384-PSS-Randomized", _HASH_LEN, True)
PSSZERO_RANDOMIZED = Variant("RSABSSA-SHA384-PSSZERO-Randomized", 0, True)
PSS_DETERMINISTIC = Variant("RSABSSA-SHA384-PSS-Deterministic", _HASH_LEN, False)
PSSZERO_DETERMINISTIC = Variant("RSABSSA-SHA384-PSSZERO-Deterministic", 0, False)


def _sha384(*parts: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA384())
    for part in parts:
        digest.update(part)
    return digest.finalize()


def _mgf1_sha384(seed: bytes, length: int) -> bytes:
    out = b"".join(
        _sha384(seed, counter.to_bytes(4, "big")) for counter in range(-(-length // _HASH_LEN))
    )
    return out[:length]


def _modulus_len(key: rsa.RSAPublicKey) -> int:
    return (key.key_size + 7) // 8


def prepare(msg: bytes, variant: Variant, *, prefix: bytes | None = None) -> bytes:
    """PrepareIdentity or PrepareRandomize (RFC 9474 4.1); `prefix` only for test vectors."""
    if not variant.randomize:
        return msg
    prefix = secrets.token_bytes(_PREFIX_LEN) if prefix is None else prefix
    if len(prefix) != _PREFIX_LEN:
        raise CreditMalformed("msg_prefix must be 32 bytes", check="msg_prefix")
    return prefix + msg


def emsa_pss_encode(msg: bytes, em_bits: int, salt: bytes) -> bytes:
    """EMSA-PSS-ENCODE (RFC 8017 9.1.1) with SHA-384 and MGF1-SHA-384, for a given salt."""
    em_len = -(-em_bits // 8)
    if em_len < _HASH_LEN + len(salt) + 2:
        raise BlindingFailed("modulus too small for this salt", check="encoding")
    h = _sha384(b"\x00" * 8, _sha384(msg), salt)
    db = b"\x00" * (em_len - len(salt) - _HASH_LEN - 2) + b"\x01" + salt
    masked = bytearray(a ^ b for a, b in zip(db, _mgf1_sha384(h, len(db)), strict=True))
    masked[0] &= 0xFF >> (8 * em_len - em_bits)
    return bytes(masked) + h + b"\xbc"


def blind(
    key: rsa.RSAPublicKey,
    prepared_msg: bytes,
    variant: Variant,
    *,
    salt: bytes | None = None,
    inv: int | None = None,
) -> tuple[bytes, int]:
    """Blind (RFC 9474 4.2): returns (blinded_msg, inv). `salt`/`inv` only for test vectors."""
    numbers = key.public_numbers()
    n = gmpy2.mpz(numbers.n)
    salt = secrets.token_bytes(variant.salt_length) if salt is None else salt
    if len(salt) != variant.salt_length:
        raise CreditMalformed("salt length does not match the variant", check="salt")
    encoded = emsa_pss_encode(prepared_msg, key.key_size - 1, salt)
    m = gmpy2.mpz(int.from_bytes(encoded, "big"))
    if gmpy2.gcd(m, n) != 1:
        raise BlindingFailed("encoded message is not invertible mod n")
    try:
        if inv is None:
            r = gmpy2.mpz(secrets.randbelow(numbers.n - 1) + 1)
            inv_mpz = gmpy2.invert(r, n)
        else:
            inv_mpz = gmpy2.mpz(inv)
            r = gmpy2.invert(inv_mpz, n)
    except ZeroDivisionError as exc:  # r shares a factor with n: as unlikely as factoring n
        raise BlindingFailed("blind is not invertible mod n") from exc
    z = gmpy2.f_mod(m * gmpy2.powmod(r, numbers.e, n), n)
    return int(z).to_bytes(_modulus_len(key), "big"), int(inv_mpz)


class BlindSigner:
    """The issuer's private operation: BlindSign (RFC 9474 4.3) with CRT over `powmod_sec`."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        priv = key.private_numbers()
        pub = priv.public_numbers
        self.public_key = key.public_key()
        self._n = gmpy2.mpz(pub.n)
        self._e = gmpy2.mpz(pub.e)
        self._p = gmpy2.mpz(priv.p)
        self._q = gmpy2.mpz(priv.q)
        self._dp = gmpy2.mpz(priv.dmp1)
        self._dq = gmpy2.mpz(priv.dmq1)
        self._qinv = gmpy2.mpz(priv.iqmp)
        self._len = _modulus_len(self.public_key)

    def blind_sign(self, blinded_msg: bytes) -> bytes:
        """Sign a blinded message; refuses one >= n and checks s^e == m before answering."""
        if len(blinded_msg) != self._len:
            raise CreditMalformed("blinded_msg has the wrong length", check="blinded_msg")
        m = gmpy2.mpz(int.from_bytes(blinded_msg, "big"))
        if m >= self._n:
            raise CreditMalformed("blinded_msg is not below the modulus", check="blinded_msg")
        s_p = gmpy2.powmod_sec(gmpy2.f_mod(m, self._p), self._dp, self._p)
        s_q = gmpy2.powmod_sec(gmpy2.f_mod(m, self._q), self._dq, self._q)
        s = s_q + self._q * gmpy2.f_mod(self._qinv * (s_p - s_q), self._p)
        if gmpy2.powmod(s, self._e, self._n) != m:  # a fault here would leak a factor of n
            raise BlindingFailed("signature failed its own check")
        return int(s).to_bytes(self._len, "big")


def verify(key: rsa.RSAPublicKey, prepared_msg: bytes, sig: bytes, variant: Variant) -> None:
    """RSASSA-PSS-VERIFY with SHA-384, MGF1-SHA-384 and the variant's salt length."""
    try:
        key.verify(
            sig,
            prepared_msg,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=variant.salt_length),
            hashes.SHA384(),
        )
    except InvalidSignature as exc:
        raise CreditSignatureInvalid("signature does not verify under the issuer key") from exc


def finalize(
    key: rsa.RSAPublicKey, prepared_msg: bytes, blind_sig: bytes, inv: int, variant: Variant
) -> bytes:
    """Finalize (RFC 9474 4.4): unblind with inv, then verify; raises rather than return junk."""
    modulus_len = _modulus_len(key)
    if len(blind_sig) != modulus_len:
        raise CreditMalformed("blind_sig has the wrong length", check="blind_sig")
    n = gmpy2.mpz(key.public_numbers().n)
    z = gmpy2.mpz(int.from_bytes(blind_sig, "big"))
    if z >= n:
        raise CreditMalformed("blind_sig is not below the modulus", check="blind_sig")
    sig = int(gmpy2.f_mod(z * inv, n)).to_bytes(modulus_len, "big")
    verify(key, prepared_msg, sig, variant)
    return sig
