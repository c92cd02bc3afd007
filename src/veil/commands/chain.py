"""`veil chain ...`: start a local devnet, deploy the contracts, inspect a deployment.

Module-level imports stay light (typer only): web3, vyper and eth_account load inside
the commands, so `veil --help` is fast.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["chain_app"]

chain_app = typer.Typer(
    help="The on-chain ledger: local devnet, contract deployment, chain state.",
    no_args_is_help=True,
)

DEVNET_CHAIN_IDS = {31337}  # chains where anvil's public test key may deploy


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@chain_app.command()
def up(
    rpc_url: str | None = typer.Option(
        None, "--rpc-url", help="Deploy to this EVM JSON-RPC endpoint instead of starting anvil."
    ),
    deployment: Path | None = typer.Option(
        None,
        "--deployment",
        help="Where to write the deployment file [default: $VEIL_DEPLOYMENT or "
        ".veil/chain/deployment.json].",
    ),
    deployer_key: str | None = typer.Option(
        None,
        "--deployer-key",
        envvar="VEIL_DEPLOYER_KEY",
        help="Private key that deploys (and becomes minter and governance). Defaults to "
        "anvil's first test account, on devnet chain ids only.",
    ),
    port: int | None = typer.Option(None, help="anvil port [default: a free one]."),
    chain_id: int = typer.Option(31337, help="Chain id for the started anvil."),
    mint: int = typer.Option(10_000, help="VEIL minted to each devnet test account."),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Keep the started anvil running until Ctrl-C."
    ),
) -> None:
    """Start a local devnet (anvil on 127.0.0.1) and deploy Veil's contracts to it."""
    from veil.chain.deployment import TOKEN, default_deployment_path, deploy
    from veil.chain.devnet import Devnet, devnet_accounts
    from veil.chain.errors import ChainError, DeploymentError
    from veil.chain.transact import connect

    console = _console()
    out_path = deployment or default_deployment_path()
    devnet: Devnet | None = None
    # Stop cleanly on SIGTERM, and on SIGINT even when started with SIGINT ignored
    # (as background jobs of a non-interactive shell are).
    previous = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if rpc_url is None:
            with console.status("starting anvil"):
                devnet = Devnet(chain_id=chain_id, port=port).start()
            console.print(f"[green]✓[/] anvil running at {devnet.rpc_url} (chain id {chain_id})")
            url, accounts = devnet.rpc_url, devnet.accounts
        else:
            url, accounts = rpc_url, []
            remote_chain = int(connect(url).eth.chain_id)
            console.print(f"[green]✓[/] connected to {url} (chain id {remote_chain})")
            if deployer_key is None:
                if remote_chain not in DEVNET_CHAIN_IDS:
                    raise typer.BadParameter(
                        "--deployer-key (or VEIL_DEPLOYER_KEY) is required off devnets",
                        param_hint="--deployer-key",
                    )
                accounts = devnet_accounts()
        key = deployer_key or accounts[0].private_key
        minted = {a.address: mint * TOKEN for a in accounts} if mint > 0 else None

        started = time.monotonic()
        with console.status("deploying") as status:

            def progress(message: str) -> None:
                status.update(message)
                console.print(f"  {message}")

            result = deploy(url, key, mint=minted, progress=progress)
        try:
            saved = result.save(out_path)
        except OSError as exc:
            raise DeploymentError(f"cannot write the deployment file {out_path}: {exc}") from exc
        console.print(
            f"[green]✓[/] deployed in {time.monotonic() - started:.1f} s; deployment file: {saved}"
        )
        for name, address in result.addresses.items():
            console.print(f"  {name:<13} {address}")
        if accounts and minted:
            console.print(
                f"  {len(accounts)} test accounts hold {mint:,} VEIL each "
                "(keys: anvil's default test mnemonic, devnet only)"
            )
        if devnet is not None and wait:
            console.print("devnet running; press Ctrl-C to stop")
            while devnet.running:
                time.sleep(0.5)
            console.print("[red]anvil exited[/]")
            raise typer.Exit(1)
    except KeyboardInterrupt:
        console.print("stopping")
    except ChainError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if devnet is not None:
            devnet.stop()
            console.print("[green]✓[/] anvil stopped")


