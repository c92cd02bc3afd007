"""Privacy Pass publicly verifiable tokens: RFC 9578 token type 0x0002 (Blind RSA, 2048-bit).

The structures (TokenChallenge from RFC 9577, TokenRequest, TokenResponse, Token), the issuer key
encoding (an RSASSA-PSS SubjectPublicKeyInfo whose SHA-256 is `token_key_id`), and the issuance
flow on top of `blindrsa`. Parsers take hostile bytes: exact lengths, no trailing data, typed
`CreditMalformed` errors. The RFC's Appendix A.2 vectors pin it (tests/identity/test_token.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from veil.identity.credits import blindrsa
from veil.identity.credits.errors import CreditMalformed

__all__ = [
    "NK",
    "TOKEN_LEN",
    "TOKEN_REQUEST_LEN",
    "TOKEN_TYPE_BLIND_RSA",
    "VEIL_ISSUER_NAME",
    "IssuanceState",
    "Token",
    "TokenChallenge",
    "TokenRequest",
    "begin_issuance",
    "decode_public_key",
    "decode_token_header",
    "encode_public_key",
    "encode_token_header",
    "finish_issuance",
    "issue",
    "node_challenge",
    "token_key_id",
    "tokens_payment_id",
    "verify_token",
]

TOKEN_TYPE_BLIND_RSA = 0x0002
NK = 256  # bytes of a 2048-bit modulus: blinded_msg, blind_sig and authenticator
_NID = 32  # SHA-256 output: nonce, challenge_digest, token_key_id
TOKEN_REQUEST_LEN = 2 + 1 + NK
TOKEN_LEN = 2 + 3 * _NID + NK
VARIANT = blindrsa.PSS_DETERMINISTIC
PAYMENT_ID_DOMAIN = b"veil tokens paid v1\x00"

# DER of SubjectPublicKeyInfo up to the RSAPublicKey: id-RSASSA-PSS with SHA-384, MGF1-SHA-384,
# saltLength 48 (RFC 9578 6.5), for a 2048-bit key (a 270-byte RSAPublicKey).
_SPKI_PREFIX = bytes.fromhex(
    "30820152303d06092a864886f70d01010a3030a00d300b0609608648016503040202a11a30180609"
    "2a864886f70d010108300b0609608648016503040202a2030201300382010f00"
)
_RSA_PUBLIC_KEY_LEN = 270


def _take(data: bytes, at: int, n: int, field: str) -> tuple[bytes, int]:
    if at + n > len(data):
        raise CreditMalformed(f"{field} is truncated", check=field)
    return data[at : at + n], at + n


def _type_at(data: bytes, field: str) -> None:
    if len(data) < 2 or int.from_bytes(data[:2], "big") != TOKEN_TYPE_BLIND_RSA:
        raise CreditMalformed("unsupported token type", check=f"{field}.token_type")


def encode_public_key(key: rsa.RSAPublicKey) -> bytes:
    """The issuer key as RFC 9578 encodes it (RSASSA-PSS SPKI); only 2048-bit keys, e=65537."""
    if key.key_size != 2048 or key.public_numbers().e != 65537:
        raise CreditMalformed("token keys are 2048-bit RSA with e=65537", check="public_key")
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return _SPKI_PREFIX + der


def decode_public_key(encoded: bytes) -> rsa.RSAPublicKey:
    """Parse an encoded issuer key; anything but the exact RFC 9578 form is refused."""
    if len(encoded) != len(_SPKI_PREFIX) + _RSA_PUBLIC_KEY_LEN or not encoded.startswith(
        _SPKI_PREFIX
    ):
        raise CreditMalformed("not an RSASSA-PSS SHA-384 2048-bit key", check="public_key")
    try:
        key = serialization.load_der_public_key(encoded[len(_SPKI_PREFIX) :])
    except ValueError as exc:
        raise CreditMalformed("bad RSAPublicKey", check="public_key") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise CreditMalformed("not an RSA key", check="public_key")
    if encode_public_key(key) != encoded:  # also refuses other sizes and exponents
        raise CreditMalformed("non-canonical key encoding", check="public_key")
    return key


def token_key_id(encoded_key: bytes) -> bytes:
    """SHA-256 of the encoded issuer key (RFC 9578 6.5)."""
    return hashlib.sha256(encoded_key).digest()


@dataclass(frozen=True)
class TokenChallenge:
    """RFC 9577 2.1.1: what a token is bound to (here: which node, for which purpose)."""

    issuer_name: bytes
    redemption_context: bytes = b""  # empty or 32 bytes
    origin_info: bytes = b""
    token_type: int = TOKEN_TYPE_BLIND_RSA

    def encode(self) -> bytes:
        if not 1 <= len(self.issuer_name) < 2**16 or len(self.origin_info) >= 2**16:
            raise CreditMalformed("issuer_name or origin_info length", check="challenge")
        if len(self.redemption_context) not in (0, 32):
            raise CreditMalformed("redemption_context is 0 or 32 bytes", check="challenge")
        return (
            self.token_type.to_bytes(2, "big")
            + len(self.issuer_name).to_bytes(2, "big")
            + self.issuer_name
            + len(self.redemption_context).to_bytes(1, "big")
            + self.redemption_context
            + len(self.origin_info).to_bytes(2, "big")
            + self.origin_info
        )

    @classmethod
    def decode(cls, data: bytes) -> TokenChallenge:
        _type_at(data, "challenge")
        at = 2
        size, at = _take(data, at, 2, "challenge.issuer_name")
        issuer, at = _take(data, at, int.from_bytes(size, "big"), "challenge.issuer_name")
        size, at = _take(data, at, 1, "challenge.redemption_context")
        context, at = _take(data, at, size[0], "challenge.redemption_context")
        size, at = _take(data, at, 2, "challenge.origin_info")
        origin, at = _take(data, at, int.from_bytes(size, "big"), "challenge.origin_info")
        if at != len(data):
            raise CreditMalformed("trailing bytes after the challenge", check="challenge")
        challenge = cls(issuer, context, origin)
        challenge.encode()  # the length rules
        return challenge

    def digest(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()


@dataclass(frozen=True)
class TokenRequest:
    """RFC 9578 6.1: the blinded message and the last byte of the key id."""

    truncated_token_key_id: int
    blinded_msg: bytes

    def encode(self) -> bytes:
        return (
            TOKEN_TYPE_BLIND_RSA.to_bytes(2, "big")
            + bytes([self.truncated_token_key_id])
            + self.blinded_msg
        )

    @classmethod
    def decode(cls, data: bytes) -> TokenRequest:
        _type_at(data, "token_request")
        if len(data) != TOKEN_REQUEST_LEN:
            raise CreditMalformed("token request has the wrong length", check="token_request")
        return cls(data[2], data[3:])


@dataclass(frozen=True)
class Token:
    """RFC 9578 6.3: the spendable token; `authenticator` signs the rest."""

    nonce: bytes
    challenge_digest: bytes
    token_key_id: bytes
    authenticator: bytes

    def authenticator_input(self) -> bytes:
        return (
            TOKEN_TYPE_BLIND_RSA.to_bytes(2, "big")
            + self.nonce
            + self.challenge_digest
            + self.token_key_id
        )

    def encode(self) -> bytes:
        return self.authenticator_input() + self.authenticator

    def spend_id(self) -> bytes:
        """What the node's spent set records: the hash of the signed part, so one token has one
        id however its authenticator is encoded."""
        return hashlib.sha256(self.authenticator_input()).digest()

    @classmethod
    def decode(cls, data: bytes) -> Token:
        _type_at(data, "token")
        if len(data) != TOKEN_LEN:
            raise CreditMalformed("token has the wrong length", check="token")
        at = 2
        nonce, at = _take(data, at, _NID, "token.nonce")
        digest, at = _take(data, at, _NID, "token.challenge_digest")
        key_id, at = _take(data, at, _NID, "token.token_key_id")
        return cls(nonce, digest, key_id, data[at:])


@dataclass(frozen=True)
class IssuanceState:
    """What the client keeps between its TokenRequest and the issuer's TokenResponse."""

    nonce: bytes
    challenge_digest: bytes
    token_key_id: bytes
    inv: int

    def token_input(self) -> bytes:
        return Token(
            self.nonce, self.challenge_digest, self.token_key_id, b""
        ).authenticator_input()


