"""Node-hosted parties reached through the real relay and the real OHTTP gateway.

Three node apps (`veil.node.api.create_app`, a stub engine: the MPC route needs no torch model)
each host a tiny-model party; the client reaches each one with its own OHTTP client, sealed to
that node's key, through one relay. A Tap between client and relay records every byte: no share
the client made or got back, no embedding, no token id and no prompt text may appear in it.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest

from support.net import ServerThread, Tap, until
from veil.client import OhttpTransport, relay_keys_url
from veil.client.errors import NodeRejected
from veil.client.mpc import mpc_parties
from veil.identity import NodeIdentity
from veil.mpc.channel import MEDIA_MPC, decode_frame, encode_frame
from veil.mpc.client import HttpChannel, RemoteSession, generate, prefill_prompt
from veil.mpc.errors import (
    PartyFailure,
    PartyUnavailable,
    ProtocolViolation,
    SessionExpired,
    UnknownSession,
)
from veil.mpc.local import PlainSession
from veil.mpc.model import BUCKET
from veil.mpc.runtime import MpcConfig
from veil.mpc.source import ModelSource
from veil.node.api import create_app
from veil.node.config import NodeConfig
from veil.node.keys import NodeKeys
from veil.node.mpc import NodeParty, build_party
from veil.relay.app import RelayConfig, create_relay_app
from veil.relay.directory import Node, StaticNodeDirectory

from .conftest import TINY, assert_greedy_agrees, free_link_port, party_idle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SETTINGS = MpcConfig()
PROMPT = list(b"The secret launch code is 0451, tell nobody.")  # 44 tokens: two chunks
NODE_IDS = ["node-a", "node-b", "node-c"]
MAX_BODY = 128 * 1024  # each node's body limit (a tiny prefill frame is about 33 KB)
IDLE_S = 3.0  # session timeout on the parties


@dataclass
class Net:
    relay: str  # the client's relay URL: through the tap
    tap: Tap
    parties: list[NodeParty]
    nodes: list[ServerThread]
    bare: ServerThread  # a node without a party


def _stub_engine(tiny: ModelSource) -> Any:
    """What create_app reads from an engine; the chat route is never called here."""
    return SimpleNamespace(
        model_id="tiny-mpc",
        context_length=2048,
        weights_sha256=tiny.weights_sha256,
        kind="builtin",
        weights_scope="loaded",
        stats=SimpleNamespace(requests=0, tokens_generated=0),
    )


@pytest.fixture(scope="module")
def net(tiny: ModelSource) -> Iterator[Net]:
    parties, apps = [], []
    for _ in NODE_IDS:
        config = NodeConfig(
            max_body_bytes=MAX_BODY,
            mpc_link=f"127.0.0.1:{free_link_port()}",
            mpc_model=TINY,
            mpc_session_timeout_s=IDLE_S,
            mpc_link_timeout_s=5.0,
        )
        party = build_party(config, warm=False)
        parties.append(party)
        apps.append(
            create_app(
                _stub_engine(tiny),
                config,
                NodeKeys.generate(),
                NodeIdentity.generate(),
                party=party,
            )
        )
    bare_app = create_app(
        _stub_engine(tiny), NodeConfig(), NodeKeys.generate(), NodeIdentity.generate()
    )
    servers = [ServerThread(app).__enter__() for app in [*apps, bare_app]]
    try:
        directory = StaticNodeDirectory(
            [Node(n, s.url) for n, s in zip([*NODE_IDS, "bare"], servers, strict=True)]
        )
        relay_app = create_relay_app(
            directory,
            RelayConfig(rate_per_s=1000.0, burst=1000, allow_private_endpoints=True),
        )
        with ServerThread(relay_app) as relay:
            tap = Tap(relay.port)
            try:
                yield Net(f"http://127.0.0.1:{tap.port}", tap, parties, servers[:3], servers[3])
            finally:
                tap.close()
    finally:
        for s in servers:
            s.__exit__()


def _parties(net: Net) -> Any:
    return mpc_parties([(net.relay, n) for n in NODE_IDS])


def _wait_wiped(net: Net, timeout: float = 15.0) -> bool:
    return until(lambda: not any(p.service.active_sessions() for p in net.parties), timeout, 0.1)


def test_session_through_relay_matches_plaintext_and_leaks_nothing(
    net: Net, tiny: ModelSource, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import veil.mpc.client as client_mod
    import veil.mpc.party as party_mod

    made: list[bytes] = []  # every share blob the client sent and the parties answered

    def recording(real: Any) -> Any:
        def share_blobs(shares: Any) -> Any:
            counts, blobs = real(shares)
            made.extend(blobs)
            return counts, blobs

        return share_blobs

    monkeypatch.setattr(client_mod, "share_blobs", recording(client_mod.share_blobs))
    monkeypatch.setattr(party_mod, "share_blobs", recording(party_mod.share_blobs))
    caplog.set_level(logging.DEBUG)
    parties = _parties(net)
    start = len(net.tap.data)
    with RemoteSession(parties(), SETTINGS, tiny.weights_sha256) as s:
        assert s.parties == NODE_IDS
        logits = prefill_prompt(s, tiny.head, PROMPT)
    plain = prefill_prompt(PlainSession(tiny.shape, tiny.weights), tiny.head, PROMPT)
    assert np.abs(logits - plain).max() < 0.05 * np.abs(plain).max()
    with RemoteSession(parties(), SETTINGS, tiny.weights_sha256) as s:
        got = list(generate(s, tiny.head, PROMPT, 3))
        assert [st.op for st in s.stats] == ["prefill", "step", "step", "step"]
    assert_greedy_agrees(got, tiny, PROMPT)
    assert _wait_wiped(net, 5.0), "closed sessions must be wiped on every party"

    time.sleep(0.2)
    wire = bytes(net.tap.data[start:])
    assert len(wire) > sum(len(b) for b in made) // 2  # the shares did cross the tap, sealed
    big = [b for b in made if len(b) >= 64]
    assert len(big) >= 3 * 2 * 5  # per party: the inputs and outputs of every run
    for blob in big:
        for i in (0, len(blob) // 2, len(blob) - 24):
            assert blob[i : i + 24] not in wire
    text = bytes(PROMPT)
    needles = [text, text[:12], b"launch code"]
    for fmt in ("<i", "<q", ">i"):
        needles.append(b"".join(struct.pack(fmt, t) for t in PROMPT[:4]))
    emb = tiny.head.embed(PROMPT, len(PROMPT))
    needles += [row[:4].tobytes() for row in emb]
    for n in needles:
        assert n not in wire
    logs = caplog.text  # relay, gateway, node and party lines: no frame content
    assert "open as rank" in logs and "closed by client" in logs
    assert text.decode() not in logs and "launch code" not in logs
    for blob in big:
        assert blob[8:20].hex() not in logs and repr(blob[8:20])[2:-1] not in logs
    # the search has power: the same frame sent in plaintext to a node is found at once
    plain_tap = Tap(net.nodes[0].port)
    try:
        httpx.post(
            f"http://127.0.0.1:{plain_tap.port}/v1/mpc",
            content=encode_frame({"op": "hello"}, [big[0]]),
            headers={"content-type": MEDIA_MPC},
        )
        time.sleep(0.2)
        assert big[0][len(big[0]) // 2 :][:24] in bytes(plain_tap.received)
    finally:
        plain_tap.close()


def _raw(net: Net, node_id: str) -> httpx.Client:
    """A sealed client to one node's API through the relay, for hand-made requests."""
    transport = OhttpTransport(net.relay, node_id, keys_url=relay_keys_url(net.relay, node_id))
    return httpx.Client(transport=transport, base_url="http://node.veil.invalid")


