"""TicketBroker: funding, unlock/withdraw, and winning-ticket redemption with bad inputs."""

import boa
import pytest

from support.chain import PARAMS, TOKEN
from veil.chain.tickets import (
    Ticket,
    is_winning,
    recipient_rand_hash,
    recover_ticket_signer,
    sign_ticket,
    ticket_hash,
)


def redeem(ledger, ticket: Ticket, sig: bytes, rand: int, caller: str | None = None) -> None:
    with boa.env.prank(caller or ticket.recipient):
        ledger.broker.redeemWinningTicket(ticket.as_abi_tuple(), sig, rand)


def test_python_hash_matches_contract(ledger, alice, node_op) -> None:
    """veil.chain.tickets and the contract agree on the EIP-712 digest (one definition)."""
    ticket, sig, _ = ledger.make_ticket(alice, node_op, face_value=7, nonce=99)
    assert ledger.broker.ticketHash(ticket.as_abi_tuple()) == ticket_hash(ticket, ledger.domain)
    assert ledger.broker.DOMAIN_SEPARATOR() != b"\x00" * 32
    assert recover_ticket_signer(ticket, ledger.domain, sig) == alice.address


def test_fund_deposit_and_reserve(ledger, alice, unchanged) -> None:
    ledger.fund_sender(alice.address, 30, 20)
    assert ledger.broker.getSender(alice.address) == (30, 20, 0)
    assert ledger.token.balanceOf(ledger.broker.address) == 50
    with unchanged("zero amount"), boa.env.prank(alice.address):
        ledger.broker.fundDeposit(0)
    with unchanged("zero amount"), boa.env.prank(alice.address):
        ledger.broker.fundReserve(0)
    with unchanged("insufficient allowance"), boa.env.prank(alice.address):
        ledger.broker.fundDeposit(1)


def test_redeem_pays_from_deposit(ledger, alice, node_op) -> None:
    ledger.fund_sender(alice.address, 5 * TOKEN, TOKEN)
    ticket, sig, rand = ledger.make_ticket(alice, node_op, face_value=2 * TOKEN)
    redeem(ledger, ticket, sig, rand)
    assert [type(e).__name__ for e in ledger.broker.get_logs()] == ["WinningTicketRedeemed"]
    assert ledger.broker.getSender(alice.address) == (3 * TOKEN, TOKEN, 0)
    assert ledger.broker.earnings(node_op) == 2 * TOKEN
    assert ledger.broker.usedTickets(ticket_hash(ticket, ledger.domain))


def test_redeem_falls_back_to_reserve(ledger, alice, node_op) -> None:
    ledger.fund_sender(alice.address, TOKEN, 5 * TOKEN)
    ticket, sig, rand = ledger.make_ticket(alice, node_op, face_value=3 * TOKEN)
    redeem(ledger, ticket, sig, rand)
    assert ledger.broker.getSender(alice.address) == (0, 3 * TOKEN, 0)
    assert ledger.broker.earnings(node_op) == 3 * TOKEN


def test_redeem_exactly_all_funds(ledger, alice, node_op) -> None:
    ledger.fund_sender(alice.address, TOKEN, TOKEN)
    ticket, sig, rand = ledger.make_ticket(alice, node_op, face_value=2 * TOKEN)
    redeem(ledger, ticket, sig, rand)
    assert ledger.broker.getSender(alice.address) == (0, 0, 0)


