"""Bad input and failures against three party services (in this process; their session
workers are processes, linked by real brpc links with mutual TLS on loopback).

Every refusal must be a typed error, and the services must keep serving afterwards.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from support.net import Tap, until
from veil.mpc.channel import recv_frame, send_frame, share_blobs
from veil.mpc.client import RemoteSession, TcpChannel, generate
from veil.mpc.errors import (
    BadShare,
    LinkFailure,
    MpcConfigError,
    PartyBusy,
    PartyFailure,
    SessionExists,
    SessionExpired,
    UnknownSession,
)
from veil.mpc.linkcert import LinkIdentity
from veil.mpc.local import PlainSession
from veil.mpc.model import BUCKET
from veil.mpc.party import PartyConfig, PartyService
from veil.mpc.runtime import MpcConfig, ShareCodec
from veil.mpc.source import ModelSource

from .conftest import free_link_port, party_idle, process_gone

SETTINGS = MpcConfig()


@pytest.fixture(scope="module")
def services(tiny: ModelSource) -> Iterator[list[tuple[PartyService, str]]]:
    out = []
    for _ in range(3):
        config = PartyConfig(
            link=f"127.0.0.1:{free_link_port()}",
            settings=SETTINGS,
            session_timeout_s=2.0,
            link_timeout_ms=5_000,
            connect_timeout_s=15.0,  # a replaced worker may take a few seconds to start
            warm=False,
        )
        svc = PartyService(config, tiny.shape, tiny.weights, tiny.weights_sha256)
        host, port = svc.serve("127.0.0.1", 0)
        out.append((svc, f"{host}:{port}"))
    yield out
    for svc, _ in out:
        svc.shutdown()


def _addrs(services: list[tuple[PartyService, str]]) -> list[str]:
    return [a for _, a in services]


def _call(addr: str, header: dict, blobs: list[bytes] = ()) -> dict:  # type: ignore[assignment]
    host, _, port = addr.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        send_frame(s, header, list(blobs))
        return recv_frame(s)[0]


def _still_serves(services: list[tuple[PartyService, str]], tiny: ModelSource) -> None:
    ids = [1, 2, 3]
    with RemoteSession(_addrs(services), SETTINGS, tiny.weights_sha256) as s:
        got = list(generate(s, tiny.head, ids, 2))
    assert got == list(generate(PlainSession(tiny.shape, tiny.weights), tiny.head, ids, 2))
    assert all(not svc.active_sessions() for svc, _ in services)


def test_unknown_session_id(services: list, tiny: ModelSource) -> None:
    reply = _call(services[0][1], {"op": "step", "session": "ab" * 16, "shares": []})
    assert reply["error"] == UnknownSession.code


def test_wrong_shape_and_dtype_shares_then_keeps_serving(services: list, tiny: ModelSource) -> None:
    codec = ShareCodec(SETTINGS)
    with RemoteSession(_addrs(services), SETTINGS, tiny.weights_sha256) as s:
        for bad in (np.zeros((3, 64), np.float32), np.zeros((1, 64), np.int32)):
            shares = [codec.secret(bad)] if bad.dtype == np.float32 else None
            if shares is None:
                import spu
                from spu import libspu

                io = spu.Io(3, SETTINGS.runtime_config())
                shares = [io.make_shares(bad, libspu.Visibility.VIS_SECRET)]
            with pytest.raises(BadShare):
                s._all(
                    [
                        ({"op": "step", "session": s.session_id, "shares": share_blobs([sh])[0]},
                         share_blobs([sh])[1])
                        for sh in shares[0]
                    ]
                )  # fmt: skip
        # the same session still works after the refusals (prefill never ran, so step is refused)
        with pytest.raises(BadShare):
            s.step(np.zeros((1, 64), np.float32))
        last = s.prefill(np.zeros((BUCKET, 64), np.float32), np.ones(BUCKET, np.float32))
        assert last.shape == (64,)
    _still_serves(services, tiny)


def test_party_opening_twice_fourth_party_and_busy(services: list, tiny: ModelSource) -> None:
    links = [svc.config.link for svc, _ in services]
    certs = [svc.identity.cert_pem for svc, _ in services]
    base = {
        "op": "open",
        "settings": SETTINGS.to_dict(),
        "token": secrets.token_hex(16),
        "certs": certs,
    }
    sid = secrets.token_hex(16)
    # a fourth party, a party listed twice, a rank that is not this party: config errors
    four = _call(services[0][1], dict(base, session=sid, rank=0, links=[*links, "127.0.0.1:1"]))
    assert four["error"] == MpcConfigError.code
    twice = _call(
        services[0][1], dict(base, session=sid, rank=0, links=[links[0], links[0], links[1]])
    )
    assert twice["error"] == MpcConfigError.code
    wrong_rank = _call(services[0][1], dict(base, session=sid, rank=1, links=links))
    assert wrong_rank["error"] == MpcConfigError.code
    # no certificates (no plaintext links), another party's certificate as this party's own
    no_certs = {k: v for k, v in base.items() if k != "certs"}
    reply = _call(services[0][1], dict(no_certs, session=sid, rank=0, links=links))
    assert reply["error"] == MpcConfigError.code and "mutual TLS" in reply["message"]
    swapped = dict(base, certs=[certs[1], certs[0], certs[2]])
    reply = _call(services[0][1], dict(swapped, session=sid, rank=0, links=links))
    assert reply["error"] == MpcConfigError.code
    junk = dict(base, certs=["not a certificate", certs[1], certs[2]])
    assert _call(services[0][1], dict(junk, session=sid, rank=0, links=links))["error"] == (
        "protocol_violation"
    )
    other = dict(SETTINGS.to_dict(), fxp_fraction_bits=12)
    assert (
        _call(services[0][1], dict(base, session=sid, rank=0, links=links, settings=other))["error"]
        == MpcConfigError.code
    )
    with RemoteSession(_addrs(services), SETTINGS, tiny.weights_sha256) as s:
        again = _call(services[1][1], dict(base, session=s.session_id, rank=1, links=links))
        assert again["error"] == SessionExists.code
        busy = _call(services[1][1], dict(base, session=secrets.token_hex(16), rank=1, links=links))
        assert busy["error"] == PartyBusy.code
        with pytest.raises(PartyBusy):
            RemoteSession(_addrs(services), SETTINGS, tiny.weights_sha256)
    _still_serves(services, tiny)


def test_malformed_frames_do_not_stop_the_service(services: list, tiny: ModelSource) -> None:
    host, _, port = services[2][1].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert recv_frame(s)[0]["error"] == "protocol_violation"
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"VMPC" + (10**9).to_bytes(4, "big"))
        assert recv_frame(s)[0]["error"] == "protocol_violation"
    assert _call(services[2][1], {"op": "nonsense"})["error"] == "protocol_violation"
    assert _call(services[2][1], {"op": "open", "session": "../etc", "rank": 0})["error"] == (
        "protocol_violation"
    )
    _still_serves(services, tiny)


def test_idle_session_expires_and_is_wiped(services: list, tiny: ModelSource) -> None:
    s = RemoteSession(_addrs(services), SETTINGS, tiny.weights_sha256)
    try:
        s.prefill(np.zeros((BUCKET, 64), np.float32), np.ones(BUCKET, np.float32))
        deadline = time.monotonic() + 15
        while any(svc.active_sessions() for svc, _ in services) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(svc.active_sessions() for svc, _ in services)
        with pytest.raises(SessionExpired):
            s.step(np.zeros((1, 64), np.float32))
    finally:
        s.close()
    _still_serves(services, tiny)


def test_client_refuses_mismatched_weights_and_world(services: list, tiny: ModelSource) -> None:
    with pytest.raises(MpcConfigError):
        RemoteSession(_addrs(services), SETTINGS, "0" * 64)
    with pytest.raises(MpcConfigError):
        RemoteSession(_addrs(services)[:2], SETTINGS, tiny.weights_sha256)
    with pytest.raises(MpcConfigError):
        RemoteSession([*_addrs(services)[:2], _addrs(services)[0]], SETTINGS, tiny.weights_sha256)


# -- failures: dead peers, stuck runs, wrong certificates, what the links carry ----------------
class _Rewriting:
    """A control channel that edits the client's `open` on its way to one party."""

    def __init__(self, addr: str, edit: Callable[[dict], dict]) -> None:
        self.name = addr
        self._inner = TcpChannel(addr)
        self._edit = edit

    def call(self, header: dict, blobs: list[bytes]) -> tuple[dict, list[bytes]]:
        if header.get("op") == "open":
            header = self._edit(dict(header))
        return self._inner.call(header, blobs)

    def end(self, header: dict, wait: bool) -> None:
        self._inner.end(header, wait)

    def close(self) -> None:
        self._inner.close()


