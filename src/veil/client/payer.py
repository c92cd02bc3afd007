"""Paying nodes: the user's pseudonymous wallet, each node's ticket params, one ticket a request.

A `Payer` writes one probabilistic-micropayment ticket (`veil.chain.payment`) per request:

1. the node's `TicketParams` are fetched through the relay (`GET {relay}/relay/{node}/
   ticket-params`, so the node does not learn who asks) and cached per node; every answer's
   `x-veil-ticket-params` header (inside the sealed response) replaces the cached ones, and a
   402 `ticket_params_stale` answer carries the new ones for one retry;
2. params are used only when they pay the node's on-chain operator (the node id) through this
   deployment's TicketBroker (chain id and broker address), are not expired, and stay within
   the payer's limits; anything else is refused (logged) and no ticket is written;
3. the ticket (`params.ticket(sender, nonce, expiry)`) has a random 128-bit nonce and expires a
   day after the chain's time, is signed by the wallet (EIP-712) and travels in the request's
   `x-veil-ticket` header, which the OHTTP transport seals (the relay never sees it).

The wallet is a keystore file (`veil.identity.keystore`); its account funds a deposit at the
TicketBroker (`ChainClient.fund_deposit`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from veil.chain.deployment import TOKEN
from veil.chain.errors import InvalidTicket
from veil.chain.payment import MEDIA_TICKET_PARAMS, PaymentTicket, TicketParams, format_veil
from veil.chain.tickets import TicketDomain
from veil.client.errors import PriceAboveLimit
from veil.client.transport import relay_url_for
from veil.identity.keystore import load_keystore

__all__ = [
    "TICKET_LIFETIME_S",
    "Payer",
    "PayerConfig",
    "Wallet",
    "relay_ticket_params_url",
]

log = logging.getLogger(__name__)

TICKET_LIFETIME_S = 24 * 3600  # a ticket expires a day after the chain's time
_MAX_PARAMS_BYTES = 16 * 1024


def relay_ticket_params_url(relay_url: str, node_id: str) -> str:
    """The node's ticket params fetched through the relay."""
    return relay_url_for(relay_url, node_id) + "/ticket-params"


class Wallet:
    """The user's pseudonymous account: signs tickets. Never a node's or validator's key."""

    def __init__(self, private_key: bytes | str) -> None:
        from eth_account import Account

        self._account = Account.from_key(private_key)

    @classmethod
    def load(cls, path: Path, passphrase: str | None = None) -> Wallet:
        """From a keystore file (`veil.identity.keystore`; encrypted ones need `passphrase`)."""
        return cls(bytes(load_keystore(Path(path), passphrase).key))

    @property
    def address(self) -> str:
        return str(self._account.address)

    def sign(self, params: TicketParams, *, expiry: int, nonce: int | None = None) -> PaymentTicket:
        nonce = secrets.randbits(128) if nonce is None else nonce
        ticket = params.ticket(self.address, nonce, expiry)
        return PaymentTicket.sign(ticket, params.domain, self._account.key)

    def __repr__(self) -> str:
        return f"Wallet({self.address})"


@dataclass(frozen=True)
class PayerConfig:
    miss_ttl_s: float = 30.0  # after a failed params fetch, send without a ticket this long
    expiry_margin_s: int = 30  # params this close to expiry are fetched again
    # A node names its own price: these caps keep one request from costing more than the
    # user meant to pay (None: no cap). Defaults: 1 VEIL per request on average, and no
    # single winning ticket above 100 VEIL.
    max_face_value: int | None = 100 * TOKEN  # refuse offers whose winning ticket pays more
    max_expected_value: int | None = TOKEN  # refuse offers worth more per request


@dataclass(frozen=True)
class Payment:
    """The ticket one request carries."""

    ticket: PaymentTicket
    params: TicketParams
    ticket_id: bytes  # the EIP-712 hash the node's receipt must name

    def header_value(self) -> str:
        return self.ticket.header_value()


