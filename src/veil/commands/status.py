"""`veil status`: what the chain says about a Veil network, as an auditor would read it.

The one thing not on chain is whether a node hosts an MPC party: that is in its signed
descriptor, fetched through the relay (`--relay`, or the running `veil up`'s), never from the
node itself, so no node learns this machine's address; size-capped, a few at a time, with a
deadline (signature and address checked; without a relay, or a node that does not answer:
`?`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from veil.chain.deployment import TOKEN
from veil.home import default_data_dir

__all__ = ["print_status", "status"]


def _veil(amount: int) -> str:
    return f"{amount / TOKEN:,.4f}".rstrip("0").rstrip(".")


def _wallet_address(path: Path) -> str | None:
    """The address of a keystore, read without unlocking it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    address = data.get("address") if isinstance(data, dict) else None
    if not isinstance(address, str):
        return None
    return address if address.startswith("0x") else "0x" + address


def _mpc_party(relay: str | None, operator: str) -> str:
    """What the node's signed descriptor says of its MPC party: `aby3: <model>`, `no`, or
    `?` (no relay, no descriptor, or one not signed by the operator)."""
    import httpx

    from veil.errors import VeilError
    from veil.identity import SignedDescriptor
    from veil.identity.descriptor import MAX_DESCRIPTOR_BYTES

    if relay is None:
        return "?"
    url = f"{relay.rstrip('/')}/relay/{operator}/descriptor"
    try:
        with httpx.stream("GET", url, timeout=httpx.Timeout(3.0, connect=2.0)) as response:
            body = bytearray()
            for piece in response.iter_bytes():
                body += piece
                if len(body) > MAX_DESCRIPTOR_BYTES:
                    return "?"
        if response.status_code != 200:
            return "?"
        signed = SignedDescriptor.parse(bytes(body))
        signed.verify_signature()
    except (httpx.HTTPError, VeilError):
        return "?"
    if signed.descriptor.address.lower() != operator.lower():
        return "?"
    party = signed.descriptor.mpc
    return "no" if party is None else f"{party.protocol}: {party.model_id}"


def _relay_of(data_dir: Path, relay: str | None) -> str | None:
    """`relay`, else the running `veil up`'s (from its network file), else None."""
    if relay:
        return relay
    from veil.home import load_network_info

    try:
        found = load_network_info(data_dir).get("relay_url")
    except RuntimeError:
        return None
    return found if isinstance(found, str) and found else None


def collect_status(
    data_dir: Path, deployment_path: Path | None, senders: list[str], relay: str | None = None
) -> dict[str, Any]:
    """Everything `veil status` shows, as JSON-ready data (the `--json` output; its fields
    are documented in docs/status.md). Amounts are strings of base units (1 VEIL = 10**18).
    Raises `ChainError` when the chain cannot be read."""
    from concurrent.futures import ThreadPoolExecutor

    from veil.chain import ChainClient, Deployment
    from veil.client.credits import TOKEN_WALLET_FILE, TokenWallet

    client = ChainClient(Deployment.load(deployment_path or data_dir / "chain" / "deployment.json"))
    wallet = _wallet_address(data_dir / "wallet" / "wallet.json")
    payers = list(dict.fromkeys([*senders, *([wallet] if wallet else [])]))
    active = client.active_nodes()
    redeemed = client.redeemed_tickets()
    relay = _relay_of(data_dir, relay)
    with ThreadPoolExecutor(8) as pool:  # each fetch has its own deadline
        parties = list(pool.map(lambda n: _mpc_party(relay, n.operator), active))
    nodes = []
    for node, party in zip(active, parties, strict=True):
        operator = node.operator
        nodes.append(
            {
                "operator": operator,
                "endpoint": node.endpoint,
                "stake": str(node.stake),
                "active": node.active,
                "models": [
                    {"id": m.model_id, "weights_sha256": m.weights_hash.hex()} for m in node.models
                ],
                "mpc_party": party,
                "balance": str(client.token_balance(operator)),
                "earnings": str(client.earnings(operator)),
                "tickets_won": sum(t.recipient == operator for t in redeemed),
            }
        )
    funds = []
    for payer in payers:
        f = client.sender_funds(payer)
        paid = [t for t in redeemed if t.sender.lower() == payer.lower()]
        funds.append(
            {
                "address": payer,
                "deposit": str(f.deposit),
                "reserve": str(f.reserve),
                "unlocking_from": f.withdraw_at or None,
                "tickets_paid": len(paid),
                "paid": str(sum(t.face_value for t in paid)),
            }
        )
    tokens_path = data_dir / "wallet" / TOKEN_WALLET_FILE
    tokens = None
    if tokens_path.exists():  # the gateway's anonymous credits, read without changing them
        tokens = dict(sorted(TokenWallet(tokens_path, readonly=True).balance().items()))
    return {
        "chain": {
            "chain_id": client.deployment.chain_id,
            "rpc_url": client.deployment.rpc_url,
            "block": client.block_number(),
            "min_stake": str(client.min_stake()),
        },
        "relay": relay,
        "nodes": nodes,
        "releases": [
            {
                "index": e.index,
                "action": e.action.name.lower(),
                "model_hash": e.model_hash.hex(),
                "measurement": e.measurement.hex(),
                "in_force": e.in_force,
                "note": e.note,
            }
            for e in client.releases()
        ],
        "validators": [
            {
                "address": address,
                "stake": str(v.stake),
                "since_block": v.since_block,
                "unbonding_ends_at": v.unbonding_ends_at or None,
            }
            for address, v in client.validators().items()
        ],
        "challenges": [
            {
                "id": c.challenge_id,
                "node": c.node,
                "challenger": c.challenger,
                "evidence_hash": c.evidence_hash.hex(),
                "bond": str(c.bond),
                "deadline": c.deadline,
                "votes_for": str(c.votes_for),
                "votes_against": str(c.votes_against),
                "status": c.status.name.lower(),
                "slashed": str(c.slashed),
            }
            for c in client.challenges()
        ],
        "payers": funds,
        "token_wallet": None if tokens is None else {"path": str(tokens_path), "tokens": tokens},
        "redeemed_tickets": {
            "count": len(redeemed),
            "face_value": str(sum(t.face_value for t in redeemed)),
        },
    }


