"""Anonymous credits, the client's side: the durable token wallet and buying from a node."""

from veil.client.credits.buyer import (
    OfferedKey,
    PurchaseFailed,
    TokenKeyNotCommitted,
    buy_tokens,
    offered_key,
)
from veil.client.credits.wallet import TOKEN_WALLET_FILE, TokenWallet, TokenWalletBusy, WalletToken

__all__ = [
    "TOKEN_WALLET_FILE",
    "OfferedKey",
    "PurchaseFailed",
    "TokenKeyNotCommitted",
    "TokenWallet",
    "TokenWalletBusy",
    "WalletToken",
    "buy_tokens",
    "offered_key",
]
