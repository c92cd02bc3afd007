"""`veil relay ...`: run the oblivious relay. Imports stay light until a command runs."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from veil.commands.service import harden_process

relay_app = typer.Typer(help="Oblivious relay: forwards sealed requests to known nodes.")


@relay_app.command()
def serve(
    nodes: Path | None = typer.Option(
        None, "--nodes", help="Node list file (TOML or JSON); or use --chain."
    ),
    chain: Path | None = typer.Option(
        None,
        "--chain",
        help="Chain deployment file: forward to the active nodes of the on-chain registry "
        "(node id = operator address).",
    ),
    refresh: float = typer.Option(5.0, help="Seconds between registry reads (with --chain)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8080, help="Port to listen on."),
    max_body: int = typer.Option(1024 * 1024, help="Largest encapsulated request, bytes."),
    rate: float = typer.Option(5.0, help="Requests per second per client address."),
    burst: int = typer.Option(20, help="Requests a client may make at once."),
    connect_timeout: float = typer.Option(5.0, help="Seconds to connect to a node."),
    read_timeout: float = typer.Option(120.0, help="Longest wait for the next answer piece."),
    allow_private_endpoints: bool = typer.Option(
        False,
        "--allow-private-endpoints",
        help="Also connect to nodes on loopback, private and link-local addresses (never "
        "cloud metadata). For a devnet only: on a public relay it lets any staker aim the "
        "relay at the relay's own network.",
    ),
) -> None:
    """Serve the relay. No access log: the relay must not record who asked."""
    import uvicorn

    from veil.relay.app import RelayConfig, create_relay_app
    from veil.relay.directory import (
        ChainNodeDirectory,
        NodeConfigError,
        NodeDirectory,
        load_nodes,
    )

    if (nodes is None) == (chain is None):
        typer.echo("error: give exactly one of --nodes FILE or --chain DEPLOYMENT", err=True)
        raise typer.Exit(2)
    directory: NodeDirectory
    if nodes is not None:
        try:
            directory = load_nodes(nodes)
        except NodeConfigError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        source = f"{len(directory)} node(s) from {nodes}"
    else:
        from veil.chain import ChainClient
        from veil.chain.errors import ChainError

        try:
            client = ChainClient.from_file(chain)
        except ChainError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        directory = ChainNodeDirectory(
            lambda: [(n.operator, n.endpoint) for n in client.active_nodes()], refresh_s=refresh
        ).start()
        source = f"on-chain registry ({len(directory)} active node(s) now)"
    config = RelayConfig(
        max_body_bytes=max_body,
        rate_per_s=rate,
        burst=burst,
        connect_timeout_s=connect_timeout,
        read_timeout_s=read_timeout,
        allow_private_endpoints=allow_private_endpoints,
    )
    typer.echo(f"relay: {source}, listening on {host}:{port}")
    # The relay's own lines name nodes and status codes only: never a client or a body.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    harden_process()
    uvicorn.run(
        create_relay_app(directory, config),
        host=host,
        port=port,
        access_log=False,
        log_level="info",
        server_header=False,
        date_header=False,
    )
