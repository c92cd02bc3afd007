"""`veil chat`: a terminal chat, through the local gateway or straight to one node via a relay;
and `veil gateway`, that local gateway (`veil.client.gateway`) on a port.

Through the gateway (the default: the one `veil up` runs, or `--gateway URL`), the gateway
picks a verified node, pays it and checks the receipt; each answer shows which node answered,
its attestation and the receipt status (from the gateway's `x-veil-*` headers).

With `--relay URL --node ID` this process does it itself: the node's descriptor is fetched
through the relay and verified under the chosen privacy mode (the node's address and
attestation kind are shown; a `dev` node says "no hardware isolation") and every receipt is
checked here. Either way an answer whose receipt is refused is marked untrusted and dropped
from the conversation.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from veil.commands.service import harden_process
from veil.wire.http import (
    ATTESTATION_HEADER,
    MODE_HEADER,
    MPC_PROTOCOL_HEADER,
    NODE_HEADER,
    NODES_HEADER,
    RECEIPT_HEADER,
)

DEFAULT_MODEL = "smollm2-135m-instruct"


def _err(text: str) -> None:
    typer.echo(text, err=True)


def stream_reply(
    client: Any,
    model: str,
    history: list[dict[str, str]],
    out: Any,
    session: Any = None,
    **params: Any,
) -> str:
    """Stream one assistant turn to `out`; return its text.

    With a `VeilSession`, the receipt is checked as the stream ends (`ReceiptRefused` raises
    after the text was shown; the caller must then not trust it) and its status is shown.
    """
    stream = client.chat.completions.create(model=model, messages=history, stream=True, **params)
    text = _show_stream(stream, out)
    if session is not None:
        _err(receipt_line(session))
    return text


def _show_stream(chunks: Any, out: Any) -> str:
    """Write each content delta of a chat stream to `out` as it arrives; return the text."""
    parts: list[str] = []
    try:
        for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                piece = chunk.choices[0].delta.content
                parts.append(piece)
                out.write(piece)
                out.flush()
    finally:
        out.write("\n")
        out.flush()
    return "".join(parts)


def receipt_line(session: Any) -> str:
    """The status of the last verified receipt, for the terminal."""
    if not session.receipts:
        return "receipt: none verified"
    r = session.receipts[-1].receipt
    return (
        f"receipt: verified (signed by {r.node[:10]}..., {r.prompt_tokens} prompt + "
        f"{r.completion_tokens} completion tokens, model {r.model_hash.hex()[:12]}...)"
    )


def refused_line(exc: Any) -> str:
    return f"receipt REFUSED ({exc.check}): {exc}. Do not trust the answer above."


def describe_session(session: Any) -> list[str]:
    """Lines naming the verified node: address, attestation kind, isolation, warnings."""
    lines = [f"verified {session.describe()}"]
    lines += [f"warning: {w}" for w in session.report.warnings]
    return lines


def open_session(
    relay: str,
    node: str,
    *,
    mode: str = "anonymous",
    releases: Path | None = None,
    receipts: Path | None = None,
    store: bool = True,
    model: str | None = None,
) -> Any:
    """Connect to a verified node (raises `NodeRejected` etc. before anything is sent)."""
    from veil.attest.policy import LocalReleases, Policy
    from veil.client.receipts import ReceiptStore
    from veil.client.session import connect

    policy = Policy.for_mode(
        mode, releases=None if releases is None else LocalReleases.from_file(releases)
    )
    receipt_store = ReceiptStore.open(receipts) if store else None
    return connect(relay, node, policy=policy, store=receipt_store, model_id=model)


def gateway_openai(gateway_url: str) -> Any:
    """The unchanged openai SDK pointed at a Veil gateway."""
    import os

    import openai

    key = os.environ.get("VEIL_API_KEY") or "veil"  # the gateway's --api-key, if it has one
    return openai.OpenAI(base_url=gateway_url.rstrip("/") + "/v1", api_key=key, max_retries=0)


def answered_line(headers: Any, *, streamed: bool) -> str:
    """Who answered and what was checked, from the gateway's response headers."""
    if headers.get(MODE_HEADER) == "mpc":
        nodes = headers.get(NODES_HEADER, "unknown nodes").replace(",", ", ")
        return (
            f"computed by MPC parties {nodes} ({headers.get(MPC_PROTOCOL_HEADER, '?')}, "
            f"attestation {headers.get(ATTESTATION_HEADER, 'unknown')}): each saw only "
            "secret shares, never the prompt or the answer; no receipt in this mode"
        )
    node = headers.get(NODE_HEADER, "unknown node")
    attestation = headers.get(ATTESTATION_HEADER, "unknown attestation")
    receipt = headers.get(RECEIPT_HEADER) or ("verified" if streamed else "not reported")
    return f"answered by {node} (attestation {attestation}); receipt {receipt}"