def test_withdraw_earnings(ledger, alice, node_op, unchanged) -> None:
    with unchanged("no earnings"), boa.env.prank(node_op):
        ledger.broker.withdrawEarnings()
    ledger.fund_sender(alice.address, 5 * TOKEN)
    for nonce in (1, 2):
        ticket, sig, rand = ledger.make_ticket(alice, node_op, nonce=nonce)
        redeem(ledger, ticket, sig, rand)
    with boa.env.prank(node_op):
        ledger.broker.withdrawEarnings()
    assert ledger.token.balanceOf(node_op) == 2 * TOKEN
    assert ledger.broker.earnings(node_op) == 0
    assert (ledger.broker.earned(node_op), ledger.broker.withdrawn(node_op)) == (2 * TOKEN,) * 2
    with unchanged("no earnings"), boa.env.prank(node_op):
        ledger.broker.withdrawEarnings()
    ticket, sig, rand = ledger.make_ticket(alice, node_op, nonce=3)
    redeem(ledger, ticket, sig, rand)
    assert ledger.broker.earnings(node_op) == TOKEN


def test_open_earnings_keeps_earnings_at_zero_until_paid(ledger, alice, node_op, unchanged) -> None:
    ledger.fund_sender(alice.address, 5 * TOKEN)
    with boa.env.prank(node_op):
        ledger.broker.openEarnings()
    assert ledger.broker.earnings(node_op) == 0  # both counters start at 1 wei
    with unchanged("earnings already open"), boa.env.prank(node_op):
        ledger.broker.openEarnings()
    with unchanged("no earnings"), boa.env.prank(node_op):
        ledger.broker.withdrawEarnings()
    ticket, sig, rand = ledger.make_ticket(alice, node_op)
    redeem(ledger, ticket, sig, rand)  # its gas, on a real chain: test_chain_integration
    assert ledger.broker.earnings(node_op) == TOKEN
    with boa.env.prank(node_op):
        ledger.broker.withdrawEarnings()
    assert ledger.token.balanceOf(node_op) == TOKEN
    assert ledger.broker.earnings(node_op) == 0


def test_replay_is_refused(ledger, alice, node_op, unchanged) -> None:
    ledger.fund_sender(alice.address, 5 * TOKEN)
    ticket, sig, rand = ledger.make_ticket(alice, node_op)
    redeem(ledger, ticket, sig, rand)
    with unchanged("ticket already redeemed"):
        redeem(ledger, ticket, sig, rand)


def test_malleated_signature_cannot_replay_or_redraw(ledger, alice, node_op, unchanged) -> None:
    """The high-s twin of a valid signature is refused (it would be a second lottery draw)."""
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    ledger.fund_sender(alice.address, 5 * TOKEN)
    ticket, sig, rand = ledger.make_ticket(alice, node_op)
    s = int.from_bytes(sig[32:64], "big")
    twin = sig[:32] + (n - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    assert recover_ticket_signer(ticket, ledger.domain, twin) == alice.address
    with unchanged("invalid signature"):
        redeem(ledger, ticket, twin, rand)
    redeem(ledger, ticket, sig, rand)
    with unchanged("ticket already redeemed"):
        redeem(ledger, ticket, twin, rand)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda s: s[:10] + bytes([s[10] ^ 1]) + s[11:], id="flipped-bit"),
        pytest.param(lambda s: s[:64], id="64-bytes"),
        pytest.param(lambda s: s[:64] + b"\x00", id="v-0"),
        pytest.param(lambda s: s[:64] + b"\x1d", id="v-29"),
        pytest.param(lambda s: b"\x00" * 65, id="zeros"),
        pytest.param(lambda s: b"", id="empty"),
    ],
)
def test_bad_signatures(ledger, alice, node_op, unchanged, mutate) -> None:
    ledger.fund_sender(alice.address, 5 * TOKEN)
    ticket, sig, rand = ledger.make_ticket(alice, node_op)
    with unchanged("invalid signature"):
        redeem(ledger, ticket, mutate(sig), rand)


def test_signature_by_someone_else(ledger, alice, bob, node_op, unchanged) -> None:
    ledger.fund_sender(alice.address, 5 * TOKEN)
    ticket, _sig, rand = ledger.make_ticket(alice, node_op)
    forged = Ticket(**{**ticket.__dict__, "sender": bob.address})
    bob_sig = sign_ticket(forged, ledger.domain, bob.key)
    with unchanged("invalid signature"):
        redeem(ledger, ticket, bob_sig, rand)  # bob signed, ticket says alice pays