def begin_issuance(
    encoded_key: bytes,
    challenge: TokenChallenge,
    *,
    nonce: bytes | None = None,
    salt: bytes | None = None,
    inv: int | None = None,
) -> tuple[TokenRequest, IssuanceState]:
    """Client: a TokenRequest for one token; `nonce`/`salt`/`inv` are fixed only by vectors."""
    key = decode_public_key(encoded_key)
    key_id = token_key_id(encoded_key)
    nonce = secrets.token_bytes(_NID) if nonce is None else nonce
    if len(nonce) != _NID:
        raise CreditMalformed("nonce is 32 bytes", check="nonce")
    state = IssuanceState(nonce, challenge.digest(), key_id, 0)
    blinded, inv_out = blindrsa.blind(key, state.token_input(), VARIANT, salt=salt, inv=inv)
    return TokenRequest(key_id[-1], blinded), IssuanceState(
        nonce, state.challenge_digest, key_id, inv_out
    )


def issue(signer: blindrsa.BlindSigner, key_id: bytes, request: bytes) -> bytes:
    """Issuer: the TokenResponse (blind_sig) for one encoded TokenRequest under this key."""
    parsed = TokenRequest.decode(request)
    if parsed.truncated_token_key_id != key_id[-1]:
        raise CreditMalformed("request names another key", check="token_request.key_id")
    return signer.blind_sign(parsed.blinded_msg)


