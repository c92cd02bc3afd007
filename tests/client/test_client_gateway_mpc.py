"""The gateway's `:mpc` variant against three real node apps hosting tiny-model parties.

Everything but the model is real: the openai SDK talks to the gateway; the gateway reads an
in-memory chain, verifies each node's descriptor (and the MPC party it states) through the real
relay, picks three party nodes of distinct operators and runs the MPC client itself, each
party's shares sealed to its own node's key (OHTTP) through the relay. The nodes are
`veil.node.api.create_app` with a stub engine (the MPC route needs no torch model) and a
`tiny:0` party (2 random layers, hidden 64).

The tiny source has no tokenizer, so the gateway is given one (`mpc_source`): the tiny layers
and head with a real byte-level `transformers` tokenizer whose 256 ids are the tiny head's
vocabulary. The gateway's own path (parse, select, tokenize, sample, detokenize, stream) is the
one the packaged model takes; only `source_for_model` is replaced.

A tap between gateway and relay records every byte: no prompt or answer text, no embedding row.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest

from support.gateway import TOKEN, FakeChainReader, RecordingApp, approve
from support.net import ServerThread, Tap, until
from veil.client.errors import NoPartyQuorum, PartiesBusy
from veil.client.gateway import GatewayConfig, create_gateway_app
from veil.client.mpc import choose_parties, mpc_parties
from veil.commands.chat import answered_line, with_mode
from veil.identity import MpcParty, NodeIdentity
from veil.mpc.client import RemoteSession
from veil.mpc.launch import free_port
from veil.mpc.runtime import MpcConfig
from veil.mpc.source import ModelSource, load_source
from veil.node.api import create_app
from veil.node.config import NodeConfig
from veil.node.keys import NodeKeys
from veil.node.mpc import NodeParty, build_party
from veil.relay.app import RelayConfig, create_relay_app
from veil.relay.directory import Node, StaticNodeDirectory

pytestmark = [pytest.mark.integration]

TINY = "tiny:0"
MODEL = TINY + ":mpc"
NODE_MODEL = "tiny-node"  # what the nodes' (stub) engines serve in the other modes
NODE_WEIGHTS = bytes.fromhex("5e" * 32)
SECRET = "ultramarine-walrus-8841 is the secret"
MESSAGES = [{"role": "user", "content": SECRET}]
IDLE_S = 4.0


def byte_tokenizer() -> Any:
    """A real byte-level tokenizer (transformers) with 256 ids and a small chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    return fast


def _stub_engine() -> Any:
    return SimpleNamespace(
        model_id=NODE_MODEL,
        context_length=2048,
        weights_sha256=NODE_WEIGHTS.hex(),
        kind="builtin",
        weights_scope="loaded",
        stats=SimpleNamespace(requests=0, tokens_generated=0),
    )


@dataclass
class Net:
    chain: FakeChainReader
    relay_app: RecordingApp
    relay: ServerThread
    tap: Tap
    parties: list[NodeParty]
    addresses: list[str]  # the three party nodes' operators
    bare: str  # a node without a party
    servers: list[ServerThread]
    source: ModelSource
    loads: list[str]

    @property
    def relay_url(self) -> str:  # what the gateway is given: through the tap
        return f"http://127.0.0.1:{self.tap.port}"

    def sent_to_nodes(self) -> list[tuple[str, str]]:
        return [c for c in self.relay_app.calls if c[0] == "POST"]


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    chain = FakeChainReader()
    approve(chain, NODE_WEIGHTS)
    parties, apps, addresses = [], [], []
    for _ in range(3):
        config = NodeConfig(
            max_body_bytes=128 * 1024,
            mpc_link=f"127.0.0.1:{free_port()}",
            mpc_model=TINY,
            mpc_session_timeout_s=IDLE_S,
            mpc_link_timeout_s=5.0,
        )
        party = build_party(config, warm=False)
        identity = NodeIdentity.generate()
        parties.append(party)
        addresses.append(identity.address)
        apps.append(create_app(_stub_engine(), config, NodeKeys.generate(), identity, party=party))
    bare = NodeIdentity.generate()
    apps.append(create_app(_stub_engine(), NodeConfig(), NodeKeys.generate(), bare))
    servers = [ServerThread(app).__enter__() for app in apps]
    for address in [*addresses, bare.address]:
        chain.register(address, [(NODE_MODEL, NODE_WEIGHTS)], 200 * TOKEN)
    directory = StaticNodeDirectory(
        [Node(a, s.url) for a, s in zip([*addresses, bare.address], servers, strict=True)]
    )
    relay_app = RecordingApp(
        create_relay_app(
            directory,
            RelayConfig(rate_per_s=1000, burst=1000, allow_private_endpoints=True),
        )
    )
    relay = ServerThread(relay_app).__enter__()
    tap = Tap(relay.port)
    source = load_source(TINY)
    source.tokenizer = byte_tokenizer()
    loads: list[str] = []
    try:
        yield Net(
            chain, relay_app, relay, tap, parties, addresses, bare.address, servers, source, loads
        )
    finally:
        tap.close()
        relay.__exit__()
        for s in servers:
            s.__exit__()


