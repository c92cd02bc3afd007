"""The ticket desk: the node's offer, and the check of the ticket that pays for a request.

`TicketDesk` holds the node's secret recipient rands and issues its `TicketParams` (the
offer: face value, win probability, commitment to the current rand). `check(header)` accepts
a signed ticket or raises `PaymentRefused` with a precise code. A rand stops being offered
the moment a winning ticket on it is accepted, and stops being accepted when the redeemer is
about to reveal it on chain (`revealing`): after that a sender could tell losing tickets from
winning ones before sending. Until then it is still secret, so tickets that concurrent
requests signed against it are still good (no refusal storm under load).

Refusals a payer sees (status 402, type `payment_error`, except the two outages):

* `payment_required`: no `x-veil-ticket` header and the node is not free;
* `invalid_ticket`: malformed header, bad or malleable signature, wrong recipient, or a
  signature for another chain or broker (it then recovers to another address);
* `ticket_params_stale`: the rand hash is unknown, expired or retired (sign against the
  params in the answer's `x-veil-ticket-params` header);
* `ticket_expired`: expiry less than `min_ticket_life_s` (10 min) ahead, or more than
  `max_ticket_life_s` (2 days);
* `insufficient_payment`: expected value (face value x win probability) below the offer's;
* `ticket_replayed`: this (rand hash, sender, sender nonce) was already accepted;
* `sender_unfunded`: the sender's deposit + reserve at the broker, minus its winning tickets
  this node has not redeemed yet, is below the face value; or the sender is unlocking;
* 503 `chain_unavailable` (type `server_error`): the funds cannot be read (no unpaid work is
  accepted during a chain outage); 503 `payment_unavailable`: a winner cannot be written to
  the queue.

The replay key includes the sender (two payers may both count nonces from 0). Replay memory
lives as long as its rand; rands are not persisted, so after a restart every older rand is
stale and no ticket can be replayed across restarts.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from eth_utils import to_checksum_address

from veil.chain.deployment import TOKEN
from veil.chain.errors import ChainError, InvalidTicket
from veil.chain.payment import PaymentTicket, TicketParams, expected_value, format_veil
from veil.chain.tickets import (
    Ticket,
    TicketDomain,
    is_winning,
    new_recipient_rand,
    recipient_rand_hash,
    win_prob_for,
)
from veil.node.errors import PaymentRefused
from veil.node.payments.queue import TicketQueue, WinningTicket
from veil.node.payments.stats import PaymentStats

if TYPE_CHECKING:
    from veil.chain.types import SenderFunds

__all__ = ["AcceptedTicket", "FundsSource", "TicketDesk"]

log = logging.getLogger(__name__)


class FundsSource(Protocol):
    """Where sender funds are read (`ChainClient` is one)."""

    def sender_funds(self, sender: str | None = None) -> SenderFunds: ...


class _FundsCache:
    """Sender funds with a short time-to-live, read off the event loop."""

    def __init__(
        self,
        source: FundsSource,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        capacity: int = 10_000,
    ) -> None:
        self._source, self._ttl, self._clock, self._capacity = source, ttl_s, clock, capacity
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[float, SenderFunds]] = OrderedDict()

    async def get(self, sender: str) -> SenderFunds:
        with self._lock:
            hit = self._cache.get(sender)
        if hit is not None and self._clock() - hit[0] < self._ttl:
            return hit[1]
        try:
            funds = await asyncio.to_thread(self._source.sender_funds, sender)
        except ChainError as exc:
            log.warning("cannot read sender funds from the chain: %s", type(exc).__name__)
            raise PaymentRefused(
                "chain_unavailable",
                "this node cannot reach the chain to check the ticket sender's funds; "
                "try again shortly",
                status=503,
            ) from None
        with self._lock:
            self._cache[sender] = (self._clock(), funds)
            self._cache.move_to_end(sender)
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return funds

    def forget(self, sender: str) -> None:
        with self._lock:
            self._cache.pop(sender, None)


@dataclass
class _Rand:
    value: int
    hash: bytes
    issued_at: int
    expires_at: int
    seen: set[tuple[str, int]] = field(default_factory=set)  # (sender, sender nonce)
    offered: bool = True  # False once a ticket on it won: new params name a new rand


@dataclass(frozen=True)
class AcceptedTicket:
    """A ticket the desk accepted for one request."""

    payment: PaymentTicket
    ticket_id: bytes  # EIP-712 hash; the receipt's ticketId
    winning: bool

    @property
    def ticket(self) -> Ticket:
        return self.payment.ticket


class TicketDesk:
    """Issues the node's ticket params and accepts or refuses the tickets paying for requests.

    `funds` answers `sender_funds(sender)` (a `ChainClient`); `queue` receives winners before
    `check` returns. `free`: requests without a ticket are served (a ticket that is sent is
    still checked). Times are unix seconds from `clock`.
    """

    def __init__(
        self,
        recipient: str,
        domain: TicketDomain,
        funds: FundsSource,
        queue: TicketQueue,
        *,
        face_value: int = TOKEN,
        win_prob: int | None = None,  # of 2**256; default 10%
        free: bool = False,
        stats: PaymentStats | None = None,
        rand_lifetime_s: int = 3600,  # a rand's params are honoured this long
        keep_rands: int = 8,  # rands accepted at once (the current one and recent ones)
        min_ticket_life_s: int = 600,  # the redeemer needs time before a ticket expires
        max_ticket_life_s: int = 2 * 86_400,
        funds_ttl_s: float = 5.0,
        max_tickets_per_rand: int = 100_000,  # replay memory bound: then the rand retires
        on_winner: Callable[[WinningTicket], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if face_value <= 0:
            raise ValueError("face_value must be positive")
        self.recipient = to_checksum_address(recipient)
        self.domain = domain
        self.face_value = face_value
        self.win_prob = win_prob_for(0.1) if win_prob is None else win_prob
        if not 0 < self.win_prob < 2**256:
            raise ValueError("win_prob must be within (0, 2**256)")
        self.free = free
        self.stats = stats or PaymentStats()
        self.queue = queue
        self._funds = _FundsCache(funds, funds_ttl_s)
        self._rand_lifetime = rand_lifetime_s
        self._keep = keep_rands
        self._min_life = min_ticket_life_s
        self._max_life = max_ticket_life_s
        self._max_per_rand = max_tickets_per_rand
        self.on_winner = on_winner
        self._clock = clock
        self._lock = threading.Lock()
        self._rands: OrderedDict[bytes, _Rand] = OrderedDict()  # oldest first; last = current
        self.rands_retired = 0

    # --- the offer

    @property
    def price(self) -> int:
        """Expected value the node asks per request, in token base units."""
        return expected_value(self.face_value, self.win_prob)

    def _now(self) -> int:
        return int(self._clock())

    def _issue(self, now: int) -> _Rand:
        value = new_recipient_rand()
        rand = _Rand(value, recipient_rand_hash(value), now, now + self._rand_lifetime)
        self._rands[rand.hash] = rand
        while len(self._rands) > self._keep:
            self._rands.popitem(last=False)
        return rand

    def _prune(self, now: int) -> None:
        for h in [h for h, r in self._rands.items() if now > r.expires_at]:
            del self._rands[h]

    def _current(self, now: int) -> _Rand:
        self._prune(now)
        if self._rands:
            rand = next(reversed(self._rands.values()))
            fresh = now < rand.issued_at + self._rand_lifetime // 2  # served params stay fresh
            if fresh and rand.offered:
                return rand
        return self._issue(now)

    def _retire(self, rand: _Rand) -> None:
        self._rands.pop(rand.hash, None)
        self.rands_retired += 1

    def revealing(self, rand_hash: bytes) -> None:
        """The redeemer is about to put this rand on chain: accept no more tickets on it."""
        with self._lock:
            rand = self._rands.get(rand_hash)
            if rand is not None:
                self._retire(rand)

    def params(self) -> TicketParams:
        """The current offer (a new rand when the current one is retired or half-aged)."""
        with self._lock:
            rand = self._current(self._now())
        return TicketParams(
            recipient=self.recipient,
            face_value=self.face_value,
            win_prob=self.win_prob,
            recipient_rand_hash=rand.hash,
            expires_at=rand.expires_at,
            chain_id=self.domain.chain_id,
            broker=self.domain.verifying_contract,
        )

    def forget_funds(self, sender: str) -> None:
        """Drop the cached funds of `sender` (after a redemption moved them)."""
        self._funds.forget(sender)

    # --- checking a ticket

    async def check(self, header: str | None, units: int = 1) -> AcceptedTicket | None:
        """Accept the ticket in `header` (None: no ticket) or raise `PaymentRefused`.

        `units`: how many requests' price the ticket must be worth (a token batch buys
        `units` tokens). Returns None for an unpaid request to a free node. A winning ticket
        is in the queue file before this returns.
        """
        try:
            return await self._check(header, units)
        except PaymentRefused as err:
            self.stats.add(refused=1)
            log.debug("ticket refused: %s", err.code)
            raise

    async def _check(self, header: str | None, units: int = 1) -> AcceptedTicket | None:
        if header is None:
            if self.free:
                self.stats.add(unpaid=1)
                return None
            raise PaymentRefused(
                "payment_required",
                "this node needs a payment ticket in the x-veil-ticket header; its offer is in "
                "the x-veil-ticket-params header of this answer",
            )
        payment, ticket_id = self._verify(header, units)
        funds = await self._funds.get(payment.ticket.sender)
        return await self._accept(payment, ticket_id, funds)

    def _verify(self, header: str, units: int = 1) -> tuple[PaymentTicket, bytes]:
        """Everything that needs no chain: form, recipient, rand, expiry, value, signature."""
        try:
            payment = PaymentTicket.from_header(header)
        except InvalidTicket as exc:
            raise PaymentRefused("invalid_ticket", f"malformed ticket: {exc}") from None
        t = payment.ticket
        if t.recipient != self.recipient:
            raise PaymentRefused(
                "invalid_ticket",
                f"the ticket pays {t.recipient}, not this node ({self.recipient})",
            )
        now = self._now()
        with self._lock:
            self._prune(now)
            live = t.recipient_rand_hash in self._rands
        if not live:
            raise PaymentRefused(
                "ticket_params_stale",
                "the ticket's recipient_rand_hash is not (or no longer) accepted by this node; "
                "sign against the params in the x-veil-ticket-params header of this answer",
            )
        if t.expiry < now + self._min_life:
            raise PaymentRefused(
                "ticket_expired",
                f"the ticket expires at {t.expiry}; this node needs at least "
                f"{self._min_life} s to redeem it (expiry >= {now + self._min_life})",
            )
        if t.expiry > now + self._max_life:
            raise PaymentRefused(
                "ticket_expired",
                f"the ticket expires at {t.expiry}, more than {self._max_life} s ahead "
                f"(expiry <= {now + self._max_life})",
            )
        if (
            t.face_value == 0
            or t.win_prob == 0
            or expected_value(t.face_value, t.win_prob) < self.price * units
        ):
            raise PaymentRefused(
                "insufficient_payment",
                f"the ticket is worth {format_veil(expected_value(t.face_value, t.win_prob))} "
                f"on average (face value x win probability); this node asks "
                f"{format_veil(self.price)} per request"
                + ("" if units == 1 else f", {format_veil(self.price * units)} for {units}"),
            )
        try:
            payment.check_signature_form()
            signer = payment.signer(self.domain)
        except InvalidTicket as exc:
            raise PaymentRefused("invalid_ticket", str(exc)) from None
        if signer != t.sender:
            raise PaymentRefused(
                "invalid_ticket",
                "the ticket signature is not the sender's for this node's chain "
                f"{self.domain.chain_id} and broker {self.domain.verifying_contract}",
            )
        return payment, payment.ticket_id(self.domain)

    async def _accept(
        self, payment: PaymentTicket, ticket_id: bytes, funds: SenderFunds
    ) -> AcceptedTicket:
        t = payment.ticket
        winner: WinningTicket | None = None
        with self._lock:  # re-checks what may have changed while funds were read
            now = self._now()
            self._prune(now)
            rand = self._rands.get(t.recipient_rand_hash)
            if rand is None:
                raise PaymentRefused(
                    "ticket_params_stale",
                    "the ticket's recipient_rand_hash was retired while it was checked; "
                    "sign against the params in the x-veil-ticket-params header of this answer",
                )
            key = (t.sender, t.sender_nonce)
            if key in rand.seen:
                raise PaymentRefused(
                    "ticket_replayed",
                    "a ticket with this sender_nonce and recipient_rand_hash was already "
                    "accepted; use a new sender_nonce",
                )
            if funds.withdraw_at != 0:
                raise PaymentRefused(
                    "sender_unfunded",
                    f"the sender {t.sender} is unlocking its funds at the broker; this node "
                    "accepts tickets only from senders that are not",
                )
            owed = self.queue.pending_face_value(t.sender)
            available = funds.deposit + funds.reserve - owed
            if available < t.face_value:
                raise PaymentRefused(
                    "sender_unfunded",
                    f"the sender {t.sender} has {format_veil(funds.deposit + funds.reserve)} "
                    f"at the broker (deposit + reserve), {format_veil(owed)} of it owed to "
                    f"this node for unredeemed winning tickets; the ticket's face value is "
                    f"{format_veil(t.face_value)}",
                )
            rand.seen.add(key)
            winning = is_winning(payment.signature, rand.value, t.win_prob)
            if winning:
                winner = WinningTicket(payment, rand.value, ticket_id, now)
                self.queue.reserve(winner)
                rand.offered = False  # accepted until the redeemer reveals it (`revealing`)
                self._current(now)
            elif len(rand.seen) >= self._max_per_rand:
                self._retire(rand)
        if winner is not None:
            try:
                await asyncio.to_thread(self.queue.save, winner)
            except OSError as exc:
                log.error("cannot write the winning ticket to the queue: %s", exc)
                raise PaymentRefused(
                    "payment_unavailable", "this node cannot record payments right now", status=503
                ) from None
            self.stats.add(accepted=1, winners=1)
            if self.on_winner is not None:
                self.on_winner(winner)
        else:
            self.stats.add(accepted=1)
        return AcceptedTicket(payment, ticket_id, winning)
