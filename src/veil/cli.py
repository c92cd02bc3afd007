"""The `veil` command: assembles the typer app from `veil.commands` (`veil = "veil.cli:app"`).

The order of registration is the order `veil --help` lists the commands in.
"""

import typer

from veil.commands.chain import chain_app
from veil.commands.chat import chat, gateway
from veil.commands.mpc import mpc_app
from veil.commands.node import node_app
from veil.commands.relay import relay_app
from veil.commands.status import status
from veil.commands.up import up
from veil.commands.verify import verify_app

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
app.command("up")(up)
app.command("status")(status)
