"""Keeping the node's token key committed on chain, so buyers can check it is everyone's key.

The registry (`NodeRegistry.commitTokenKey`) holds one current key id per node and lets it
change at most hourly; a client buys only under the key committed there (and in the signed
descriptor). The node commits its current key at start and again whenever the keyring has
moved to a new epoch, checking every `interval_s`; a key not yet committed simply sells
nothing until it is (buyers pay that node with tickets meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from veil.chain.types import TokenKeys, TxReceipt
from veil.errors import VeilError
from veil.node.credits.keyring import TokenKeyring

__all__ = ["KeyRegistry", "commit_token_key", "keep_token_key_committed"]

log = logging.getLogger(__name__)


class KeyRegistry(Protocol):
    """What committing needs of the node's signing chain client."""

    def token_keys(self, operator: str) -> TokenKeys: ...

    def commit_token_key(self, key_id: bytes) -> TxReceipt: ...


def commit_token_key(keyring: TokenKeyring, registry: KeyRegistry, operator: str) -> bool:
    """Commit the keyring's current key unless the chain names it already; True if sent."""
    key = keyring.current()
    if registry.token_keys(operator).current == key.key_id:
        return False
    registry.commit_token_key(key.key_id)
    log.info("token key of epoch %d committed on chain", key.epoch)
    return True


async def keep_token_key_committed(
    keyring: TokenKeyring, registry: KeyRegistry, operator: str, interval_s: float
) -> None:
    """Commit now, then check every `interval_s` (until cancelled); failures are logged."""
    while True:
        try:
            await asyncio.to_thread(commit_token_key, keyring, registry, operator)
        except VeilError as exc:
            log.warning("cannot commit the token key on chain: %s", exc)
        await asyncio.sleep(interval_s)
