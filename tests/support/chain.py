"""Helpers for the contract tests: deploy the five contracts in titanoboa's in-process EVM,
named test accounts, ticket making, and a snapshot of everything the views expose.

(A module with a unique name rather than conftest.py, so test modules can import it
whatever other test directories' conftest files are loaded.)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import boa
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from veil.chain.contracts import source_path
from veil.chain.deployment import ChainParams
from veil.chain.tickets import (
    Ticket,
    TicketDomain,
    recipient_rand_hash,
    sign_ticket,
    win_prob_for,
)

TOKEN = 10**18
PARAMS = ChainParams()
DAY = 86_400


def make_account(label: str) -> LocalAccount:
    """A deterministic test account with a private key (needed to sign tickets)."""
    return Account.from_key(keccak(f"veil-test-{label}".encode()))


@dataclass
class Ledger:
    """The deployed contracts plus named actors."""

    token: Any
    registry: Any
    broker: Any
    slasher: Any
    release_log: Any
    deployer: str
    params: ChainParams

    @property
    def domain(self) -> TicketDomain:
        return TicketDomain(boa.env.evm.patch.chain_id, str(self.broker.address))

    def mint(self, receiver: str, amount: int) -> None:
        with boa.env.prank(self.deployer):
            self.token.mint(receiver, amount)

    def approve(self, owner: str, spender: Any, amount: int) -> None:
        with boa.env.prank(owner):
            self.token.approve(spender.address, amount)

    def register_node(self, operator: str, stake: int | None = None, **kw: Any) -> None:
        stake = PARAMS.min_stake if stake is None else stake
        self.mint(operator, stake)
        self.approve(operator, self.registry, stake)
        with boa.env.prank(operator):
            self.registry.register(
                kw.get("endpoint", "https://node.example"),
                kw.get("keys", b"\x11" * 32),
                kw.get("attestation", b"\x22" * 32),
                kw.get("models", [("SmolLM2-135M-Instruct", b"\x33" * 32)]),
                stake,
            )

    def register_validator(self, validator: str, stake: int | None = None) -> None:
        stake = PARAMS.min_validator_stake if stake is None else stake
        self.mint(validator, stake)
        self.approve(validator, self.slasher, stake)
        with boa.env.prank(validator):
            self.slasher.registerValidator(stake)

    def fund_sender(self, sender: str, deposit: int, reserve: int = 0) -> None:
        self.mint(sender, deposit + reserve)
        self.approve(sender, self.broker, deposit + reserve)
        with boa.env.prank(sender):
            if deposit:
                self.broker.fundDeposit(deposit)
            if reserve:
                self.broker.fundReserve(reserve)

    def open_challenge(
        self, challenger: str, node: str, evidence: bytes, bond: int | None = None
    ) -> int:
        bond = PARAMS.min_bond if bond is None else bond
        self.mint(challenger, bond)
        self.approve(challenger, self.slasher, bond)
        with boa.env.prank(challenger):
            return int(self.slasher.openChallenge(node, evidence, bond))

    def make_ticket(
        self,
        sender: LocalAccount,
        recipient: str,
        *,
        face_value: int = TOKEN,
        probability: float = 1.0,
        nonce: int = 1,
        rand: int = 12345,
        expiry: int | None = None,
    ) -> tuple[Ticket, bytes, int]:
        ticket = Ticket(
            recipient=recipient,
            sender=sender.address,
            face_value=face_value,
            win_prob=win_prob_for(probability),
            sender_nonce=nonce,
            recipient_rand_hash=recipient_rand_hash(rand),
            expiry=boa.env.timestamp + 3600 if expiry is None else expiry,
        )
        return ticket, sign_ticket(ticket, self.domain, sender.key), rand


ACTOR_LABELS = ("alice", "bob", "carol", "node", "node2", *(f"validator-{i}" for i in range(3)))


def observable_state(ledger: Ledger) -> dict[str, Any]:
    """Everything the views expose about the known actors and the contracts.

    (A state root would be stronger, but computing one in py-evm discards the journal
    checkpoints titanoboa's rollback needs.)
    """
    actors = [make_account(label).address for label in ACTOR_LABELS] + [ledger.deployer]
    holders = [*actors, ledger.registry.address, ledger.broker.address, ledger.slasher.address]
    rl = ledger.release_log
    return {
        "supply": (ledger.token.totalSupply(), ledger.token.totalBurned(), ledger.token.minter()),
        "balances": [ledger.token.balanceOf(h) for h in holders],
        "allowances": [ledger.token.allowance(a, h) for a in actors for h in holders[-3:]],
        "nodes": [ledger.registry.getNode(a) for a in actors],
        "token_keys": [ledger.registry.tokenKeysOf(a) for a in actors],
        "registry": (ledger.registry.totalStaked(), ledger.registry.operatorCount()),
        "senders": [ledger.broker.getSender(a) for a in actors],
        "earnings": [(ledger.broker.earned(a), ledger.broker.withdrawn(a)) for a in actors],
        "validators": [ledger.slasher.getValidator(a) for a in actors],
        "slasher": (
            ledger.slasher.totalValidatorStake(),
            ledger.slasher.totalBonds(),
            [ledger.slasher.openChallengesAgainst(a) for a in actors],
        ),
        "challenges": [
            ledger.slasher.getChallenge(i) for i in range(ledger.slasher.challengeCount())
        ],
        "votes": [
            ledger.slasher.hasVoted(i, a)
            for i in range(ledger.slasher.challengeCount())
            for a in actors
        ],
        "releases": (
            rl.governance(),
            [(rl.getEntry(i), rl.isInForce(i)) for i in range(rl.entryCount())],
        ),
    }


@functools.cache
def factory(name: str) -> Any:
    """A titanoboa deployer for one contract, compiled once per session."""
    return boa.load_partial(str(source_path(name)))


def deploy_ledger(params: ChainParams = PARAMS) -> Ledger:
    deployer = boa.env.generate_address("deployer")
    with boa.env.prank(deployer):
        token = factory("VeilToken").deploy(params.token_name, params.token_symbol)
        registry = factory("NodeRegistry").deploy(token, params.min_stake, params.unbonding_period)
        broker = factory("TicketBroker").deploy(token, params.unlock_delay)
        slasher = factory("Slasher").deploy(
            token,
            registry,
            params.min_validator_stake,
            params.validator_unbonding_period,
            params.min_bond,
            params.voting_window,
            params.slash_fraction_bps,
            params.challenger_reward_bps,
        )
        release_log = factory("ReleaseLog").deploy()
        registry.setSlasher(slasher.address)
    return Ledger(token, registry, broker, slasher, release_log, str(deployer), params)
