"""`veil node ...`: run a node. Imports stay light until a command runs."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

node_app = typer.Typer(help="Run a Veil node: the model behind an OpenAI-compatible API.")


@node_app.command()
def serve(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="TOML file with \\[node] settings."
    ),
    host: str | None = typer.Option(None, help="Bind address (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default 8700)."),
    model: str | None = typer.Option(
        None, "--model", help="GGUF file or model directory (default: packaged SmolLM2-135M)."
    ),
    model_id: str | None = typer.Option(None, help="Model name clients ask for."),
    context_length: int | None = typer.Option(None, help="Tokens per sequence at most."),
    max_tokens_limit: int | None = typer.Option(None, help="Largest max_tokens accepted."),
    max_batch: int | None = typer.Option(None, help="Sequences decoded together."),
    threads: int | None = typer.Option(None, help="CPU threads for inference."),
    keys: Path | None = typer.Option(
        None, "--keys", help="OHTTP key file (created 0600 if missing); default: in-memory keys."
    ),
    key_rotation: int | None = typer.Option(
        None, help="Seconds between OHTTP key rotations (default 900)."
    ),
    identity: Path | None = typer.Option(
        None,
        "--identity",
        help="Node account keystore (created 0600 if missing; encrypted ones read "
        "VEIL_NODE_PASSPHRASE); default: an in-memory identity, lost on restart.",
    ),
    endpoint: str | None = typer.Option(
        None, help="Where clients reach the node, as the descriptor states it."
    ),
    log_level: str | None = typer.Option(None, help="debug, info, warning or error."),
) -> None:
    """Load the model and serve the node API and its OHTTP gateway until Ctrl-C."""
    from rich.console import Console

    from veil.node.config import NodeConfig, NodeConfigError

    console = Console(stderr=True)
    try:
        cfg = NodeConfig.load(
            config,
            host=host,
            port=port,
            model_path=model,
            model_id=model_id,
            context_length=context_length,
            max_tokens_limit=max_tokens_limit,
            max_batch=max_batch,
            threads=threads,
            keys_path=str(keys) if keys else None,
            key_rotation_s=key_rotation,
            identity_path=str(identity) if identity else None,
            endpoint=endpoint,
            log_level=log_level,
        )
    except NodeConfigError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    run_node(cfg, console)


def run_node(cfg, console) -> None:  # type: ignore[no-untyped-def]
    """Load, serve, and shut down cleanly (the engine thread stops after uvicorn)."""
    import os

    import uvicorn

    from veil.engine import Engine, ModelLoadError, load_model
    from veil.node.api import create_app
    from veil.node.descriptor import load_node_identity
    from veil.node.errors import NodeSetupError
    from veil.node.keys import load_or_create_keys

    logging.basicConfig(
        level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with console.status("loading model (about 20 s on 2 CPU cores)..."):
        try:
            loaded = load_model(cfg.model_path, cfg.model_id, threads=cfg.threads)
        except ModelLoadError as exc:
            console.print(f"[red]error:[/] {exc}")
            raise SystemExit(2) from None
    console.print(
        f"model [bold]{loaded.model_id}[/] sha256:{loaded.weights_sha256[:16]}... "
        f"context {cfg.context_length} tokens"
    )
    try:
        keys = load_or_create_keys(Path(cfg.keys_path) if cfg.keys_path else None)
        identity = load_node_identity(
            Path(cfg.identity_path) if cfg.identity_path else None,
            os.environ.get("VEIL_NODE_PASSPHRASE") or None,
        )
    except NodeSetupError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise SystemExit(2) from None
    engine = Engine(
        loaded,
        max_batch=cfg.max_batch,
        max_queue=cfg.max_queue,
        context_length=cfg.context_length,
    )
    app = create_app(engine, cfg, keys, identity)
    console.print(
        f"node identity [bold]{identity.address}[/]"
        + ("" if cfg.identity_path else " [yellow](in memory only)[/]")
        + "; attestation [yellow]dev: no hardware isolation[/]"
    )
    console.print(
        f"node API on http://{cfg.host}:{cfg.port}/v1  (OHTTP gateway at /gateway, "
        f"keys at /.well-known/ohttp-keys)  Ctrl-C stops"
    )
    try:
        uvicorn.run(
            app,
            host=cfg.host,
            port=cfg.port,
            access_log=False,
            log_level=cfg.log_level,
            server_header=False,
        )
    finally:
        engine.close()
