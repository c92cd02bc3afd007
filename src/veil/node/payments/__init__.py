"""The node's side of probabilistic payments: offer, check, queue and redeem tickets.

A request pays with a signed ticket against the node's current offer. The flow:

1. `desk.TicketDesk` offers `TicketParams` (face value, win probability, commitment to a
   secret recipient rand) and checks each request's ticket, or refuses it with a
   `PaymentRefused` (`veil.node.errors`) that the API answers as a 402 `payment_error`.
2. A winning ticket goes, with its rand, into the `queue.TicketQueue` (a durable file) before
   the model runs.
3. `redeemer.Redeemer`, a background thread, redeems queued winners on chain and withdraws
   the earnings to the operator; it also redeems again any winner whose redemption the chain
   lost (it checks recent redemptions against the broker at start and periodically).

`NodePayments` ties the three together for the API (`create_app(payments=...)`);
`open_payments` builds it from the node's config and chain deployment. Every name the rest
of the node uses is importable from this package.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veil.chain.errors import ChainError
from veil.chain.payment import TicketParams, format_veil
from veil.chain.tickets import win_prob_for
from veil.node.errors import NodeSetupError, PaymentRefused
from veil.node.payments.desk import AcceptedTicket, FundsSource, TicketDesk
from veil.node.payments.queue import TicketQueue, WinningTicket
from veil.node.payments.redeemer import Redeemer, RedeemTarget
from veil.node.payments.stats import PaymentStats
from veil.wire.http import TICKET_PARAMS_HEADER

if TYPE_CHECKING:
    from veil.chain.client import ChainClient
    from veil.identity import NodeIdentity
    from veil.node.config import NodeConfig

__all__ = [
    "AcceptedTicket",
    "FundsSource",
    "NodePayments",
    "PaymentRefused",
    "PaymentStats",
    "RedeemTarget",
    "Redeemer",
    "TicketDesk",
    "TicketQueue",
    "WinningTicket",
    "default_tickets_path",
    "format_veil",
    "open_payments",
]

log = logging.getLogger(__name__)


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
        return {TICKET_PARAMS_HEADER: self.desk.params().header_value()}

    async def check(self, header: str | None, units: int = 1) -> AcceptedTicket | None:
        return await self.desk.check(header, units)

    async def answered(self, accepted: AcceptedTicket | None) -> None:
        """The request paid with `accepted` was answered: a winner becomes redeemable."""
        if accepted is not None and accepted.winning:
            try:
                await asyncio.to_thread(self.queue.answered, accepted.ticket_id)
            except OSError as exc:  # stays awaiting: dropped at the next start, never charged
                log.error("cannot record an answered winning ticket: %s", exc)
                return
            if self.redeemer is not None:
                self.redeemer.wake()

    def unanswered(self, accepted: AcceptedTicket | None, reason: str) -> None:
        """The request paid with `accepted` ended without an answer: no charge for it."""
        if accepted is not None and accepted.winning:
            try:
                self.queue.unanswered(accepted.ticket_id, reason)
            except OSError as exc:  # stays awaiting: dropped at the next start
                log.error("cannot drop an unanswered winning ticket: %s", exc)
            else:
                self.stats.add(unanswered=1)

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
        reconcile_interval_s=config.reconcile_interval_s,
        on_reveal=desk.revealing,
    )
    return NodePayments(desk, redeemer, client=signer)