def _render(console: Console, data: dict[str, Any]) -> None:
    chain = data["chain"]
    console.print(
        f"chain {chain['chain_id']} at {chain['rpc_url']}, block {chain['block']}; "
        f"min stake {_veil(int(chain['min_stake']))} VEIL"
    )
    nodes = Table(
        "operator",
        "endpoint",
        "stake",
        "active",
        "models",
        "MPC party",
        "balance",
        "not withdrawn",
        "tickets won",
        title="nodes (registry; amounts in VEIL)",
    )
    for n in data["nodes"]:
        nodes.add_row(
            n["operator"],
            n["endpoint"],
            _veil(int(n["stake"])),
            "yes" if n["active"] else "no",
            ", ".join(f"{m['id']} ({m['weights_sha256'][:8]})" for m in n["models"]),
            n["mpc_party"],
            _veil(int(n["balance"])),
            _veil(int(n["earnings"])),
            str(n["tickets_won"]),
        )
    console.print(nodes)
    if data["relay"] is None:
        console.print("MPC party: ? (no relay given, and no running `veil up`: descriptors")
        console.print("are fetched only through a relay, so no node sees this machine)")
    releases = Table(
        "entry", "action", "model hash", "measurement", "in force", "note", title="release log"
    )
    for e in data["releases"]:
        releases.add_row(
            str(e["index"]),
            e["action"],
            e["model_hash"][:16] + "...",
            e["measurement"][:16] + "...",
            "yes" if e["in_force"] else "no",
            e["note"],
        )
    console.print(releases)
    validators = Table("validator", "stake", "since block", "unbonding", title="validators")
    for v in data["validators"]:
        until = v["unbonding_ends_at"]
        validators.add_row(
            v["address"], _veil(int(v["stake"])), str(v["since_block"]), str(until or "no")
        )
    console.print(validators)
    challenges = Table(
        "id", "node", "status", "votes for", "against", "slashed", title="challenges (slasher)"
    )
    for c in data["challenges"]:
        challenges.add_row(
            str(c["id"]),
            c["node"],
            c["status"],
            _veil(int(c["votes_for"])),
            _veil(int(c["votes_against"])),
            _veil(int(c["slashed"])),
        )
    console.print(challenges)
    funds = Table(
        "payer",
        "deposit",
        "reserve",
        "unlocking",
        "tickets paid",
        "paid",
        title="payers (ticket broker; amounts in VEIL)",
    )
    for f in data["payers"]:
        funds.add_row(
            f["address"],
            _veil(int(f["deposit"])),
            _veil(int(f["reserve"])),
            "no" if f["unlocking_from"] is None else f"from {f['unlocking_from']}",
            str(f["tickets_paid"]),
            _veil(int(f["paid"])),
        )
    console.print(funds)
    if data["token_wallet"] is not None:
        wallet = data["token_wallet"]
        tokens = Table("node", "tokens", title=f"token balance ({wallet['path']})")
        for node_address, count in wallet["tokens"].items():
            tokens.add_row(node_address, str(count))
        console.print(tokens)
    redeemed = data["redeemed_tickets"]
    console.print(
        f"redeemed tickets: {redeemed['count']}, {_veil(int(redeemed['face_value']))} VEIL in all"
    )


def print_status(
    data_dir: Path,
    deployment_path: Path | None,
    senders: list[str],
    relay: str | None = None,
    *,
    as_json: bool = False,
) -> int:
    """Print the chain's view; returns the exit code (1 when the chain cannot be read)."""
    from veil.chain.errors import ChainError

    console = Console()
    try:
        data = collect_status(data_dir, deployment_path, senders, relay)
    except ChainError as exc:
        if as_json:
            print(json.dumps({"error": str(exc)}))
        else:
            console.print(f"[red]error:[/] {exc}")
        return 1
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        _render(console, data)
    return 0


def status(
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="State directory of `veil up` (default $VEIL_HOME or ./.veil)."
    ),
    deployment: Path | None = typer.Option(
        None, "--chain", help="Deployment file (default: the data directory's)."
    ),
    sender: list[str] = typer.Option(
        [], "--sender", help="Also show this payer's deposit (default: the data dir's wallet)."
    ),
    relay: str | None = typer.Option(
        None,
        "--relay",
        help="Relay to fetch node descriptors through (their MPC party); default: the running "
        "`veil up`'s. Nodes are never asked directly.",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON document (fields: docs/status.md) instead."
    ),
) -> None:
    """Nodes, stakes, releases, validators, challenges, balances, deposits and redeemed
    tickets, read from the chain."""
    code = print_status(data_dir or default_data_dir(), deployment, sender, relay, as_json=as_json)
    raise typer.Exit(code)