def _held(services: list, sid: str) -> list[int]:
    """The pids of the session workers that hold `sid`, one per party."""
    return [w["pid"] for svc, _ in services for w in svc.workers() if w["session"] == sid]


def _wait_idle(services: list, timeout: float = 30.0) -> None:
    """Until every party is idle (`party_idle`)."""
    if not until(lambda: all(party_idle(svc) for svc, _ in services), timeout):
        raise AssertionError([(svc.active_sessions(), svc.workers()) for svc, _ in services])


def test_dead_worker_ends_the_session_on_every_party(services: list, tiny: ModelSource) -> None:
    s = RemoteSession(_addrs(services), SETTINGS, tiny.weights_sha256)
    try:
        s.prefill(np.zeros((BUCKET, 64), np.float32), np.ones(BUCKET, np.float32))
        held = _held(services, s.session_id)
        assert len(held) == 3
        os.kill(held[2], signal.SIGKILL)  # party 2's computation dies mid-session
        t0 = time.monotonic()
        with pytest.raises(PartyFailure, match="party 2"):
            s.step(np.zeros((1, 64), np.float32))
        assert time.monotonic() - t0 < 10
    finally:
        s.close()
    # the client's close reached the survivors in the middle of their stuck run: killed
    _wait_idle(services, 15)
    assert all(process_gone(pid) for pid in held)
    _still_serves(services, tiny)