class Payer:
    """Ticket params per node (cached, checked) and one signed ticket per request."""

    def __init__(
        self,
        wallet: Wallet,
        relay_url: str,
        domain: TicketDomain,
        *,
        chain_now: Callable[[], int],
        outer: httpx.AsyncBaseTransport | None = None,
        config: PayerConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        timeout: httpx.Timeout | None = None,
    ) -> None:
        """`timeout`: of the params fetch through the relay (the gateway passes its short
        discovery deadlines: a node that never answers must not hold a request long)."""
        self.wallet = wallet
        self.relay_url = relay_url
        self.domain = domain
        self.config = config or PayerConfig()
        self._chain_now = chain_now
        self._clock = clock
        self._wall = wall
        self._params: dict[str, TicketParams] = {}
        self._misses: dict[str, float] = {}  # node -> monotonic time a fetch may be tried again
        self._http = httpx.AsyncClient(
            transport=outer or httpx.AsyncHTTPTransport(),
            timeout=timeout or httpx.Timeout(10.0, connect=5.0),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def known(self, node_id: str) -> TicketParams | None:
        return self._params.get(node_id.lower())

    def check(self, node_id: str, params: TicketParams) -> str | None:
        """Why `params` must not be paid against (None: they may)."""
        if params.recipient.lower() != node_id.lower():
            return f"they pay {params.recipient}, not the node's operator"
        if (params.chain_id, params.broker.lower()) != (
            self.domain.chain_id,
            self.domain.verifying_contract.lower(),
        ):
            return "they name another chain or ticket broker"
        if params.expires_at <= self._wall() + self.config.expiry_margin_s:
            return "they have expired"
        return self.limit_reason(params)

    def limit_reason(self, params: TicketParams) -> str | None:
        """Why `params` ask more than this payer's limits allow (None: they do not)."""
        cap = self.config.max_face_value
        if cap is not None and params.face_value > cap:
            return (
                f"a winning ticket would pay {format_veil(params.face_value)}, above the "
                f"limit of {format_veil(cap)}"
            )
        cap = self.config.max_expected_value
        if cap is not None and params.expected_value > cap:
            return (
                f"a request would cost {format_veil(params.expected_value)} on average, "
                f"above the limit of {format_veil(cap)}"
            )
        return None

    def accept(self, node_id: str, params: TicketParams) -> bool:
        """Cache `params` for `node_id` if they pass `check`."""
        why = self.check(node_id, params)
        if why is not None:
            log.warning("ticket params of node %s refused: %s", node_id, why)
            return False
        self._params[node_id.lower()] = params
        self._misses.pop(node_id.lower(), None)
        return True

    def update_from_header(self, node_id: str, value: str | None) -> bool:
        """Take the params a node's answer carried (`x-veil-ticket-params`); True if taken."""
        if not value:
            return False
        try:
            params = TicketParams.from_header(value)
        except InvalidTicket as err:
            log.warning("node %s sent unreadable ticket params: %s", node_id, err)
            return False
        current = self.known(node_id)
        if current == params:
            return True
        why = self.limit_reason(params)
        if why is not None:  # the node raised its price: stop paying it
            self.forget(node_id)
            raise PriceAboveLimit(f"node {node_id} asks too much: {why}")
        return self.accept(node_id, params)

    def forget(self, node_id: str) -> None:
        self._params.pop(node_id.lower(), None)

    async def params_for(self, node_id: str) -> TicketParams | None:
        """The node's params: cached ones while valid, else fetched through the relay.
        None when the node offers none that can be paid (then no ticket is sent)."""
        key = node_id.lower()
        params = self._params.get(key)
        if params is not None and self.check(node_id, params) is None:
            return params
        self._params.pop(key, None)
        if self._clock() < self._misses.get(key, 0.0):
            return None
        params = await self._fetch(node_id)
        if params is not None and (why := self.limit_reason(params)) is not None:
            raise PriceAboveLimit(f"node {node_id} asks too much: {why}")
        if params is None or not self.accept(node_id, params):
            self._misses[key] = self._clock() + self.config.miss_ttl_s
            return None
        return params

    async def _fetch(self, node_id: str) -> TicketParams | None:
        # Built bare, so no client default header (user-agent...) goes out.
        request = httpx.Request(
            "GET",
            relay_ticket_params_url(self.relay_url, node_id),
            headers={"accept": MEDIA_TICKET_PARAMS},
        )
        try:
            response = await self._http.send(request, stream=True)
            try:
                if response.status_code != 200:
                    log.info(
                        "node %s offers no ticket params (HTTP %d)", node_id, response.status_code
                    )
                    return None
                data = bytearray()
                async for piece in response.aiter_bytes():
                    data += piece
                    if len(data) > _MAX_PARAMS_BYTES:
                        log.warning("ticket params of node %s too large", node_id)
                        return None
            finally:
                await response.aclose()
        except httpx.HTTPError as err:
            log.info("ticket params fetch for node %s failed: %s", node_id, type(err).__name__)
            return None
        try:
            return TicketParams.parse(bytes(data))
        except InvalidTicket as err:
            log.warning("node %s sent unreadable ticket params: %s", node_id, err)
            return None

    def expiry(self) -> int:
        """A day after the chain's time (or after the local time, if the chain's lags: a
        devnet mines blocks only on transactions, and the node checks against its clock)."""
        return max(self._chain_now(), int(self._wall())) + TICKET_LIFETIME_S

    def pay(self, params: TicketParams) -> Payment:
        """A signed ticket against `params` (checked by `accept` before)."""
        ticket = self.wallet.sign(params, expiry=self.expiry())
        return Payment(ticket, params, ticket.ticket_id(params.domain))
