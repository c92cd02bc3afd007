"""Buying tokens (no model: the node's token desk behind an httpx MockTransport): the committed
key check, a refused or truncated purchase, and what a purchase adds to the wallet."""

from __future__ import annotations

import httpx
import pytest

from veil.client.credits import PurchaseFailed, TokenKeyNotCommitted, TokenWallet, buy_tokens
from veil.identity import NodeIdentity
from veil.identity.credits.token import verify_token
from veil.node.credits import SpentSet, TokenDesk, TokenKeyring
from veil.node.errors import PaymentRefused
from veil.wire.http import CREDITS_PATH, TICKET_HEADER, TOKEN_KEYS_PATH

NODE = NodeIdentity.generate().address


def node_transport(
    desk: TokenDesk, *, cut: int = 0, refuse: str | None = None
) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == TOKEN_KEYS_PATH:
            return httpx.Response(200, json={"keys": desk.key_list()})
        assert request.url.path == CREDITS_PATH and request.headers[TICKET_HEADER]
        if refuse:
            return httpx.Response(402, json={"error": {"code": refuse, "message": "no"}})
        try:
            batch = desk.parse_batch(request.content)
            desk.check_batch(batch)
        except PaymentRefused as err:
            return httpx.Response(err.status, json={"error": {"code": err.code}})
        _, sigs = desk.issue(batch)
        return httpx.Response(200, content=sigs[: len(sigs) - cut])

    return httpx.MockTransport(handle)


@pytest.fixture(scope="module")
def desk() -> TokenDesk:
    return TokenDesk(NODE, TokenKeyring(None), SpentSet(None))


async def test_buys_and_keeps_tokens_that_the_node_accepts(desk: TokenDesk) -> None:
    wallet = TokenWallet(None)
    units: list[int] = []
    async with httpx.AsyncClient(transport=node_transport(desk), base_url="http://n") as http:
        bought = await buy_tokens(
            http, NODE, desk.key_ids(), 4, lambda n: units.append(n) or "ticket", wallet
        )
    assert bought == 4 and units == [4] and wallet.balance() == {NODE.lower(): 4}
    held = wallet.take(NODE, 4)
    assert held is not None
    for h in held:
        verify_token(desk.keyring.current().signer.public_key, h.token)
    from veil.identity.credits.token import encode_token_header

    assert desk._redeem(encode_token_header([h.token for h in held])).count == 4


async def test_refuses_a_key_the_descriptor_does_not_commit(desk: TokenDesk) -> None:
    wallet = TokenWallet(None)
    paid: list[int] = []
    async with httpx.AsyncClient(transport=node_transport(desk), base_url="http://n") as http:
        with pytest.raises(TokenKeyNotCommitted):
            await buy_tokens(http, NODE, (bytes(32),), 2, lambda n: paid.append(n) or "t", wallet)
    assert paid == [] and wallet.balance() == {}  # refused before paying


@pytest.mark.parametrize(("cut", "refuse"), [(1, None), (256, None), (0, "insufficient_payment")])
async def test_a_failed_or_truncated_purchase_adds_nothing(
    desk: TokenDesk, cut: int, refuse: str | None
) -> None:
    wallet = TokenWallet(None)
    transport = node_transport(desk, cut=cut, refuse=refuse)
    async with httpx.AsyncClient(transport=transport, base_url="http://n") as http:
        with pytest.raises(PurchaseFailed) as info:
            await buy_tokens(http, NODE, desk.key_ids(), 2, lambda n: "t", wallet)
    assert info.value.code == refuse and wallet.balance() == {}


async def test_a_malformed_key_list_is_a_typed_error(desk: TokenDesk) -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, content=b"[" * 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://n") as http:
        with pytest.raises(PurchaseFailed):
            await buy_tokens(http, NODE, desk.key_ids(), 1, lambda n: "t", TokenWallet(None))
