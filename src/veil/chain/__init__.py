"""Veil's on-chain ledger: contracts, deployment, devnet, tickets and the typed client.

Importing `veil.chain` is cheap: the names below load their modules (and web3, vyper,
eth_account) on first use, so `import veil.cli` stays light.

    from veil.chain import ChainClient, Devnet, deploy, Ticket
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "ChainClient",
    "ChainParams",
    "ChainReleases",
    "ChallengeInfo",
    "ChallengeStatus",
    "Deployment",
    "Devnet",
    "DevnetAccount",
    "ModelEntry",
    "NodeInfo",
    "RedeemedTicket",
    "ReleaseAction",
    "ReleaseEntry",
    "SenderFunds",
    "Ticket",
    "TicketDomain",
    "TokenKeys",
    "TxReceipt",
    "ValidatorInfo",
    "default_deployment_path",
    "deploy",
    "find_anvil",
    "is_winning",
    "new_recipient_rand",
    "recipient_rand_hash",
    "recover_ticket_signer",
    "sign_ticket",
    "ticket_hash",
    "win_prob_for",
]

_HOME = {
    "ChainClient": "veil.chain.client",
    "ChainParams": "veil.chain.deployment",
    "ChainReleases": "veil.chain.releases",
    "Deployment": "veil.chain.deployment",
    "default_deployment_path": "veil.chain.deployment",
    "deploy": "veil.chain.deployment",
    "Devnet": "veil.chain.devnet",
    "DevnetAccount": "veil.chain.devnet",
    "find_anvil": "veil.chain.devnet",
    "Ticket": "veil.chain.tickets",
    "TicketDomain": "veil.chain.tickets",
    "is_winning": "veil.chain.tickets",
    "new_recipient_rand": "veil.chain.tickets",
    "recipient_rand_hash": "veil.chain.tickets",
    "recover_ticket_signer": "veil.chain.tickets",
    "sign_ticket": "veil.chain.tickets",
    "ticket_hash": "veil.chain.tickets",
    "win_prob_for": "veil.chain.tickets",
    "ChallengeInfo": "veil.chain.types",
    "ChallengeStatus": "veil.chain.types",
    "ModelEntry": "veil.chain.types",
    "NodeInfo": "veil.chain.types",
    "RedeemedTicket": "veil.chain.types",
    "ReleaseAction": "veil.chain.types",
    "ReleaseEntry": "veil.chain.types",
    "SenderFunds": "veil.chain.types",
    "TokenKeys": "veil.chain.types",
    "TxReceipt": "veil.chain.types",
    "ValidatorInfo": "veil.chain.types",
}

if TYPE_CHECKING:
    from veil.chain.client import ChainClient
    from veil.chain.deployment import ChainParams, Deployment, default_deployment_path, deploy
    from veil.chain.devnet import Devnet, DevnetAccount, find_anvil
    from veil.chain.releases import ChainReleases
    from veil.chain.tickets import (
        Ticket,
        TicketDomain,
        is_winning,
        new_recipient_rand,
        recipient_rand_hash,
        recover_ticket_signer,
        sign_ticket,
        ticket_hash,
        win_prob_for,
    )
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


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'veil.chain' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
