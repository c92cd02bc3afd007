"""Redeeming the node's winning tickets on chain, and withdrawing what they earn.

A background thread takes saved winners from the `TicketQueue`, redeems them at the broker
(revealing their rands, which is why the desk is told first: `on_reveal`), retries transient
failures with backoff, drops (and counts) tickets the broker refuses for good, and withdraws
the earnings so the operator's token balance rises.

It also reconciles the queue with the chain, at start and every `reconcile_interval_s`: a
winner settled as redeemed whose ticket the broker does not mark used (the block holding the
redemption was lost: a devnet that crashed before persisting it, a reorg) is queued again
and redeemed again. The broker's `usedTickets` flag is the truth, so this can never pay a
ticket twice: a second redemption of a ticket the chain holds is refused ("already
redeemed").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from veil.chain.errors import ContractRevert, TicketReplayed
from veil.chain.payment import format_veil
from veil.node.payments.queue import TicketQueue, WinningTicket
from veil.node.payments.stats import PaymentStats

if TYPE_CHECKING:
    from veil.chain.tickets import Ticket
    from veil.chain.types import TxReceipt

__all__ = ["RedeemTarget", "Redeemer"]

log = logging.getLogger(__name__)


class RedeemTarget(Protocol):
    """What the redeemer needs from the chain (`ChainClient` signed by the node's key)."""

    def redeem_ticket(self, ticket: Ticket, signature: bytes, recipient_rand: int) -> TxReceipt: ...

    def earnings(self, recipient: str | None = None) -> int: ...

    def withdraw_earnings(self) -> TxReceipt: ...

    def is_ticket_id_redeemed(self, ticket_id: bytes) -> bool: ...


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
        reconcile_interval_s: float = 60.0,
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
        self.reconcile_interval_s = reconcile_interval_s
        self._next_reconcile = 0.0  # clock time; at once on the first pass
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
        """Reconcile if due, try every due winner once, then withdraw if due. Returns how many
        settled."""
        if self._clock() >= self._next_reconcile and not self._stop.is_set():
            self.reconcile()
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

    def reconcile(self) -> int:
        """Queue again the redeemed winners the chain does not hold. Returns how many.

        On a chain error the rest waits for the next pass (`interval_s`, not a full
        `reconcile_interval_s`).
        """
        self._next_reconcile = self._clock() + self.reconcile_interval_s
        requeued = 0
        for winner in self.queue.settled():
            if self._stop.is_set():
                break
            tid = "0x" + winner.ticket_id.hex()
            try:
                if self.chain.is_ticket_id_redeemed(winner.ticket_id):
                    continue
                self.queue.requeue(winner.ticket_id)
            except Exception as exc:  # ChainUnavailable, OSError: try again soon
                self._next_reconcile = self._clock() + self.interval_s
                log.warning("reconciling ticket %s failed (%s: %s)", tid, type(exc).__name__, exc)
                break
            log.warning(
                "ticket %s was redeemed but the chain does not hold the redemption (a lost "
                "block?): redeeming it again",
                tid,
            )
            self._retry.pop(winner.ticket_id, None)
            self.stats.add(requeued=1)
            requeued += 1
        return requeued

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
