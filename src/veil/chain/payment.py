"""What a payer and a node exchange about payment: ticket parameters and the signed ticket.

The one definition of both wire forms, shared by the node (which checks tickets) and the
client gateway (which writes them):

* `TicketParams`: the node's public offer, served at `TICKET_PARAMS_PATH` (fetched through
  the relay, so the node does not see who asks) and repeated in every answer's
  `TICKET_PARAMS_HEADER` (inside the encrypted response), so a payer learns the node's new
  `recipient_rand_hash` after a winning ticket without another round trip.
* `PaymentTicket`: a ticket and its sender's signature, carried in the request's
  `TICKET_HEADER`. The client transport seals `x-veil-*` headers into the OHTTP request, so
  the relay never sees it.

Both header forms are base64url (no padding) of canonical JSON; integers above 2**53 are
decimal strings. Parsing is strict: unknown or missing fields, wrong types and oversize
input raise `InvalidTicket` with a message naming the field.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from eth_utils import is_address, to_checksum_address

from veil.chain.deployment import TOKEN
from veil.chain.errors import InvalidTicket
from veil.chain.tickets import (
    Ticket,
    TicketDomain,
    recover_ticket_signer,
    sign_ticket,
    ticket_hash,
)
from veil.wire import boundedjson
from veil.wire.errors import WireError
from veil.wire.http import (
    MEDIA_TICKET_PARAMS,
    TICKET_HEADER,
    TICKET_PARAMS_HEADER,
    TICKET_PARAMS_PATH,
)

__all__ = [
    "MAX_HEADER_CHARS",
    "MEDIA_TICKET_PARAMS",
    "TICKET_HEADER",
    "TICKET_PARAMS_HEADER",
    "TICKET_PARAMS_PATH",
    "PaymentTicket",
    "TicketParams",
    "expected_value",
    "format_veil",
    "parse_amount",
]

MAX_HEADER_CHARS = 2048
_SECP256K1N_HALF = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0

_PARAM_FIELDS = (
    "recipient",
    "face_value",
    "win_prob",
    "recipient_rand_hash",
    "expires_at",
    "chain_id",
    "broker",
)
_TICKET_FIELDS = (
    "recipient",
    "sender",
    "face_value",
    "win_prob",
    "sender_nonce",
    "recipient_rand_hash",
    "expiry",
)


def format_veil(amount: int) -> str:
    """Base units as VEIL for messages, exactly: `1.5 VEIL`."""
    whole, frac = divmod(amount, TOKEN)
    text = f"{whole}.{frac:018d}".rstrip("0").rstrip(".")
    return f"{text} VEIL"


def parse_amount(text: str) -> int:
    """`100VEIL`, `0.5 VEIL` (whole tokens) or a plain integer of base units (10**18 = 1 VEIL).

    Raises `ValueError` for anything else, and for amounts that are not positive.
    """
    from decimal import Decimal, InvalidOperation

    raw = text.strip().replace("_", "")
    try:
        if raw.upper().endswith("VEIL"):
            value = Decimal(raw[:-4].strip()) * TOKEN
            if value != value.to_integral_value():
                raise InvalidOperation
            amount = int(value)
        else:
            amount = int(raw)
    except (InvalidOperation, ValueError):
        raise ValueError(
            f"{text!r} is not an amount: give base units (1000000000000000000) or VEIL (1VEIL)"
        ) from None
    if amount <= 0:
        raise ValueError("the amount must be positive")
    return amount


def expected_value(face_value: int, win_prob: int) -> int:
    """What one ticket is worth on average, in token base units (rounded down)."""
    return face_value * win_prob >> 256


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    if not isinstance(text, str) or len(text) > MAX_HEADER_CHARS:
        raise InvalidTicket(f"{what}: missing or longer than {MAX_HEADER_CHARS} characters")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidTicket(f"{what}: not base64url") from None


def _object(data: bytes | str, fields: tuple[str, ...], what: str) -> dict[str, Any]:
    try:
        obj = boundedjson.loads(data, max_bytes=MAX_HEADER_CHARS * 2, what=what)
    except WireError:
        raise InvalidTicket(f"{what}: not JSON, too large or nested too deep") from None
    if not isinstance(obj, dict):
        raise InvalidTicket(f"{what}: not a JSON object")
    missing = [f for f in fields if f not in obj]
    extra = sorted(set(obj) - set(fields))
    problems = [f"missing {', '.join(missing)}"] if missing else []
    problems += [f"unknown {', '.join(extra)}"] if extra else []
    if problems:
        raise InvalidTicket(f"{what}: " + "; ".join(problems))
    return obj


def _uint(obj: dict[str, Any], key: str, what: str) -> int:
    value = obj[key]
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 78:
        value = int(value)
    if type(value) is not int or not 0 <= value < 2**256:
        raise InvalidTicket(f"{what}.{key}: not a uint256 (decimal string or integer)")
    return value


def _address(obj: dict[str, Any], key: str, what: str) -> str:
    value = obj[key]
    if not isinstance(value, str) or not is_address(value):
        raise InvalidTicket(f"{what}.{key}: not an address")
    return to_checksum_address(value)


def _hex(obj: dict[str, Any], key: str, what: str, length: int) -> bytes:
    value = obj[key]
    try:
        if not isinstance(value, str) or not value.startswith("0x"):
            raise ValueError
        raw = bytes.fromhex(value[2:])
    except ValueError:
        raise InvalidTicket(f"{what}.{key}: not 0x-prefixed hex") from None
    if len(raw) != length:
        raise InvalidTicket(f"{what}.{key}: must be {length} bytes")
    return raw


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class TicketParams:
    """A node's payment offer: whom to pay, how much if a ticket wins, at what odds."""

    recipient: str  # the node's operator address (its on-chain identity)
    face_value: int  # paid by the broker when a ticket wins
    win_prob: int  # of 2**256
    recipient_rand_hash: bytes  # commitment to the node's current secret random value
    expires_at: int  # unix time after which the node stops accepting this rand hash
    chain_id: int
    broker: str  # TicketBroker address: with chain_id, the EIP-712 domain

    def __post_init__(self) -> None:
        if not is_address(self.recipient) or not is_address(self.broker):
            raise InvalidTicket("ticket params: recipient and broker must be addresses")
        object.__setattr__(self, "recipient", to_checksum_address(self.recipient))
        object.__setattr__(self, "broker", to_checksum_address(self.broker))
        if len(self.recipient_rand_hash) != 32:
            raise InvalidTicket("ticket params: recipient_rand_hash must be 32 bytes")

    @property
    def domain(self) -> TicketDomain:
        return TicketDomain(self.chain_id, self.broker)

    @property
    def expected_value(self) -> int:
        return expected_value(self.face_value, self.win_prob)

    def to_json(self) -> dict[str, Any]:
        return {
            "recipient": self.recipient,
            "face_value": str(self.face_value),
            "win_prob": str(self.win_prob),
            "recipient_rand_hash": "0x" + self.recipient_rand_hash.hex(),
            "expires_at": self.expires_at,
            "chain_id": self.chain_id,
            "broker": self.broker,
        }

    def encode(self) -> bytes:
        return _dump(self.to_json())

    @classmethod
    def parse(cls, data: bytes | str) -> TicketParams:
        """From the JSON document served at `TICKET_PARAMS_PATH`."""
        if len(data) > MAX_HEADER_CHARS:
            raise InvalidTicket("ticket params: too large")
        what = "ticket params"
        obj = _object(data, _PARAM_FIELDS, what)
        for key in ("expires_at", "chain_id"):
            if type(obj[key]) is not int or not 0 <= obj[key] < 2**63:
                raise InvalidTicket(f"{what}.{key}: not an integer")
        return cls(
            recipient=_address(obj, "recipient", what),
            face_value=_uint(obj, "face_value", what),
            win_prob=_uint(obj, "win_prob", what),
            recipient_rand_hash=_hex(obj, "recipient_rand_hash", what, 32),
            expires_at=obj["expires_at"],
            chain_id=obj["chain_id"],
            broker=_address(obj, "broker", what),
        )

    def header_value(self) -> str:
        return _b64(self.encode())

    @classmethod
    def from_header(cls, value: str) -> TicketParams:
        return cls.parse(_unb64(value, "ticket params header"))

    def ticket(self, sender: str, sender_nonce: int, expiry: int) -> Ticket:
        """The ticket a sender writes against this offer."""
        return Ticket(
            recipient=self.recipient,
            sender=sender,
            face_value=self.face_value,
            win_prob=self.win_prob,
            sender_nonce=sender_nonce,
            recipient_rand_hash=self.recipient_rand_hash,
            expiry=expiry,
        )


