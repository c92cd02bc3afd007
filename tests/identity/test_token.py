"""RFC 9578 token type 0x0002: the Appendix A.2 vectors, strict parsers (hypothesis), refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.identity.credits import blindrsa
from veil.identity.credits import token as tk
from veil.identity.credits.errors import CreditError, CreditMalformed, CreditSignatureInvalid

VECTORS = json.loads(
    (Path(__file__).parents[1] / "data" / "credits" / "rfc9578-appendix-a2.json").read_text()
)


@pytest.mark.parametrize("index", range(len(VECTORS)))
def test_rfc9578_appendix_a2_vector(index: int) -> None:
    v = VECTORS[index]
    h = {k: bytes.fromhex(val) for k, val in v.items()}
    key = serialization.load_pem_private_key(h["skS"], None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert tk.encode_public_key(key.public_key()) == h["pkS"]
    challenge = tk.TokenChallenge.decode(h["token_challenge"])
    assert challenge.encode() == h["token_challenge"]
    # The vectors give the blind r; Blind takes its inverse.
    inv = pow(int(v["blind"], 16), -1, key.public_key().public_numbers().n)
    request, state = tk.begin_issuance(
        h["pkS"], challenge, nonce=h["nonce"], salt=h["salt"], inv=inv
    )
    assert request.encode() == h["token_request"]
    key_id = tk.token_key_id(h["pkS"])
    response = tk.issue(blindrsa.BlindSigner(key), key_id, request.encode())
    assert response == h["token_response"]
    token = tk.finish_issuance(h["pkS"], state, response)
    assert token.encode() == h["token"]
    assert tk.Token.decode(h["token"]) == token
    tk.verify_token(tk.decode_public_key(h["pkS"]), token)


@pytest.fixture(scope="module")
def issuer() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, tk.encode_public_key(key.public_key())


def test_issuance_round_trip_and_tamper(issuer: tuple[rsa.RSAPrivateKey, bytes]) -> None:
    key, encoded = issuer
    challenge = tk.TokenChallenge(b"node.example", origin_info=b"node.example")
    request, state = tk.begin_issuance(encoded, challenge)
    response = tk.issue(blindrsa.BlindSigner(key), tk.token_key_id(encoded), request.encode())
    token = tk.finish_issuance(encoded, state, response)
    assert token.challenge_digest == challenge.digest()
    tk.verify_token(key.public_key(), token)
    forged = tk.Token(token.nonce, token.challenge_digest, token.token_key_id, bytes(256))
    with pytest.raises(CreditSignatureInvalid):
        tk.verify_token(key.public_key(), forged)
    with pytest.raises(CreditMalformed):  # a truncated response
        tk.finish_issuance(encoded, state, response[:-1])


def test_issuer_refuses_a_request_for_another_key(issuer: tuple[rsa.RSAPrivateKey, bytes]) -> None:
    key, encoded = issuer
    request, _ = tk.begin_issuance(encoded, tk.TokenChallenge(b"n"))
    other_id = bytes(31) + bytes([(tk.token_key_id(encoded)[-1] + 1) % 256])
    with pytest.raises(CreditMalformed):
        tk.issue(blindrsa.BlindSigner(key), other_id, request.encode())


def test_key_encoding_refuses_other_sizes() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(CreditMalformed):
        tk.encode_public_key(small)
    rsa_encryption_spki = small.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(CreditMalformed):
        tk.decode_public_key(rsa_encryption_spki)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_parsers_refuse_junk_with_typed_errors(data: bytes) -> None:
    for parse in (tk.Token.decode, tk.TokenRequest.decode, tk.TokenChallenge.decode):
        try:
            parsed = parse(data)
        except CreditError:
            continue
        assert parsed.encode() == data  # whatever parses re-encodes to the same bytes


@settings(max_examples=100, deadline=None)
@given(
    st.binary(min_size=1, max_size=300),
    st.sampled_from([b"", bytes(range(32))]),
    st.binary(max_size=300),
)
def test_challenge_round_trips(issuer_name: bytes, context: bytes, origin: bytes) -> None:
    challenge = tk.TokenChallenge(issuer_name, context, origin)
    encoded = challenge.encode()
    assert tk.TokenChallenge.decode(encoded) == challenge
    with pytest.raises(CreditMalformed):
        tk.TokenChallenge.decode(encoded[:-1] if origin else encoded + b"\x00")


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=tk.TOKEN_LEN - 2, max_size=tk.TOKEN_LEN - 2))
def test_token_of_right_shape_parses_and_re_encodes(body: bytes) -> None:
    data = b"\x00\x02" + body
    assert tk.Token.decode(data).encode() == data
    with pytest.raises(CreditMalformed):
        tk.Token.decode(b"\x00\x01" + body)
