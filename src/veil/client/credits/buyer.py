"""Buying a batch of tokens from one node: key check, blind, pay one ticket, unblind, keep.

`http` is an httpx client whose requests reach the node: in the gateway, the session's sealed
OHTTP transport through the relay, so the node never sees who buys; in tests, the node itself.
The key the node offers must be one its signed descriptor commits to (`token_keys`); any
other key could be a key for this user alone, which would tag their tokens, so it is refused
before anything is paid. A purchase the node refuses, or whose answer is short, raises
`PurchaseFailed`; nothing is added to the wallet then.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from veil.chain.types import TokenKeys
from veil.client.credits.wallet import TokenWallet
from veil.client.errors import ClientError
from veil.identity.credits.errors import CreditError
from veil.identity.credits.token import (
    NK,
    begin_issuance,
    finish_issuance,
    node_challenge,
    token_key_id,
)
from veil.wire import boundedjson
from veil.wire.errors import WireError
from veil.wire.http import (
    CREDITS_PATH,
    INVALID_BASE_URL,
    MEDIA_TOKEN_REQUEST,
    TICKET_HEADER,
    TOKEN_KEYS_PATH,
)

__all__ = ["OfferedKey", "PurchaseFailed", "TokenKeyNotCommitted", "buy_tokens", "offered_key"]

_MAX_KEYS_BYTES = 16 * 1024
# Sealed requests name the node by an `.invalid` host (never contacted); it reads the path only.
_KEYS_URL = httpx.URL(INVALID_BASE_URL).join(TOKEN_KEYS_PATH)
_CREDITS_URL = httpx.URL(INVALID_BASE_URL).join(CREDITS_PATH)


class PurchaseFailed(ClientError):
    """The node refused the purchase (`code`), or its answer was malformed or short."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class TokenKeyNotCommitted(PurchaseFailed):
    """The node offers a token key that its signed descriptor does not commit to."""


@dataclass(frozen=True)
class OfferedKey:
    public_key: bytes  # RFC 9578 encoding
    key_id: bytes
    not_after: int


def offered_key(body: bytes, committed: tuple[bytes, ...]) -> OfferedKey:
    """The newest key in a `TOKEN_KEYS_PATH` answer, checked against the committed ids."""
    try:
        keys = boundedjson.loads(body, max_bytes=_MAX_KEYS_BYTES, what="token key list")["keys"]
        newest = keys[0]
        public = bytes.fromhex(newest["public_key"])
        not_after = int(newest["not_after"])
    except (WireError, KeyError, IndexError, TypeError, ValueError):
        raise PurchaseFailed("the node's token key list is malformed") from None
    key_id = token_key_id(public)
    if key_id not in committed:
        raise TokenKeyNotCommitted(
            "the node offers a token key its signed descriptor does not commit to", "key"
        )
    return OfferedKey(public, key_id, not_after)


async def buy_tokens(
    http: httpx.AsyncClient,
    node: str,
    committed: tuple[bytes, ...],
    count: int,
    ticket_for: Callable[[int], str],
    wallet: TokenWallet,
    *,
    on_chain: TokenKeys | None = None,
) -> int:
    """Buy `count` tokens from `node` with one ticket worth `count` requests; returns count.

    `on_chain`: the node's token keys as the registry names them; the offered key must then
    be the current one there too (the gateway always passes it)."""
    answer = await http.get(_KEYS_URL)
    if answer.status_code != 200:
        raise PurchaseFailed(f"the node's token key list: HTTP {answer.status_code}")
    key = offered_key(answer.content, committed)
    if on_chain is not None and not on_chain.names(key.key_id):
        raise TokenKeyNotCommitted(
            "the node offers a token key the registry does not name as its current one", "key"
        )
    challenge = node_challenge(node)
    try:
        pending = [begin_issuance(key.public_key, challenge) for _ in range(count)]
    except CreditError as exc:
        raise PurchaseFailed(f"cannot blind for this key: {exc}") from None
    answer = await http.post(
        _CREDITS_URL,
        content=b"".join(request.encode() for request, _ in pending),
        headers={"content-type": MEDIA_TOKEN_REQUEST, TICKET_HEADER: ticket_for(count)},
    )
    if answer.status_code != 200:
        code = None
        with contextlib.suppress(WireError, KeyError, TypeError):
            code = boundedjson.loads(answer.content, max_bytes=_MAX_KEYS_BYTES)["error"]["code"]
        raise PurchaseFailed(f"the node refused the purchase: HTTP {answer.status_code}", code)
    if len(answer.content) != NK * count:
        raise PurchaseFailed("the node's answer is not one signature per token (truncated?)")
    try:
        tokens = [
            finish_issuance(key.public_key, state, answer.content[i * NK : (i + 1) * NK])
            for i, (_, state) in enumerate(pending)
        ]
    except CreditError as exc:
        raise PurchaseFailed(
            f"a signature does not verify under the committed key: {exc}"
        ) from None
    wallet.add(node, tokens, key.not_after)
    return len(tokens)
