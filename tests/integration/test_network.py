"""Issue 6's acceptance: the whole local network (anvil, two nodes, relay, gateway) as separate
processes, used with the official `openai` package against the gateway.

Every answer's receipt is checked here again, independently of the gateway; winning tickets
are redeemed and the books balance to the wei; a `tee` request is refused before anything is
sent; a killed node is routed around; and no log, nor any byte the relay handled, holds a
prompt or an answer.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from rich.console import Console

from support.net import Tap
from veil.chain import ChainClient, Deployment
from veil.client.gateway.credits import CreditConfig
from veil.commands.up import VEIL, LocalNetwork, NetworkConfig
from veil.engine import PACKAGED_MODEL_ID
from veil.identity import Receipt, check_receipt

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPTS = [
    f"Write one short sentence about the city of {city}, for a pen pal named Quillfeather."
    for city in ("Lisbon", "Nairobi", "Osaka", "Quito", "Tromso", "Hobart", "Tbilisi", "Accra")
]
ZERO = b"\x00" * 32


def fragments(text: str, size: int = 12) -> list[str]:
    text = text.strip()
    return [text[i : i + size] for i in range(0, max(1, len(text) - size), size // 2)]


@pytest.fixture(scope="module")
def network(tmp_path_factory):  # type: ignore[no-untyped-def]
    data = tmp_path_factory.mktemp("veil-home")
    taps: list[Tap] = []

    def through_tap(url: str) -> str:
        taps.append(Tap(url.rsplit(":", 1)[1]))
        return f"http://{taps[0].address}"

    settings = NetworkConfig(
        chain_port=0,
        node_ports=(0, 0),
        relay_port=0,
        gateway_port=0,
        win_prob=1.0,  # every ticket wins: the token purchases are on the books for sure
        withdraw_interval_s=1.0,
    )
    net = LocalNetwork(data, settings, relay_proxy=through_tap)
    try:
        net.start(Console(quiet=True))
        yield net, taps[0]
    finally:
        net.stop()
        for tap in taps:
            tap.close()


def receipt_of(body: dict, answer: str, node: str) -> Receipt:
    """Check the receipt ourselves: signed by the answering node, over this answer, paid."""
    receipt = Receipt.from_json(body["veil_receipt"])
    check_receipt(receipt, node, answer_text=answer)
    assert receipt.ticket_id != ZERO
    return receipt


def test_whole_network(network) -> None:  # type: ignore[no-untyped-def]
    net, tap = network
    deployment = Deployment.load(net.deployment_path)
    chain = ChainClient(deployment)
    nodes = set(net.node_addresses.values())
    wallet = _wallet_address(net)
    deposit_before = chain.sender_funds(wallet).deposit
    balances_before = {a: chain.token_balance(a) for a in nodes}
    client = openai.OpenAI(base_url=net.gateway_url + "/v1", api_key="anything", max_retries=0)
    answers: list[str] = []

    # models: the gateway lists what the chain's verified nodes serve
    assert PACKAGED_MODEL_ID in {m.id for m in client.models.list().data}

    # non-streamed, through the raw response to see the headers
    raw = client.chat.completions.with_raw_response.create(
        model=PACKAGED_MODEL_ID,
        messages=[{"role": "user", "content": PROMPTS[0]}],
        max_tokens=12,
    )
    completion = raw.parse()
    answer = completion.choices[0].message.content
    node = raw.headers["x-veil-node"]
    assert node in nodes
    assert raw.headers["x-veil-receipt"] == "verified"
    assert "no hardware isolation" in raw.headers["x-veil-attestation"]
    receipt = receipt_of(completion.model_dump(), answer, node)
    assert raw.headers["x-veil-receipt-id"] == "0x" + receipt.request_digest.hex()
    answers.append(answer)

    # streamed: the receipt rides on the final chunk; [DONE] only after the gateway checked it
    answered_by: set[str] = {node}
    for prompt in PROMPTS[1:6]:
        with client.chat.completions.with_streaming_response.create(
            model=PACKAGED_MODEL_ID,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=10,
            stream=True,
        ) as response:
            node = response.headers["x-veil-node"]
            chunks = list(response.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        final = [c for c in chunks if (c.model_extra or {}).get("veil_receipt")]
        assert len(final) == 1
        receipt_of(final[0].model_dump(), text, node)
        answered_by.add(node)
        answers.append(text)
    assert answered_by == nodes  # both nodes take work (least-loaded choice)

    # tee: no node here has hardware evidence: refused with a policy error, nothing sent
    sent_before = len(tap.received)
    forwarded_before = _relay_forwards(net)
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(
            model=PACKAGED_MODEL_ID + ":tee",
            messages=[{"role": "user", "content": "tee please"}],
            max_tokens=4,
        )
    assert refused.value.status_code in (400, 403)
    assert "tee" in str(refused.value) and "dev" in str(refused.value)
    assert b"POST /relay/" not in bytes(tap.received[sent_before:])
    assert _relay_forwards(net) == forwarded_before > 0

    # payment: the gateway pays with anonymous credits by default: one ticket bought each
    # node a batch of tokens, the requests carried tokens (their receipts name the tokens'
    # payment id, checked by the gateway). Every winning ticket is redeemed; the books balance.
    paid = _wait_redeemed(net, chain, wallet)
    assert sorted(t.recipient for t in paid) == sorted(nodes)  # one purchase per node
    assert all(t.face_value == CreditConfig().batch * VEIL for t in paid)
    for address in nodes:
        won = sum(t.face_value for t in paid if t.recipient == address)
        assert chain.token_balance(address) - balances_before[address] == won
    assert deposit_before - chain.sender_funds(wallet).deposit == sum(t.face_value for t in paid)
    for url in net.node_urls.values():
        assert httpx.get(url + "/healthz", timeout=5).json()["credits"]["redeemed"] > 0

    # failover: kill one node; requests still succeed on the other
    victim = "node-a"
    net.nodes[victim].kill()
    survivor = net.node_addresses["node-b"]
    for prompt in PROMPTS[6:]:
        raw = client.chat.completions.with_raw_response.create(
            model=PACKAGED_MODEL_ID, messages=[{"role": "user", "content": prompt}], max_tokens=8
        )
        assert raw.headers["x-veil-node"] == survivor
        answers.append(raw.parse().choices[0].message.content)

    # privacy: neither the relay's bytes nor any log holds a prompt or an answer
    seen = bytes(tap.data)
    logs = {p.name: p.read_text(errors="replace") for p in (net.data_dir / "logs").glob("*.log")}
    assert {"gateway.log", "relay.log", "node-a.log", "node-b.log"} <= set(logs)
    for prompt in PROMPTS:
        assert prompt.encode() not in seen
        for name, text in logs.items():
            assert prompt not in text, name
    for answer in answers:
        for piece in fragments(answer):
            assert piece.encode() not in seen
            for name, text in logs.items():
                assert piece not in text, name


def _wallet_address(net: LocalNetwork) -> str:
    from veil.identity.keystore import load_keystore

    return str(load_keystore(net.wallet_path).address)


def _relay_forwards(net: LocalNetwork) -> int:
    """Requests the relay forwarded to a node (it logs one line each, without content)."""
    return (net.data_dir / "logs" / "relay.log").read_text().count("answered")


def _wait_redeemed(net: LocalNetwork, chain: ChainClient, wallet: str, timeout: float = 90.0):  # type: ignore[no-untyped-def]
    """Wait until both nodes have redeemed every winner and withdrawn their earnings."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        settled = True
        for url in net.node_urls.values():
            payments = httpx.get(url + "/healthz", timeout=5).json()["payments"]
            settled &= payments["pending"] == 0
        settled &= all(chain.earnings(a) == 0 for a in net.node_addresses.values())
        if settled:
            return chain.redeemed_tickets(sender=wallet)
        time.sleep(0.5)
    raise AssertionError("winning tickets were not redeemed in time")


