"""The client's party channels without SPU: framing of one body, parallel calls, failing fast."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest

from veil.mpc.channel import MEDIA_MPC, decode_frame, encode_frame
from veil.mpc.client import HttpChannel, RemoteSession
from veil.mpc.errors import MpcConfigError, PartyFailure, PartyUnavailable, ProtocolViolation
from veil.mpc.runtime import MpcConfig

SETTINGS = MpcConfig()


def test_one_frame_per_body() -> None:
    raw = encode_frame({"op": "step", "x": 1}, [b"abc", b"", b"\x00" * 5])
    header, blobs = decode_frame(raw)
    assert header["op"] == "step" and blobs == [b"abc", b"", b"\x00" * 5]
    for bad in (b"", b"VMPC", raw[:-1], raw + b"x", b"XXXX" + raw[4:], raw[:10]):
        with pytest.raises(ProtocolViolation):
            decode_frame(bad)
    head = b'{"blobs":[true]}'
    with pytest.raises(ProtocolViolation, match="blob list"):  # true is not a length
        decode_frame(b"VMPC" + len(head).to_bytes(4, "big") + head + b"x")


class _Fake:
    """A party that answers hello/open at once and hangs (or dies) on runs."""

    def __init__(self, name: str, die: bool = False) -> None:
        self.name, self.die = name, die
        self.no_cert = False  # states no link certificate in hello
        self.release = threading.Event()
        self.headers: list[dict[str, Any]] = []
        self.closed = False

    def call(self, header: dict[str, Any], blobs: Any) -> tuple[dict[str, Any], list[bytes]]:
        self.headers.append(header)
        if header["op"] == "hello":
            link = f"127.0.0.1:{9000 + int(self.name[-1])}"
            cert = {} if self.no_cert else {"cert": f"PEM of {self.name}"}
            return {"ok": True, "link": link, "settings": SETTINGS.to_dict(),
                    "weights_sha256": "ab" * 32, **cert}, []  # fmt: skip
        if header["op"] == "open":
            return {"ok": True}, []
        if self.die:
            raise PartyFailure("died: connection reset")
        self.release.wait(30)
        return {"ok": False, "error": "party_failure", "message": "peer gone"}, []

    def end(self, header: dict[str, Any], wait: bool) -> None:
        self.headers.append(header)

    def close(self) -> None:
        self.closed = True
        self.release.set()


def test_calls_go_in_parallel_and_fail_fast() -> None:
    fakes = [_Fake("p0"), _Fake("p1"), _Fake("p2", die=True)]
    s = RemoteSession(fakes, SETTINGS, "ab" * 32)
    opens = [f.headers[1] for f in fakes]
    assert [h["rank"] for h in opens] == [0, 1, 2]
    assert all(h["certs"] == ["PEM of p0", "PEM of p1", "PEM of p2"] for h in opens)
    tokens = [h["token"] for h in opens]
    assert len(set(tokens)) == 3 and "token" not in fakes[0].headers[0]  # hello carries none
    t0 = time.monotonic()
    with pytest.raises(PartyFailure, match=r"party 2 \(p2\) died"):
        s.step(np.zeros((1, 64), np.float32))
    assert time.monotonic() - t0 < 5  # did not wait for the two hung parties
    deadline = time.monotonic() + 5
    while not all(f.closed for f in fakes) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(f.closed for f in fakes)  # the failed session was closed on every party
    closes = [f.headers[-1] for f in fakes]
    assert [h["op"] for h in closes] == ["close"] * 3
    assert [h["token"] for h in closes] == tokens


def test_a_party_stating_no_link_certificate_is_refused() -> None:
    """No certificate means no mutual TLS between the parties: never open plaintext links."""
    fakes = [_Fake("p0"), _Fake("p1"), _Fake("p2")]
    fakes[1].no_cert = True
    with pytest.raises(MpcConfigError, match="no link certificate"):
        RemoteSession(fakes, SETTINGS, "ab" * 32)
    assert all(len(f.headers) == 1 for f in fakes)  # hello only: nobody was asked to open


def test_http_channel_maps_answers_to_typed_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["content-type"] == MEDIA_MPC
        op = decode_frame(request.content)[0]["op"]
        if op == "hello":
            return httpx.Response(200, content=encode_frame({"ok": True}), headers={
                "content-type": MEDIA_MPC})  # fmt: skip
        if op == "none":
            return httpx.Response(404, json={"error": {"code": "mpc_unavailable"}})
        if op == "big":
            return httpx.Response(413, json={"error": {"code": "request_too_large"}})
        if op == "broken":
            return httpx.Response(200, content=b"VMPC\0", headers={"content-type": MEDIA_MPC})
        raise httpx.ConnectError("refused")

    channel = HttpChannel(httpx.Client(transport=httpx.MockTransport(handler)), "n1")
    assert channel.call({"op": "hello"}, [])[0] == {"ok": True, "blobs": []}
    with pytest.raises(PartyUnavailable):
        channel.call({"op": "none"}, [])
    with pytest.raises(ProtocolViolation):
        channel.call({"op": "big"}, [])
    with pytest.raises(PartyFailure, match="broken frame"):
        channel.call({"op": "broken"}, [])
    with pytest.raises(PartyFailure, match="unreachable"):
        channel.call({"op": "gone"}, [])
    channel.close()
