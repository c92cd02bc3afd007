"""`veil mpc ...`: run a party, or chat through three parties. Imports stay light until used."""

from __future__ import annotations

import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path

import typer

from veil.commands.service import harden_process

mpc_app = typer.Typer(help="Cryptographic private mode: secret-shared inference across parties.")

_PROTOCOL_HELP = "aby3 (3 parties, honest majority, default) | semi2k | cheetah (2 parties)"


def _settings(protocol: str, exp_mode: str, sigmoid_mode: str, fxp_bits: int):
    from veil.mpc.runtime import MpcConfig

    return MpcConfig(
        protocol=protocol, exp_mode=exp_mode, sigmoid_mode=sigmoid_mode, fxp_fraction_bits=fxp_bits
    )


@mpc_app.command()
def party(
    listen: str = typer.Option("127.0.0.1:0", help="control address for clients (host:port)"),
    link: str = typer.Option(..., help="address this party binds for its SPU peers (host:port)"),
    model: str = typer.Option("smollm2", help="smollm2, or tiny:<seed> for tests"),
    protocol: str = typer.Option("aby3", help=_PROTOCOL_HELP),
    exp_mode: str = typer.Option("taylor"),
    sigmoid_mode: str = typer.Option(
        "real", help="SPU's sigmoid: real | seg3 | mm1 (only an exact SiLU uses it)."
    ),
    fxp_bits: int = typer.Option(18),
    session_timeout: float = typer.Option(300.0, help="seconds an idle session lives"),
    link_timeout: float = typer.Option(60.0, help="seconds a silent peer may take mid-run"),
    warm: bool = typer.Option(True, help="compile the first bucket's programs before READY"),
    cert_dir: Path | None = typer.Option(
        None,
        help="directory of this party's link certificate and key (mutual TLS between parties; "
        "created on first start, key 0600); default: a fresh pair for this run only",
    ),
) -> None:
    """Serve as one MPC party until SIGTERM; prints `READY <control> <link>` when listening."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("jax").setLevel(logging.WARNING)
    from veil.mpc.errors import MpcError
    from veil.mpc.party import PartyConfig, PartyService
    from veil.mpc.source import load_source

    settings = _settings(protocol, exp_mode, sigmoid_mode, fxp_bits)
    src = load_source(model)
    config = PartyConfig(
        link=link,
        settings=settings,
        session_timeout_s=session_timeout,
        link_timeout_ms=int(link_timeout * 1000),
        cert_dir=str(cert_dir) if cert_dir else None,
        warm=warm,
    )
    harden_process()
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        if stop.is_set() or not serving:  # still starting: leave now (workers are killed)
            raise SystemExit(1)
        stop.set()

    serving = False
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        service = PartyService(config, src.shape, src.weights, src.weights_sha256)
    except MpcError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    del src  # the service keeps the encoded weights only (in a file its workers read)
    try:
        service.warm()  # the first session worker is ready before READY
        host, _, port = listen.rpartition(":")
        addr = service.serve(host, int(port))
        serving = True
        print(f"READY {addr[0]}:{addr[1]} {link}", flush=True)
        logging.getLogger(__name__).info(
            "link certificate sha256:%s", service.identity.fingerprint[:16]
        )
        stop.wait()
    except MpcError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        service.shutdown()  # kills every session worker


@mpc_app.command()
def chat(
    prompt: str = typer.Argument(..., help="the user message"),
    parties: str = typer.Option(
        "",
        help="comma-separated `veil mpc party` control addresses (plain TCP: loopback only); "
        "empty, without --relay, starts 3 local parties",
    ),
    relay: str = typer.Option(
        "", help="relay URL: reach node-hosted parties (--nodes) sealed through it (OHTTP)"
    ),
    nodes: str = typer.Option(
        "", help="with --relay: comma-separated node ids of the parties, as the relay knows them"
    ),
    model: str = typer.Option("smollm2"),
    protocol: str = typer.Option("aby3", help=_PROTOCOL_HELP),
    max_tokens: int = typer.Option(32),
    temperature: float = typer.Option(0.0, help="0 is greedy"),
) -> None:
    """Generate an answer with the layers secret-shared across parties; streams tokens."""
    import numpy as np

    from veil.mpc.client import RemoteSession, generate
    from veil.mpc.errors import MpcError
    from veil.mpc.launch import start_parties
    from veil.mpc.source import load_source

    settings = _settings(protocol, "taylor", "real", 18)
    src = load_source(model)
    if src.tokenizer is not None:
        from veil.engine import ChatMessage, Sampler, SamplingParams, encode_chat

        ids = encode_chat(src.tokenizer, [ChatMessage("user", prompt)])
        sampler = Sampler(SamplingParams(max_tokens=max_tokens, temperature=temperature))

        def pick(logits: np.ndarray) -> int:
            import torch

            return sampler(torch.from_numpy(logits))
    else:
        ids = [int(t) % src.head.embedding.shape[0] for t in prompt.encode()]

        def pick(logits: np.ndarray) -> int:
            return int(np.argmax(logits))

    started = []
    specs: list = []
    if relay or nodes:
        if not (relay and nodes) or parties:
            typer.echo("error: give --relay with --nodes (and no --parties)", err=True)
            raise typer.Exit(2)
        from veil.client.mpc import mpc_parties  # the CLI sits over both rooms
        from veil.errors import VeilError

        node_ids = [n.strip() for n in nodes.split(",") if n.strip()]
        try:
            specs = mpc_parties([(relay, node_id) for node_id in node_ids])()
        except VeilError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    elif not parties:
        typer.echo("starting 3 local parties (loading the model in each)...", err=True)
        started = start_parties(model, settings, Path(tempfile.mkdtemp(prefix="veil-mpc-")))
        specs = [p.control for p in started]
    else:
        specs = [a.strip() for a in parties.split(",") if a.strip()]
    try:
        with RemoteSession(specs, settings, src.weights_sha256) as session:
            done: list[int] = []
            shown = ""
            for tok in generate(session, src.head, ids, max_tokens, pick, src.eos_token_ids):
                done.append(tok)
                if src.tokenizer is not None:
                    text = src.tokenizer.decode(done, skip_special_tokens=True)
                    sys.stdout.write(text[len(shown) :])
                    shown = text
                else:
                    sys.stdout.write(f"{tok} ")
                sys.stdout.flush()
            sys.stdout.write("\n")
            steps = [s for s in session.stats if s.op == "step"]
            if steps:
                per = sum(s.seconds for s in steps) / len(steps)
                typer.echo(f"[{len(done)} tokens, {per:.2f} s/token under {protocol}]", err=True)
    except MpcError as exc:
        typer.echo(f"\nerror: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        for p in started:
            p.stop()
