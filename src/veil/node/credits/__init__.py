"""Anonymous credits, the node's side: per-epoch token keys, the spent set, the token desk.

A client buys a batch of RFC 9578 tokens with one ticket (`CREDITS_PATH`) and spends them in
`x-veil-tokens` instead of a ticket, so the node cannot link its requests to a wallet.
"""

from veil.node.credits.desk import RedeemedTokens, TokenDesk
from veil.node.credits.keyring import EpochKey, TokenKeyring
from veil.node.credits.spent import AlreadySpent, SpentSet

__all__ = [
    "AlreadySpent",
    "EpochKey",
    "RedeemedTokens",
    "SpentSet",
    "TokenDesk",
    "TokenKeyring",
]
