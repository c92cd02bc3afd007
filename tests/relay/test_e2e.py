"""End to end: client -> relay -> node gateway -> inner app, as separate processes on loopback.

RecordingApp taps sit on both sides of the relay and keep every byte it receives and sends; the
relay's and gateway's logs are kept too. The prompt and the answer must appear in none of what
the relay handles, and the inner app must see no client address and no client header.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from support.net import Tap, free_port, wait_ready
from support.ohttp import ANSWER, ANSWER_TOKENS, SECRET_PROMPT
from veil.client import OhttpTransport, relay_keys_url
from veil.node.keys import NodeKeys

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_chat_streams_through_relay_without_exposing_content(tmp_path: Path) -> None:
    keys = NodeKeys.generate(1)
    keys.save(tmp_path / "keys.json")
    gw_port, relay_port = free_port(), free_port()
    node_tap = Tap(gw_port)  # between relay and gateway
    (tmp_path / "nodes.json").write_text(
        json.dumps({"nodes": [{"id": "node-a", "url": f"http://127.0.0.1:{node_tap.port}"}]})
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO / 'tests'}"}
    gw_log = open(tmp_path / "gw.log", "wb")  # noqa: SIM115 - closed in finally
    relay_log = open(tmp_path / "relay.log", "wb")  # noqa: SIM115
    seen_file = tmp_path / "seen.json"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests" / "support" / "ohttp.py"),
                "gateway",
                str(tmp_path / "keys.json"),
                str(gw_port),
                str(seen_file),
            ],
            env=env,
            stdout=gw_log,
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from veil.cli import app; app()",
                "relay",
                "serve",
                "--nodes",
                str(tmp_path / "nodes.json"),
                "--port",
                str(relay_port),
                "--allow-private-endpoints",  # the gateway is on 127.0.0.1
            ],
            env=env,
            stdout=relay_log,
            stderr=subprocess.STDOUT,
        ),
    ]
    client_tap = Tap(relay_port)  # between client and relay
    relay_url = f"http://127.0.0.1:{client_tap.port}"
    try:
        wait_ready(f"http://127.0.0.1:{gw_port}/.well-known/ohttp-keys", procs)
        wait_ready(f"http://127.0.0.1:{relay_port}/relay/node-a/ohttp-keys", procs)
        transport = OhttpTransport(
            relay_url, "node-a", keys_url=relay_keys_url(relay_url, "node-a")
        )
        client = openai.OpenAI(
            base_url="https://node.veil.invalid/v1",
            api_key="sk-e2e-credential",
            max_retries=0,
            http_client=httpx.Client(transport=transport),
        )
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": SECRET_PROMPT}], stream=True
        )
        arrivals, tokens = [], []
        for chunk in stream:
            if chunk.choices[0].delta.content:
                tokens.append(chunk.choices[0].delta.content)
                arrivals.append(time.monotonic())
        assert "".join(tokens) == ANSWER
        # Tokens came as produced (the inner app waits 50 ms between them), not all at once.
        assert arrivals[-1] - arrivals[0] > 0.1
        done = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": SECRET_PROMPT}]
        )
        assert done.choices[0].message.content == ANSWER
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        client_tap.close()
        node_tap.close()
        gw_log.close()
        relay_log.close()

    relay_saw = (
        bytes(client_tap.data) + bytes(node_tap.data) + (tmp_path / "relay.log").read_bytes()
    )
    assert len(client_tap.data) > 500 and len(node_tap.data) > 500  # the taps did see traffic
    secrets = [SECRET_PROMPT, ANSWER, *ANSWER_TOKENS[1:], "sk-e2e-credential", "OpenAI/Python"]
    for secret in secrets:
        assert secret.encode() not in relay_saw, secret
    assert SECRET_PROMPT.encode() not in (tmp_path / "gw.log").read_bytes()
    seen = json.loads(seen_file.read_text())
    assert [entry["prompt"] for entry in seen] == [SECRET_PROMPT, SECRET_PROMPT]
    for entry in seen:
        assert entry["client"] is None
        assert {name for name, _ in entry["headers"]} <= {
            "content-type",
            "accept",
            "content-length",
            "x-veil-request-digest",  # the gateway's own, for the receipt
        }
