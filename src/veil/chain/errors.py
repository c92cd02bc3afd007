"""Errors of the chain room, and the mapping from contract revert reasons to them.

    VeilError
    └── ChainError
        ├── ChainUnavailable        the RPC endpoint cannot be reached or misbehaves
        ├── DevnetError             the local anvil devnet cannot be found or started
        ├── DeploymentError         deployment file missing/invalid, or the chain disagrees
        ├── TransactionFailed       a transaction failed without a contract reason
        ├── InvalidTicket           a ticket built locally is malformed (also a ValueError)
        └── ContractRevert          a contract refused the call; `.reason` is its message
            ├── Unauthorized        caller lacks the role (owner, minter, governance, slasher)
            ├── InvalidArgument     zero amount, zero hash, empty endpoint, ...
            ├── InsufficientFunds   balance, allowance, stake or earnings too small
            ├── AlreadyExists       already registered / approved / a validator
            ├── NotFound            no such node, validator, challenge or release entry
            ├── WrongState          the action does not fit the current state
            ├── TooEarly            a delay (unbonding, unlock, voting, token key) has not passed
            ├── TicketRejected      the broker refused a ticket
            │   ├── InvalidTicketSignature, TicketReplayed, TicketExpired,
            │   ├── WrongTicketRecipient, TicketNotWinning, RecipientRandMismatch,
            │   └── SenderUnderfunded
            └── ChallengeRejected   the slasher refused a challenge or vote
                ├── AlreadyVoted, VotingClosed, NotEligibleToVote,
                └── EvidenceAlreadyUsed, NoStakeToChallenge

Callers catch the family they can act on: a node catches `TicketRejected` to drop a
ticket, a CLI prints any `ChainError`.
"""

from __future__ import annotations

from veil.errors import VeilError

__all__ = [
    "REVERT_REASONS",
    "AlreadyExists",
    "AlreadyVoted",
    "ChainError",
    "ChainUnavailable",
    "ChallengeRejected",
    "ContractRevert",
    "DeploymentError",
    "DevnetError",
    "EvidenceAlreadyUsed",
    "InsufficientFunds",
    "InvalidArgument",
    "InvalidTicket",
    "InvalidTicketSignature",
    "NoStakeToChallenge",
    "NotEligibleToVote",
    "NotFound",
    "RecipientRandMismatch",
    "SenderUnderfunded",
    "TicketExpired",
    "TicketNotWinning",
    "TicketRejected",
    "TicketReplayed",
    "TooEarly",
    "TransactionFailed",
    "Unauthorized",
    "VotingClosed",
    "WrongState",
    "WrongTicketRecipient",
    "revert_error",
]


class ChainError(VeilError):
    """Anything that went wrong talking to, deploying to or acting on the chain."""


class ChainUnavailable(ChainError):
    """The JSON-RPC endpoint cannot be reached or answered nonsense."""


class DevnetError(ChainError):
    """The local anvil devnet could not be found, started or stopped."""


class DeploymentError(ChainError):
    """A deployment file is missing or invalid, or does not match the chain."""


class TransactionFailed(ChainError):
    """A transaction failed (or reverted) without a contract revert reason."""


class InvalidTicket(ChainError, ValueError):
    """A ticket built locally is malformed (wrong sizes, wrong signer key)."""


class ContractRevert(ChainError):
    """A contract refused the call. `reason` is the exact revert string."""

    def __init__(self, reason: str, function: str | None = None) -> None:
        self.reason = reason
        self.function = function
        where = f" in {function}" if function else ""
        super().__init__(f"contract reverted{where}: {reason}")


class Unauthorized(ContractRevert):
    """The caller lacks the role the function needs."""


class InvalidArgument(ContractRevert):
    """An argument is zero, empty or out of range."""


class InsufficientFunds(ContractRevert):
    """A balance, allowance, stake or earnings balance is too small."""


class AlreadyExists(ContractRevert):
    """The thing being created already exists."""


class NotFound(ContractRevert):
    """The node, validator, challenge or release entry does not exist."""


class WrongState(ContractRevert):
    """The action does not fit the current state (e.g. already unlocking)."""


class TooEarly(ContractRevert):
    """A delay has not passed yet (unbonding, unlock, voting window, pending challenge)."""


class TicketRejected(ContractRevert):
    """The TicketBroker refused a ticket."""


class InvalidTicketSignature(TicketRejected):
    """The signature is malformed or not the sender's."""


class TicketReplayed(TicketRejected):
    """The ticket was already redeemed."""


class TicketExpired(TicketRejected):
    """The ticket's expiry has passed."""


