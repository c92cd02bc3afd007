"""Shared pieces for the node payment tests: a sender, a fake funds source, ticket writing."""

from __future__ import annotations

from dataclasses import dataclass, field

from eth_account import Account
from eth_utils import to_checksum_address

from veil.chain.errors import ChainUnavailable
from veil.chain.payment import PaymentTicket, TicketParams
from veil.chain.tickets import TicketDomain, ticket_hash
from veil.chain.types import SenderFunds, TxReceipt

TOKEN = 10**18
DOMAIN = TicketDomain(31337, to_checksum_address("0x" + "b0" * 20))
NOW = 1_800_000_000


def account(seed: int):  # type: ignore[no-untyped-def]
    return Account.from_key(seed.to_bytes(32, "big"))


@dataclass
class FakeFundsSource:
    """`sender_funds` from a dict; `down` makes it raise like an unreachable chain."""

    funds: dict[str, SenderFunds] = field(default_factory=dict)
    down: bool = False
    calls: int = 0

    def sender_funds(self, sender: str | None = None) -> SenderFunds:
        self.calls += 1
        if self.down:
            raise ChainUnavailable("cannot reach the chain RPC endpoint")
        assert sender is not None
        return self.funds.get(sender, SenderFunds(0, 0, 0))


def write_ticket(
    params: TicketParams,
    sender,  # type: ignore[no-untyped-def]
    nonce: int,
    *,
    expiry: int | None = None,
    domain: TicketDomain | None = None,
    **over: object,
) -> PaymentTicket:
    from dataclasses import replace

    ticket = params.ticket(sender.address, nonce, NOW + 3600 if expiry is None else expiry)
    if over:
        ticket = replace(ticket, **over)
    return PaymentTicket.sign(ticket, domain or params.domain, sender.key)


class FakeRedeemTarget:
    """Redeems from a script of outcomes per nonce; counts withdrawals; `used` holds the
    ticket ids (`DOMAIN`) it redeemed, as the broker's `usedTickets` would."""

    def __init__(self, script: dict[int, list[object]]) -> None:
        self.script = script
        self.earned = 0
        self.withdrawals = 0
        self.redeemed: list[int] = []
        self.used: set[bytes] = set()
        self.down = False  # `is_ticket_id_redeemed` raises like an unreachable chain

    def redeem_ticket(self, ticket, signature, recipient_rand) -> TxReceipt:  # type: ignore[no-untyped-def]
        outcomes = self.script.get(ticket.sender_nonce, [])
        if outcomes:
            outcome = outcomes.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
        self.earned += ticket.face_value
        self.redeemed.append(ticket.sender_nonce)
        self.used.add(ticket_hash(ticket, DOMAIN))
        return TxReceipt("0x" + "ab" * 32, 1, 80_000)

    def is_ticket_id_redeemed(self, ticket_id: bytes) -> bool:
        if self.down:
            raise ChainUnavailable("cannot reach the chain RPC endpoint")
        return ticket_id in self.used

    def earnings(self, recipient: str | None = None) -> int:
        return self.earned

    def withdraw_earnings(self) -> TxReceipt:
        self.earned = 0
        self.withdrawals += 1
        return TxReceipt("0x" + "cd" * 32, 2, 40_000)
