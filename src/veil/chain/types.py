"""Plain value types the chain client returns: what the node, client and validator read."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "ChallengeInfo",
    "ChallengeStatus",
    "ModelEntry",
    "NodeInfo",
    "RedeemedTicket",
    "ReleaseAction",
    "ReleaseEntry",
    "SenderFunds",
    "TokenKeys",
    "TxReceipt",
    "ValidatorInfo",
]


@dataclass(frozen=True)
class TxReceipt:
    """A mined, successful transaction."""

    tx_hash: str  # 0x-prefixed
    block_number: int
    gas_used: int


@dataclass(frozen=True)
class ModelEntry:
    """A model a node serves."""

    model_id: str  # human id, e.g. "SmolLM2-135M-Instruct" (at most 64 bytes)
    weights_hash: bytes  # 32-byte hash of the weights file

    def as_abi_tuple(self) -> tuple[str, bytes]:
        return (self.model_id, self.weights_hash)


@dataclass(frozen=True)
class NodeInfo:
    """A node's registry record."""

    operator: str  # checksummed address; the node's on-chain identity and ticket recipient
    endpoint: str  # where its OHTTP gateway listens
    ohttp_keys_hash: bytes  # 32-byte hash of its OHTTP key configs
    attestation_digest: bytes  # 32-byte digest of its attestation evidence
    stake: int  # bonded stake, token base units
    unbonding: int  # stake leaving, still slashable
    unbonding_ends_at: int  # unix time the unbonding stake becomes withdrawable (0: none)
    registered: bool
    active: bool  # registered with at least the minimum bonded stake
    models: tuple[ModelEntry, ...]


@dataclass(frozen=True)
class TokenKeys:
    """A node's committed anonymous-credit key ids (sha256 of the RFC 9578 public key)."""

    current: bytes  # 32; the key it issues under now (zero: none committed)
    previous: bytes  # 32; the key before, whose tokens it may still accept in a grace window
    committed_at: int  # unix time of the last commit (0: never)

    def names(self, key_id: bytes) -> bool:
        """Whether `key_id` is the node's current committed key (what a buyer may buy under)."""
        return self.committed_at != 0 and key_id == self.current


@dataclass(frozen=True)
class SenderFunds:
    """A ticket sender's funds at the broker."""

    deposit: int  # pays winning tickets first
    reserve: int  # pays when the deposit runs out
    withdraw_at: int  # unix time withdrawal opens (0: not unlocking)


@dataclass(frozen=True)
class RedeemedTicket:
    """A winning ticket paid by the broker (from its `WinningTicketRedeemed` event)."""

    sender: str
    recipient: str
    ticket_hash: bytes
    face_value: int
    block_number: int
    tx_hash: str


@dataclass(frozen=True)
class ValidatorInfo:
    stake: int
    since_block: int  # block it registered in; votes only on later challenges
    unbonding_ends_at: int  # 0 while voting


class ChallengeStatus(IntEnum):
    NONE = 0
    OPEN = 1
    SLASHED = 2
    REJECTED = 3


@dataclass(frozen=True)
class ChallengeInfo:
    challenge_id: int
    node: str
    challenger: str
    evidence_hash: bytes
    bond: int
    open_block: int
    deadline: int  # unix time voting closes
    stake_snapshot: int  # validator stake when opened: the quorum's denominator
    votes_for: int
    votes_against: int
    status: ChallengeStatus
    slashed: int  # amount slashed (0 unless SLASHED)


class ReleaseAction(IntEnum):
    APPROVE = 1
    REVOKE = 2


@dataclass(frozen=True)
class ReleaseEntry:
    """One entry of the append-only release log."""

    index: int
    action: ReleaseAction
    model_hash: bytes  # 32 bytes
    measurement: bytes  # 1 to 64 bytes (TDX: the 32-byte release measurement)
    ref: int | None  # approve: the entry it superseded; revoke: the entry it revoked
    note: str
    published_at: int
    in_force: bool  # for approvals: not since superseded or revoked