def gateway_reply(
    client: Any, model: str, history: list[dict[str, str]], out: Any, **params: Any
) -> str:
    """Stream one assistant turn through the gateway to `out`; return its text.

    The gateway ends a stream with `[DONE]` only once the node's receipt verified; a refused
    receipt or a node that fails mid-answer arrives as an error event, which the SDK raises.
    """
    with client.chat.completions.with_streaming_response.create(
        model=model, messages=history, stream=True, **params
    ) as response:
        text = _show_stream(response.parse(), out)
        _err(answered_line(response.headers, streamed=True))
    return text


def run_gateway_repl(
    client: Any, model: str, history: list[dict[str, str]], params: dict[str, Any]
) -> None:
    """Read prompts until EOF or Ctrl-C, answered through the gateway."""
    import openai

    def untrusted(exc: Exception) -> str:
        return f"error: {exc}. The answer above, if any, is not trusted."

    _repl(
        lambda: gateway_reply(client, model, history, sys.stdout, **params),
        history,
        (openai.APIError, untrusted),
    )


def _repl(reply: Any, history: list[dict[str, str]], refused: tuple[type[Exception], Any]) -> None:
    """Read prompts until EOF or Ctrl-C; `reply()` streams one answer to the history's last
    prompt. An answer that raises `refused[0]` is reported and kept out of the history."""
    typer.echo("(Ctrl-D or Ctrl-C to leave the chat)")
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            typer.echo("")
            return
        if not line:
            continue
        history.append({"role": "user", "content": line})
        sys.stdout.write("assistant> ")
        try:
            answer = reply()
        except KeyboardInterrupt:
            typer.echo("\n(interrupted)")
            history.pop()
            continue
        except refused[0] as exc:
            _err(refused[1](exc))
            history.pop()  # an untrusted answer does not become context
            continue
        history.append({"role": "assistant", "content": answer})


def _default_gateway() -> str:
    from veil.home import default_data_dir, load_network_info

    try:
        return str(load_network_info(default_data_dir())["gateway_url"])
    except (RuntimeError, KeyError):
        return "http://127.0.0.1:8787"


def with_mode(model: str, mode: str) -> str:
    """The model id the gateway is asked for: `model:mode`, unless `model` already ends with
    a mode suffix or the mode is the default (anonymous)."""
    from veil.attest.policy import PrivacyMode

    if model.rpartition(":")[2] in {m.value for m in PrivacyMode} or mode == "anonymous":
        return model
    return f"{model}:{mode}"


def chat_via_gateway(
    gateway: str | None, model: str, mode: str, prompt: str | None, params: dict[str, Any]
) -> None:
    import openai

    url = gateway or _default_gateway()
    client = gateway_openai(url)
    asked = with_mode(model, mode)
    _err(f"chatting through the Veil gateway at {url} (model {asked})")
    history: list[dict[str, str]] = []
    try:
        if prompt is not None:
            history.append({"role": "user", "content": prompt})
            gateway_reply(client, asked, history, sys.stdout, **params)
            return
        run_gateway_repl(client, asked, history, params)
    except openai.APIConnectionError:
        _err(f"error: no gateway answers at {url}: start the network with `veil up`")
        raise typer.Exit(1) from None
    except openai.APIError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None


