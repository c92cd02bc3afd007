"""Bad input against three party services (in this process, real brpc links on loopback).

Every refusal must be a typed error, and the services must keep serving afterwards.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest

from veil.mpc.channel import recv_frame, send_frame, share_blobs
from veil.mpc.client import RemoteSession, generate
from veil.mpc.errors import (
    BadShare,
    MpcConfigError,
    PartyBusy,
    SessionExists,
    SessionExpired,
    UnknownSession,
)
from veil.mpc.local import PlainSession
from veil.mpc.model import BUCKET
from veil.mpc.party import PartyConfig, PartyService
from veil.mpc.runtime import MpcSettings, ShareCodec
from veil.mpc.source import ModelSource

from .conftest import free_port

SETTINGS = MpcSettings()


@pytest.fixture(scope="module")
def services(tiny: ModelSource) -> Iterator[list[tuple[PartyService, str]]]:
    out = []
    for _ in range(3):
        config = PartyConfig(
            link=f"127.0.0.1:{free_port()}",
            settings=SETTINGS,
            session_timeout_s=2.0,
            link_timeout_ms=5_000,
            connect_timeout_s=3.0,
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
    base = {"op": "open", "settings": SETTINGS.to_dict(), "token": secrets.token_hex(16)}
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
