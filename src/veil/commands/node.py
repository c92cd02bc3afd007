"""`veil node ...`: run a node. Imports stay light until a command runs."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from veil.commands.service import harden_process

node_app = typer.Typer(help="Run a Veil node: the model behind an OpenAI-compatible API.")


def parse_amount(text: str | None) -> int | None:
    """An amount flag (`100VEIL`, `0.5 VEIL` or base units); None stays None."""
    from veil.chain.payment import parse_amount as parse

    if text is None:
        return None
    try:
        return parse(text)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


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
    engine: str | None = typer.Option(
        None,
        "--engine",
        help="Inference backend: ctranslate2 (default: fast CPU, the model converted once to "
        "int8 and cached), builtin (the fp32 reference engine) or upstream (an "
        "OpenAI-compatible server at --upstream-url: vLLM, SGLang, llama-server, Ollama; "
        "--model names the weights it runs, whose hash the node declares).",
    ),
    upstream_url: str | None = typer.Option(
        None, "--upstream-url", help="With --engine upstream: its base URL, e.g. http://h:8000/v1"
    ),
    upstream_model: str | None = typer.Option(
        None, "--upstream-model", help="The model name the upstream knows (default: --model-id)."
    ),
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
    attestation: str | None = typer.Option(
        None,
        help="Evidence the node offers: dev (default; no hardware isolation, refused by tee "
        "clients) or tdx (an Intel TDX quote via configfs-tsm; the node refuses to start "
        "when it cannot make one, and never falls back to dev).",
    ),
    chain: Path | None = typer.Option(
        None,
        "--chain",
        help="Chain deployment file (written by `veil chain up`). With it the node registers "
        "itself on chain at start, asks a payment ticket per request and redeems the winning "
        "ones; without it the node serves for free and off chain.",
    ),
    stake: str | None = typer.Option(
        None,
        "--stake",
        help="Stake to hold in the node registry, e.g. 150VEIL or base units (default: the "
        "chain's minimum stake). Added at start when the bonded stake is lower.",
    ),
    free: bool = typer.Option(
        False,
        "--free",
        help="With --chain: also serve requests that carry no ticket (for devnets; tickets "
        "that are sent are still checked).",
    ),
    face_value: str | None = typer.Option(
        None,
        "--face-value",
        help="What a winning ticket pays, e.g. 1VEIL (default) or base units.",
    ),
    win_prob: float | None = typer.Option(
        None,
        "--win-prob",
        help="Chance that a ticket wins (default 0.1). The price of a request is face value "
        "x win probability; lower odds mean fewer on-chain redemptions.",
    ),
    tickets: Path | None = typer.Option(
        None,
        "--tickets",
        help="Queue file of winning tickets not yet redeemed (created 0600; default: "
        "tickets.jsonl beside the --identity keystore, else in memory).",
    ),
    withdraw_interval: float | None = typer.Option(
        None,
        help="Seconds between withdrawals of redeemed earnings to the node account "
        "(default 60; each is a transaction).",
    ),
    mpc_link: str | None = typer.Option(
        None,
        "--mpc-link",
        help="Also serve as an MPC party (the mpc mode, docs/mpc.md): the host:port this node "
        "binds for the SPU links to its peer parties. Clients reach the party at /v1/mpc "
        "through the relay, sealed to this node's key.",
    ),
    mpc_protocol: str | None = typer.Option(
        None, help="MPC protocol: aby3 (3 parties, default) | semi2k | cheetah (2 parties)."
    ),
    mpc_model: str | None = typer.Option(
        None, help="Layers the party serves (default: this node's model; tiny:<seed> for tests)."
    ),
    mpc_session_timeout: float | None = typer.Option(
        None, help="Seconds an idle MPC session lives before it is wiped (default 300)."
    ),
    mpc_link_timeout: float | None = typer.Option(
        None, help="Seconds a silent peer party may take mid-run (default 60)."
    ),
    mpc_cert_dir: Path | None = typer.Option(
        None,
        help="Directory of the party's link certificate and key (mutual TLS between the "
        "parties; created on first start, key 0600). Default: <identity>-mpc-link beside the "
        "--identity keystore, else a fresh pair for this run.",
    ),
    stream_shaping: str | None = typer.Option(
        None,
        "--stream-shaping",
        help="Streamed answers through the OHTTP gateway: pad (default: each sealed chunk "
        "padded to a multiple of 256 bytes, so its size says nothing of the text) or off.",
    ),
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
            engine=engine,
            upstream_url=upstream_url,
            upstream_model=upstream_model,
            context_length=context_length,
            max_tokens_limit=max_tokens_limit,
            max_batch=max_batch,
            threads=threads,
            keys_path=str(keys) if keys else None,
            key_rotation_s=key_rotation,
            identity_path=str(identity) if identity else None,
            endpoint=endpoint,
            log_level=log_level,
            deployment_path=str(chain) if chain else None,
            stake=parse_amount(stake),
            free=True if free else None,
            ticket_face_value=parse_amount(face_value),
            ticket_win_prob=win_prob,
            tickets_path=str(tickets) if tickets else None,
            withdraw_interval_s=withdraw_interval,
            mpc_link=mpc_link,
            mpc_protocol=mpc_protocol,
            mpc_model=mpc_model,
            mpc_session_timeout_s=mpc_session_timeout,
            mpc_link_timeout_s=mpc_link_timeout,
            mpc_cert_dir=str(mpc_cert_dir) if mpc_cert_dir else None,
            attestation=attestation,
            stream_shaping=stream_shaping,
        )
    except NodeConfigError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    run_node(cfg, console)


def _evidence_producer(cfg, console):
    """The configured evidence producer; for tdx, one quote is made now as a probe."""
    from veil.attest.errors import EvidenceUnavailable
    from veil.attest.producer import DevProducer, TdxProducer

    if cfg.attestation != "tdx":
        return DevProducer()
    producer = TdxProducer()
    try:
        producer.produce(b"\x00" * 64)
    except EvidenceUnavailable as exc:
        console.print(f"[red]error:[/] --attestation tdx: {exc}")
        raise SystemExit(2) from None
    return producer


def run_node(cfg, console) -> None:
    """Load, serve, and shut down cleanly (the engine thread stops after uvicorn)."""
    import os

    import uvicorn

    from veil.engine import ModelLoadError
    from veil.node.api import create_app
    from veil.node.descriptor import load_node_identity
    from veil.node.errors import NodeSetupError
    from veil.node.keys import load_or_create_keys

    logging.basicConfig(
        level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    producer = _evidence_producer(cfg, console)  # before the model: fail fast, fail closed
    try:
        engine = open_engine(cfg, console)
    except ModelLoadError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise SystemExit(2) from None
    console.print(
        f"model [bold]{engine.model_id}[/] on engine [bold]{engine.kind}[/] "
        f"sha256:{engine.weights_sha256[:16]}... ({engine.weights_scope} weights: "
        f"{engine.weights_source}) context {engine.context_length} tokens"
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
    payments = party = None
    try:
        if cfg.mpc_link:
            party = _open_party(cfg, _party_model(cfg, engine, console), console)
        if cfg.deployment_path:
            payments = _open_chain(cfg, identity, console)
        app = create_app(
            engine, cfg, keys, identity, producer=producer, payments=payments, party=party
        )
        if payments is not None:
            _register(cfg, app, payments, keys, console)
    except NodeSetupError as exc:
        engine.close()
        console.print(f"[red]error:[/] {exc}")
        raise SystemExit(2) from None
    console.print(
        f"node identity [bold]{identity.address}[/]"
        + ("" if cfg.identity_path else " [yellow](in memory only)[/]")
        + (
            "; attestation [green]tdx[/]"
            if cfg.attestation == "tdx"
            else "; attestation [yellow]dev: no hardware isolation[/]"
        )
    )
    if payments is None:
        console.print("payments: off (no --chain): every request is served for free")
    else:
        _print_offer(payments, console)
    console.print(
        f"node API on http://{cfg.host}:{cfg.port}/v1  (OHTTP gateway at /gateway, "
        f"keys at /.well-known/ohttp-keys)  Ctrl-C stops"
    )
    harden_process()
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


def open_engine(cfg, console):
    """The backend `cfg.engine` names, loaded (a first ctranslate2 start converts the model)."""
    if cfg.engine == "upstream":
        from veil.engine.upstream import UpstreamConfig, UpstreamEngine

        with console.status(f"reading the tokenizer and hashing the weights for {cfg.engine}..."):
            return UpstreamEngine.open(
                UpstreamConfig(
                    url=cfg.upstream_url,
                    model=cfg.upstream_model,
                    connect_timeout_s=cfg.upstream_connect_timeout_s,
                    read_timeout_s=cfg.upstream_read_timeout_s,
                    max_queue=cfg.max_queue,
                    max_running=cfg.max_batch,
                ),
                cfg.model_path,
                cfg.model_id,
                context_length=cfg.context_length,
            )
    if cfg.engine == "ctranslate2":
        from veil.engine.ct2 import Ct2Engine, load_ct2_model

        with console.status("loading model (ctranslate2)...") as status:
            model = load_ct2_model(
                cfg.model_path,
                cfg.model_id,
                threads=cfg.threads,
                progress=lambda message: status.update(message),
            )
        return Ct2Engine(
            model,
            max_batch=cfg.max_batch,
            max_queue=cfg.max_queue,
            context_length=cfg.context_length,
        )
    from veil.engine import Engine, load_model

    with console.status("loading model (about 20 s on 2 CPU cores)..."):
        loaded = load_model(cfg.model_path, cfg.model_id, threads=cfg.threads)
    return Engine(
        loaded,
        max_batch=cfg.max_batch,
        max_queue=cfg.max_queue,
        context_length=cfg.context_length,
    )


def _party_model(cfg, engine, console):
    """The fp32 model an MPC party computes: the builtin engine's, else loaded for it."""
    loaded = getattr(engine, "loaded", None)
    if loaded is None and cfg.mpc_model is None:
        from veil.engine import load_model

        with console.status("loading the fp32 model for the MPC party..."):
            loaded = load_model(cfg.model_path, cfg.model_id, threads=cfg.threads)
    return loaded