def test_status_and_chat_commands(network) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from veil.cli import app

    net, _ = network
    runner = CliRunner()
    result = runner.invoke(app, ["status", "--data-dir", str(net.data_dir)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    for address in net.node_addresses.values():
        assert address in result.output
    assert "release log" in result.output and "redeemed tickets" in result.output
    # node-b's descriptor came through the relay (the running network's): it hosts no party
    [row] = [line for line in result.output.splitlines() if net.node_addresses["node-b"] in line]
    assert "│ no " in row, row
    # --json: the same, machine-readable (fields in docs/status.md)
    result = runner.invoke(app, ["status", "--data-dir", str(net.data_dir), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {n["operator"] for n in data["nodes"]} == set(net.node_addresses.values())
    by = {n["operator"]: n for n in data["nodes"]}
    assert by[net.node_addresses["node-b"]]["mpc_party"] == "no"
    assert data["validators"] == [] and data["challenges"] == []
    assert data["redeemed_tickets"]["count"] >= 2 and data["token_wallet"]["tokens"]

    chat = runner.invoke(
        app, ["chat", "--gateway", net.gateway_url, "-p", "Say hi.", "--max-tokens", "6"]
    )
    assert chat.exit_code == 0, chat.output
    assert f"answered by {net.node_addresses['node-b']}" in chat.output
    assert "receipt verified" in chat.output

    tee = runner.invoke(
        app, ["chat", "--gateway", net.gateway_url, "--mode", "tee", "-p", "Say hi."]
    )
    assert tee.exit_code == 1  # node-a is down by now, node-b is refused by the tee policy
    assert "the tee policy does not accept dev evidence" in tee.output
