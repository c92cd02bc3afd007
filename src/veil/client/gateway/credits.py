"""The gateway's anonymous credits: pay `anonymous`/`tee` requests with tokens, buy in the back.

A node whose signed descriptor commits token keys (`token_keys`) is paid with tokens from the
wallet (`veil.client.credits.TokenWallet`); one that commits none, or a purchase that failed
within the last `retry_s`, is paid with a ticket as before. Purchases are of a fixed size
(`batch`) and start at a random time: when a node's balance falls to `low_water`, a purchase is
scheduled after a uniform random delay of up to `jitter_s`, so purchases do not line up with
requests. Only the first purchase for a node is made while a request waits (there is nothing
to spend yet): that one purchase is tied in time to a request.

The offered key must be the node's current key in the registry as well as in its descriptor
(`veil.client.credits.buy_tokens`). A purchase's ticket is worth the batch: the node's offer
with `batch` times its face value (within the payer's `max_face_value`, else fewer tokens per
purchase).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Protocol

import httpx

from veil.chain.types import TokenKeys
from veil.client.credits import PurchaseFailed, TokenWallet, WalletToken, buy_tokens
from veil.client.discovery import Candidate
from veil.client.errors import ClientError, PriceAboveLimit
from veil.client.payer import Payer
from veil.errors import VeilError

__all__ = ["TOKEN_REFUSALS", "CreditConfig", "CreditPurse"]

log = logging.getLogger(__name__)

# 402 codes after which the tokens sent are worthless (dropped from the wallet, not retried).
TOKEN_REFUSALS = frozenset(
    {"token_spent", "token_invalid", "token_unknown_epoch", "token_wrong_node", "token_malformed"}
)


class TokenKeyReader(Protocol):
    """The registry's committed token keys of a node (`veil.chain.ChainClient`)."""

    def token_keys(self, operator: str) -> TokenKeys: ...


@dataclass(frozen=True)
class CreditConfig:
    batch: int = 16  # tokens per purchase: every purchase has this size
    low_water: int = 4  # a background purchase is scheduled when a balance falls to this
    jitter_s: float = 30.0  # ... after a uniform random delay of up to this many seconds
    price_tokens: int = 1  # tokens per request (a node may ask more: `insufficient_tokens`)
    retry_s: float = 300.0  # after a failed purchase, pay that node with tickets this long


class CreditPurse:
    """Tokens per node: takes them for requests and keeps the balances topped up."""

    def __init__(
        self,
        wallet: TokenWallet,
        payer: Payer,
        chain: TokenKeyReader,
        config: CreditConfig | None = None,
    ) -> None:
        self.wallet, self.payer, self.chain = wallet, payer, chain
        self.config = config or CreditConfig()
        self._buying: dict[str, asyncio.Task[None]] = {}
        self._failed_until: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def sells(self, candidate: Candidate) -> tuple[bytes, ...]:
        descriptor = candidate.session.report.descriptor
        return () if descriptor is None else descriptor.token_keys

    async def take(
        self, candidate: Candidate, client: httpx.AsyncClient
    ) -> list[WalletToken] | None:
        """Tokens for one request to `candidate`, or None: pay it with a ticket."""
        op = candidate.operator
        if not self.sells(candidate) or time.monotonic() < self._failed_until.get(op, 0.0):
            return None
        held = self.wallet.take(op, self.config.price_tokens)
        if held is None:  # nothing to spend yet: this purchase waits for a request
            lock = self._locks.setdefault(op, asyncio.Lock())
            async with lock:
                held = self.wallet.take(op, self.config.price_tokens)
                if held is None and await self._buy(candidate, client):
                    held = self.wallet.take(op, self.config.price_tokens)
        if held is not None and self.wallet.balance().get(op.lower(), 0) <= self.config.low_water:
            self._schedule(candidate, client)
        return held

    def _schedule(self, candidate: Candidate, client: httpx.AsyncClient) -> None:
        op = candidate.operator
        running = self._buying.get(op)
        if running is not None and not running.done():
            return
        delay = secrets.randbelow(int(self.config.jitter_s * 1000) + 1) / 1000

        async def later() -> None:
            await asyncio.sleep(delay)
            async with self._locks.setdefault(op, asyncio.Lock()):
                await self._buy(candidate, client)

        self._buying[op] = asyncio.get_running_loop().create_task(later())

    async def _buy(self, candidate: Candidate, client: httpx.AsyncClient) -> bool:
        op = candidate.operator
        try:
            params = await self.payer.params_for(op)
            if params is None:
                raise PurchaseFailed("the node's ticket offer is unavailable")
            cap = self.payer.config.max_face_value
            units = self.config.batch
            if cap is not None:
                units = max(1, min(units, cap // params.face_value))
            scaled = dataclasses.replace(params, face_value=params.face_value * units)
            on_chain = await asyncio.to_thread(self.chain.token_keys, op)
            await buy_tokens(
                client,
                op,
                self.sells(candidate),
                units,
                lambda _n: self.payer.pay(scaled).header_value(),
                self.wallet,
                on_chain=on_chain,
            )
        except (ClientError, PriceAboveLimit, VeilError, httpx.HTTPError) as err:
            self._failed_until[op] = time.monotonic() + self.config.retry_s
            code = getattr(err, "code", None)
            log.warning("token purchase from %s failed: %s (%s)", op, err, code)
            return False
        log.info("bought %d tokens from %s", units, op)
        return True

    async def aclose(self) -> None:
        for task in self._buying.values():
            task.cancel()
        for task in self._buying.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
                await task
        self._buying.clear()
