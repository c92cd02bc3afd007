"""Fuzz: payment ticket parameters and signed tickets (`veil.chain.payment`), JSON and headers.

Property: `TicketParams.parse`/`from_header` and `PaymentTicket.from_header` return a value or
raise `InvalidTicket` (not merely some ValueError); what they accept re-encodes to the same
value; `PaymentTicket.signer` recovers an address or raises `InvalidTicket`; valid values
round-trip byte for byte.
"""

from __future__ import annotations

import base64
import json
import sys

import pytest
from eth_utils import to_checksum_address
from fuzzkit import deep_json, fuzz, json_inputs, mutated_bytes, outcome
from hypothesis import given
from hypothesis import strategies as st

from veil.chain.errors import InvalidTicket
from veil.chain.payment import MAX_HEADER_CHARS, PaymentTicket, TicketParams
from veil.chain.tickets import Ticket

addresses = st.binary(min_size=20, max_size=20).map(lambda b: to_checksum_address("0x" + b.hex()))
uint256 = st.integers(0, 2**256 - 1) | st.sampled_from([0, 1, 2**53, 2**256 - 1])
int63 = st.integers(0, 2**63 - 1)
hash32 = st.binary(min_size=32, max_size=32)
params = st.builds(TicketParams, addresses, uint256, uint256, hash32, int63, int63, addresses)
tickets = st.builds(
    PaymentTicket,
    st.builds(Ticket, addresses, addresses, uint256, uint256, uint256, hash32, int63),
    st.binary(min_size=65, max_size=65),
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _ticket_json(ticket: PaymentTicket) -> dict[str, object]:
    raw = ticket.header_value()
    return json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))


def _header_texts(raw: bytes) -> st.SearchStrategy[str]:
    """`raw` as a header: base64url, with its text mutated, or not base64 at all."""
    text = _b64(raw)
    return st.one_of(
        st.just(text),
        mutated_bytes(text.encode()).map(lambda b: b.decode("latin-1")),
        st.text(max_size=64),
        st.just(text + "=" * 3),
        st.just("A" * (MAX_HEADER_CHARS + 1)),
    )


def _check_params(parse: object, value: object) -> None:
    got, _ = outcome(lambda: parse(value), InvalidTicket)  # type: ignore[operator]
    if got is not None:
        assert TicketParams.parse(got.encode()) == got
        assert TicketParams.from_header(got.header_value()) == got


def _check_ticket(value: str, signer: bool = False) -> None:
    got, _ = outcome(lambda: PaymentTicket.from_header(value), InvalidTicket)
    if got is not None:
        assert PaymentTicket.from_header(got.header_value()) == got
        if signer:
            params = TicketParams(
                got.ticket.recipient, 1, 1, got.ticket.recipient_rand_hash, 1, 1, got.ticket.sender
            )
            outcome(lambda: got.signer(params.domain), InvalidTicket)


@fuzz(2)
@given(params, tickets)
def test_round_trip(p: TicketParams, t: PaymentTicket) -> None:
    assert TicketParams.parse(p.encode()) == p
    assert TicketParams.parse(p.encode()).encode() == p.encode()
    assert TicketParams.from_header(p.header_value()) == p
    assert PaymentTicket.from_header(t.header_value()) == t
    assert PaymentTicket.from_header(t.header_value()).header_value() == t.header_value()


@fuzz(4)
@given(params.map(TicketParams.to_json).flatmap(json_inputs))
def test_mutated_params(raw: bytes) -> None:
    _check_params(TicketParams.parse, raw)


@fuzz(4)
@given(tickets.map(_ticket_json).flatmap(json_inputs).flatmap(_header_texts))
def test_mutated_ticket_headers(header: str) -> None:
    _check_ticket(header)


@fuzz(2)
@given(params.map(TicketParams.encode).flatmap(_header_texts))
def test_mutated_params_headers(header: str) -> None:
    _check_params(TicketParams.from_header, header)


@fuzz(1)
@given(tickets.map(_ticket_json).flatmap(json_inputs).flatmap(_header_texts))
def test_signer_of_parsed_tickets(header: str) -> None:
    _check_ticket(header, signer=True)


@fuzz(1)
@given(deep_json(MAX_HEADER_CHARS))
def test_deep_nesting(raw: bytes) -> None:
    _check_params(TicketParams.parse, raw)
    _check_ticket(_b64(raw))


@fuzz(1)
@given(st.binary(max_size=256) | st.text(max_size=256).map(str.encode))
def test_random_input(raw: bytes) -> None:
    _check_params(TicketParams.parse, raw)
    _check_ticket(raw.decode("latin-1"))


def test_regression_deep_nesting_is_a_typed_refusal() -> None:
    """Found by this target: under a service's recursion limit, a 1,500-deep array in the
    params JSON or a ticket header raised RecursionError, not InvalidTicket."""
    assert sys.getrecursionlimit() <= 1000  # tests/fuzz/conftest.py
    with pytest.raises(InvalidTicket, match="nest"):
        TicketParams.parse("[" * 1500)
    with pytest.raises(InvalidTicket, match="nest"):
        PaymentTicket.from_header(_b64(b"[" * 1500))


def test_regression_unicode_digits_are_refused() -> None:
    """Found while writing this target: "²" passes str.isdigit() but not int(), so a
    superscript digit in a uint field raised a bare ValueError (and "١٢" was read as 12)."""
    obj = json.loads(
        TicketParams(to_checksum_address("0x" + "11" * 20), 1, 1, bytes(32), 1, 1, "0x" + "22" * 20)
        .encode()
        .decode()
    )
    for digits in ("\u00b2", "\u0661\u0662"):  # superscript two; Arabic-Indic one, two
        with pytest.raises(InvalidTicket, match="face_value"):
            TicketParams.parse(json.dumps({**obj, "face_value": digits}))