class WrongTicketRecipient(TicketRejected):
    """Only the ticket's recipient may redeem it."""


class TicketNotWinning(TicketRejected):
    """The ticket did not win the lottery."""


class RecipientRandMismatch(TicketRejected):
    """The revealed random value does not match the ticket's commitment."""


class SenderUnderfunded(TicketRejected):
    """The sender's deposit plus reserve cannot pay the face value."""


class ChallengeRejected(ContractRevert):
    """The Slasher refused a challenge or a vote."""


class AlreadyVoted(ChallengeRejected):
    """This validator already voted on the challenge."""


class VotingClosed(ChallengeRejected):
    """The challenge's voting window has closed."""


class NotEligibleToVote(ChallengeRejected):
    """The caller may not vote on this challenge."""


class EvidenceAlreadyUsed(ChallengeRejected):
    """A challenge with this evidence against this node already exists."""


class NoStakeToChallenge(ChallengeRejected):
    """Only an address with stake (validator or node) may open a challenge."""


# Every revert string in contracts/*.vy, mapped to the exception it raises.
# tests/chain/test_errors.py fails when a contract gains a reason missing here.
REVERT_REASONS: dict[str, type[ContractRevert]] = {
    # roles
    "not owner": Unauthorized,
    "not minter": Unauthorized,
    "not governance": Unauthorized,
    "only slasher": Unauthorized,
    # arguments
    "zero amount": InvalidArgument,
    "zero address": InvalidArgument,
    "transfer to zero address": InvalidArgument,
    "zero hash": InvalidArgument,
    "empty measurement": InvalidArgument,
    "empty endpoint": InvalidArgument,
    "endpoint must be http(s)://host[:port]": InvalidArgument,
    "no models": InvalidArgument,
    "empty model id": InvalidArgument,
    "empty evidence": InvalidArgument,
    "zero face value": InvalidArgument,
    "zero minimum stake": InvalidArgument,
    "zero voting window": InvalidArgument,
    "unbonding shorter than window": InvalidArgument,
    "fraction above 100%": InvalidArgument,
    "reward exceeds slash": InvalidArgument,
    "slash exceeds slashable": InvalidArgument,
    "cannot challenge self": InvalidArgument,
    "zero key id": InvalidArgument,
    # funds
    "insufficient balance": InsufficientFunds,
    "insufficient allowance": InsufficientFunds,
    "insufficient stake": InsufficientFunds,
    "stake below minimum": InsufficientFunds,
    "no funds": InsufficientFunds,
    "no earnings": InsufficientFunds,
    "nothing unbonding": InsufficientFunds,
    "bond too small": InsufficientFunds,
    "node has no slashable stake": InsufficientFunds,
    "token transfer failed": InsufficientFunds,
    # existence
    "already registered": AlreadyExists,
    "already a validator": AlreadyExists,
    "already approved": AlreadyExists,
    "earnings already open": AlreadyExists,
    "slasher already set": AlreadyExists,
    "key already committed": AlreadyExists,
    "not registered": NotFound,
    "not a validator": NotFound,
    "no such challenge": NotFound,
    "no such entry": NotFound,
    "no validators": NotFound,
    # state
    "already unlocking": WrongState,
    "not unlocking": WrongState,
    "already unbonding": WrongState,
    "not unbonding": WrongState,
    "challenge not open": WrongState,
    "entry not in force": WrongState,
    # delays
    "unbonding period not over": TooEarly,
    "unlock period not over": TooEarly,
    "challenge pending": TooEarly,
    "voting still open": TooEarly,
    "token key changed too recently": TooEarly,
    # tickets
    "invalid signature": InvalidTicketSignature,
    "ticket already redeemed": TicketReplayed,
    "ticket expired": TicketExpired,
    "not ticket recipient": WrongTicketRecipient,
    "ticket did not win": TicketNotWinning,
    "recipientRand mismatch": RecipientRandMismatch,
    "sender underfunded": SenderUnderfunded,
    # challenges
    "already voted": AlreadyVoted,
    "voting closed": VotingClosed,
    "validator joined after challenge": NotEligibleToVote,
    "cannot vote on own challenge": NotEligibleToVote,
    "evidence already used": EvidenceAlreadyUsed,
    "challenger has no stake": NoStakeToChallenge,
}


def revert_error(reason: str, function: str | None = None) -> ContractRevert:
    """The typed exception for a revert reason (plain `ContractRevert` if unknown)."""
    cls = REVERT_REASONS.get(reason, ContractRevert)
    return cls(reason, function)
