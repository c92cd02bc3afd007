"""The node's registration in the NodeRegistry, made (or brought up to date) at startup.

`ensure_registered` registers the node's account (its identity key signs the transactions)
with its endpoint, served models, stake and two digests:

* `ohttp_keys_hash` = sha256 of the encoded OHTTP key list at registration time. Keys rotate
  (every 15 min by default), so this hash soon names an old list and is not updated on later
  starts: clients bind a node's current keys through its operator-signed descriptor (whose
  evidence covers the keys), never through this hash. It only records what was registered.
* `attestation_digest` = sha256 of the descriptor's evidence data at registration time
  (likewise a record; the descriptor carries the current evidence).

When the account is already registered, the endpoint and the model list are updated when they
differ, and stake is added when the bonded stake is below the requested stake.

`devnet_top_up` gives the node account gas and VEIL on a local devnet (deployed with anvil's
public test key), so `veil node serve --chain` works there without manual funding.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from veil.chain.errors import ChainError
from veil.chain.payment import format_veil
from veil.chain.types import ModelEntry
from veil.node.errors import NodeSetupError
from veil.wire.endpoint import EndpointError, check_endpoint

if TYPE_CHECKING:
    from veil.chain.client import ChainClient

__all__ = [
    "DEVNET_CHAIN_IDS",
    "Registration",
    "attestation_digest",
    "devnet_top_up",
    "ensure_registered",
    "ohttp_keys_hash",
]

log = logging.getLogger(__name__)

DEVNET_CHAIN_IDS = frozenset({31337})  # anvil's default chain id
DEVNET_GAS = 10 * 10**18  # wei given to a node account on a devnet
_MIN_GAS = 10**17  # below this many wei the devnet top-up gives more


def ohttp_keys_hash(encoded_key_list: bytes) -> bytes:
    """sha256 of the `application/ohttp-keys` body, as registered."""
    return hashlib.sha256(encoded_key_list).digest()


def attestation_digest(evidence_data: bytes) -> bytes:
    """sha256 of the descriptor's evidence data, as registered."""
    return hashlib.sha256(evidence_data).digest()


@dataclass(frozen=True)
class Registration:
    """What `ensure_registered` found and did."""

    address: str  # the node's operator account
    stake: int  # bonded stake afterwards, token base units
    registered_now: bool  # False: it was registered before
    transactions: tuple[tuple[str, str], ...] = field(default=())  # (what, tx hash)


def _say(progress: Callable[[str], None] | None, message: str) -> None:
    if progress is not None:
        progress(message)
    else:
        log.info("%s", message)


def _need_tokens(client: ChainClient, amount: int, what: str) -> None:
    balance = client.token_balance()
    if balance < amount:
        raise NodeSetupError(
            f"the node account {client.address} holds {format_veil(balance)}; {what} needs "
            f"{format_veil(amount)}: transfer VEIL to it (and ETH for gas)"
        )


def ensure_registered(
    client: ChainClient,
    *,
    endpoint: str,
    ohttp_keys: bytes,
    evidence_data: bytes,
    models: Sequence[ModelEntry],
    stake: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Registration:
    """Register `client`'s account as a node, or bring its record up to date.

    `stake` None means the registry's minimum stake. Errors are `NodeSetupError` carrying
    the chain's reason (e.g. an insufficient VEIL balance).
    """
    try:  # relays and clients skip a node whose endpoint is not canonical
        check_endpoint(endpoint)
    except EndpointError as err:
        raise NodeSetupError(f"cannot register: {err}") from None
    address = client.address
    txs: list[tuple[str, str]] = []

    def sent(what: str) -> None:
        assert client.last_receipt is not None
        txs.append((what, client.last_receipt.tx_hash))
        _say(progress, f"{what} (tx {client.last_receipt.tx_hash})")

    try:
        want = client.min_stake() if stake is None else stake
        node = client.get_node(address)
        if not node.registered:
            _need_tokens(client, want, "registering with a stake of " + format_veil(want))
            client.register_node(
                endpoint,
                ohttp_keys_hash(ohttp_keys),
                attestation_digest(evidence_data),
                list(models),
                want,
            )
            sent(f"registered node {address} with a stake of {format_veil(want)}")
            _open_earnings(client, sent)
            return Registration(address, want, True, tuple(txs))
        if node.endpoint != endpoint:
            client.update_endpoint(endpoint)
            sent(f"updated endpoint to {endpoint}")
        if tuple(node.models) != tuple(models):
            client.update_models(list(models))
            sent("updated models to " + ", ".join(m.model_id for m in models))
        bonded = node.stake
        if bonded < want:
            _need_tokens(client, want - bonded, "adding stake")
            client.add_stake(want - bonded)
            bonded = want
            sent(f"added {format_veil(want - node.stake)} of stake")
        _open_earnings(client, sent)
        if not txs:
            _say(progress, f"node {address} is registered with a stake of {format_veil(bonded)}")
        return Registration(address, bonded, False, tuple(txs))
    except ChainError as exc:
        raise NodeSetupError(f"on-chain registration of {address} failed: {exc}") from exc


def _open_earnings(client: ChainClient, sent: Callable[[str], None]) -> None:
    """Create the node's earnings slot at the broker now, off the redemption path, so its
    first winning ticket costs the steady-state gas (about 65k instead of 82k)."""
    if not client.earnings_open():
        client.open_earnings()
        sent("opened its earnings account at the ticket broker")


def devnet_top_up(
    client: ChainClient, veil_needed: int, progress: Callable[[str], None] | None = None
) -> bool:
    """On a devnet deployed with anvil's public test key: give the node account gas and VEIL.

    Returns False (and does nothing) on any other chain. Gives 10 ETH when the account has
    less than 0.1, and mints the VEIL missing to reach `veil_needed`.
    """
    from veil.chain.client import ChainClient
    from veil.chain.devnet import devnet_accounts

    deployment = client.deployment
    faucet = devnet_accounts(1)[0]
    if deployment.chain_id not in DEVNET_CHAIN_IDS or deployment.deployer != faucet.address:
        return False
    address = client.address
    try:
        if client.w3.eth.get_balance(address) < _MIN_GAS:  # type: ignore[arg-type]
            client.w3.provider.make_request("anvil_setBalance", [address, hex(DEVNET_GAS)])  # type: ignore[arg-type]
            _say(progress, f"devnet: gave {address} {DEVNET_GAS // 10**18} ETH for gas")
        missing = veil_needed - client.token_balance()
        if missing > 0:
            ChainClient(deployment, faucet.private_key).mint(address, missing)
            _say(progress, f"devnet: minted {format_veil(missing)} to {address}")
    except ChainError as exc:
        raise NodeSetupError(f"devnet funding of {address} failed: {exc}") from exc
    except Exception as exc:  # web3's own errors from the raw RPC calls
        raise NodeSetupError(f"devnet funding of {address} failed: {exc}") from exc
    return True
