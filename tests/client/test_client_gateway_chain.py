"""The gateway end to end: anvil chain, two real model nodes registered on it, the relay, and
the official openai SDK (and the `veil gateway` command) in front.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from eth_account import Account

from support.gateway import RecordingApp
from support.net import ServerThread, free_port, wait_ready
from veil.chain import ChainClient, Devnet, ModelEntry, deploy
from veil.chain.deployment import TOKEN, Deployment
from veil.client.gateway import create_gateway_app
from veil.client.payer import Wallet
from veil.client.receipts import ReceiptStore
from veil.identity import NodeIdentity
from veil.identity.keystore import save_keystore
from veil.node.api import create_app
from veil.node.config import NodeConfig
from veil.node.descriptor import software_claim
from veil.node.keys import NodeKeys
from veil.relay.app import RelayConfig, create_relay_app
from veil.relay.directory import Node, StaticNodeDirectory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MESSAGES = [{"role": "user", "content": "Name a colour of the sky."}]
ROOT = Path(__file__).resolve().parents[2]


class ChainNetwork:
    def __init__(self, engine: Any, tmp: Path) -> None:
        self.stack: list[Any] = []
        self.devnet = Devnet().start()
        self.stack.append(self.devnet)
        accounts = self.devnet.accounts
        mint = {a.address: 1_000 * TOKEN for a in accounts[1:4]}
        deployment = deploy(self.devnet.rpc_url, accounts[0].private_key, mint=mint)
        self.deployment_path = deployment.save(tmp / "deployment.json")
        deployment = Deployment.load(self.deployment_path)
        weights = bytes.fromhex(engine.loaded.weights_sha256)
        ChainClient(deployment, accounts[0].private_key).publish_release(
            weights, software_claim(), "smollm2 / veil-node dev"
        )
        self.identities, self.nodes = [], []
        for account in accounts[1:3]:
            identity = NodeIdentity(Account.from_key(account.private_key))
            keys = NodeKeys.generate()
            app = create_app(
                engine, NodeConfig(max_tokens_limit=512, context_length=2048), keys, identity
            )
            server = ServerThread(app).__enter__()
            self.stack.append(server)
            ChainClient(deployment, identity.private_key).register_node(
                server.url,
                hashlib.sha256(keys.encoded_configs()).digest(),
                hashlib.sha256(app.state.descriptor_issuer.current().encode()).digest(),
                [ModelEntry(engine.model_id, weights)],
                100 * TOKEN,
            )
            self.identities.append(identity)
            self.nodes.append(server)
        payer = accounts[3]
        ChainClient(deployment, payer.private_key).fund_deposit(10 * TOKEN)
        self.wallet_path = tmp / "wallet.json"
        save_keystore(Account.from_key(payer.private_key), self.wallet_path)
        self.wallet_address = payer.address
        directory = StaticNodeDirectory(
            [Node(i.address, s.url) for i, s in zip(self.identities, self.nodes, strict=True)]
        )
        self.relay_app = RecordingApp(
            create_relay_app(directory, RelayConfig(allow_private_endpoints=True))
        )
        self.relay = ServerThread(self.relay_app).__enter__()
        self.stack.append(self.relay)
        self.receipts = tmp / "receipts.sqlite"
        app = create_gateway_app(
            ChainClient(deployment),  # read-only
            self.relay.url,
            wallet=Wallet.load(self.wallet_path),
            receipts=self.receipts,
        )
        self.gateway = ServerThread(app).__enter__()
        self.stack.append(self.gateway)
        self.model_id = engine.model_id

    def close(self) -> None:
        for item in reversed(self.stack):
            if isinstance(item, Devnet):
                item.stop()
            else:
                item.__exit__()


@pytest.fixture(scope="module")
def chain_net(engine, tmp_path_factory) -> Iterator[ChainNetwork]:  # type: ignore[no-untyped-def]
    net = ChainNetwork(engine, tmp_path_factory.mktemp("gateway-chain"))
    yield net
    net.close()


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def check_headers(headers: Any, net: ChainNetwork, receipt: dict[str, Any]) -> None:
    assert headers["x-veil-node"] in [i.address for i in net.identities]
    assert headers["x-veil-node"] == receipt["node"]
    assert headers["x-veil-mode"] == "anonymous"
    assert headers["x-veil-attestation"] == "dev; no hardware isolation"
    assert "registry: active" in headers["x-veil-verification"]
    assert headers["x-veil-receipt-id"] == receipt["request_digest"]
    if "x-veil-ticket-id" in headers:  # once nodes serve ticket params, receipts name tickets
        assert receipt["ticket_id"] == headers["x-veil-ticket-id"]


def test_openai_sdk_through_the_gateway_on_chain(chain_net: ChainNetwork, loaded_model) -> None:  # type: ignore[no-untyped-def]
    client = sdk(chain_net.gateway.url)
    params = {"model": chain_net.model_id, "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    with client.chat.completions.with_streaming_response.create(stream=True, **params) as raw:
        chunks = list(raw.parse())
        streamed_headers = raw.headers
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    [receipt] = [c.model_extra["veil_receipt"] for c in chunks if "veil_receipt" in c.model_extra]
    check_headers(streamed_headers, chain_net, receipt)
    assert receipt["model_hash"] == "0x" + loaded_model.weights_sha256

    raw_whole = client.chat.completions.with_raw_response.create(**params)
    whole = raw_whole.parse()
    assert raw_whole.headers["x-veil-receipt"] == "verified"
    check_headers(raw_whole.headers, chain_net, whole.model_extra["veil_receipt"])
    assert whole.choices[0].message.content == streamed and streamed

    models = {m.id for m in client.models.list().data}
    assert models == {chain_net.model_id, chain_net.model_id + ":anonymous"}
    status = httpx.get(chain_net.gateway.url + "/veil/status", timeout=30).json()
    assert status["wallet"]["address"] == chain_net.wallet_address
    assert status["wallet"]["deposit"] == str(10 * TOKEN)
    assert {n["address"] for n in status["nodes"]} == {i.address for i in chain_net.identities}
    assert all(n["modes"]["anonymous"]["verified"] for n in status["nodes"])
    with ReceiptStore.open(chain_net.receipts) as store:
        assert len(store.receipts()) == 2


def test_tee_is_refused_and_nothing_is_sent(chain_net: ChainNetwork) -> None:
    chain_net.relay_app.calls.clear()
    with pytest.raises(openai.PermissionDeniedError) as info:
        sdk(chain_net.gateway.url).chat.completions.create(
            model=chain_net.model_id + ":tee", messages=MESSAGES, max_tokens=4
        )
    assert info.value.code == "no_node_satisfies_policy"
    for identity in chain_net.identities:
        assert identity.address in info.value.message
    assert all(m == "GET" and p.endswith("/descriptor") for m, p in chain_net.relay_app.calls)


def test_veil_gateway_command(chain_net: ChainNetwork, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [
        sys.executable, "-m", "veil", "gateway",
        "--relay", chain_net.relay.url,
        "--chain", str(chain_net.deployment_path),
        "--wallet", str(chain_net.wallet_path),
        "--port", str(port),
        "--receipts", str(tmp_path / "r.sqlite"),
    ]  # fmt: skip
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/healthz", [proc], timeout=60)
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": chain_net.model_id, "messages": MESSAGES, "max_tokens": 4},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-veil-receipt"] == "verified"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/v1" in err and 'openai.OpenAI(base_url="' in err
    assert chain_net.wallet_address in err and "gateway stopped" in err


def test_failover_when_the_chosen_node_is_stopped(chain_net: ChainNetwork) -> None:
    status = httpx.get(chain_net.gateway.url + "/veil/status", timeout=30).json()
    order = {n["address"]: i for i, n in enumerate(status["nodes"])}
    next_pick = min(
        status["nodes"],
        key=lambda n: (n["in_flight"], n["ttfb_ms"] or 0.0, order[n["address"]]),
    )["address"]
    index = [i.address for i in chain_net.identities].index(next_pick)
    chain_net.nodes[index].__exit__()  # the node the gateway would choose is gone
    r = httpx.post(
        chain_net.gateway.url + "/v1/chat/completions",
        json={"model": chain_net.model_id, "messages": MESSAGES, "max_tokens": 4, "stream": True},
        timeout=120,
    )
    assert r.status_code == 200
    assert r.headers["x-veil-node"] != next_pick
    assert r.text.rstrip().endswith("data: [DONE]")
    # the node padded its stream (the default); the gateway hands on none of the padding
    assert not [line for line in r.text.splitlines() if line.startswith(":")]
    status = httpx.get(chain_net.gateway.url + "/veil/status", timeout=30).json()
    [down] = [n for n in status["nodes"] if n["address"] == next_pick]
    assert down["down_for_s"] > 0
