"""`veil chat`: a terminal chat whose every request is sealed to the node and sent via a relay."""

from __future__ import annotations

import sys
from typing import Any

import typer

DEFAULT_MODEL = "smollm2-135m-instruct"


def stream_reply(
    client: Any, model: str, history: list[dict[str, str]], out: Any, **params: Any
) -> str:
    """Stream one assistant turn to `out`; return its text."""
    stream = client.chat.completions.create(model=model, messages=history, stream=True, **params)
    parts: list[str] = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            piece = chunk.choices[0].delta.content
            parts.append(piece)
            out.write(piece)
            out.flush()
    out.write("\n")
    out.flush()
    return "".join(parts)


def chat(
    relay: str = typer.Option(..., "--relay", help="Relay base URL, e.g. http://127.0.0.1:8780."),
    node: str = typer.Option(..., "--node", help="Node id on the relay's list of known nodes."),
    model: str = typer.Option(DEFAULT_MODEL, help="Model to ask for."),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="Ask once and exit."),
    max_tokens: int = typer.Option(256, help="Longest answer, in tokens."),
    temperature: float = typer.Option(0.7, help="0 for greedy decoding."),
) -> None:
    """Chat with a node through a relay. The relay sees ciphertext only; the node never sees you."""
    import openai

    from veil.client.errors import ClientError
    from veil.client.sdk import private_openai

    client = private_openai(relay, node)
    history: list[dict[str, str]] = []
    params = {"max_tokens": max_tokens, "temperature": temperature}
    try:
        if prompt is not None:
            history.append({"role": "user", "content": prompt})
            stream_reply(client, model, history, sys.stdout, **params)
            return
        run_repl(client, model, history, params)
    except (ClientError, openai.APIError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def run_repl(
    client: Any, model: str, history: list[dict[str, str]], params: dict[str, Any]
) -> None:
    """Read prompts until EOF or Ctrl-C; history stays in this process only."""
    typer.echo("(Ctrl-D or Ctrl-C to leave)")
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
            answer = stream_reply(client, model, history, sys.stdout, **params)
        except KeyboardInterrupt:
            typer.echo("\n(interrupted)")
            history.pop()
            continue
        history.append({"role": "assistant", "content": answer})