def chat(
    gateway: str | None = typer.Option(
        None,
        "--gateway",
        help="Veil gateway URL (default: the one `veil up` runs, else http://127.0.0.1:8787).",
    ),
    relay: str | None = typer.Option(
        None, "--relay", help="Skip the gateway: relay base URL (with --node)."
    ),
    node: str | None = typer.Option(
        None, "--node", help="Skip the gateway: node id on the relay (its operator address)."
    ),
    model: str = typer.Option(DEFAULT_MODEL, help="Model to ask for."),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="Ask once and exit."),
    max_tokens: int = typer.Option(256, help="Longest answer, in tokens."),
    temperature: float = typer.Option(0.7, help="0 for greedy decoding."),
    mode: str = typer.Option(
        "anonymous",
        help="Privacy mode: anonymous (accepts dev nodes, with a warning), tee, or mpc (three "
        "nodes compute on secret shares; through the gateway only, about 10 s per token); "
        "through the gateway it is sent as the model suffix (model:mode).",
    ),
    releases: Path | None = typer.Option(
        None, help="JSON list of approved releases (required by --mode tee)."
    ),
    receipts: Path | None = typer.Option(
        None, help="Receipt store (SQLite; default ~/.local/share/veil/receipts.sqlite)."
    ),
    store: bool = typer.Option(True, "--store/--no-store", help="Keep verified receipts."),
) -> None:
    """Chat with Veil: through the local gateway, or (--relay, --node) with one verified node.
    The relay sees ciphertext only; the node never sees you; every receipt is checked."""
    import openai

    from veil.attest.errors import AttestError, NodeRejected
    from veil.client.errors import ClientError, ReceiptRefused

    params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    if relay is None and node is None:
        chat_via_gateway(gateway, model, mode, prompt, params)
        return
    if relay is None or node is None:
        _err("error: --relay and --node go together (or use neither, for the gateway)")
        raise typer.Exit(2)
    if mode == "mpc":
        _err(
            "error: the mpc mode needs three nodes: use the gateway (no --relay/--node), or "
            "`veil mpc chat --relay URL --nodes A,B,C`"
        )
        raise typer.Exit(2)

    try:
        session = open_session(
            relay, node, mode=mode, releases=releases, receipts=receipts, store=store, model=model
        )
    except NodeRejected as exc:
        _err(f"error: node refused at step {exc.check!r}: {exc}")
        if exc.report is not None:
            for step in exc.report.steps:
                _err(f"  {step.status:8} {step.name} {step.detail}")
        raise typer.Exit(1) from None
    except (ClientError, AttestError) as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None
    for line in describe_session(session):
        _err(line)
    client = session.openai()
    history: list[dict[str, str]] = []
    try:
        if prompt is not None:
            history.append({"role": "user", "content": prompt})
            stream_reply(client, model, history, sys.stdout, session, **params)
            return
        run_repl(client, model, history, params, session)
    except ReceiptRefused as exc:
        _err(refused_line(exc))
        raise typer.Exit(1) from None
    except (ClientError, AttestError, openai.APIError) as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None


def run_repl(
    client: Any,
    model: str,
    history: list[dict[str, str]],
    params: dict[str, Any],
    session: Any = None,
) -> None:
    """Read prompts until EOF or Ctrl-C; history stays in this process only."""
    from veil.client.errors import ReceiptRefused

    _repl(
        lambda: stream_reply(client, model, history, sys.stdout, session, **params),
        history,
        (ReceiptRefused, refused_line),
    )


