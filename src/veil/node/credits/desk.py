"""The node's token desk: issues blind-signed tokens for a paid batch, and redeems tokens.

Redeeming a payment (`redeem`): each token must parse (RFC 9578 type 0x0002), be bound to this
node (its challenge digest), name a key of an accepted epoch, carry a valid signature, and be
unspent; then all of them are fsynced to the spent set before the request is served. Every
refusal is a `PaymentRefused` with a code a payer can act on, answered as a 402:

| code | why |
|---|---|
| `token_malformed` | not base64url, wrong length or type, too many tokens |
| `token_wrong_node` | bound to another node's challenge |
| `token_unknown_epoch` | names a key this node does not accept now (expired, unknown) |
| `token_invalid` | the signature does not verify (forged) |
| `token_spent` | spent before, or twice in one payment |
| `insufficient_tokens` | fewer tokens than the price in tokens |

Issuing (`issue`): a batch of TokenRequests under the current key; the caller has already
checked the ticket that pays for it (`len(batch)` units).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from veil.identity.credits.errors import CreditError, CreditSignatureInvalid
from veil.identity.credits.token import (
    TOKEN_REQUEST_LEN,
    Token,
    TokenRequest,
    decode_token_header,
    node_challenge,
    tokens_payment_id,
    verify_token,
)
from veil.node.credits.keyring import EpochKey, TokenKeyring
from veil.node.credits.spent import AlreadySpent, SpentSet
from veil.node.errors import PaymentRefused

__all__ = ["MAX_TOKENS_PER_REQUEST", "RedeemedTokens", "TokenDesk"]

log = logging.getLogger(__name__)

MAX_TOKENS_PER_REQUEST = 64


@dataclass(frozen=True)
class RedeemedTokens:
    """The tokens that paid for one request: the receipt names `payment_id` for a ticket id."""

    epoch: int
    count: int
    payment_id: bytes  # tokens_payment_id of the tokens, in the order sent


class TokenDesk:
    """Issues and redeems one node's tokens; `price_tokens` tokens pay for one request."""

    def __init__(
        self,
        node_address: str,
        keyring: TokenKeyring,
        spent: SpentSet,
        *,
        price_tokens: int = 1,
        max_batch: int = 64,
    ) -> None:
        if price_tokens < 1 or max_batch < 1:
            raise ValueError("price_tokens and max_batch must be positive")
        self.challenge_digest = node_challenge(node_address).digest()
        self.keyring, self.spent = keyring, spent
        self.price_tokens, self.max_batch = price_tokens, max_batch
        self.issued = 0
        self.redeemed = 0

    def key_ids(self) -> tuple[bytes, ...]:
        """The ids of the keys accepted now, newest first: what the descriptor commits to."""
        return tuple(k.key_id for k in self.keyring.accepting())

    def key_list(self) -> list[dict[str, object]]:
        """The commitments of the keys accepted now (newest first)."""
        return [k.commitment() for k in self.keyring.accepting()]

    # --- issuing

    def parse_batch(self, body: bytes) -> list[bytes]:
        """Split a purchase body (concatenated TokenRequests) or refuse it (400s)."""
        if not body or len(body) % TOKEN_REQUEST_LEN:
            raise PaymentRefused(
                "token_request_malformed",
                f"the body must be whole TokenRequests of {TOKEN_REQUEST_LEN} bytes",
                status=400,
            )
        count = len(body) // TOKEN_REQUEST_LEN
        if count > self.max_batch:
            raise PaymentRefused(
                "token_request_malformed", f"at most {self.max_batch} tokens per purchase", 400
            )
        return [body[i : i + TOKEN_REQUEST_LEN] for i in range(0, len(body), TOKEN_REQUEST_LEN)]

    def issue(self, batch: Sequence[bytes]) -> tuple[EpochKey, bytes]:
        """The blind signatures (concatenated TokenResponses) for a paid, checked batch."""
        key = self.keyring.current()
        try:
            sigs = [key.signer.blind_sign(TokenRequest.decode(raw).blinded_msg) for raw in batch]
        except CreditError as exc:
            raise PaymentRefused("token_request_malformed", str(exc), status=400) from None
        self.issued += len(sigs)
        return key, b"".join(sigs)

    def check_batch(self, batch: Sequence[bytes]) -> None:
        """Everything about a purchase that can fail, before its ticket is charged."""
        key = self.keyring.current()
        for raw in batch:
            try:
                request = TokenRequest.decode(raw)
            except CreditError as exc:
                raise PaymentRefused("token_request_malformed", str(exc), status=400) from None
            if request.truncated_token_key_id != key.key_id[-1]:
                raise PaymentRefused(
                    "token_key_stale",
                    "the purchase is blinded for another key; fetch the current token key",
                    status=400,
                )
            n = key.signer.public_key.public_numbers().n
            if int.from_bytes(request.blinded_msg, "big") >= n:
                raise PaymentRefused(
                    "token_request_malformed", "a blinded message is not below n", 400
                )

    # --- redeeming

    def _verify(self, token: Token) -> EpochKey:
        if token.challenge_digest != self.challenge_digest:
            raise PaymentRefused("token_wrong_node", "a token was issued for another node")
        key = self.keyring.for_key_id(token.token_key_id)
        if key is None:
            raise PaymentRefused(
                "token_unknown_epoch",
                "a token names a key this node does not accept now (expired or unknown epoch)",
            )
        try:
            verify_token(key.signer.public_key, token)
        except CreditSignatureInvalid:
            raise PaymentRefused("token_invalid", "a token's signature does not verify") from None
        return key

    def _redeem(self, header: str) -> RedeemedTokens:
        try:
            tokens = decode_token_header(header, MAX_TOKENS_PER_REQUEST)
        except CreditError:
            raise PaymentRefused(
                "token_malformed", "the x-veil-tokens header does not parse"
            ) from None
        if len(tokens) < self.price_tokens:
            raise PaymentRefused(
                "insufficient_tokens",
                f"this node asks {self.price_tokens} token(s) per request; {len(tokens)} sent",
            )
        by_epoch: dict[int, list[bytes]] = {}
        for token in tokens:
            key = self._verify(token)
            by_epoch.setdefault(key.epoch, []).append(token.spend_id())
        if len(by_epoch) > 1:  # spend is atomic per epoch file: keep a payment in one epoch
            raise PaymentRefused("token_malformed", "the tokens of one request share an epoch")
        ((epoch, ids),) = by_epoch.items()
        try:
            self.spent.spend(epoch, ids)
        except AlreadySpent:
            raise PaymentRefused("token_spent", "a token was already spent") from None
        except OSError as exc:
            log.error("cannot record spent tokens: %s", exc)
            raise PaymentRefused(
                "payment_unavailable", "this node cannot record payments right now", status=503
            ) from None
        self.spent.prune([k.epoch for k in self.keyring.accepting()])
        self.redeemed += len(ids)
        return RedeemedTokens(epoch, len(ids), tokens_payment_id(tokens))

    async def redeem(self, header: str) -> RedeemedTokens:
        """Check and spend the tokens in an `x-veil-tokens` value (off the event loop)."""
        return await asyncio.to_thread(self._redeem, header)