def _open_party(cfg, loaded, console):
    from veil.node.mpc import build_party

    logging.getLogger("jax").setLevel(logging.WARNING)
    with console.status("preparing the MPC party (compiling its first programs)..."):
        party = build_party(cfg, loaded)
    console.print(
        f"MPC party: {cfg.mpc_protocol}, SPU link on {cfg.mpc_link} (mutual TLS, certificate "
        f"sha256:{party.service.identity.fingerprint[:16]}...), control at /v1/mpc "
        f"(sealed through the relay); idle sessions wiped after {cfg.mpc_session_timeout_s:g} s"
    )
    return party


def _open_chain(cfg, identity, console):
    from veil.node.onchain import DEVNET_CHAIN_IDS
    from veil.node.payments import open_payments

    with console.status(f"connecting to the chain ({cfg.deployment_path})..."):
        payments = open_payments(cfg, identity)
    client = payments.client
    console.print(
        f"chain {client.deployment.chain_id} at {client.deployment.rpc_url}, "
        f"broker {client.broker.address}"
    )
    if cfg.free and client.deployment.chain_id not in DEVNET_CHAIN_IDS:
        console.print(
            "[yellow]warning:[/] --free on a chain that is not a local devnet: requests "
            "without a ticket are served unpaid"
        )
    return payments