@pytest.fixture
def gateway(net: Net) -> Iterator[ServerThread]:
    net.relay_app.calls.clear()
    net.loads.clear()

    def source_for(model_id: str) -> ModelSource:
        net.loads.append(model_id)
        if model_id != TINY:
            return load_source(model_id)  # e.g. tiny:1: a tiny source without a tokenizer
        return net.source

    app = create_gateway_app(
        net.chain, net.relay_url, config=GatewayConfig(mpc_retry_after_s=7), mpc_source=source_for
    )
    with ServerThread(app) as server:
        yield server
    assert _wait_wiped(net), "every session must be closed and wiped on every party"


def _wait_wiped(net: Net, timeout: float = 20.0) -> bool:
    return until(lambda: not any(p.service.active_sessions() for p in net.parties), timeout, 0.1)


def sdk(gateway: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def post(gateway: ServerThread, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=120, **kw)


def events(text: str) -> list[Any]:
    out = []
    for line in text.splitlines():
        if line.startswith("data: "):
            out.append(line[6:] if line[6:] == "[DONE]" else json.loads(line[6:]))
    return out


def test_openai_sdk_streamed_and_whole_through_three_parties(
    net: Net, gateway: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    start = len(net.tap.data)
    client = sdk(gateway)
    params = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "temperature": 0}
    with client.chat.completions.with_streaming_response.create(
        **params, stream=True, stream_options={"include_usage": True}
    ) as response:
        headers = response.headers
        chunks = list(response.parse())
    assert headers["x-veil-mode"] == "mpc" and headers["x-veil-mpc-protocol"] == "aby3"
    nodes = headers["x-veil-nodes"].split(",")
    assert sorted(nodes) == sorted(net.addresses)  # three distinct operators, not the bare one
    assert headers["x-veil-attestation"] == "dev; no hardware isolation"
    assert headers["x-veil-receipt"] == "none"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and chunks[0].model == TINY
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finish] == ["length"]
    assert finish[0].usage.completion_tokens == 4
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    prompt_tokens = chunks[-1].usage.prompt_tokens
    ids = net.source.tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert prompt_tokens == len(ids)
    assert "computed by MPC parties" in answered_line(headers, streamed=True)

    whole = client.chat.completions.create(**params)
    assert whole.object == "chat.completion" and whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 4 and whole.usage.prompt_tokens == prompt_tokens
    assert net.loads == [TINY]  # the client side of the model loaded once

    # the gateway sent each node only sealed frames; nothing of the prompt or answer
    time.sleep(0.2)
    wire = bytes(net.tap.data[start:])
    assert len(net.sent_to_nodes()) >= 2 * 3 * 3  # hello, open, prefill... per party
    needles = [SECRET.encode(), b"ultramarine", b"walrus-8841"]
    needles += [row[:4].tobytes() for row in net.source.head.embed(ids, len(ids))]
    if len(streamed.strip()) >= 3:
        needles.append(streamed.strip().encode())
    for needle in needles:
        assert needle not in wire
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "mpc session on" in text
    for secret in (SECRET, "ultramarine", "walrus-8841"):
        assert secret not in text
    if len(streamed.strip()) >= 3:
        assert streamed.strip() not in text