def gateway(
    relay: str = typer.Option(..., "--relay", help="Relay base URL, e.g. http://127.0.0.1:8780."),
    chain: Path | None = typer.Option(
        None,
        "--chain",
        help="Deployment file of the chain to read (default: $VEIL_DEPLOYMENT or "
        ".veil/chain/deployment.json).",
    ),
    wallet: Path | None = typer.Option(
        None,
        "--wallet",
        help="Keystore of the account that pays nodes (its TicketBroker deposit); an encrypted "
        "one is opened with $VEIL_WALLET_PASSPHRASE. Without it no ticket is sent.",
    ),
    host: str = typer.Option(
        "127.0.0.1", help="Bind address (keep it local; any other address needs --api-key)."
    ),
    port: int = typer.Option(8787, help="TCP port."),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="VEIL_API_KEY",
        help="Require `Authorization: Bearer KEY` (the openai SDK's api_key) on every request; "
        "required when --host is not a loopback address.",
    ),
    receipts: Path | None = typer.Option(
        None, help="Keep verified receipts in this SQLite store (no prompts or answers)."
    ),
    history: Path | None = typer.Option(
        None,
        "--history",
        help="Keep the chat page's conversations in this private SQLite file (only on this "
        "machine; the page can delete them for good and export them). Without it the page "
        "keeps none.",
    ),
    max_price: str = typer.Option(
        "1VEIL",
        "--max-price",
        help="Pay no node more than this per request on average (ticket face value x win "
        "probability); VEIL or base units. Dearer nodes are skipped.",
    ),
    max_face_value: str = typer.Option(
        "100VEIL",
        "--max-face-value",
        help="Sign no ticket that would pay more than this if it won.",
    ),
    tokens: bool = typer.Option(
        True,
        "--tokens/--no-tokens",
        help="Pay anonymous/tee requests with anonymous credits (RFC 9578 tokens) where the "
        "node sells them: bought with the wallet in batches of 16 at random times, kept in "
        "tokens.jsonl beside the wallet keystore, so a node cannot link requests to it. "
        "--no-tokens pays every request with a ticket (which names the wallet).",
    ),
) -> None:
    """Serve an OpenAI-compatible API on this machine: every request goes to a node verified
    from the chain, sealed through the relay, paid with a ticket, its receipt checked."""
    import contextlib
    import os

    import uvicorn

    from veil.chain import ChainClient, default_deployment_path
    from veil.chain.payment import parse_amount
    from veil.client.credits import TOKEN_WALLET_FILE
    from veil.client.gateway import GatewayConfig, create_gateway_app
    from veil.client.gateway.credits import CreditConfig
    from veil.client.gateway.guard import LOOPBACK_NAMES, host_names_for
    from veil.client.payer import PayerConfig, Wallet
    from veil.errors import VeilError

    if host.strip("[]") not in LOOPBACK_NAMES and not api_key:
        _err(
            f"error: --host {host} is not a loopback address: anyone who reaches it would spend "
            "your wallet; give --api-key (or $VEIL_API_KEY)"
        )
        raise typer.Exit(2)
    try:
        limits = PayerConfig(
            max_expected_value=parse_amount(max_price),
            max_face_value=parse_amount(max_face_value),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    try:
        chain_client = ChainClient.from_file(chain or default_deployment_path())
        payer = (
            None
            if wallet is None
            else Wallet.load(wallet, os.environ.get("VEIL_WALLET_PASSPHRASE") or None)
        )
    except VeilError as exc:
        _err(f"error: {exc}")
        raise typer.Exit(1) from None
    config = GatewayConfig(
        payer=limits,
        host_names=host_names_for(host),
        api_key=api_key,
        credits=CreditConfig() if tokens else None,
    )
    # anonymous credits: tokens bought with the wallet are kept beside its keystore
    token_wallet = None if wallet is None else wallet.parent / TOKEN_WALLET_FILE
    app = create_gateway_app(
        chain_client,
        relay,
        wallet=payer,
        receipts=receipts,
        config=config,
        history=history,
        tokens=token_wallet,
    )
    base = f"http://{host}:{port}/v1"
    _err(f"veil gateway on {base} (relay {relay}, chain id {chain_client.deployment.chain_id})")
    if payer is None:
        _err("warning: no --wallet: requests carry no payment ticket; paying nodes answer 402")
    else:
        _err(
            f"paying from {payer.address}, at most {max_price} per request on average and "
            f"{max_face_value} per winning ticket"
        )
    key_hint = "$VEIL_API_KEY" if api_key else '"unused"'
    _err(
        "use it with the openai SDK:\n"
        f'  client = openai.OpenAI(base_url="{base}", api_key={key_hint})\n'
        '  client.chat.completions.create(model="smollm2-135m-instruct", messages=[...])\n'
        "  (model suffix :anonymous, :tee or :mpc, or header x-veil-mode, picks the privacy "
        "mode)\n"
        f"status: http://{host}:{port}/veil/status; chat page: http://{host}:{port}/ "
        f"(explorer: /explorer); Ctrl-C stops"
    )
    harden_process()
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn stops cleanly on Ctrl-C
        uvicorn.run(app, host=host, port=port, log_level="warning")
    _err("gateway stopped")
