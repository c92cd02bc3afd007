"""Deploying Veil's contracts and the deployment file other commands read.

The deployment file is JSON: chain id, RPC URL, contract addresses and ABIs, and the
parameters the contracts were built with. `veil chain up` writes it; the node, client,
validator and `veil chain info` load it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from veil.chain.errors import DeploymentError

if TYPE_CHECKING:
    from eth_typing import ChecksumAddress

__all__ = [
    "DEFAULT_DEPLOYMENT_PATH",
    "ChainParams",
    "Deployment",
    "default_deployment_path",
    "deploy",
]

DEFAULT_DEPLOYMENT_PATH = Path(".veil/chain/deployment.json")
TOKEN = 10**18  # one VEIL in base units
FORMAT_VERSION = 1

DAY = 86_400


def default_deployment_path() -> Path:
    """`$VEIL_DEPLOYMENT`, else `.veil/chain/deployment.json` under the working directory."""
    return Path(os.environ.get("VEIL_DEPLOYMENT") or DEFAULT_DEPLOYMENT_PATH)


@dataclass(frozen=True)
class ChainParams:
    """Constructor parameters of the contracts. Amounts in token base units, times in s."""

    token_name: str = "Veil"
    token_symbol: str = "VEIL"
    min_stake: int = 100 * TOKEN  # least bonded stake of an active node
    unbonding_period: int = 7 * DAY  # node stake stays slashable this long after unbond
    unlock_delay: int = 1 * DAY  # ticket sender waits this long to withdraw
    min_validator_stake: int = 100 * TOKEN
    validator_unbonding_period: int = 4 * DAY  # must exceed voting_window
    min_bond: int = 10 * TOKEN  # least bond to open a challenge
    voting_window: int = 3 * DAY
    slash_fraction_bps: int = 1_000  # 10% of slashable stake per upheld challenge
    challenger_reward_bps: int = 5_000  # half of the slashed amount to the challenger

    def validate(self) -> None:
        if self.validator_unbonding_period <= self.voting_window:
            raise DeploymentError("validator_unbonding_period must exceed voting_window")
        if self.unbonding_period <= self.voting_window:
            raise DeploymentError("unbonding_period must exceed voting_window")
        if not (
            0 <= self.slash_fraction_bps <= 10_000 and 0 <= self.challenger_reward_bps <= 10_000
        ):
            raise DeploymentError("basis points must be within 0..10000")


@dataclass(frozen=True)
class Deployment:
    """Where Veil's contracts live on one chain."""

    chain_id: int
    rpc_url: str
    deployer: str
    block_number: int  # block of the first deployment transaction (log scans start here)
    addresses: dict[str, str]  # contract name -> checksummed address
    abis: dict[str, list[dict[str, Any]]] = field(repr=False)
    params: ChainParams = field(default_factory=ChainParams)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "chain_id": self.chain_id,
            "rpc_url": self.rpc_url,
            "deployer": self.deployer,
            "block_number": self.block_number,
            "addresses": self.addresses,
            "params": asdict(self.params),
            "abis": self.abis,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Deployment:
        from veil.chain.contracts import CONTRACT_NAMES

        try:
            if data.get("format") != FORMAT_VERSION:
                raise DeploymentError(f"unsupported deployment format {data.get('format')!r}")
            addresses = dict(data["addresses"])
            abis = dict(data["abis"])
            missing = [n for n in CONTRACT_NAMES if n not in addresses or n not in abis]
            if missing:
                raise DeploymentError(f"deployment lacks contracts: {', '.join(missing)}")
            return cls(
                chain_id=int(data["chain_id"]),
                rpc_url=str(data["rpc_url"]),
                deployer=str(data["deployer"]),
                block_number=int(data["block_number"]),
                addresses=addresses,
                abis=abis,
                params=ChainParams(**data.get("params", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DeploymentError(f"invalid deployment data: {exc}") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (readers never see a half-written file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Deployment:
        path = Path(path) if path is not None else default_deployment_path()
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise DeploymentError(
                f"no deployment file at {path}: run `veil chain up` first"
            ) from exc
        except (OSError, ValueError) as exc:
            raise DeploymentError(f"cannot read deployment file {path}: {exc}") from exc
        return cls.from_json(data)


def deploy(
    rpc_url: str,
    deployer_key: str,
    *,
    params: ChainParams | None = None,
    mint: Mapping[str, int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Deployment:
    """Compile and deploy all contracts, wire the registry to the slasher, mint tokens.

    `mint` maps addresses to amounts minted by the deployer (the token's minter).
    """
    from eth_account import Account

    from veil.chain.contracts import compile_all
    from veil.chain.transact import connect, send_transaction

    params = params or ChainParams()
    params.validate()
    say = progress or (lambda _msg: None)
    w3 = connect(rpc_url)
    account = Account.from_key(deployer_key)
    chain_id = int(w3.eth.chain_id)

    say("compiling contracts")
    compiled = compile_all()
    addresses: dict[str, str] = {}
    first_block: int | None = None

    def create(name: str, *args: Any) -> ChecksumAddress:
        nonlocal first_block
        factory = w3.eth.contract(abi=compiled[name].abi, bytecode=compiled[name].bytecode)
        say(f"deploying {name}")
        receipt, raw = send_transaction(
            w3, account, factory.constructor(*args), function=f"{name} constructor"
        )
        if first_block is None:
            first_block = receipt.block_number
        address = cast("ChecksumAddress", str(raw["contractAddress"]))
        addresses[name] = address
        return address

    token = create("VeilToken", params.token_name, params.token_symbol)
    registry = create("NodeRegistry", token, params.min_stake, params.unbonding_period)
    create("TicketBroker", token, params.unlock_delay)
    slasher = create(
        "Slasher",
        token,
        registry,
        params.min_validator_stake,
        params.validator_unbonding_period,
        params.min_bond,
        params.voting_window,
        params.slash_fraction_bps,
        params.challenger_reward_bps,
    )
    create("ReleaseLog")

    say("authorizing the slasher in the registry")
    reg = w3.eth.contract(address=registry, abi=compiled["NodeRegistry"].abi)
    send_transaction(w3, account, reg.functions.setSlasher(slasher), function="setSlasher")

    if mint:
        tok = w3.eth.contract(address=token, abi=compiled["VeilToken"].abi)
        for receiver, amount in mint.items():
            say(f"minting {amount / TOKEN:g} VEIL to {receiver}")
            send_transaction(w3, account, tok.functions.mint(receiver, amount), function="mint")

    if first_block is None:  # unreachable: create() ran at least once
        raise DeploymentError("no contract was deployed")
    return Deployment(
        chain_id=chain_id,
        rpc_url=rpc_url,
        deployer=account.address,
        block_number=first_block,
        addresses=addresses,
        abis={name: c.abi for name, c in compiled.items()},
        params=params,
    )
