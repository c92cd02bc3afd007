"""The durable list of winning tickets not yet settled, and of recently redeemed ones.

A winning ticket is written (JSON lines, 0600, fsync'd) with its secret rand before the
model runs for the request it paid, so a crash never loses a winner the node worked for; the
redeemer settles entries as the broker pays or refuses them. Redeemed winners are kept a
while longer (until they expire, at most `keep_settled`): a chain that loses its latest blocks
(anvil persists its state every few seconds) loses their redemptions too, and the redeemer
then finds them unused on chain and puts them back (`requeue`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil.chain.errors import InvalidTicket
from veil.chain.payment import PaymentTicket
from veil.chain.tickets import Ticket, recipient_rand_hash
from veil.durable import append_private, write_private
from veil.node.errors import NodeSetupError

__all__ = ["TicketQueue", "WinningTicket"]

log = logging.getLogger(__name__)


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


def _jsonl(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


class TicketQueue:
    """Winning tickets not yet settled, kept in a JSON-lines file (None: in memory only).

    Lines are `{"event": "won", ...}` (a `WinningTicket`) and `{"event": "done",
    "ticket_id", "outcome", "reason"}`; a `won` line for a redeemed ticket puts it back in
    the queue. Each line is fsync'd before the call returns. On open, and every
    `compact_every` settled tickets, the file is rewritten atomically with the pending
    tickets and the redeemed ones still kept (`won` then `done`). A torn last line (a crash
    mid-write) is skipped with a warning. The file holds secret rands: it is created 0600.

    Redeemed tickets are kept until their expiry passes (`clock`, unix seconds: the broker
    refuses them after it anyway), the newest `keep_settled` at most.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        compact_every: int = 256,
        keep_settled: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._pending: dict[bytes, WinningTicket] = {}
        self._settled: OrderedDict[bytes, WinningTicket] = OrderedDict()  # redeemed, kept
        self._unsaved: set[bytes] = set()
        # saved winners whose request has not been answered yet: not redeemed until it is,
        # dropped if it never is (a failure, or a crash before the answer went out)
        self._awaiting: set[bytes] = set()
        self._compact_every = compact_every
        self._keep_settled = keep_settled
        self._clock = clock
        self._settled_since_compact = 0
        if self.path is not None:
            self._load()
            self._forget_settled()
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
                    self._settled.pop(winner.ticket_id, None)
                    if obj.get("awaiting"):
                        self._awaiting.add(winner.ticket_id)
                elif obj["event"] == "answered":
                    self._awaiting.discard(bytes.fromhex(obj["ticket_id"][2:]))
                elif obj["event"] == "done":
                    done = self._pending.pop(bytes.fromhex(obj["ticket_id"][2:]), None)
                    if done is not None and obj.get("outcome") == "redeemed":
                        self._settled[done.ticket_id] = done
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
        if self._awaiting:  # their requests died with the last process: never answered
            for ticket_id in self._awaiting:
                self._pending.pop(ticket_id, None)
            log.warning(
                "ticket queue %s: %d winning tickets of requests never answered, dropped",
                self.path,
                len(self._awaiting),
            )
            self._awaiting.clear()
        if self._pending:
            log.info("ticket queue %s: %d winning tickets to redeem", self.path, len(self._pending))

    def _forget_settled(self) -> None:
        """Drop kept redeemed tickets that expired, then the oldest beyond `keep_settled`."""
        now = self._clock()
        for ticket_id in [i for i, w in self._settled.items() if w.ticket.expiry <= now]:
            del self._settled[ticket_id]
        while len(self._settled) > self._keep_settled:
            self._settled.popitem(last=False)

    def _compact(self) -> None:
        """Rewrite the file with the pending and the kept redeemed tickets (atomic, durable)."""
        if self.path is None:
            return
        lines = [
            dict(winner.to_json(), awaiting=True)
            if ticket_id in self._awaiting
            else winner.to_json()
            for ticket_id, winner in self._pending.items()
            if ticket_id not in self._unsaved
        ]
        for winner in self._settled.values():
            lines += [winner.to_json(), _done(winner.ticket_id, "redeemed")]
        write_private(self.path, b"".join(_jsonl(obj) for obj in lines))
        self._settled_since_compact = 0

    def _append(self, obj: dict[str, Any]) -> None:
        if self.path is None:
            return
        append_private(self.path, _jsonl(obj))

    # --- the desk's side

    def reserve(self, winner: WinningTicket) -> None:
        """Count `winner` as pending at once (funds checks see it); `save` makes it durable."""
        with self._lock:
            self._pending[winner.ticket_id] = winner
            self._unsaved.add(winner.ticket_id)

    def save(self, winner: WinningTicket) -> None:
        """Write the winner durably, awaiting its answer (`answered`): only then does the
        redeemer see it. Raises OSError."""
        with self._lock:
            try:
                self._append(dict(winner.to_json(), awaiting=True))
            except OSError:
                self._pending.pop(winner.ticket_id, None)
                self._unsaved.discard(winner.ticket_id)
                raise
            self._unsaved.discard(winner.ticket_id)
            self._awaiting.add(winner.ticket_id)

    def answered(self, ticket_id: bytes) -> None:
        """The winner's request was answered: record it durably; now it may be redeemed."""
        with self._lock:
            if ticket_id in self._awaiting:
                self._append({"event": "answered", "ticket_id": "0x" + ticket_id.hex()})
                self._awaiting.discard(ticket_id)

    def unanswered(self, ticket_id: bytes, reason: str) -> None:
        """The winner's request ended without an answer: drop it, never redeem it."""
        with self._lock:
            if ticket_id in self._awaiting:
                self._append(_done(ticket_id, "unanswered", reason))
                self._awaiting.discard(ticket_id)
                self._pending.pop(ticket_id, None)

    def pending_face_value(self, sender: str) -> int:
        """Face value of `sender`'s winning tickets that are not settled yet."""
        with self._lock:
            return sum(
                w.ticket.face_value for w in self._pending.values() if w.ticket.sender == sender
            )

    # --- the redeemer's side

    def pending(self) -> list[WinningTicket]:
        """Saved, unsettled winners whose requests were answered, oldest first."""
        with self._lock:
            return [
                w
                for i, w in self._pending.items()
                if i not in self._unsaved and i not in self._awaiting
            ]

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def settle(self, ticket_id: bytes, outcome: str, reason: str = "") -> None:
        """Mark a winner done (`redeemed` or `failed`), durably; a redeemed one is kept."""
        with self._lock:
            self._append(_done(ticket_id, outcome, reason))
            winner = self._pending.pop(ticket_id, None)
            if winner is not None and outcome == "redeemed":
                self._settled[ticket_id] = winner
                self._forget_settled()
            self._settled_since_compact += 1
            if self._settled_since_compact >= self._compact_every:
                try:
                    self._compact()
                except OSError as exc:  # the log is still correct, only longer
                    log.warning("could not compact the ticket queue %s: %s", self.path, exc)

    # --- reconciliation with the chain

    def settled(self) -> list[WinningTicket]:
        """Redeemed winners kept to check against the chain, oldest first (unexpired only)."""
        with self._lock:
            self._forget_settled()
            return list(self._settled.values())

    def requeue(self, ticket_id: bytes) -> WinningTicket | None:
        """Put a kept redeemed winner back in the queue, durably (the chain lost its
        redemption); None if it is not kept. Raises OSError."""
        with self._lock:
            winner = self._settled.get(ticket_id)
            if winner is None:
                return None
            self._append(winner.to_json())
            del self._settled[ticket_id]
            self._pending[ticket_id] = winner
            return winner


def _done(ticket_id: bytes, outcome: str, reason: str = "") -> dict[str, Any]:
    return {"event": "done", "ticket_id": "0x" + ticket_id.hex(), "outcome": outcome} | (
        {"reason": reason} if reason else {}
    )
