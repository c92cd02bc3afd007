"""RFC 9474 blind RSA: the Appendix A vectors for all four variants, round trips, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from veil.identity.credits import blindrsa
from veil.identity.credits.errors import (
    BlindingFailed,
    CreditMalformed,
    CreditSignatureInvalid,
)

VECTORS = json.loads(
    (Path(__file__).parents[1] / "data" / "credits" / "rfc9474-appendix-a.json").read_text()
)
VARIANTS = {
    v.name: v
    for v in (
        blindrsa.PSS_RANDOMIZED,
        blindrsa.PSSZERO_RANDOMIZED,
        blindrsa.PSS_DETERMINISTIC,
        blindrsa.PSSZERO_DETERMINISTIC,
    )
}


def _key(v: dict[str, str]) -> rsa.RSAPrivateKey:
    p, q, n, e, d = (int(v[k], 16) for k in "pqned")
    return rsa.RSAPrivateNumbers(
        p,
        q,
        d,
        rsa.rsa_crt_dmp1(d, p),
        rsa.rsa_crt_dmq1(d, q),
        rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(e, n),
    ).private_key()


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_rfc9474_appendix_a_vector(name: str) -> None:
    v = VECTORS[name]
    variant = VARIANTS[name]
    h = {k: bytes.fromhex(val) for k, val in v.items()}
    key = _key(v)
    pub = key.public_key()
    prefix = h["msg_prefix"] if variant.randomize else None
    prepared = blindrsa.prepare(h["msg"], variant, prefix=prefix)
    assert prepared == h["prepared_msg"]
    assert blindrsa.emsa_pss_encode(prepared, pub.key_size - 1, h["salt"]) == h["encoded_msg"]
    blinded, inv = blindrsa.blind(pub, prepared, variant, salt=h["salt"], inv=int(v["inv"], 16))
    assert blinded == h["blinded_msg"]
    blind_sig = blindrsa.BlindSigner(key).blind_sign(blinded)
    assert blind_sig == h["blind_sig"]
    assert blindrsa.finalize(pub, prepared, blind_sig, inv, variant) == h["sig"]
    blindrsa.verify(pub, prepared, h["sig"], variant)


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize("variant", list(VARIANTS.values()), ids=list(VARIANTS))
def test_round_trip_with_fresh_randomness(
    key: rsa.RSAPrivateKey, variant: blindrsa.Variant
) -> None:
    pub = key.public_key()
    prepared = blindrsa.prepare(b"a message", variant)
    blinded, inv = blindrsa.blind(pub, prepared, variant)
    again, _ = blindrsa.blind(pub, prepared, variant)
    assert blinded != again  # a fresh blind every time: the signer cannot link the two
    sig = blindrsa.finalize(
        pub, prepared, blindrsa.BlindSigner(key).blind_sign(blinded), inv, variant
    )
    blindrsa.verify(pub, prepared, sig, variant)
    with pytest.raises(CreditSignatureInvalid):
        blindrsa.verify(pub, prepared + b"x", sig, variant)


def test_finalize_refuses_a_signature_under_another_key(key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    variant = blindrsa.PSS_DETERMINISTIC
    blinded, inv = blindrsa.blind(key.public_key(), b"m", variant)
    n_other = other.public_key().public_numbers().n
    reduced = (int.from_bytes(blinded, "big") % n_other).to_bytes(256, "big")
    wrong = blindrsa.BlindSigner(other).blind_sign(reduced)  # a signer using another key
    with pytest.raises(CreditSignatureInvalid):
        blindrsa.finalize(key.public_key(), b"m", wrong, inv, variant)


def test_blind_sign_refuses_bad_input(key: rsa.RSAPrivateKey) -> None:
    signer = blindrsa.BlindSigner(key)
    with pytest.raises(CreditMalformed):
        signer.blind_sign(b"\x01" * 255)
    with pytest.raises(CreditMalformed):
        signer.blind_sign(b"\xff" * 256)  # >= n


def test_finalize_refuses_bad_lengths_and_values(key: rsa.RSAPrivateKey) -> None:
    pub = key.public_key()
    variant = blindrsa.PSS_DETERMINISTIC
    _, inv = blindrsa.blind(pub, b"m", variant)
    with pytest.raises(CreditMalformed):
        blindrsa.finalize(pub, b"m", b"\x00" * 10, inv, variant)
    with pytest.raises(CreditMalformed):
        blindrsa.finalize(pub, b"m", b"\xff" * 256, inv, variant)


def test_salt_and_prefix_lengths_are_checked(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(CreditMalformed):
        blindrsa.blind(key.public_key(), b"m", blindrsa.PSS_DETERMINISTIC, salt=b"short")
    with pytest.raises(CreditMalformed):
        blindrsa.prepare(b"m", blindrsa.PSS_RANDOMIZED, prefix=b"short")


def test_a_non_invertible_blind_is_refused(key: rsa.RSAPrivateKey) -> None:
    p = key.private_numbers().p
    with pytest.raises(BlindingFailed):
        blindrsa.blind(key.public_key(), b"m", blindrsa.PSS_DETERMINISTIC, inv=p)
