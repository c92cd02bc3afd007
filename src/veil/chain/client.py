"""`ChainClient`: typed access to Veil's contracts for nodes, clients and validators.

One client wraps one account (or none, for read-only use) on one deployment. Writes
return a `TxReceipt` (or the id they create; the receipt is then in `last_receipt`).
Every failure is a `veil.chain.errors.ChainError`; contract refusals are typed by reason.
Token approvals for stake, deposits and bonds are made automatically when needed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from veil.chain.deployment import Deployment
from veil.chain.errors import ChainError, DeploymentError, TransactionFailed
from veil.chain.tickets import Ticket, TicketDomain, sign_ticket, ticket_hash
from veil.chain.types import (
    ChallengeInfo,
    ChallengeStatus,
    ModelEntry,
    NodeInfo,
    RedeemedTicket,
    ReleaseAction,
    ReleaseEntry,
    SenderFunds,
    TokenKeys,
    TxReceipt,
    ValidatorInfo,
)

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from eth_typing import ChecksumAddress
    from web3 import Web3
    from web3.contract import Contract

    from veil.chain.registry import RegistryMirror

__all__ = ["ChainClient"]

_NO_REF = 2**256 - 1
_PAGE = 64


class ChainClient:
    """Typed operations on a Veil deployment, signed by `private_key` when given."""

    def __init__(
        self,
        deployment: Deployment,
        private_key: str | bytes | None = None,
        *,
        rpc_url: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        from eth_account import Account

        from veil.chain.transact import connect

        self.deployment = deployment
        self.w3: Web3 = connect(rpc_url or deployment.rpc_url, timeout)
        chain_id = self._read("eth_chainId", lambda: self.w3.eth.chain_id)
        if chain_id != deployment.chain_id:
            raise DeploymentError(
                f"the RPC endpoint serves chain {chain_id}, the deployment is for "
                f"chain {deployment.chain_id}"
            )
        self.account: LocalAccount | None = (
            Account.from_key(private_key) if private_key is not None else None
        )
        self.last_receipt: TxReceipt | None = None  # of this client's latest transaction
        self._send_lock = threading.RLock()
        self.token = self._contract("VeilToken")
        self.registry = self._contract("NodeRegistry")
        self.broker = self._contract("TicketBroker")
        self.slasher = self._contract("Slasher")
        self.release_log = self._contract("ReleaseLog")
        self._mirror: RegistryMirror | None = None
        self._min_stake: int | None = None

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str] | None = None,
        private_key: str | bytes | None = None,
        *,
        rpc_url: str | None = None,
    ) -> ChainClient:
        """Load a deployment file (default: `veil.chain.default_deployment_path()`)."""
        return cls(Deployment.load(path), private_key, rpc_url=rpc_url)

    # ------------------------------------------------------------------ plumbing

    def _contract(self, name: str) -> Contract:
        return self.w3.eth.contract(
            address=cast("ChecksumAddress", self.deployment.addresses[name]),
            abi=self.deployment.abis[name],
        )

    @property
    def address(self) -> str:
        """This client's account address."""
        if self.account is None:
            raise ChainError("this ChainClient has no private key: it can only read")
        return str(self.account.address)

    def _read(self, function: str, fn: Any) -> Any:
        from veil.chain.transact import map_web3_error

        try:
            return fn()
        except Exception as exc:
            raise map_web3_error(exc, function) from exc

    def _call(self, contract: Contract, function: str, *args: Any) -> Any:
        return self._read(function, lambda: contract.functions[function](*args).call())

    def _send(self, contract: Contract, function: str, *args: Any) -> tuple[TxReceipt, Any]:
        from veil.chain.transact import send_transaction

        if self.account is None:
            raise ChainError(f"{function} needs a private key: this ChainClient can only read")
        with self._send_lock:  # one nonce sequence per account: no two sends interleave
            receipt, raw = send_transaction(
                self.w3, self.account, contract.functions[function](*args), function=function
            )
            self.last_receipt = receipt
        return receipt, raw

    def _transact(self, contract: Contract, function: str, *args: Any) -> TxReceipt:
        return self._send(contract, function, *args)[0]

    def _ensure_allowance(self, spender: Contract, amount: int) -> None:
        allowed = self._call(self.token, "allowance", self.address, spender.address)
        if allowed < amount:
            self._transact(self.token, "approve", spender.address, amount)

    def _event_arg(self, contract: Contract, raw: Any, event: str, arg: str) -> Any:
        from web3.logs import DISCARD  # other contracts' logs (token transfers) are expected

        logs = contract.events[event]().process_receipt(raw, errors=DISCARD)
        if not logs:
            raise TransactionFailed(f"expected a {event} event in tx {raw['transactionHash']}")
        return logs[0]["args"][arg]

    # ------------------------------------------------------------------ chain

    def chain_time(self) -> int:
        """Timestamp of the latest block (what expiries and delays compare against)."""
        return int(self._read("latest block", lambda: self.w3.eth.get_block("latest"))["timestamp"])

    def block_number(self) -> int:
        return int(self._read("block number", lambda: self.w3.eth.block_number))

    # ------------------------------------------------------------------ token

    def token_balance(self, owner: str | None = None) -> int:
        return int(self._call(self.token, "balanceOf", owner or self.address))

    def token_total_supply(self) -> int:
        return int(self._call(self.token, "totalSupply"))

    def token_total_burned(self) -> int:
        return int(self._call(self.token, "totalBurned"))

    def transfer(self, receiver: str, amount: int) -> TxReceipt:
        return self._transact(self.token, "transfer", receiver, amount)

    def approve(self, spender: str, amount: int) -> TxReceipt:
        return self._transact(self.token, "approve", spender, amount)

    def mint(self, receiver: str, amount: int) -> TxReceipt:
        """Only the token's minter (the deployer on a devnet)."""
        return self._transact(self.token, "mint", receiver, amount)

    # ------------------------------------------------------------------ node registry

    def register_node(
        self,
        endpoint: str,
        ohttp_keys_hash: bytes,
        attestation_digest: bytes,
        models: Sequence[ModelEntry],
        stake: int,
    ) -> TxReceipt:
        """Register this account as a node operator, locking `stake`."""
        self._ensure_allowance(self.registry, stake)
        return self._transact(
            self.registry,
            "register",
            endpoint,
            ohttp_keys_hash,
            attestation_digest,
            [m.as_abi_tuple() for m in models],
            stake,
        )

    def update_endpoint(self, endpoint: str) -> TxReceipt:
        return self._transact(self.registry, "updateEndpoint", endpoint)

    def update_ohttp_keys(self, ohttp_keys_hash: bytes) -> TxReceipt:
        return self._transact(self.registry, "updateOhttpKeys", ohttp_keys_hash)

    def update_attestation(self, attestation_digest: bytes) -> TxReceipt:
        return self._transact(self.registry, "updateAttestation", attestation_digest)

    def update_models(self, models: Sequence[ModelEntry]) -> TxReceipt:
        return self._transact(self.registry, "updateModels", [m.as_abi_tuple() for m in models])

    def commit_token_key(self, key_id: bytes) -> TxReceipt:
        """Commit the token key this node issues under now (at most once an hour)."""
        return self._transact(self.registry, "commitTokenKey", key_id)

    def token_keys(self, operator: str) -> TokenKeys:
        current, previous, committed_at = self._call(self.registry, "tokenKeysOf", operator)
        return TokenKeys(bytes(current), bytes(previous), int(committed_at))

    def add_stake(self, amount: int) -> TxReceipt:
        self._ensure_allowance(self.registry, amount)
        return self._transact(self.registry, "addStake", amount)

    def unbond(self, amount: int) -> TxReceipt:
        """Start unbonding `amount` (all of it to leave); stays slashable until withdrawn."""
        return self._transact(self.registry, "unbond", amount)

    def withdraw_stake(self) -> TxReceipt:
        return self._transact(self.registry, "withdraw")

    def get_node(self, operator: str) -> NodeInfo:
        from veil.chain.registry import node_info

        return node_info(self._call(self.registry, "getNode", operator))

    def iter_active_operators(self) -> Iterator[tuple[str, int]]:
        """(operator, bonded stake) of every active node, in registration order."""
        count = int(self._call(self.registry, "operatorCount"))
        for start in range(0, count, _PAGE):
            for operator, stake in self._call(self.registry, "activeNodes", start, _PAGE):
                yield str(operator), int(stake)

    def active_nodes(self) -> list[NodeInfo]:
        """Full records of every active node (what client discovery and the relay start
        from), kept current from the registry's events (`veil.chain.registry`)."""
        if self._mirror is None:
            from veil.chain.registry import RegistryMirror

            self._mirror = RegistryMirror(self)
        return self._mirror.active_nodes()

    def min_stake(self) -> int:
        """The registry's minimum stake (immutable: read once)."""
        if self._min_stake is None:
            self._min_stake = int(self._call(self.registry, "minStake"))
        return self._min_stake

    # ------------------------------------------------------------------ ticket broker

    def ticket_domain(self) -> TicketDomain:
        return TicketDomain(self.deployment.chain_id, self.broker.address)

    def sign_ticket(self, ticket: Ticket) -> bytes:
        """Sign `ticket` as its sender with this client's key."""
        if self.account is None:
            raise ChainError("signing a ticket needs a private key")
        return sign_ticket(ticket, self.ticket_domain(), self.account.key)

    def ticket_hash(self, ticket: Ticket) -> bytes:
        return ticket_hash(ticket, self.ticket_domain())

    def fund_deposit(self, amount: int) -> TxReceipt:
        self._ensure_allowance(self.broker, amount)
        return self._transact(self.broker, "fundDeposit", amount)

    def fund_reserve(self, amount: int) -> TxReceipt:
        self._ensure_allowance(self.broker, amount)
        return self._transact(self.broker, "fundReserve", amount)

    def unlock_funds(self) -> TxReceipt:
        """Start the unlock delay before `withdraw_funds`."""
        return self._transact(self.broker, "unlock")

    def cancel_unlock(self) -> TxReceipt:
        return self._transact(self.broker, "cancelUnlock")

    def withdraw_funds(self) -> TxReceipt:
        return self._transact(self.broker, "withdraw")

    def sender_funds(self, sender: str | None = None) -> SenderFunds:
        d, r, w = self._call(self.broker, "getSender", sender or self.address)
        return SenderFunds(deposit=d, reserve=r, withdraw_at=w)

    def redeem_ticket(self, ticket: Ticket, signature: bytes, recipient_rand: int) -> TxReceipt:
        """Redeem a winning ticket addressed to this account; credits `earnings`."""
        return self._transact(
            self.broker, "redeemWinningTicket", ticket.as_abi_tuple(), signature, recipient_rand
        )

    def is_ticket_redeemed(self, ticket: Ticket) -> bool:
        return self.is_ticket_id_redeemed(self.ticket_hash(ticket))

    def is_ticket_id_redeemed(self, ticket_id: bytes) -> bool:
        """Whether the broker marks this ticket hash (its EIP-712 digest) used: one call."""
        return bool(self._call(self.broker, "usedTickets", ticket_id))

    def earnings(self, recipient: str | None = None) -> int:
        return int(self._call(self.broker, "earnings", recipient or self.address))

    def withdraw_earnings(self) -> TxReceipt:
        return self._transact(self.broker, "withdrawEarnings")

    def earnings_open(self, recipient: str | None = None) -> bool:
        """Whether the recipient's earnings slot exists (opened, or credited before)."""
        return int(self._call(self.broker, "earned", recipient or self.address)) > 0

    def open_earnings(self) -> TxReceipt:
        """Create this account's earnings slots now, so its first redemption is cheaper."""
        return self._transact(self.broker, "openEarnings")

    def redeemed_tickets(
        self,
        *,
        sender: str | None = None,
        recipient: str | None = None,
        from_block: int | None = None,
    ) -> list[RedeemedTicket]:
        """Winning tickets paid since deployment, or since `from_block` when later
        (optionally of one sender or recipient)."""
        filters: dict[str, Any] = {}
        if sender is not None:
            filters["sender"] = sender
        if recipient is not None:
            filters["recipient"] = recipient
        event = self.broker.events.WinningTicketRedeemed()
        logs = self._read(
            "WinningTicketRedeemed logs",
            lambda: event.get_logs(
                from_block=max(self.deployment.block_number, from_block or 0),
                argument_filters=filters or None,
            ),
        )
        return [
            RedeemedTicket(
                sender=str(e["args"]["sender"]),
                recipient=str(e["args"]["recipient"]),
                ticket_hash=bytes(e["args"]["ticketHash"]),
                face_value=int(e["args"]["faceValue"]),
                block_number=int(e["blockNumber"]),
                tx_hash="0x" + bytes(e["transactionHash"]).hex(),
            )
            for e in logs
        ]

    # ------------------------------------------------------------------ slasher

    def register_validator(self, stake: int) -> TxReceipt:
        self._ensure_allowance(self.slasher, stake)
        return self._transact(self.slasher, "registerValidator", stake)

    def unbond_validator(self) -> TxReceipt:
        return self._transact(self.slasher, "unbondValidator")

    def withdraw_validator(self) -> TxReceipt:
        return self._transact(self.slasher, "withdrawValidator")

    def get_validator(self, validator: str | None = None) -> ValidatorInfo:
        s, b, u = self._call(self.slasher, "getValidator", validator or self.address)
        return ValidatorInfo(stake=s, since_block=b, unbonding_ends_at=u)

    def validators(self) -> dict[str, ValidatorInfo]:
        """Every account that ever registered as a validator, with its record now (stake 0:
        withdrawn)."""
        event = self.slasher.events.ValidatorRegistered()
        logs = self._read(
            "ValidatorRegistered logs",
            lambda: event.get_logs(from_block=self.deployment.block_number),
        )
        seen = dict.fromkeys(str(e["args"]["validator"]) for e in logs)
        return {address: self.get_validator(address) for address in seen}

    def challenges(self) -> list[ChallengeInfo]:
        """Every challenge ever opened, oldest first."""
        return [self.get_challenge(i) for i in range(self.challenge_count())]

    def open_challenge(self, node: str, evidence_hash: bytes, bond: int) -> int:
        """Challenge `node` with the hash of the evidence; returns the challenge id."""
        self._ensure_allowance(self.slasher, bond)
        _receipt, raw = self._send(self.slasher, "openChallenge", node, evidence_hash, bond)
        return int(self._event_arg(self.slasher, raw, "ChallengeOpened", "challengeId"))

    def vote(self, challenge_id: int, support: bool) -> TxReceipt:
        """Vote to slash (`support=True`) or not."""
        return self._transact(self.slasher, "vote", challenge_id, support)

    def resolve_challenge(self, challenge_id: int) -> ChallengeStatus:
        """Settle a challenge; returns SLASHED or REJECTED."""
        self._transact(self.slasher, "resolve", challenge_id)
        return self.get_challenge(challenge_id).status

    def get_challenge(self, challenge_id: int) -> ChallengeInfo:
        r = self._call(self.slasher, "getChallenge", challenge_id)
        return ChallengeInfo(
            challenge_id=challenge_id,
            node=r[0],
            challenger=r[1],
            evidence_hash=bytes(r[2]),
            bond=r[3],
            open_block=r[4],
            deadline=r[5],
            stake_snapshot=r[6],
            votes_for=r[7],
            votes_against=r[8],
            status=ChallengeStatus(r[9]),
            slashed=r[10],
        )

    def challenge_count(self) -> int:
        return int(self._call(self.slasher, "challengeCount"))

    def has_voted(self, challenge_id: int, validator: str | None = None) -> bool:
        return bool(self._call(self.slasher, "hasVoted", challenge_id, validator or self.address))

    # ------------------------------------------------------------------ release log

    def publish_release(self, model_hash: bytes, measurement: bytes, note: str = "") -> int:
        """Approve a (model hash, measurement) pair (governance only); returns its index."""
        _receipt, raw = self._send(self.release_log, "publish", model_hash, measurement, note)
        return int(self._event_arg(self.release_log, raw, "ReleaseApproved", "index"))

    def supersede_release(
        self, old_index: int, model_hash: bytes, measurement: bytes, note: str = ""
    ) -> int:
        """Replace the approval at `old_index` by a new pair; returns the new index."""
        _receipt, raw = self._send(
            self.release_log, "supersede", old_index, model_hash, measurement, note
        )
        return int(self._event_arg(self.release_log, raw, "ReleaseApproved", "index"))

    def revoke_release(self, index: int, note: str = "") -> int:
        """Withdraw the approval at `index`; returns the revoking entry's index."""
        _receipt, raw = self._send(self.release_log, "revoke", index, note)
        return int(self._event_arg(self.release_log, raw, "ReleaseRevoked", "index"))

    def transfer_governance(self, governance: str) -> TxReceipt:
        return self._transact(self.release_log, "transferGovernance", governance)

    def is_release_approved(self, model_hash: bytes, measurement: bytes) -> bool:
        """Whether clients may accept a node attesting `measurement` serving `model_hash`."""
        return bool(self._call(self.release_log, "isApproved", model_hash, measurement))

    def release(self, index: int) -> ReleaseEntry:
        r = self._call(self.release_log, "getEntry", index)
        return ReleaseEntry(
            index=index,
            action=ReleaseAction(r[0]),
            model_hash=bytes(r[1]),
            measurement=bytes(r[2]),
            ref=None if r[3] == _NO_REF else int(r[3]),
            note=r[4],
            published_at=r[5],
            in_force=bool(self._call(self.release_log, "isInForce", index)),
        )

    def release_count(self) -> int:
        """How many entries the release log holds."""
        return int(self._call(self.release_log, "entryCount"))

    def releases(self, last: int | None = None) -> list[ReleaseEntry]:
        """The whole log (or its newest `last` entries), oldest first."""
        count = self.release_count()
        first = 0 if last is None else max(0, count - last)
        return [self.release(i) for i in range(first, count)]
