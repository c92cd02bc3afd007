"""veil.chain.tickets: the single Python definition of the EIP-712 ticket."""

import pytest

from support.chain import make_account
from veil.chain.errors import InvalidTicket
from veil.chain.tickets import (
    MAX_WIN_PROB,
    TICKET_TYPES,
    Ticket,
    TicketDomain,
    is_winning,
    new_recipient_rand,
    recipient_rand_hash,
    recover_ticket_signer,
    sign_ticket,
    ticket_hash,
    ticket_typed_data,
    win_prob_for,
)

SECP256K1N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
SENDER = make_account("alice")
RECIPIENT = make_account("node").address
DOMAIN = TicketDomain(31337, "0x" + "ab" * 20)


def ticket(**over) -> Ticket:
    fields = {
        "recipient": RECIPIENT,
        "sender": SENDER.address,
        "face_value": 10**15,
        "win_prob": win_prob_for(0.01),
        "sender_nonce": 7,
        "recipient_rand_hash": recipient_rand_hash(42),
        "expiry": 1_900_000_000,
    } | over
    return Ticket(**fields)


def test_sign_and_recover() -> None:
    t = ticket()
    sig = sign_ticket(t, DOMAIN, SENDER.key)
    assert len(sig) == 65 and sig[64] in (27, 28)
    assert int.from_bytes(sig[32:64], "big") <= SECP256K1N // 2  # low-s, as the broker demands
    assert recover_ticket_signer(t, DOMAIN, sig) == SENDER.address
    assert sign_ticket(t, DOMAIN, SENDER.key) == sig  # RFC 6979: deterministic


def test_hash_binds_every_field_and_the_domain() -> None:
    base = ticket_hash(ticket(), DOMAIN)
    variants = [
        ticket(recipient=SENDER.address),
        ticket(sender=RECIPIENT),
        ticket(face_value=1),
        ticket(win_prob=1),
        ticket(sender_nonce=8),
        ticket(recipient_rand_hash=recipient_rand_hash(43)),
        ticket(expiry=1),
    ]
    hashes = {ticket_hash(v, DOMAIN) for v in variants}
    assert base not in hashes and len(hashes) == len(variants)
    assert ticket_hash(ticket(), TicketDomain(1, DOMAIN.verifying_contract)) != base
    assert ticket_hash(ticket(), TicketDomain(31337, "0x" + "cd" * 20)) != base


def test_typed_data_document() -> None:
    doc = ticket_typed_data(ticket(), DOMAIN)
    assert doc["primaryType"] == "Ticket"
    assert doc["types"]["Ticket"] == TICKET_TYPES["Ticket"]
    domain = dict(doc["domain"])
    assert domain.pop("verifyingContract").lower() == DOMAIN.verifying_contract
    assert domain == {"name": "Veil TicketBroker", "version": "1", "chainId": 31337}
    assert doc["message"]["senderNonce"] == 7


def test_addresses_are_checksummed() -> None:
    t = ticket(recipient=RECIPIENT.lower())
    assert t.recipient == RECIPIENT


@pytest.mark.parametrize(
    "over",
    [
        {"recipient_rand_hash": b"\x00" * 31},
        {"face_value": -1},
        {"win_prob": 2**256},
        {"expiry": -5},
    ],
)
def test_malformed_tickets(over) -> None:
    with pytest.raises(InvalidTicket):
        ticket(**over)


def test_signing_with_a_key_that_is_not_the_sender() -> None:
    with pytest.raises(InvalidTicket, match="sender"):
        sign_ticket(ticket(), DOMAIN, make_account("bob").key)


def test_win_prob_for() -> None:
    assert win_prob_for(1.0) == MAX_WIN_PROB
    assert win_prob_for(0.0) == 0
    assert win_prob_for(0.5) == 2**255
    assert abs(win_prob_for(0.001) / 2**256 - 0.001) < 1e-12
    for bad in (-0.1, 1.5):
        with pytest.raises(InvalidTicket):
            win_prob_for(bad)


def test_is_winning_extremes_and_rate() -> None:
    sig = sign_ticket(ticket(), DOMAIN, SENDER.key)
    assert is_winning(sig, 1, MAX_WIN_PROB)
    assert not is_winning(sig, 1, 0)
    wins = sum(is_winning(sig, rand, win_prob_for(0.25)) for rand in range(2000))
    assert 400 < wins < 600  # binomial(2000, 0.25): mean 500, sd about 19


def test_recipient_rand() -> None:
    a, b = new_recipient_rand(), new_recipient_rand()
    assert a != b and 0 <= a < 2**256
    assert len(recipient_rand_hash(a)) == 32
    assert recipient_rand_hash(a) != recipient_rand_hash(b)
