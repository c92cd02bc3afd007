"""No ticket is charged without an answer: a winner is redeemed only once its request's final
chunk (with the receipt) went out; a request that ends otherwise, or dies with the node, is
free. (Found by benchmarks/load.py: winners of requests in flight at a crash were redeemed.)"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

from support.payments import (
    DOMAIN,
    NOW,
    TOKEN,
    FakeFundsSource,
    FakeRedeemTarget,
    account,
    write_ticket,
)
from veil.chain.tickets import win_prob_for
from veil.chain.types import SenderFunds
from veil.engine import Finished, TokenDelta
from veil.identity import NodeIdentity
from veil.node.api import _Charge, _Signer, _stream
from veil.node.payments import NodePayments, Redeemer, TicketDesk, TicketQueue
from veil.node.payments.desk import AcceptedTicket
from veil.wire.chat import Completion

SENDER = account(2)


class Handle:
    """A generation that yields two tokens and finishes."""

    def __init__(self) -> None:
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[object]:
        return self._events()

    async def _events(self) -> AsyncIterator[object]:
        yield TokenDelta(1, "Hel")
        yield TokenDelta(2, "lo")
        yield Finished("stop", 3, 2)

    def cancel(self) -> None:
        self.cancelled = True


def payments_at(path: Path) -> tuple[NodePayments, FakeRedeemTarget]:
    queue = TicketQueue(path, clock=lambda: NOW)
    funds = FakeFundsSource({SENDER.address: SenderFunds(10 * TOKEN, 0, 0)})
    desk = TicketDesk(
        account(1).address,
        DOMAIN,
        funds,
        queue,
        face_value=TOKEN,
        win_prob=win_prob_for(1.0),
        clock=lambda: NOW,
    )
    chain = FakeRedeemTarget({})
    return NodePayments(desk, Redeemer(queue, chain, desk.stats, interval_s=60)), chain


async def winning(payments: NodePayments, nonce: int) -> AcceptedTicket:
    accepted = await payments.check(write_ticket(payments.params(), SENDER, nonce).header_value())
    assert accepted is not None and accepted.winning
    return accepted


def stream(payments: NodePayments, accepted: AcceptedTicket) -> AsyncIterator[bytes]:
    signer = _Signer(NodeIdentity.generate(), b"\x01" * 32, "ab" * 32, accepted.ticket_id)
    charge = _Charge(payments, accepted)
    return _stream(Handle(), Completion("m"), False, time.monotonic(), signer, charge)


async def test_a_whole_stream_makes_its_winner_redeemable(tmp_path: Path) -> None:
    payments, chain = payments_at(tmp_path / "t.jsonl")
    accepted = await winning(payments, 1)
    assert payments.queue.pending() == []  # accepted, not yet answered
    chunks = [c async for c in stream(payments, accepted)]
    assert b"veil_receipt" in chunks[-2] and chunks[-1] == b"data: [DONE]\n\n"
    assert [w.ticket_id for w in payments.queue.pending()] == [accepted.ticket_id]
    payments.redeemer.run_once()
    assert len(chain.redeemed) == 1 and payments.health()["unanswered"] == 0


async def test_a_stream_cut_before_its_receipt_is_never_charged(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    payments, chain = payments_at(path)
    accepted = await winning(payments, 1)
    answer = stream(payments, accepted)
    await answer.__anext__()  # the first chunk went out, then the client went away
    await answer.aclose()
    assert payments.queue.pending() == [] and payments.health()["unanswered"] == 1
    payments.redeemer.run_once()
    assert chain.redeemed == [] and TicketQueue(path, clock=lambda: NOW).pending() == []


async def test_winners_of_requests_in_flight_at_a_crash_are_dropped_at_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.jsonl"
    payments, _ = payments_at(path)
    in_flight = await winning(payments, 1)  # the node dies before answering this one
    answered = await winning(payments, 2)
    await payments.answered(answered)
    after, chain = payments_at(path)  # the restarted node
    assert [w.ticket_id for w in after.queue.pending()] == [answered.ticket_id]
    after.redeemer.run_once()
    assert len(chain.redeemed) == 1
    assert in_flight.ticket_id not in {w.ticket_id for w in after.queue.pending()}