@dataclass(frozen=True)
class PaymentTicket:
    """A signed ticket as it travels inside an encrypted request."""

    ticket: Ticket
    signature: bytes  # 65 bytes r || s || v, by ticket.sender

    @classmethod
    def sign(cls, ticket: Ticket, domain: TicketDomain, private_key: bytes | str) -> PaymentTicket:
        return cls(ticket, sign_ticket(ticket, domain, private_key))

    def ticket_id(self, domain: TicketDomain) -> bytes:
        """The EIP-712 hash: the broker's replay key, and the receipt's `ticketId`."""
        return ticket_hash(self.ticket, domain)

    def check_signature_form(self) -> None:
        """Raise `InvalidTicket` unless the signature is low-s with v 27 or 28.

        The broker refuses any other form (a malleable signature's twin would be a second
        draw at the lottery), so a ticket signed otherwise could never be redeemed.
        """
        sig = self.signature
        if sig[64] not in (27, 28) or int.from_bytes(sig[32:64], "big") > _SECP256K1N_HALF:
            raise InvalidTicket("the ticket signature must be low-s with v 27 or 28")

    def signer(self, domain: TicketDomain) -> str:
        """The address the signature recovers to (`InvalidTicket` when it recovers to none)."""
        try:
            return recover_ticket_signer(self.ticket, domain, self.signature)
        except Exception:  # eth_keys raises several types for a malformed signature
            raise InvalidTicket("ticket signature does not recover to a key") from None

    def header_value(self) -> str:
        t = self.ticket
        obj = {
            "ticket": {
                "recipient": t.recipient,
                "sender": t.sender,
                "face_value": str(t.face_value),
                "win_prob": str(t.win_prob),
                "sender_nonce": str(t.sender_nonce),
                "recipient_rand_hash": "0x" + t.recipient_rand_hash.hex(),
                "expiry": t.expiry,
            },
            "signature": "0x" + self.signature.hex(),
        }
        return _b64(_dump(obj))

    @classmethod
    def from_header(cls, value: str) -> PaymentTicket:
        what = "ticket"
        outer = _object(_unb64(value, "ticket header"), ("ticket", "signature"), what)
        if not isinstance(outer["ticket"], dict):
            raise InvalidTicket("ticket.ticket: not an object")
        obj = _object(_dump(outer["ticket"]), _TICKET_FIELDS, what)
        if type(obj["expiry"]) is not int or not 0 <= obj["expiry"] < 2**63:
            raise InvalidTicket("ticket.expiry: not an integer")
        ticket = Ticket(
            recipient=_address(obj, "recipient", what),
            sender=_address(obj, "sender", what),
            face_value=_uint(obj, "face_value", what),
            win_prob=_uint(obj, "win_prob", what),
            sender_nonce=_uint(obj, "sender_nonce", what),
            recipient_rand_hash=_hex(obj, "recipient_rand_hash", what, 32),
            expiry=obj["expiry"],
        )
        return cls(ticket, _hex(outer, "signature", what, 65))