def test_zero_sender_is_refused(ledger, node_op, unchanged) -> None:
    zero = "0x" + "00" * 20
    ticket = Ticket(node_op, zero, TOKEN, 2**256 - 1, 1, recipient_rand_hash(5), 2**40)
    with unchanged("invalid signature"):
        redeem(ledger, ticket, b"\x00" * 64 + b"\x1b", 5)


def test_expired_ticket(ledger, alice, node_op, unchanged) -> None:
    ledger.fund_sender(alice.address, 5 * TOKEN)
    ticket, sig, rand = ledger.make_ticket(alice, node_op, expiry=boa.env.timestamp + 10)
    boa.env.time_travel(seconds=11)
    with unchanged("ticket expired"):
        redeem(ledger, ticket, sig, rand)


def test_ticket_valid_at_its_expiry_second(ledger, alice, node_op) -> None:
    ledger.fund_sender(alice.address, 5 * TOKEN)
    ticket, sig, rand = ledger.make_ticket(alice, node_op, expiry=boa.env.timestamp + 10)
    boa.env.time_travel(seconds=10)
    redeem(ledger, ticket, sig, rand)


def test_ticket_for_another_recipient(ledger, alice, node_op, node2, unchanged) -> None:
    ledger.fund_sender(alice.address, 5 * TOKEN)
    ticket, sig, rand = ledger.make_ticket(alice, node_op)
    with unchanged("not ticket recipient"):
        redeem(ledger, ticket, sig, rand, caller=node2)
    # re-addressing it to the caller breaks the signature
    stolen = Ticket(**{**ticket.__dict__, "recipient": node2})
    with unchanged("invalid signature"):
        redeem(ledger, stolen, sig, rand)


def test_underfunded_sender(ledger, alice, node_op, unchanged) -> None:
    ledger.fund_sender(alice.address, TOKEN, TOKEN)
    ticket, sig, rand = ledger.make_ticket(alice, node_op, face_value=2 * TOKEN + 1)
    with unchanged("sender underfunded"):
        redeem(ledger, ticket, sig, rand)


def test_unfunded_sender(ledger, alice, node_op, unchanged) -> None:
    ticket, sig, rand = ledger.make_ticket(alice, node_op)
    with unchanged("sender underfunded"):
        redeem(ledger, ticket, sig, rand)


def test_non_winning_ticket(ledger, alice, node_op, unchanged) -> None:
    ledger.fund_sender(alice.address, 5 * TOKEN)
    ticket, sig, rand = ledger.make_ticket(alice, node_op, probability=0.0)
    assert not is_winning(sig, rand, ticket.win_prob)
    with unchanged("ticket did not win"):
        redeem(ledger, ticket, sig, rand)


def test_winning_rule_matches_python(ledger, alice, node_op) -> None:
    """With win probability 1/2, the contract pays exactly the tickets is_winning() picks."""
    ledger.fund_sender(alice.address, 100 * TOKEN)
    outcomes = []
    for nonce in range(24):
        ticket, sig, rand = ledger.make_ticket(alice, node_op, probability=0.5, nonce=nonce)
        expected = is_winning(sig, rand, ticket.win_prob)
        try:
            redeem(ledger, ticket, sig, rand)
            won = True
        except boa.BoaError:
            won = False
        assert won == expected
        outcomes.append(won)
    assert any(outcomes) and not all(outcomes)  # a 2**-23 chance of a false alarm
    assert ledger.broker.earnings(node_op) == sum(outcomes) * TOKEN


def test_wrong_recipient_rand(ledger, alice, node_op, unchanged) -> None:
    ledger.fund_sender(alice.address, 5 * TOKEN)
    ticket, sig, rand = ledger.make_ticket(alice, node_op)
    with unchanged("recipientRand mismatch"):
        redeem(ledger, ticket, sig, rand + 1)