@chain_app.command()
def info(
    deployment: Path | None = typer.Option(
        None,
        "--deployment",
        help="Deployment file [default: $VEIL_DEPLOYMENT or .veil/chain/deployment.json].",
    ),
    rpc_url: str | None = typer.Option(None, "--rpc-url", help="Override the file's RPC URL."),
) -> None:
    """Show a deployment's contracts and live state (nodes, stake, challenges, releases)."""
    from rich.table import Table

    from veil.chain.client import ChainClient
    from veil.chain.deployment import TOKEN, Deployment
    from veil.chain.errors import ChainError

    console = _console()
    try:
        dep = Deployment.load(deployment)
        console.print(f"chain id {dep.chain_id} at {rpc_url or dep.rpc_url}")
        for name, address in dep.addresses.items():
            console.print(f"  {name:<13} {address}")
        client = ChainClient(dep, rpc_url=rpc_url)
        nodes = client.active_nodes()
        releases = client.releases()
        console.print(
            f"block {client.block_number()}; supply {client.token_total_supply() / TOKEN:,.2f} "
            f"VEIL, burned {client.token_total_burned() / TOKEN:,.2f}; "
            f"{client.challenge_count()} challenges; {len(releases)} release log entries"
        )
        table = Table("operator", "endpoint", "stake (VEIL)", "models", title="active nodes")
        for node in nodes:
            models = ", ".join(m.model_id for m in node.models)
            table.add_row(node.operator, node.endpoint, f"{node.stake / TOKEN:,.2f}", models)
        console.print(table)
        approved = Table("entry", "model hash", "measurement", "note", title="approved releases")
        for entry in releases:
            if entry.in_force:
                approved.add_row(
                    str(entry.index),
                    "0x" + entry.model_hash.hex(),
                    "0x" + entry.measurement.hex(),
                    entry.note,
                )
        console.print(approved)
    except ChainError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc


def _hex_arg(value: str, name: str, lengths: range) -> bytes:
    try:
        data = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        data = b""
    if len(data) not in lengths:
        if len(lengths) == 1:
            wanted = f"{lengths[0]} bytes as {2 * lengths[0]} hex digits"
        else:
            wanted = f"{lengths[0]} to {lengths[-1]} bytes in hex"
        raise typer.BadParameter(f"expected {wanted}", param_hint=name)
    return data


@chain_app.command("approve-release")
def approve_release(
    model_hash: str = typer.Argument(..., help="Model weights hash (32 bytes, hex)."),
    measurement: str = typer.Argument(
        ..., help="Node software measurement (1 to 64 bytes, hex; TDX: 32)."
    ),
    note: str = typer.Option("", help="Free text recorded with the entry."),
    deployment: Path | None = typer.Option(None, "--deployment", help="Deployment file."),
    key: str | None = typer.Option(
        None,
        "--key",
        envvar="VEIL_GOVERNANCE_KEY",
        help="Governance private key. Defaults to anvil's first test account on devnets.",
    ),
) -> None:
    """Append an approval of (model hash, measurement) to the release log (governance)."""
    from veil.chain.client import ChainClient
    from veil.chain.deployment import Deployment
    from veil.chain.devnet import devnet_accounts
    from veil.chain.errors import ChainError

    console = _console()
    model = _hex_arg(model_hash, "MODEL_HASH", range(32, 33))
    measured = _hex_arg(measurement, "MEASUREMENT", range(1, 65))
    try:
        dep = Deployment.load(deployment)
        if key is None:
            if dep.chain_id not in DEVNET_CHAIN_IDS:
                raise typer.BadParameter("--key is required off devnets", param_hint="--key")
            key = devnet_accounts(1)[0].private_key
        client = ChainClient(dep, key)
        if client.is_release_approved(model, measured):
            console.print("already approved")
            return
        index = client.publish_release(model, measured, note)
        console.print(f"[green]✓[/] release log entry {index}: approved")
    except ChainError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from exc
