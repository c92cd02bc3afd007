"""The `veil` command."""

import typer

from veil.chain.cli import chain_app

app = typer.Typer(help="Veil: private, verifiable, decentralized AI inference.", no_args_is_help=True)
app.add_typer(chain_app, name="chain")


@app.command()
def version() -> None:
    """Print Veil's version."""
    from veil import __version__

    typer.echo(__version__)