def test_zero_face_value(ledger, alice, node_op, unchanged) -> None:
    ticket, sig, rand = ledger.make_ticket(alice, node_op, face_value=0)
    with unchanged("zero face value"):
        redeem(ledger, ticket, sig, rand)


def test_ticket_signed_for_another_broker_or_chain(ledger, alice, node_op, unchanged) -> None:
    from dataclasses import replace

    ledger.fund_sender(alice.address, 5 * TOKEN)
    ticket, _sig, rand = ledger.make_ticket(alice, node_op)
    for domain in (
        replace(ledger.domain, chain_id=ledger.domain.chain_id + 1),
        replace(ledger.domain, verifying_contract=ledger.token.address),
    ):
        with unchanged("invalid signature"):
            redeem(ledger, ticket, sign_ticket(ticket, domain, alice.key), rand)


def test_unlock_and_withdraw(ledger, alice, node_op, unchanged) -> None:
    with unchanged("no funds"), boa.env.prank(alice.address):
        ledger.broker.unlock()
    with unchanged("not unlocking"), boa.env.prank(alice.address):
        ledger.broker.withdraw()
    ledger.fund_sender(alice.address, 3 * TOKEN, 2 * TOKEN)
    with boa.env.prank(alice.address):
        ledger.broker.unlock()
    withdraw_at = boa.env.timestamp + PARAMS.unlock_delay
    assert ledger.broker.getSender(alice.address).withdrawAt == withdraw_at
    with unchanged("already unlocking"), boa.env.prank(alice.address):
        ledger.broker.unlock()
    with unchanged("unlock period not over"), boa.env.prank(alice.address):
        ledger.broker.withdraw()
    # tickets stay redeemable during the unlock delay
    ticket, sig, rand = ledger.make_ticket(
        alice, node_op, expiry=boa.env.timestamp + 2 * PARAMS.unlock_delay
    )
    boa.env.time_travel(seconds=PARAMS.unlock_delay - 1)
    redeem(ledger, ticket, sig, rand)
    with unchanged("unlock period not over"), boa.env.prank(alice.address):
        ledger.broker.withdraw()
    boa.env.time_travel(seconds=1)
    with boa.env.prank(alice.address):
        ledger.broker.withdraw()
    assert ledger.token.balanceOf(alice.address) == 4 * TOKEN
    assert ledger.broker.getSender(alice.address) == (0, 0, 0)


def test_cancel_unlock(ledger, alice, unchanged) -> None:
    with unchanged("not unlocking"), boa.env.prank(alice.address):
        ledger.broker.cancelUnlock()
    ledger.fund_sender(alice.address, TOKEN)
    with boa.env.prank(alice.address):
        ledger.broker.unlock()
        ledger.broker.cancelUnlock()
    assert ledger.broker.getSender(alice.address).withdrawAt == 0
    boa.env.time_travel(seconds=PARAMS.unlock_delay)
    with unchanged("not unlocking"), boa.env.prank(alice.address):
        ledger.broker.withdraw()


def test_withdraw_after_tickets_drained_the_funds(ledger, alice, node_op) -> None:
    ledger.fund_sender(alice.address, TOKEN)
    with boa.env.prank(alice.address):
        ledger.broker.unlock()
    ticket, sig, rand = ledger.make_ticket(alice, node_op, expiry=boa.env.timestamp + 10**6)
    redeem(ledger, ticket, sig, rand)
    boa.env.time_travel(seconds=PARAMS.unlock_delay)
    with boa.env.prank(alice.address):
        ledger.broker.withdraw()  # nothing left: succeeds and resets the unlock
    assert ledger.broker.getSender(alice.address) == (0, 0, 0)
    assert ledger.token.balanceOf(alice.address) == 0
