"""The `veil` command."""

import typer

from veil.mpc.cli import mpc_app
from veil.relay.cli import relay_app

app = typer.Typer(help="Veil: private, verifiable, decentralized AI inference.", no_args_is_help=True)
app.add_typer(relay_app, name="relay")
app.add_typer(mpc_app, name="mpc")


@app.command()
def version() -> None:
    """Print Veil's version."""
    from veil import __version__

    typer.echo(__version__)