def test_abandoned_stuck_run_ends_at_the_stall_deadline(services: list, tiny: ModelSource) -> None:
    """Nobody closes: a run that receives nothing from its peers for the link timeout (5 s
    here) is killed, and so is the session."""
    s = RemoteSession(_addrs(services), SETTINGS, tiny.weights_sha256)
    try:
        s.prefill(np.zeros((BUCKET, 64), np.float32), np.ones(BUCKET, np.float32))
        held = _held(services, s.session_id)
        os.kill(held[2], signal.SIGKILL)
        shares = ShareCodec(SETTINGS).secret(np.zeros((1, 64), np.float32))
        replies: dict[int, dict] = {}

        def step(r: int) -> None:  # on a connection of its own that stays open and silent
            counts, blobs = share_blobs([shares[r]])
            header = {"op": "step", "session": s.session_id, "token": s._tokens[r]}
            replies[r] = _call(_addrs(services)[r], dict(header, shares=counts), blobs)

        t0 = time.monotonic()
        threads = [threading.Thread(target=step, args=(r,)) for r in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        assert time.monotonic() - t0 < 25
        assert [replies[r]["error"] for r in (0, 1)] == [PartyFailure.code] * 2
        assert all(process_gone(pid) for pid in held[:2])
        assert not services[0][0].active_sessions() and not services[1][0].active_sessions()
    finally:
        s.close()
    _wait_idle(services, 15)
    _still_serves(services, tiny)


def test_wrong_peer_certificate_cannot_link(
    services: list, tiny: ModelSource, tmp_path: Path
) -> None:
    """Party 0 is told another certificate for party 1: mutual TLS between them fails, the
    client gets LinkFailure, and nobody falls back to a plaintext link."""
    stranger = LinkIdentity.load_or_create(tmp_path / "stranger").cert_pem

    def swap(header: dict) -> dict:
        header["certs"] = [header["certs"][0], stranger, header["certs"][2]]
        return header

    addrs = _addrs(services)
    t0 = time.monotonic()
    with pytest.raises(LinkFailure, match=r"mutual TLS|in time"):
        RemoteSession([_Rewriting(addrs[0], swap), *addrs[1:]], SETTINGS, tiny.weights_sha256)
    assert time.monotonic() - t0 < 40
    _wait_idle(services, 30)
    _still_serves(services, tiny)


def test_party_links_carry_tls_only(services: list, tiny: ModelSource) -> None:
    """A tap in front of party 0's link address sees a TLS handshake and then ciphertext:
    not the session id, the settings or the model digest the parties exchange over the link."""
    tap = Tap(services[0][0].config.link)

    def via_tap(header: dict) -> dict:
        header["links"] = [tap.address, *header["links"][1:]]
        return header

    addrs = _addrs(services)
    try:
        channels = [addrs[0], _Rewriting(addrs[1], via_tap), _Rewriting(addrs[2], via_tap)]
        with RemoteSession(channels, SETTINGS, tiny.weights_sha256) as s:
            sid = s.session_id
            got = list(generate(s, tiny.head, [1, 2, 3], 2))
        time.sleep(0.2)
        wire, inbound = bytes(tap.data), bytes(tap.received)
    finally:
        tap.close()
    assert got == list(generate(PlainSession(tiny.shape, tiny.weights), tiny.head, [1, 2, 3], 2))
    assert len(inbound) > 10_000  # parties 1 and 2 did talk to party 0 through the tap
    assert inbound[:3] == b"\x16\x03\x01"  # a TLS record: the ClientHello
    for needle in (sid, tiny.weights_sha256, "weights_sha256", "aby3", "connect_", f"veil-{sid}"):
        assert needle.encode() not in wire
