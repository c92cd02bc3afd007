"""`veil status`: what the chain says about a Veil network, as an auditor would read it.

The one thing not on chain is whether a node hosts an MPC party: that is in its signed
descriptor, fetched through the relay (`--relay`, or the running `veil up`'s), never from the
node itself, so no node learns this machine's address; size-capped, a few at a time, with a
deadline (signature and address checked; without a relay, or a node that does not answer:
`?`)."""

from __future__ import annotations

import json
from pathlib import Path

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


def print_status(
    data_dir: Path, deployment_path: Path | None, senders: list[str], relay: str | None = None
) -> int:
    """Print the chain's view; returns the exit code (1 when the chain cannot be read)."""
    from concurrent.futures import ThreadPoolExecutor

    from veil.chain import ChainClient, Deployment
    from veil.chain.errors import ChainError

    console = Console()
    path = deployment_path or data_dir / "chain" / "deployment.json"
    try:
        client = ChainClient(Deployment.load(path))
        wallet = _wallet_address(data_dir / "wallet" / "wallet.json")
        payers = list(dict.fromkeys([*senders, *([wallet] if wallet else [])]))
        active = client.active_nodes()
        redeemed = client.redeemed_tickets()
        console.print(
            f"chain {client.deployment.chain_id} at {client.deployment.rpc_url}, block "
            f"{client.block_number()}; min stake {_veil(client.min_stake())} VEIL"
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
        relay = _relay_of(data_dir, relay)
        with ThreadPoolExecutor(8) as pool:  # each fetch has its own deadline
            parties = list(pool.map(lambda n: _mpc_party(relay, n.operator), active))
        for node, party in zip(active, parties, strict=True):
            operator = node.operator
            won = [t for t in redeemed if t.recipient == operator]
            nodes.add_row(
                operator,
                node.endpoint,
                _veil(node.stake),
                "yes" if node.active else "no",
                ", ".join(f"{m.model_id} ({m.weights_hash.hex()[:8]})" for m in node.models),
                party,
                _veil(client.token_balance(operator)),
                _veil(client.earnings(operator)),
                str(len(won)),
            )
        console.print(nodes)
        if relay is None:
            console.print("MPC party: ? (no relay given, and no running `veil up`: descriptors")
            console.print("are fetched only through a relay, so no node sees this machine)")

        releases = Table(
            "entry", "action", "model hash", "measurement", "in force", "note", title="release log"
        )
        for entry in client.releases():
            releases.add_row(
                str(entry.index),
                entry.action.name.lower(),
                entry.model_hash.hex()[:16] + "...",
                entry.measurement.hex()[:16] + "...",
                "yes" if entry.in_force else "no",
                entry.note,
            )
        console.print(releases)

        funds = Table(
            "payer",
            "deposit",
            "reserve",
            "unlocking",
            "tickets paid",
            "paid",
            title="payers (ticket broker; amounts in VEIL)",
        )
        for payer in payers:
            f = client.sender_funds(payer)
            paid = [t for t in redeemed if t.sender.lower() == payer.lower()]
            funds.add_row(
                payer,
                _veil(f.deposit),
                _veil(f.reserve),
                "no" if f.withdraw_at == 0 else f"from {f.withdraw_at}",
                str(len(paid)),
                _veil(sum(t.face_value for t in paid)),
            )
        console.print(funds)
        from veil.client.credits import TOKEN_WALLET_FILE, TokenWallet

        tokens_path = data_dir / "wallet" / TOKEN_WALLET_FILE
        if tokens_path.exists():  # the gateway's anonymous credits, read without changing them
            tokens = Table("node", "tokens", title=f"token balance ({tokens_path})")
            balance = TokenWallet(tokens_path, readonly=True).balance()
            for node_address, count in sorted(balance.items()):
                tokens.add_row(node_address, str(count))
            console.print(tokens)
        console.print(
            f"redeemed tickets: {len(redeemed)}, "
            f"{_veil(sum(t.face_value for t in redeemed))} VEIL in all"
        )
    except ChainError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
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
) -> None:
    """Nodes, stakes, releases, balances, deposits and redeemed tickets, read from the chain."""
    raise typer.Exit(print_status(data_dir or default_data_dir(), deployment, sender, relay))
