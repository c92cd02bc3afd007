"""The node's side of probabilistic payments: offer, check, queue and redeem tickets.

* `TicketDesk` holds the node's secret recipient rands and issues its `TicketParams` (the
  offer: face value, win probability, commitment to the current rand). `check(header)`
  accepts a signed ticket or refuses it with a precise 402 `payment_error`. A rand stops
  being offered the moment a winning ticket on it is accepted, and stops being accepted when
  the redeemer is about to reveal it on chain (`revealing`): after that a sender could tell
  losing tickets from winning ones before sending. Until then it is still secret, so tickets
  that concurrent requests signed against it are still good (no refusal storm under load).
* `TicketQueue` is the durable list of winning tickets not yet settled (JSON lines, 0600,
  fsync'd before the model runs), each stored with its rand.
* `Redeemer` is a thread that redeems queued winners on chain, retrying transient failures
  with backoff, dropping (and counting) tickets the broker refuses for good, and withdrawing
  the earnings so the operator's token balance rises.
* `NodePayments` ties them together for the API; `open_payments` builds it from the config.

Decisions a payer sees (all HTTP 402, type `payment_error`, except a chain outage):

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
* HTTP 503 `chain_unavailable` (type `server_error`): the funds cannot be read (no unpaid
  work is accepted during a chain outage).

The replay key includes the sender (two payers may both count nonces from 0). Replay memory
lives as long as its rand; rands are not persisted, so after a restart every older rand is
stale and no ticket can be replayed across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from eth_utils import to_checksum_address

from veil.chain.deployment import TOKEN
from veil.chain.errors import ChainError, ContractRevert, InvalidTicket, TicketReplayed
from veil.chain.payment import PaymentTicket, TicketParams, expected_value, format_veil
from veil.chain.tickets import (
    Ticket,
    TicketDomain,
    is_winning,
    new_recipient_rand,
    recipient_rand_hash,
    win_prob_for,
)
from veil.node.errors import APIError, NodeSetupError

if TYPE_CHECKING:
    from veil.chain.client import ChainClient
    from veil.chain.types import SenderFunds, TxReceipt
    from veil.identity import NodeIdentity
    from veil.node.config import NodeConfig

__all__ = [
    "AcceptedTicket",
    "FundsSource",
    "NodePayments",
    "PaymentStats",
    "Redeemer",
    "TicketDesk",
    "TicketQueue",
    "WinningTicket",
    "open_payments",
]

log = logging.getLogger(__name__)

PAYMENT_ERROR = "payment_error"
_SECP256K1N_HALF = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


def _refuse(code: str, message: str, status: int = 402) -> APIError:
    return APIError(status, message, type_=PAYMENT_ERROR, param=None, code=code)


# ---------------------------------------------------------------------------- stats


@dataclass
class PaymentStats:
    """Counters since the node started (pending comes from the queue)."""

    accepted: int = 0  # tickets accepted (winning or not)
    winners: int = 0  # accepted tickets that won, queued for redemption
    unpaid: int = 0  # requests served without a ticket (free node)
    refused: int = 0  # requests refused with a payment error
    redeemed: int = 0  # winners settled on chain (including ones found already redeemed)
    failed: int = 0  # winners the broker refused for good (dropped)
    redeemed_face_value: int = 0  # token base units credited by those redemptions
    withdrawn: int = 0  # token base units withdrawn to the operator
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "accepted": self.accepted,
                "winners": self.winners,
                "unpaid": self.unpaid,
                "refused": self.refused,
                "redeemed": self.redeemed,
                "failed": self.failed,
                "redeemed_face_value": self.redeemed_face_value,
                "withdrawn": self.withdrawn,
            }


# ---------------------------------------------------------------------------- queue


@dataclass(frozen=True)
class WinningTicket:
    """A winning ticket waiting to be redeemed, with the rand that makes it redeemable."""

    payment: PaymentTicket
    recipient_rand: int
    ticket_id: bytes  # EIP-712 hash: the broker's replay key
    queued_at: int

    @property
    def ticket(self) -> Ticket:
        return self.payment.ticket

    def to_json(self) -> dict[str, Any]:
        return {
            "event": "won",
            "ticket_id": "0x" + self.ticket_id.hex(),
            "ticket": self.payment.header_value(),
            "rand": "0x" + self.recipient_rand.to_bytes(32, "big").hex(),
            "queued_at": self.queued_at,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> WinningTicket:
        rand = int(obj["rand"], 16)
        payment = PaymentTicket.from_header(obj["ticket"])
        if recipient_rand_hash(rand) != payment.ticket.recipient_rand_hash:
            raise ValueError("stored rand does not match the ticket's rand hash")
        return cls(payment, rand, bytes.fromhex(obj["ticket_id"][2:]), int(obj["queued_at"]))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsync'd
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class TicketQueue:
    """Winning tickets not yet settled, kept in a JSON-lines file (None: in memory only).

    Lines are `{"event": "won", ...}` (a `WinningTicket`) and `{"event": "done",
    "ticket_id", "outcome", "reason"}`. Each line is fsync'd before the call returns. On
    open, and every `compact_every` settled tickets, the file is rewritten atomically with
    the pending tickets only. A torn last line (a crash mid-write) is skipped with a warning.
    The file holds secret rands: it is created 0600.
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, compact_every: int = 256) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._pending: dict[bytes, WinningTicket] = {}
        self._unsaved: set[bytes] = set()
        self._compact_every = compact_every
        self._settled_since_compact = 0
        if self.path is not None:
            self._load()
            self._compact()

    def _load(self) -> None:
        assert self.path is not None
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise NodeSetupError(f"cannot read the ticket queue {self.path}: {exc}") from exc
        lines = text.split("\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if obj["event"] == "won":
                    winner = WinningTicket.from_json(obj)
                    self._pending[winner.ticket_id] = winner
                elif obj["event"] == "done":
                    self._pending.pop(bytes.fromhex(obj["ticket_id"][2:]), None)
                else:
                    raise ValueError(f"unknown event {obj['event']!r}")
            except (ValueError, KeyError, TypeError, InvalidTicket) as exc:
                torn = number == len(lines)  # no newline after it: the write was cut short
                log.warning(
                    "ticket queue %s line %d %s: %s",
                    self.path,
                    number,
                    "is incomplete (interrupted write), skipped" if torn else "is invalid, skipped",
                    exc,
                )
        if self._pending:
            log.info("ticket queue %s: %d winning tickets to redeem", self.path, len(self._pending))

    def _compact(self) -> None:
        """Rewrite the file with the pending tickets only (atomic, durable)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            for ticket_id, winner in self._pending.items():
                if ticket_id not in self._unsaved:
                    fh.write(json.dumps(winner.to_json(), separators=(",", ":")) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self._settled_since_compact = 0

    def _append(self, obj: dict[str, Any]) -> None:
        if self.path is None:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(obj, separators=(",", ":")) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- the desk's side

    def reserve(self, winner: WinningTicket) -> None:
        """Count `winner` as pending at once (funds checks see it); `save` makes it durable."""
        with self._lock:
            self._pending[winner.ticket_id] = winner
            self._unsaved.add(winner.ticket_id)

    def save(self, winner: WinningTicket) -> None:
        """Write the winner durably; from then on the redeemer sees it. Raises OSError."""
        with self._lock:
            try:
                self._append(winner.to_json())
            except OSError:
                self._pending.pop(winner.ticket_id, None)
                self._unsaved.discard(winner.ticket_id)
                raise
            self._unsaved.discard(winner.ticket_id)

    def pending_face_value(self, sender: str) -> int:
        """Face value of `sender`'s winning tickets that are not settled yet."""
        with self._lock:
            return sum(
                w.ticket.face_value for w in self._pending.values() if w.ticket.sender == sender
            )

    # --- the redeemer's side

    def pending(self) -> list[WinningTicket]:
        """Saved, unsettled winners, oldest first."""
        with self._lock:
            return [w for i, w in self._pending.items() if i not in self._unsaved]

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def settle(self, ticket_id: bytes, outcome: str, reason: str = "") -> None:
        """Mark a winner done (`redeemed` or `failed`), durably."""
        with self._lock:
            self._append(
                {"event": "done", "ticket_id": "0x" + ticket_id.hex(), "outcome": outcome}
                | ({"reason": reason} if reason else {})
            )
            self._pending.pop(ticket_id, None)
            self._settled_since_compact += 1
            if self._settled_since_compact >= self._compact_every:
                try:
                    self._compact()
                except OSError as exc:  # the log is still correct, only longer
                    log.warning("could not compact the ticket queue %s: %s", self.path, exc)


# ---------------------------------------------------------------------------- desk


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
            raise APIError(
                503,
                "this node cannot reach the chain to check the ticket sender's funds; "
                "try again shortly",
                type_="server_error",
                code="chain_unavailable",
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

    async def check(self, header: str | None) -> AcceptedTicket | None:
        """Accept the ticket in `header` (None: no ticket) or raise the refusal `APIError`.

        Returns None for an unpaid request to a free node. A winning ticket is in the queue
        file before this returns.
        """
        try:
            return await self._check(header)
        except APIError as err:
            self.stats.add(refused=1)
            log.debug("ticket refused: %s", err.code)
            raise

    async def _check(self, header: str | None) -> AcceptedTicket | None:
        if header is None:
            if self.free:
                self.stats.add(unpaid=1)
                return None
            raise _refuse(
                "payment_required",
                "this node needs a payment ticket in the x-veil-ticket header; its offer is in "
                "the x-veil-ticket-params header of this answer",
            )
        payment, ticket_id = self._verify(header)
        funds = await self._funds.get(payment.ticket.sender)
        return await self._accept(payment, ticket_id, funds)

    def _verify(self, header: str) -> tuple[PaymentTicket, bytes]:
        """Everything that needs no chain: form, recipient, rand, expiry, value, signature."""
        try:
            payment = PaymentTicket.from_header(header)
        except InvalidTicket as exc:
            raise _refuse("invalid_ticket", f"malformed ticket: {exc}") from None
        t = payment.ticket
        if t.recipient != self.recipient:
            raise _refuse(
                "invalid_ticket",
                f"the ticket pays {t.recipient}, not this node ({self.recipient})",
            )
        now = self._now()
        with self._lock:
            self._prune(now)
            live = t.recipient_rand_hash in self._rands
        if not live:
            raise _refuse(
                "ticket_params_stale",
                "the ticket's recipient_rand_hash is not (or no longer) accepted by this node; "
                "sign against the params in the x-veil-ticket-params header of this answer",
            )
        if t.expiry < now + self._min_life:
            raise _refuse(
                "ticket_expired",
                f"the ticket expires at {t.expiry}; this node needs at least "
                f"{self._min_life} s to redeem it (expiry >= {now + self._min_life})",
            )
        if t.expiry > now + self._max_life:
            raise _refuse(
                "ticket_expired",
                f"the ticket expires at {t.expiry}, more than {self._max_life} s ahead "
                f"(expiry <= {now + self._max_life})",
            )
        if (
            t.face_value == 0
            or t.win_prob == 0
            or expected_value(t.face_value, t.win_prob) < (self.price)
        ):
            raise _refuse(
                "insufficient_payment",
                f"the ticket is worth {format_veil(expected_value(t.face_value, t.win_prob))} "
                f"on average (face value x win probability); this node asks "
                f"{format_veil(self.price)} per request",
            )
        sig = payment.signature
        if sig[64] not in (27, 28) or int.from_bytes(sig[32:64], "big") > _SECP256K1N_HALF:
            raise _refuse("invalid_ticket", "the ticket signature must be low-s with v 27 or 28")
        try:
            signer = payment.signer(self.domain)
        except InvalidTicket as exc:
            raise _refuse("invalid_ticket", str(exc)) from None
        if signer != t.sender:
            raise _refuse(
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
                raise _refuse(
                    "ticket_params_stale",
                    "the ticket's recipient_rand_hash was retired while it was checked; "
                    "sign against the params in the x-veil-ticket-params header of this answer",
                )
            key = (t.sender, t.sender_nonce)
            if key in rand.seen:
                raise _refuse(
                    "ticket_replayed",
                    "a ticket with this sender_nonce and recipient_rand_hash was already "
                    "accepted; use a new sender_nonce",
                )
            if funds.withdraw_at != 0:
                raise _refuse(
                    "sender_unfunded",
                    f"the sender {t.sender} is unlocking its funds at the broker; this node "
                    "accepts tickets only from senders that are not",
                )
            owed = self.queue.pending_face_value(t.sender)
            available = funds.deposit + funds.reserve - owed
            if available < t.face_value:
                raise _refuse(
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
                raise APIError(
                    503,
                    "this node cannot record payments right now",
                    type_="server_error",
                    code="payment_unavailable",
                ) from None
            self.stats.add(accepted=1, winners=1)
            if self.on_winner is not None:
                self.on_winner(winner)
        else:
            self.stats.add(accepted=1)
        return AcceptedTicket(payment, ticket_id, winning)


# ---------------------------------------------------------------------------- redeemer


class RedeemTarget(Protocol):
    """What the redeemer needs from the chain (`ChainClient` signed by the node's key)."""

    def redeem_ticket(self, ticket: Ticket, signature: bytes, recipient_rand: int) -> TxReceipt: ...

    def earnings(self, recipient: str | None = None) -> int: ...

    def withdraw_earnings(self) -> TxReceipt: ...


class Redeemer:
    """Redeems queued winners in a background thread; `run_once` is one pass (tests).

    Transient failures (`ChainUnavailable`, `TransactionFailed`, anything not a contract
    refusal) are retried with exponential backoff from `interval_s` up to `max_backoff_s`.
    `TicketReplayed` counts as redeemed (only the recipient can redeem, so it was this node,
    e.g. a transaction mined just before a crash). Any other contract refusal (expired,
    underfunded sender, bad signature ...) drops the ticket with a warning and counts it as
    failed. After redemptions, with `auto_withdraw`, the earnings are withdrawn: at start
    (what an earlier run left), then at most every `withdraw_interval_s` (a withdrawal is a
    transaction too: one per minute rather than one per winning ticket).
    """

    def __init__(
        self,
        queue: TicketQueue,
        chain: RedeemTarget,
        stats: PaymentStats | None = None,
        *,
        auto_withdraw: bool = True,
        interval_s: float = 5.0,
        max_backoff_s: float = 300.0,
        withdraw_interval_s: float = 60.0,
        on_settled: Callable[[WinningTicket], None] | None = None,
        on_reveal: Callable[[bytes], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue
        self.on_reveal = on_reveal  # told each rand hash before a redemption reveals its rand
        self.chain = chain
        self.stats = stats or PaymentStats()
        self.auto_withdraw = auto_withdraw
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self.withdraw_interval_s = withdraw_interval_s
        self._last_withdraw: float | None = None
        self.on_settled = on_settled
        self._clock = clock
        self._retry: dict[bytes, tuple[int, float]] = {}  # ticket id -> (failures, next try)
        self._withdraw_due = auto_withdraw  # earnings left by an earlier run are collected too
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="veil-redeemer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the transaction in flight (if any)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("redeemer still busy after %.0f s; leaving it", timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # never let the thread die; the queue is durable
                log.error("redeemer pass failed: %s: %s", type(exc).__name__, exc)
            self._wake.wait(self._next_wait())
            self._wake.clear()

    def _next_wait(self) -> float:
        soonest = [at for _n, at in self._retry.values()]
        if self._withdraw_due and self._last_withdraw is not None:
            soonest.append(self._last_withdraw + self.withdraw_interval_s)
        if not soonest:
            return self.interval_s
        return max(0.05, min(self.interval_s, min(soonest) - self._clock()))

    def run_once(self) -> int:
        """Try every due winner once, then withdraw if due. Returns how many settled."""
        settled = 0
        for winner in self.queue.pending():
            if self._stop.is_set():
                break
            failures, next_at = self._retry.get(winner.ticket_id, (0, 0.0))
            if self._clock() < next_at:
                continue
            if self._redeem(winner, failures):
                settled += 1
        if self._withdraw_due and not self._stop.is_set():
            last = self._last_withdraw
            if last is None or self._clock() - last >= self.withdraw_interval_s:
                self._withdraw()
        return settled

    def _redeem(self, winner: WinningTicket, failures: int) -> bool:
        tid = "0x" + winner.ticket_id.hex()
        t = winner.ticket
        if self.on_reveal is not None:
            self.on_reveal(t.recipient_rand_hash)
        try:
            receipt = self.chain.redeem_ticket(t, winner.payment.signature, winner.recipient_rand)
        except TicketReplayed:
            log.info("ticket %s was already redeemed (by this node earlier)", tid)
            self._settle(winner, "redeemed", "already redeemed")
        except ContractRevert as exc:
            log.warning(
                "dropping winning ticket %s (%s): the broker refuses it: %s",
                tid,
                format_veil(t.face_value),
                exc.reason,
            )
            self._settle(winner, "failed", exc.reason)
        except Exception as exc:  # ChainUnavailable, TransactionFailed, anything transient
            failures += 1
            delay = min(self.max_backoff_s, self.interval_s * 2 ** (failures - 1))
            self._retry[winner.ticket_id] = (failures, self._clock() + delay)
            log.warning(
                "redeeming ticket %s failed (%s: %s); retry %d in %.0f s",
                tid,
                type(exc).__name__,
                exc,
                failures,
                delay,
            )
            return False
        else:
            log.info(
                "redeemed ticket %s for %s in tx %s",
                tid,
                format_veil(t.face_value),
                receipt.tx_hash,
            )
            self._settle(winner, "redeemed")
        return True

    def _settle(self, winner: WinningTicket, outcome: str, reason: str = "") -> None:
        self.queue.settle(winner.ticket_id, outcome, reason)
        self._retry.pop(winner.ticket_id, None)
        if outcome == "redeemed":
            self.stats.add(redeemed=1, redeemed_face_value=winner.ticket.face_value)
            self._withdraw_due = self.auto_withdraw
        else:
            self.stats.add(failed=1)
        if self.on_settled is not None:
            self.on_settled(winner)

    def _withdraw(self) -> None:
        self._last_withdraw = self._clock()
        try:
            amount = self.chain.earnings()
            if amount > 0:
                receipt = self.chain.withdraw_earnings()
                self.stats.add(withdrawn=amount)
                log.info("withdrew earnings of %s in tx %s", format_veil(amount), receipt.tx_hash)
            self._withdraw_due = False
        except Exception as exc:  # try again on the next pass
            log.warning("withdrawing earnings failed (%s: %s)", type(exc).__name__, exc)


# ---------------------------------------------------------------------------- together


class NodePayments:
    """The desk, the queue and the redeemer of one node; `create_app(payments=...)` takes it."""

    def __init__(
        self,
        desk: TicketDesk,
        redeemer: Redeemer | None = None,
        *,
        client: ChainClient | None = None,
    ) -> None:
        self.desk = desk
        self.queue = desk.queue
        self.stats = desk.stats
        self.redeemer = redeemer
        self.client = client  # the node's signing ChainClient, when built by open_payments
        if redeemer is not None:
            desk.on_winner = lambda _w: redeemer.wake()
            redeemer.on_settled = lambda w: desk.forget_funds(w.ticket.sender)

    def params(self) -> TicketParams:
        return self.desk.params()

    def params_header(self) -> dict[str, str]:
        from veil.chain.payment import TICKET_PARAMS_HEADER

        return {TICKET_PARAMS_HEADER: self.desk.params().header_value()}

    async def check(self, header: str | None) -> AcceptedTicket | None:
        return await self.desk.check(header)

    def start(self) -> None:
        if self.redeemer is not None:
            self.redeemer.start()

    def stop(self) -> None:
        if self.redeemer is not None:
            self.redeemer.stop()

    def health(self) -> dict[str, Any]:
        stats = self.stats.snapshot()
        return {
            **stats,
            "redeemed_face_value": str(stats["redeemed_face_value"]),  # may pass 2**53
            "withdrawn": str(stats["withdrawn"]),
            "pending": len(self.queue),
            "free": self.desk.free,
            "face_value": str(self.desk.face_value),
            "win_prob": str(self.desk.win_prob),
            "price": str(self.desk.price),
        }


def default_tickets_path(config: NodeConfig) -> Path | None:
    """`tickets_path`, else `tickets.jsonl` beside the identity keystore, else None (memory).

    Beside the identity, not the OHTTP keys: winners are redeemable only by that account, so
    an in-memory identity makes a durable queue pointless.
    """
    if config.tickets_path:
        return Path(config.tickets_path)
    if config.identity_path:
        return Path(config.identity_path).parent / "tickets.jsonl"
    return None


def open_payments(config: NodeConfig, identity: NodeIdentity) -> NodePayments:
    """Connect to the deployment in `config.deployment_path` and build the node's payments.

    Raises `NodeSetupError` (with the chain's reason) when the chain or deployment is unusable.
    """
    from veil.chain.client import ChainClient
    from veil.chain.deployment import Deployment

    if not config.deployment_path:
        raise NodeSetupError("payments need a chain deployment (deployment_path / --chain)")
    try:
        deployment = Deployment.load(config.deployment_path)
        reader = ChainClient(deployment, timeout=10.0)
        signer = ChainClient(deployment, identity.private_key, timeout=30.0)
    except ChainError as exc:
        raise NodeSetupError(f"chain: {exc}") from exc
    path = default_tickets_path(config)
    if path is None:
        log.warning(
            "the ticket queue is in memory only (no --identity or --tickets): winning tickets "
            "not yet redeemed are lost on restart"
        )
    queue = TicketQueue(path)
    stats = PaymentStats()
    desk = TicketDesk(
        identity.address,
        signer.ticket_domain(),
        reader,
        queue,
        face_value=config.ticket_face_value,
        win_prob=win_prob_for(config.ticket_win_prob),
        free=config.free,
        stats=stats,
    )
    redeemer = Redeemer(
        queue,
        signer,
        stats,
        auto_withdraw=config.auto_withdraw,
        interval_s=config.redeem_interval_s,
        withdraw_interval_s=config.withdraw_interval_s,
        on_reveal=desk.revealing,
    )
    return NodePayments(desk, redeemer, client=signer)