def _post(http: httpx.Client, body: bytes, media: str = MEDIA_MPC) -> httpx.Response:
    return http.post("/v1/mpc", content=body, headers={"content-type": media})


def test_bad_input_over_the_route_gets_typed_errors(net: Net, tiny: ModelSource) -> None:
    with _raw(net, "node-a") as http:
        r = _post(http, b"GET / HTTP/1.1\r\n\r\n")
        assert r.status_code == 400 and decode_frame(r.content)[0]["error"] == "protocol_violation"
        r = _post(http, encode_frame({"op": "nonsense"}))
        assert decode_frame(r.content)[0]["error"] == "protocol_violation"
        r = _post(http, encode_frame({"op": "status"}))  # session ids are not for clients
        assert decode_frame(r.content)[0]["error"] == "protocol_violation"
        step = {"op": "step", "session": "ab" * 16, "token": "cd" * 16, "shares": []}
        r = _post(http, encode_frame(step))
        assert r.status_code == 404 and decode_frame(r.content)[0]["error"] == "unknown_session"
        r = _post(http, b"{}", media="application/json")
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        r = _post(http, encode_frame({"op": "hello"}, [b"\0" * (MAX_BODY + 1)]))
        assert r.status_code == 413  # the gateway's limit, answered sealed
        with pytest.raises(ProtocolViolation, match="too large"):
            HttpChannel(http, "node-a").call({"op": "hello"}, [b"\0" * (MAX_BODY + 1)])
    # the plaintext node API has the same route and limit (nothing in the network uses it)
    big = encode_frame({"op": "hello"}, [b"\0" * (MAX_BODY + 1)])
    r = httpx.post(net.nodes[0].url + "/v1/mpc", content=big, headers={"content-type": MEDIA_MPC})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # a node without --mpc-link
    with _raw(net, "bare") as http:
        r = _post(http, encode_frame({"op": "hello"}))
        assert r.status_code == 404 and r.json()["error"]["code"] == "mpc_unavailable"
    bare = HttpChannel(_raw(net, "bare"), "bare")
    with pytest.raises(PartyUnavailable):
        bare.call({"op": "hello"}, [])
    bare.close()
    # and the parties keep serving
    with RemoteSession(_parties(net)(), SETTINGS, tiny.weights_sha256) as s:
        assert len(list(generate(s, tiny.head, PROMPT[:5], 2))) == 2


