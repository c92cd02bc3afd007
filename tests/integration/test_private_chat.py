"""Issue 3's acceptance on the real model: a node and a relay as separate processes, a chat
streamed through the relay, and every byte the relay handles checked for content.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.net import Tap, free_port
from veil.client.sdk import private_openai
from veil.commands.up import Service
from veil.engine import PACKAGED_MODEL_ID

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPT = "Describe the colour of a ripe banana to a friend named Zanzibar Quillfeather."


def fragments(text: str, size: int = 12) -> list[str]:
    """Overlapping pieces of the answer: none may show up in what the relay handled."""
    text = text.strip()
    return [text[i : i + size] for i in range(0, max(1, len(text) - size), size // 2)]


def test_real_model_chat_through_relay_leaks_nothing(tmp_path: Path) -> None:
    node_port, relay_port = free_port(), free_port()
    node = Service(
        "node",
        ["node", "serve", "--port", str(node_port), "--keys", str(tmp_path / "keys.json")],
        tmp_path / "node.log",
    )
    node_tap = Tap(node_port)  # relay -> node
    (tmp_path / "nodes.json").write_text(
        json.dumps({"nodes": [{"id": "n1", "url": f"http://127.0.0.1:{node_tap.port}"}]})
    )
    relay = Service(
        "relay",
        [
            "relay",
            "serve",
            "--nodes",
            str(tmp_path / "nodes.json"),
            "--port",
            str(relay_port),
            "--allow-private-endpoints",
        ],
        tmp_path / "relay.log",
    )
    client_tap = Tap(relay_port)  # client -> relay
    try:
        node.start()
        relay.start()
        node.wait_ready(f"http://127.0.0.1:{node_port}/healthz", timeout=300)
        relay.wait_ready(f"http://127.0.0.1:{relay_port}/relay/n1/ohttp-keys", timeout=30)
        client = private_openai(f"http://127.0.0.1:{client_tap.port}", "n1")
        chunks = list(
            client.chat.completions.create(
                model=PACKAGED_MODEL_ID,
                messages=[{"role": "user", "content": PROMPT}],
                max_tokens=40,
                temperature=0,
                stream=True,
            )
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        whole = client.chat.completions.create(
            model=PACKAGED_MODEL_ID,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=40,
            temperature=0,
        )
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 5
        assert whole.choices[0].message.content == streamed
        assert whole.usage.completion_tokens > 5
    finally:
        relay.stop()
        node.stop()
        client_tap.close()
        node_tap.close()

    relay_saw = bytes(client_tap.data) + bytes(node_tap.data) + relay.log_path.read_bytes()
    node_log = node.log_path.read_bytes()
    assert len(client_tap.data) > 1000 and len(node_tap.data) > 1000
    for needle in ["Zanzibar", "Quillfeather", "banana", *fragments(streamed)]:
        assert needle.encode() not in relay_saw, needle
        assert needle.encode() not in node_log, needle
