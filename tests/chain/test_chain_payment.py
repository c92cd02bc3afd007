"""veil.chain.payment: ticket params and the signed-ticket header, both ways, strictly."""

import base64
import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.chain import make_account
from veil.chain.errors import InvalidTicket
from veil.chain.payment import (
    MAX_HEADER_CHARS,
    PaymentTicket,
    TicketParams,
    expected_value,
)
from veil.chain.tickets import recipient_rand_hash, ticket_hash, win_prob_for

SENDER = make_account("alice")
NODE = make_account("node").address
BROKER = "0x" + "ab" * 20


def params(**over) -> TicketParams:
    fields = {
        "recipient": NODE,
        "face_value": 10**18,
        "win_prob": win_prob_for(0.1),
        "recipient_rand_hash": recipient_rand_hash(7),
        "expires_at": 1_900_000_000,
        "chain_id": 31337,
        "broker": BROKER,
    } | over
    return TicketParams(**fields)


def b64(obj) -> str:
    raw = json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_params_round_trip_json_and_header():
    p = params()
    assert TicketParams.parse(p.encode()) == p
    assert TicketParams.from_header(p.header_value()) == p
    assert p.expected_value == expected_value(10**18, win_prob_for(0.1))
    assert abs(p.expected_value - 10**17) < 10**3


def test_signed_ticket_round_trips_and_recovers_the_sender():
    p = params()
    t = p.ticket(SENDER.address, sender_nonce=3, expiry=1_900_000_100)
    paid = PaymentTicket.sign(t, p.domain, SENDER.key)
    back = PaymentTicket.from_header(paid.header_value())
    assert back == paid
    assert back.signer(p.domain) == SENDER.address
    assert back.ticket_id(p.domain) == ticket_hash(t, p.domain)
    assert len(paid.header_value()) < MAX_HEADER_CHARS


def test_a_ticket_signed_for_another_broker_recovers_someone_else():
    p = params()
    paid = PaymentTicket.sign(p.ticket(SENDER.address, 1, 1_900_000_000), p.domain, SENDER.key)
    other = params(broker="0x" + "cd" * 20).domain
    assert paid.signer(other) != SENDER.address


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o.pop("face_value"), "missing face_value"),
        (lambda o: o.update(extra=1), "unknown extra"),
        (lambda o: o.update(face_value="-1"), "face_value"),
        (lambda o: o.update(face_value=str(2**256)), "face_value"),
        (lambda o: o.update(recipient="0x1234"), "recipient"),
        (lambda o: o.update(recipient_rand_hash="0x00"), "32 bytes"),
        (lambda o: o.update(recipient_rand_hash="zz"), "hex"),
        (lambda o: o.update(expires_at="soon"), "expires_at"),
        (lambda o: o.update(chain_id=1.5), "chain_id"),
    ],
)
def test_bad_params_are_refused_with_the_field_named(mutate, message):
    obj = params().to_json()
    mutate(obj)
    with pytest.raises(InvalidTicket, match=message):
        TicketParams.parse(json.dumps(obj))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "!!!",
        b64([1, 2]),
        b64({"ticket": {}, "signature": "0x00"}),
        b64({"ticket": [], "signature": "0x" + "00" * 65}),
        "A" * (MAX_HEADER_CHARS + 1),
    ],
)
def test_bad_ticket_headers_are_refused(value):
    with pytest.raises(InvalidTicket):
        PaymentTicket.from_header(value)


def test_a_short_signature_is_refused():
    p = params()
    paid = PaymentTicket.sign(p.ticket(SENDER.address, 1, 1_900_000_000), p.domain, SENDER.key)
    obj = json.loads(base64.urlsafe_b64decode(paid.header_value() + "=="))
    obj["signature"] = obj["signature"][:-2]
    with pytest.raises(InvalidTicket, match="65 bytes"):
        PaymentTicket.from_header(b64(obj))


def test_a_garbage_signature_is_refused_as_a_ticket_error():
    p = params()
    t = p.ticket(SENDER.address, 1, 1_900_000_000)
    with pytest.raises(InvalidTicket):
        PaymentTicket(t, b"\xff" * 65).signer(p.domain)


def test_only_the_low_s_form_with_v_27_or_28_passes_the_signature_check():
    p = params()
    paid = PaymentTicket.sign(p.ticket(SENDER.address, 1, 1_900_000_000), p.domain, SENDER.key)
    paid.check_signature_form()  # what eth_account signs
    r, s, v = paid.signature[:32], int.from_bytes(paid.signature[32:64], "big"), paid.signature[64]
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    twin = r + (n - s).to_bytes(32, "big") + bytes([55 - v])  # the malleable twin: same signer
    assert PaymentTicket(paid.ticket, twin).signer(p.domain) == SENDER.address
    for sig in (twin, paid.signature[:64] + bytes([v - 27])):
        with pytest.raises(InvalidTicket, match="low-s with v 27 or 28"):
            PaymentTicket(paid.ticket, sig).check_signature_form()


@given(st.text(max_size=300))
def test_any_header_text_parses_or_raises_invalid_ticket(text):
    for parse in (PaymentTicket.from_header, TicketParams.from_header):
        with contextlib.suppress(InvalidTicket):
            parse(text)


@given(st.binary(max_size=300))
def test_any_params_bytes_parse_or_raise_invalid_ticket(data):
    with contextlib.suppress(InvalidTicket):
        TicketParams.parse(data)