def _register(cfg, app, payments, keys, console) -> None:
    from veil.chain.errors import ChainError
    from veil.chain.types import ModelEntry
    from veil.node.errors import NodeSetupError
    from veil.node.onchain import devnet_top_up, ensure_registered

    client = payments.client
    engine = app.state.engine
    issuer = app.state.descriptor_issuer
    descriptor = issuer.current().descriptor

    def say(message: str) -> None:
        console.print(f"  {message}")

    with console.status("registering the node on chain..."):
        try:
            stake = cfg.stake if cfg.stake is not None else client.min_stake()
            bonded = client.get_node(client.address).stake
        except ChainError as exc:
            raise NodeSetupError(f"chain: {exc}") from exc
        devnet_top_up(client, max(0, stake - bonded), progress=say)
        registration = ensure_registered(
            client,
            endpoint=cfg.endpoint or f"http://{cfg.host}:{cfg.port}",
            ohttp_keys=keys.encoded_configs(),
            evidence_data=descriptor.evidence.data,
            models=[ModelEntry(engine.model_id, bytes.fromhex(engine.weights_sha256))],
            stake=cfg.stake,
            progress=say,
        )
    from veil.chain.payment import format_veil

    console.print(
        f"registered on chain as [bold]{registration.address}[/], "
        f"stake {format_veil(registration.stake)}"
    )


def _print_offer(payments, console) -> None:
    from veil.chain.payment import format_veil

    desk = payments.desk
    path = payments.queue.path
    console.print(
        f"payments: a winning ticket pays {format_veil(desk.face_value)} with probability "
        f"{desk.win_prob / 2**256:.4g}: about {desk.price / 10**18:.6g} VEIL per request"
        + (" [yellow](free: requests without a ticket are served too)[/]" if desk.free else "")
    )
    console.print(
        f"  winning tickets queue in {path if path else '[yellow]memory only[/]'}; "
        f"{len(payments.queue)} pending; earnings "
        + ("withdrawn automatically" if payments.redeemer.auto_withdraw else "left at the broker")
    )