def test_too_few_party_nodes_is_503_and_nothing_is_sent(net: Net, gateway: ServerThread) -> None:
    net.chain.set_stake(net.addresses[2], 10 * TOKEN)  # below the minimum: not eligible
    try:
        r = post(gateway, {"model": MODEL, "messages": MESSAGES})
        assert r.status_code == 503
        error = r.json()["error"]
        assert error["code"] == "mpc_unavailable" and error["type"] == "server_error"
        assert "aby3 needs 3 party nodes of distinct operators" in error["message"]
        assert "2 verified node(s) host one" in error["message"]
        assert "nothing was sent" in error["message"]
        # a model no node hosts a party for
        r = post(gateway, {"model": "tiny:7:mpc", "messages": MESSAGES})
        assert r.status_code == 503 and "no verified node hosts an MPC party" in r.text
        # the header asks for mpc too; never another mode instead
        r = post(gateway, {"model": TINY, "messages": MESSAGES}, headers={"x-veil-mode": "mpc"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "mpc_unavailable"
    finally:
        net.chain.set_stake(net.addresses[2], 200 * TOKEN)
    assert net.sent_to_nodes() == []  # descriptor and key fetches only


def test_bad_requests_are_400s_before_anything_is_sent(net: Net, gateway: ServerThread) -> None:
    for body, param in [
        ({"model": MODEL, "messages": MESSAGES, "max_tokens": 10_000}, "max_tokens"),
        (
            {"model": MODEL, "messages": MESSAGES, "max_completion_tokens": 0},
            "max_completion_tokens",
        ),
        ({"model": MODEL, "messages": MESSAGES, "temperature": 5}, "temperature"),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": MESSAGES, "tools": [{"type": "function"}]}, "tools"),
    ]:
        r = post(gateway, body)
        assert r.status_code == 400, body
        assert r.json()["error"]["param"] == param, r.json()
    assert net.sent_to_nodes() == []


def test_parties_busy_is_503_with_retry_after(net: Net, gateway: ServerThread) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200  # the first token is out: the session holds the parties
        second = post(gateway, {"model": MODEL, "messages": MESSAGES})
        assert second.status_code == 503
        assert second.json()["error"]["code"] == "mpc_parties_busy"
        assert second.headers["retry-after"] == "7"
        # refused by the gateway's own bookkeeping, before a party was asked
        assert "busy with other sessions of this gateway" in second.json()["error"]["message"]
        assert "nothing was sent" in second.json()["error"]["message"]
        assert events(r.read().decode())[-1] == "[DONE]"
    # another client holds the parties: the parties say busy, the gateway says so
    assert _wait_wiped(net)
    parties = mpc_parties([(net.relay.url, a) for a in net.addresses])
    tiny = net.source
    with RemoteSession(parties(), MpcConfig(), tiny.weights_sha256):
        r = post(gateway, {"model": MODEL, "messages": MESSAGES, "max_tokens": 1})
        assert r.status_code == 503 and r.json()["error"]["code"] == "mpc_parties_busy"
        assert "busy with another session" in r.json()["error"]["message"]


def test_a_source_without_tokenizer_or_other_weights_is_503(
    net: Net, gateway: ServerThread
) -> None:
    real = net.source
    net.source = load_source("tiny:1")  # other layer weights than the parties state
    net.source.tokenizer = real.tokenizer
    try:
        # the gateway caches what it loaded: a fresh gateway app is needed to see the swap
        app = create_gateway_app(net.chain, net.relay_url, mpc_source=lambda _m: net.source)
        with ServerThread(app) as other:
            r = post(other, {"model": MODEL, "messages": MESSAGES})
        assert r.status_code == 503 and "serve other layer weights" in r.json()["error"]["message"]
        net.source = load_source(TINY)  # the right weights, but no tokenizer
        app = create_gateway_app(net.chain, net.relay_url, mpc_source=lambda _m: net.source)
        with ServerThread(app) as other:
            r = post(other, {"model": MODEL, "messages": MESSAGES})
        assert r.status_code == 503 and "has no tokenizer" in r.json()["error"]["message"]
    finally:
        net.source = real
    assert net.sent_to_nodes() == []


def _failing(party: NodeParty, op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `party` answer `op` with a party failure (until the monkeypatch is undone)."""
    real = party.service.handle

    def handle(header: dict[str, Any], blobs: list[bytes], *args: Any, **kw: Any) -> Any:
        if header.get("op") == op:
            return {"ok": False, "error": "party_failure", "message": "injected"}, []
        return real(header, blobs, *args, **kw)

    monkeypatch.setattr(party.service, "handle", handle)


def test_a_party_failing_before_the_first_token_is_502(
    net: Net, gateway: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    _failing(net.parties[1], "hello", monkeypatch)
    for stream in (False, True):
        r = post(gateway, {"model": MODEL, "messages": MESSAGES, "stream": stream})
        assert r.status_code == 502
        error = r.json()["error"]
        assert error["code"] == "mpc_party_failed" and "PartyFailure" in error["message"]
    monkeypatch.undo()
    r = post(gateway, {"model": MODEL, "messages": MESSAGES, "max_tokens": 1})
    assert r.status_code == 200  # the parties are free again


def test_a_party_failing_mid_stream_ends_with_an_error_event_and_no_done(
    net: Net, gateway: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": 12,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        seen = []
        for line in lines:
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if any(c["choices"][0]["delta"].get("content") for c in seen if c.get("choices")):
                    break
        _failing(net.parties[0], "step", monkeypatch)
        rest = events("\n".join(lines))
    assert rest and rest[-1] != "[DONE]" and "[DONE]" not in rest
    assert rest[-1]["error"]["code"] == "node_failed_mid_stream"
    assert "failed mid-stream" in rest[-1]["error"]["message"]
    monkeypatch.undo()


def test_models_and_status_show_the_parties(net: Net, gateway: ServerThread) -> None:
    # the listing answers within half a second with what is checked by then: on a loaded
    # machine the first listing may come before the four checks end, so wait for them first
    def checked() -> bool:
        nodes = httpx.get(gateway.url + "/veil/status", timeout=30).json()["nodes"]
        return len(nodes) == 4 and all(n["modes"]["anonymous"]["verified"] for n in nodes)

    assert until(checked, 20, 0.2)
    models = httpx.get(gateway.url + "/v1/models", timeout=30).json()["data"]
    mpc = [m for m in models if m["id"] == MODEL]
    assert len(mpc) == 1 and mpc[0]["veil_mode"] == "mpc"
    assert sorted(mpc[0]["veil_nodes"]) == sorted(net.addresses)
    assert mpc[0]["weights_sha256"] == net.source.weights_sha256
    nodes = httpx.get(gateway.url + "/veil/status", timeout=30).json()["nodes"]
    by = {n["address"]: n for n in nodes}
    for address in net.addresses:
        assert by[address]["mpc_party"] == {
            "protocol": "aby3",
            "model": TINY,
            "weights_sha256": "0x" + net.source.weights_sha256,
        }
        assert by[address]["modes"]["mpc"]["verified"] is True
    assert by[net.bare]["mpc_party"] is None


# ---------------------------------------------------------------- selection alone (no network)


def _candidate(operator: str, party: MpcParty | None) -> Any:
    descriptor = SimpleNamespace(mpc=party)
    session = SimpleNamespace(report=SimpleNamespace(descriptor=descriptor))
    return SimpleNamespace(operator=operator, session=session)


W1, W2 = b"\x01" * 32, b"\x02" * 32


def test_choose_parties_needs_three_distinct_operators_with_one_protocol_and_weights() -> None:
    aby3 = MpcParty("aby3", "m", W1)
    ops = [f"0x{i:040x}" for i in range(6)]
    four = [_candidate(op, aby3) for op in ops[:4]]
    choice = choose_parties(four, "m")
    assert choice.operators == ops[:3] and choice.weights_sha256 == W1.hex()  # in rank order
    assert choose_parties(four, "m", busy=[ops[0].upper()]).operators == ops[1:4]
    with pytest.raises(PartiesBusy, match="2 of 4"):
        choose_parties(four, "m", busy=ops[:2])
    # the same operator twice counts once
    twice = [_candidate(ops[0], aby3), _candidate(ops[0], aby3), _candidate(ops[1], aby3)]
    with pytest.raises(NoPartyQuorum, match="2 verified node"):
        choose_parties(twice, "m")
    # another protocol does not count; only another protocol at all is said so
    mixed = [*four[:2], _candidate(ops[4], MpcParty("semi2k", "m", W1))]
    with pytest.raises(NoPartyQuorum, match="2 verified node"):
        choose_parties(mixed, "m")
    with pytest.raises(NoPartyQuorum, match="run semi2k, not aby3"):
        choose_parties([_candidate(ops[4], MpcParty("semi2k", "m", W1))], "m")
    # weights must agree: the largest group of agreeing parties is the one considered
    split = [*four[:2], _candidate(ops[4], MpcParty("aby3", "m", W2))]
    with pytest.raises(NoPartyQuorum, match="2 different layer weights"):
        choose_parties(split, "m")
    agreeing = [_candidate(ops[4], MpcParty("aby3", "m", W2)), *four[:3]]
    assert choose_parties(agreeing, "m").operators == ops[:3]
    # nodes without a party, or with a party for another model
    other = [_candidate(ops[5], None), _candidate(ops[4], MpcParty("aby3", "n", W1))]
    with pytest.raises(NoPartyQuorum, match="no verified node hosts an MPC party for 'm'"):
        choose_parties(other, "m")
    with pytest.raises(NoPartyQuorum, match="only aby3"):
        choose_parties(four, "m", protocol="semi2k")  # a trusted dealer: never chosen


def test_with_mode() -> None:
    assert with_mode("smollm2-135m-instruct", "mpc") == "smollm2-135m-instruct:mpc"
    assert with_mode("tiny:0", "mpc") == "tiny:0:mpc"
    assert with_mode("tiny:0:mpc", "mpc") == "tiny:0:mpc"
    assert with_mode("m:tee", "anonymous") == "m:tee"
    assert with_mode("m", "anonymous") == "m"


def test_party_clients_wait_as_long_as_a_party_run_on_every_hop(net: Net) -> None:
    """A real-model prefill chunk takes minutes on a busy machine: the relay hop must not
    time out at the OHTTP transport's default (120 s) before the party request does."""
    from veil.client.mpc import parties_of
    from veil.client.session import connect

    sessions = [connect(net.relay.url, a, mode="mpc") for a in net.addresses]
    for _, client in parties_of(sessions, timeout_s=700.0)():
        assert client.timeout.read == 700.0
        assert client._transport._inner._http.timeout.read == 700.0  # type: ignore[attr-defined]
        client.close()
