"""Probabilistic payment tickets: the one place that defines their EIP-712 form.

The TicketBroker contract hashes tickets exactly as `ticket_hash` does; `veil.identity`
and the node/client reuse these helpers rather than re-deriving the encoding. Signing
goes through `eth_account` (`encode_typed_data`), never hand-rolled crypto.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_utils import keccak, to_checksum_address

from veil.chain.errors import InvalidTicket

__all__ = [
    "DOMAIN_NAME",
    "DOMAIN_VERSION",
    "MAX_WIN_PROB",
    "TICKET_TYPES",
    "Ticket",
    "TicketDomain",
    "is_winning",
    "new_recipient_rand",
    "recipient_rand_hash",
    "recover_ticket_signer",
    "sign_ticket",
    "ticket_hash",
    "ticket_typed_data",
    "win_prob_for",
]

DOMAIN_NAME = "Veil TicketBroker"
DOMAIN_VERSION = "1"
MAX_WIN_PROB = 2**256 - 1  # a ticket with this win probability (practically) always wins

TICKET_TYPES: dict[str, list[dict[str, str]]] = {
    "Ticket": [
        {"name": "recipient", "type": "address"},
        {"name": "sender", "type": "address"},
        {"name": "faceValue", "type": "uint256"},
        {"name": "winProb", "type": "uint256"},
        {"name": "senderNonce", "type": "uint256"},
        {"name": "recipientRandHash", "type": "bytes32"},
        {"name": "expiry", "type": "uint256"},
    ]
}


@dataclass(frozen=True)
class TicketDomain:
    """The EIP-712 domain: binds a signature to one chain and one TicketBroker."""

    chain_id: int
    verifying_contract: str  # TicketBroker address
    name: str = DOMAIN_NAME
    version: str = DOMAIN_VERSION

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "chainId": self.chain_id,
            "verifyingContract": to_checksum_address(self.verifying_contract),
        }


@dataclass(frozen=True)
class Ticket:
    """One payment ticket, as the sender signs it and the broker checks it."""

    recipient: str  # node operator address that may redeem it
    sender: str  # address whose deposit/reserve pays it
    face_value: int  # token base units paid if the ticket wins
    win_prob: int  # wins when keccak(signature ++ recipientRand) < win_prob (of 2**256)
    sender_nonce: int  # distinct per ticket under one recipient_rand_hash
    recipient_rand_hash: bytes  # keccak256 of the recipient's secret 32-byte random value
    expiry: int  # unix time after which the ticket cannot be redeemed

    def __post_init__(self) -> None:
        object.__setattr__(self, "recipient", to_checksum_address(self.recipient))
        object.__setattr__(self, "sender", to_checksum_address(self.sender))
        if len(self.recipient_rand_hash) != 32:
            raise InvalidTicket("recipient_rand_hash must be 32 bytes")
        for name in ("face_value", "win_prob", "sender_nonce", "expiry"):
            value = getattr(self, name)
            if not 0 <= value < 2**256:
                raise InvalidTicket(f"{name} must fit in uint256")

    def as_message(self) -> dict[str, Any]:
        """The EIP-712 message (field names as in the contract)."""
        return {
            "recipient": self.recipient,
            "sender": self.sender,
            "faceValue": self.face_value,
            "winProb": self.win_prob,
            "senderNonce": self.sender_nonce,
            "recipientRandHash": self.recipient_rand_hash,
            "expiry": self.expiry,
        }

    def as_abi_tuple(self) -> tuple[Any, ...]:
        """The `Ticket` struct argument of TicketBroker functions."""
        return (
            self.recipient,
            self.sender,
            self.face_value,
            self.win_prob,
            self.sender_nonce,
            self.recipient_rand_hash,
            self.expiry,
        )


def ticket_typed_data(ticket: Ticket, domain: TicketDomain) -> dict[str, Any]:
    """The full EIP-712 typed-data document (as wallets and `eth_signTypedData_v4` take it)."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            **TICKET_TYPES,
        },
        "primaryType": "Ticket",
        "domain": domain.as_dict(),
        "message": ticket.as_message(),
    }


def _signable(ticket: Ticket, domain: TicketDomain) -> SignableMessage:
    return encode_typed_data(full_message=ticket_typed_data(ticket, domain))


def ticket_hash(ticket: Ticket, domain: TicketDomain) -> bytes:
    """The EIP-712 digest: what is signed, and the broker's replay key for the ticket."""
    msg = _signable(ticket, domain)
    return keccak(b"\x19" + msg.version + msg.header + msg.body)


def sign_ticket(ticket: Ticket, domain: TicketDomain, private_key: bytes | str) -> bytes:
    """Sign as the ticket's sender; returns the 65-byte r ++ s ++ v signature (v in 27/28)."""
    if Account.from_key(private_key).address != ticket.sender:
        raise InvalidTicket("private key does not belong to the ticket's sender")
    return bytes(Account.sign_message(_signable(ticket, domain), private_key).signature)


def recover_ticket_signer(ticket: Ticket, domain: TicketDomain, signature: bytes) -> str:
    """The address that signed this ticket (checksummed)."""
    return Account.recover_message(_signable(ticket, domain), signature=signature)


def recipient_rand_hash(recipient_rand: int) -> bytes:
    """keccak256 of the 32-byte big-endian random value, as the broker checks it."""
    return keccak(recipient_rand.to_bytes(32, "big"))


def new_recipient_rand() -> int:
    """A fresh secret random value for a recipient to commit to."""
    return secrets.randbits(256)


def is_winning(signature: bytes, recipient_rand: int, win_prob: int) -> bool:
    """The broker's winning rule: uint256(keccak256(signature ++ recipientRand)) < winProb."""
    draw = int.from_bytes(keccak(bytes(signature) + recipient_rand.to_bytes(32, "big")), "big")
    return draw < win_prob


def win_prob_for(probability: float) -> int:
    """The `win_prob` threshold for a probability in [0, 1] (1 maps to MAX_WIN_PROB)."""
    if not 0.0 <= probability <= 1.0:
        raise InvalidTicket("probability must be within [0, 1]")
    if probability == 1.0:
        return MAX_WIN_PROB
    return min(int(probability * 2**256), MAX_WIN_PROB)