def finish_issuance(encoded_key: bytes, state: IssuanceState, response: bytes) -> Token:
    """Client: unblind the TokenResponse into a Token, verified against the key it was asked of."""
    if len(response) != NK:
        raise CreditMalformed("token response has the wrong length", check="token_response")
    key = decode_public_key(encoded_key)
    sig = blindrsa.finalize(key, state.token_input(), response, state.inv, VARIANT)
    return Token(state.nonce, state.challenge_digest, state.token_key_id, sig)


def verify_token(key: rsa.RSAPublicKey, token: Token) -> None:
    """RFC 9578 6.4: RSASSA-PSS-VERIFY of the authenticator over the token input."""
    blindrsa.verify(key, token.authenticator_input(), token.authenticator, VARIANT)


VEIL_ISSUER_NAME = b"veil-node"


def node_challenge(node_address: str) -> TokenChallenge:
    """The one challenge every Veil token for a node is bound to: that node, no context.

    An empty redemption_context makes tokens cross-context, so a client can buy them ahead of
    use (RFC 9577 2.1.1); origin_info names the node, so a token for one node fails at another.
    """
    return TokenChallenge(VEIL_ISSUER_NAME, b"", node_address.lower().encode("ascii"))


def tokens_payment_id(tokens: Sequence[Token]) -> bytes:
    """The 32 bytes a receipt names for a request paid with `tokens` (where a ticket-paid one
    names its ticket id), so the payer can check that the node counted exactly its tokens. It
    is a hash of the spend ids in order: the node saw the tokens anyway, and tells nothing more
    by signing it."""
    return hashlib.sha256(PAYMENT_ID_DOMAIN + b"".join(t.spend_id() for t in tokens)).digest()


def encode_token_header(tokens: list[Token]) -> str:
    """An `x-veil-tokens` value: encoded tokens, base64url without padding, comma-joined."""
    return ",".join(base64.urlsafe_b64encode(t.encode()).rstrip(b"=").decode() for t in tokens)


def decode_token_header(value: str, limit: int) -> list[Token]:
    """Parse an `x-veil-tokens` value, its size bounded before any decoding."""
    encoded_len = -(-TOKEN_LEN * 4 // 3)
    if not value.isascii() or len(value) > limit * (encoded_len + 2):
        raise CreditMalformed("the token header is too long", check="tokens")
    parts = [p.strip() for p in value.split(",")]
    if len(parts) > limit:
        raise CreditMalformed(f"at most {limit} tokens", check="tokens")
    tokens = []
    for part in parts:
        if len(part) != encoded_len:
            raise CreditMalformed("a token has the wrong length", check="tokens")
        try:
            raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except (binascii.Error, ValueError):
            raise CreditMalformed("a token is not base64url", check="tokens") from None
        tokens.append(Token.decode(raw))
    return tokens