def test_only_the_client_can_drive_its_session(net: Net, tiny: ModelSource) -> None:
    """The session id is known to all three parties; the per-party token is not."""
    with RemoteSession(_parties(net)(), SETTINGS, tiny.weights_sha256) as s:
        s.prefill(np.zeros((BUCKET, 64), np.float32), np.ones(BUCKET, np.float32))
        with _raw(net, "node-b") as http:
            for token in ("cd" * 16, None, s._tokens[0]):  # another party's token is wrong too
                header = {"op": "close", "session": s.session_id, "token": token}
                r = _post(http, encode_frame(header))
                assert decode_frame(r.content)[0]["error"] == UnknownSession.code
        assert s.step(np.zeros((1, 64), np.float32)).shape == (64,)
        sid, token = s.session_id, s._tokens[1]
    assert _wait_wiped(net, 5.0)
    with _raw(net, "node-b") as http:  # a closed session stays closed
        r = _post(http, encode_frame({"op": "step", "session": sid, "token": token, "shares": []}))
        assert decode_frame(r.content)[0]["error"] == SessionExpired.code


def test_idle_session_is_wiped(net: Net, tiny: ModelSource) -> None:
    s = RemoteSession(_parties(net)(), SETTINGS, tiny.weights_sha256)
    try:
        s.prefill(np.zeros((BUCKET, 64), np.float32), np.ones(BUCKET, np.float32))
        assert all(p.service.active_sessions() == [s.session_id] for p in net.parties)
        assert _wait_wiped(net, IDLE_S + 10)
        with pytest.raises(SessionExpired):
            s.step(np.zeros((1, 64), np.float32))
    finally:
        s.close()


def test_same_node_twice_is_refused(net: Net) -> None:
    with pytest.raises(NodeRejected) as info:
        mpc_parties([(net.relay, "node-a"), (net.relay, "node-b"), (net.relay, "node-a")])
    assert info.value.check == "distinct"


def test_a_dead_party_worker_ends_the_session_on_every_node(net: Net, tiny: ModelSource) -> None:
    """Node c's session worker dies mid-session: the client gets PartyFailure at once, and
    its close, a sealed request of its own, reaches nodes a and b while their runs are stuck
    on the dead peer: their workers are killed (the shares with them), and all three serve a
    new session."""
    s = RemoteSession(_parties(net)(), SETTINGS, tiny.weights_sha256)
    try:
        s.prefill(np.zeros((BUCKET, 64), np.float32), np.ones(BUCKET, np.float32))
        held = [
            w["pid"]
            for p in net.parties
            for w in p.service.workers()
            if w["session"] == s.session_id
        ]
        assert len(held) == 3
        os.kill(held[2], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(PartyFailure, match="party 2"):
            s.step(np.zeros((1, 64), np.float32))
        assert time.monotonic() - t0 < 15
    finally:
        s.close()

    assert until(lambda: all(party_idle(p.service) for p in net.parties), 30), [
        p.service.workers() for p in net.parties
    ]
    for pid in held:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with RemoteSession(_parties(net)(), SETTINGS, tiny.weights_sha256) as s2:
        assert len(list(generate(s2, tiny.head, PROMPT[:5], 2))) == 2
