"""The `veil` command."""

from pathlib import Path

import typer

from veil.attest.cli import verify_app
from veil.chain.cli import chain_app
from veil.client.cli import chat, gateway
from veil.mpc.cli import mpc_app
from veil.node.cli import node_app
from veil.relay.cli import relay_app

app = typer.Typer(
    help="Veil: private, verifiable, decentralized AI inference.", no_args_is_help=True
)
app.add_typer(node_app, name="node")
app.add_typer(relay_app, name="relay")
app.add_typer(chain_app, name="chain")
app.add_typer(verify_app, name="verify")
app.add_typer(mpc_app, name="mpc")


@app.command()
def version() -> None:
    """Print Veil's version."""
    from veil import __version__

    typer.echo(__version__)


app.command("chat")(chat)
app.command("gateway")(gateway)


@app.command()
def up(
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="State directory (default $VEIL_HOME or ./.veil); reused."
    ),
    prompt: str = typer.Option(
        "In two sentences, why does privacy matter when using AI?",
        "--prompt",
        "-p",
        help="First message sent through the gateway once the network is up ('' for none).",
    ),
    interactive: bool | None = typer.Option(
        None,
        "--interactive/--no-interactive",
        help="Chat in this terminal after the first answer (default: when it is a terminal).",
    ),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Keep the network up until Ctrl-C (--no-wait: stop)."
    ),
    max_tokens: int = typer.Option(96, help="Longest answer, in tokens."),
    mpc: bool = typer.Option(
        False,
        "--mpc/--no-mpc",
        help="Three nodes instead of two, each also an MPC party, so the gateway serves "
        "<model>:mpc (`veil chat --mode mpc`). Each node loads the model (~1.2 GB each).",
    ),
) -> None:
    """Start a local Veil network and chat through it; Ctrl-C stops everything.

    The devnet chain with Veil's contracts, two nodes that stake and register themselves
    (three MPC party nodes with --mpc), the relay (nodes from the on-chain registry) and the
    OpenAI-compatible gateway.
    """
    import signal
    import sys
    import time

    import openai
    from rich.console import Console

    from veil.client.cli import DEFAULT_MODEL, gateway_openai, gateway_reply, run_gateway_repl
    from veil.home import default_data_dir
    from veil.up import LocalNetwork, NetworkSettings

    def _stop_on_term(_signum, _frame):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop_on_term)
    console = Console()
    net = LocalNetwork(data_dir or default_data_dir(), NetworkSettings(mpc=mpc))
    if interactive is None:
        interactive = sys.stdin.isatty()
    try:
        net.start(console)
        console.print(
            f"\n[bold]Veil is up.[/] State in {net.data_dir}/ (a second `veil up` reuses it).\n"
            f"  OpenAI-compatible API: {net.gateway_url}/v1  (any api key)\n"
            f'    e.g. OpenAI(base_url="{net.gateway_url}/v1", api_key="veil")\n'
            f"  chat:   veil chat          status: veil status\n"
            f"  models: {DEFAULT_MODEL} (anonymous mode), "
            f"{DEFAULT_MODEL}:tee is refused here (nodes have dev evidence only)"
            + (
                f",\n          {DEFAULT_MODEL}:mpc on the MPC parties of "
                f"{', '.join(net.node_links)} (`veil chat --mode mpc`; about 75 s for the "
                "prompt, then about 10 s per token on 2 cores; not paid)"
                if net.node_links
                else ""
            )
        )
        client = gateway_openai(net.gateway_url)
        params = {"max_tokens": max_tokens, "temperature": 0.7}
        history: list[dict[str, str]] = []
        if prompt:
            history.append({"role": "user", "content": prompt})
            console.print(
                f"\n[bold]you>[/] {prompt}\n[dim](paid with a ticket, sealed with OHTTP to "
                f"the chosen node, sent through the relay)[/]"
            )
            sys.stdout.write("assistant> ")
            answer = gateway_reply(client, DEFAULT_MODEL, history, sys.stdout, **params)
            history.append({"role": "assistant", "content": answer})
        if interactive:
            run_gateway_repl(client, DEFAULT_MODEL, history, params)
        if wait:
            console.print("\nThe network is running; Ctrl-C stops it.")
            while True:
                net.check()
                time.sleep(1)
    except KeyboardInterrupt:
        console.print("\ninterrupted")
    except (RuntimeError, openai.APIError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    finally:
        with console.status("stopping the network..."):
            net.stop()
        console.print("stopped.")


@app.command()
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
) -> None:
    """Nodes, stakes, releases, balances, deposits and redeemed tickets, read from the chain."""
    from veil.home import default_data_dir
    from veil.status import print_status

    raise typer.Exit(print_status(data_dir or default_data_dir(), deployment, sender))
