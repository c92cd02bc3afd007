"""Issue 5 end to end on the real model: client -> relay -> gateway -> node, each answer's
receipt verified against the node's descriptor (fetched through the relay).
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from support.net import ServerThread
from veil.client.receipts import ReceiptStore
from veil.client.session import connect
from veil.engine import PACKAGED_MODEL_ID
from veil.identity import NodeIdentity, Receipt, request_digest, verify_receipt
from veil.node.api import create_app
from veil.node.config import NodeConfig
from veil.node.keys import NodeKeys
from veil.relay.app import RelayConfig, create_relay_app
from veil.relay.directory import Node, StaticNodeDirectory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MESSAGES = [{"role": "user", "content": "Name a colour of the sky."}]


@pytest.fixture(scope="module")
def network(engine):  # type: ignore[no-untyped-def]
    identity = NodeIdentity.generate()
    node_app = create_app(
        engine, NodeConfig(max_tokens_limit=512, context_length=2048), NodeKeys.generate(), identity
    )
    with ServerThread(node_app) as node:
        relay_app = create_relay_app(
            StaticNodeDirectory([Node("n1", node.url)]),
            RelayConfig(allow_private_endpoints=True),  # the node is on 127.0.0.1
        )
        with ServerThread(relay_app) as relay:
            yield identity, node, relay


def test_chat_through_relay_with_verified_receipts(network, loaded_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    identity, _, relay = network
    with ReceiptStore.open(tmp_path / "receipts.sqlite") as store:
        session = connect(relay.url, "n1", mode="anonymous", store=store)
        assert session.address == identity.address
        assert session.attestation_kind == "dev"
        assert "no hardware isolation" in session.describe()
        client = session.openai()
        started = time.monotonic()
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model=PACKAGED_MODEL_ID,
                messages=MESSAGES,
                max_tokens=16,
                temperature=0,
                stream=True,
            )
            if c.choices
        )
        whole = client.chat.completions.create(
            model=PACKAGED_MODEL_ID, messages=MESSAGES, max_tokens=16, temperature=0
        )
        elapsed = time.monotonic() - started
        assert whole.choices[0].message.content == streamed and streamed
        first, second = session.receipts
        assert first.streamed and not second.streamed
        for result in (first, second):
            assert result.receipt.node == identity.address
            assert result.receipt.model_hash.hex() == loaded_model.weights_sha256
            assert {"request_digest", "answer_digest", "model_hash", "usage"} <= set(result.checks)
        assert second.receipt.completion_tokens == whole.usage.completion_tokens
        assert first.receipt.request_digest != second.receipt.request_digest
        assert whole.model_extra["veil_receipt"] == second.receipt.to_json()
        assert len(store.receipts()) == 2
    assert elapsed < 60


def test_direct_plaintext_request_gets_a_receipt_over_its_body(network, loaded_model) -> None:  # type: ignore[no-untyped-def]
    identity, node, _ = network
    body = json.dumps(
        {"model": PACKAGED_MODEL_ID, "messages": MESSAGES, "max_tokens": 4, "temperature": 0}
    ).encode()
    forged = "ab" * 32
    r = httpx.post(
        node.url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json", "x-veil-request-digest": forged},
        timeout=60,
    )
    out = r.json()
    receipt = Receipt.from_json(out["veil_receipt"])
    verify_receipt(
        receipt,
        identity.address,
        request_digest(body),  # not the header the client sent
        out["choices"][0]["message"]["content"],
        loaded_model.weights_sha256,
    )


def test_veil_chat_shows_node_attestation_and_receipt_status(network, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from veil.cli import app

    identity, _, relay = network
    result = CliRunner().invoke(
        app,
        [
            "chat",
            "--relay",
            relay.url,
            "--node",
            "n1",
            "-p",
            "Say hi.",
            "--max-tokens",
            "6",
            "--temperature",
            "0",
            "--receipts",
            str(tmp_path / "r.sqlite"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert identity.address in result.output
    assert "attestation dev (no hardware isolation)" in result.output
    assert "receipt: verified" in result.output
