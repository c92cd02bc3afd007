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
        None, "--data-dir", help="State directory (default $VEIL_HOME or ./.veil)."
    ),
    prompt: str = typer.Option(
        "In two sentences, why does privacy matter when using AI?",
        "--prompt",
        "-p",
        help="First message sent once the network is up.",
    ),
    interactive: bool | None = typer.Option(
        None,
        "--interactive/--no-interactive",
        help="Keep chatting after the first answer (default: when the terminal is interactive).",
    ),
    max_tokens: int = typer.Option(96, help="Longest answer, in tokens."),
) -> None:
    """Start a local Veil network (node + relay), then chat with it through the relay."""
    import sys

    from rich.console import Console

    from veil.client.cli import (
        describe_session,
        open_session,
        receipt_line,
        refused_line,
        run_repl,
        stream_reply,
    )
    from veil.client.errors import ClientError, NodeRejected, ReceiptRefused
    from veil.up import NODE_ID, LocalNetwork, default_data_dir

    console = Console()
    net = LocalNetwork(data_dir or default_data_dir())
    if interactive is None:
        interactive = sys.stdin.isatty()
    try:
        net.start(console)
        session = open_session(
            net.relay_url, NODE_ID, mode="anonymous", receipts=net.data_dir / "receipts.sqlite"
        )
        for line in describe_session(session):
            style = "yellow" if line.startswith("warning") else "green"
            console.print(f"[{style}]{'!' if style == 'yellow' else '✓'}[/] {line}")
        client = session.openai()
        params = {"max_tokens": max_tokens, "temperature": 0.7}
        history = [{"role": "user", "content": prompt}]
        console.print(
            f"\n[bold]you>[/] {prompt}\n"
            f"[dim](sealed with OHTTP to {NODE_ID}, sent through the relay)[/]"
        )
        sys.stdout.write("assistant> ")
        try:
            answer = stream_reply(client, "smollm2-135m-instruct", history, sys.stdout, **params)
            console.print(f"[green]✓[/] {receipt_line(session)}")
            history.append({"role": "assistant", "content": answer})
        except ReceiptRefused as exc:
            console.print(f"[red]✗ {refused_line(exc)}[/]")
            history.pop()
        if interactive:
            console.print(
                f"\nThe network stays up while you chat. Other shells can use it too:\n"
                f"  veil chat --relay {net.relay_url} --node {NODE_ID}"
            )
            run_repl(client, "smollm2-135m-instruct", history, params, session)
    except KeyboardInterrupt:
        console.print("\ninterrupted")
    except NodeRejected as exc:
        console.print(f"[red]error:[/] node refused at step {exc.check!r}: {exc}")
        raise typer.Exit(1) from None
    except (RuntimeError, ClientError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    finally:
        with console.status("stopping the network..."):
            net.stop()
        console.print("stopped.")
