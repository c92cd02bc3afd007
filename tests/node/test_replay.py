"""Replay protection across node restarts: the durable replay log beside a persistent key file."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from veil.identity import NodeIdentity
from veil.node.api import create_app
from veil.node.config import NodeConfig
from veil.node.errors import NodeSetupError
from veil.node.keys import NodeKeys, load_or_create_keys
from veil.node.replay import ReplayLog, replay_log_path
from veil.wire import bhttp, ohttp
from veil.wire.errors import PROBLEM_PREFIX

IDENTITY = NodeIdentity.generate()


def stub_engine() -> Any:
    """What the node's app reads of an engine for everything but chat."""
    return SimpleNamespace(
        model_id="stub-model",
        context_length=2048,
        weights_sha256="ab" * 32,
        kind="builtin",
        weights_scope="loaded",
        stats=SimpleNamespace(requests=0, tokens_generated=0),
    )


def start_node(keys_path: Path) -> tuple[httpx.AsyncClient, NodeKeys]:
    """One node process: keys from the file, then the app (as `veil node serve --keys`)."""
    keys = load_or_create_keys(keys_path)
    config = NodeConfig(keys_path=str(keys_path), key_rotation_s=900)
    app = create_app(stub_engine(), config, keys, IDENTITY)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 5555))
    return httpx.AsyncClient(transport=transport, base_url="http://node"), keys


def sealed_models_request(keys: NodeKeys) -> tuple[bytes, ohttp.ResponseOpener]:
    message = bhttp.encode_request(bhttp.Request("GET", "https", "node", "/v1/models"))
    return ohttp.encapsulate_request(keys.current.config, message)


async def post(http: httpx.AsyncClient, sealed: bytes) -> httpx.Response:
    return await http.post(
        "/gateway", content=sealed, headers={"content-type": ohttp.MEDIA_REQUEST}
    )


async def test_a_request_captured_before_a_restart_is_refused_after_it(tmp_path: Path) -> None:
    keys_path = tmp_path / "ohttp-keys.json"
    http, keys = start_node(keys_path)
    captured, opener = sealed_models_request(keys)
    answer = await post(http, captured)
    assert answer.status_code == 200
    assert bhttp.decode_response(opener.open(answer.content)).status == 200
    await http.aclose()

    http, keys = start_node(keys_path)  # restart: same keys from the file
    replay = await post(http, captured)
    assert replay.status_code == 400
    assert replay.headers["content-type"] == "application/problem+json"
    assert replay.json()["type"] == PROBLEM_PREFIX + "replayed"
    fresh, opener = sealed_models_request(keys)  # the node keeps serving everyone else
    answer = await post(http, fresh)
    assert answer.status_code == 200
    assert bhttp.decode_response(opener.open(answer.content)).status == 200
    assert replay_log_path(keys_path).stat().st_mode & 0o777 == 0o600
    await http.aclose()


async def test_concurrent_requests_share_fsyncs_and_all_persist(tmp_path: Path) -> None:
    path = tmp_path / "log"
    log = ReplayLog(path, window_s=60, capacity=1000)
    values = [bytes([i]) * 33 for i in range(50)]
    assert all(log.check_and_add(v) for v in values)
    await asyncio.gather(*(log.commit(v) for v in values))
    again = ReplayLog(path, window_s=60, capacity=1000)
    assert len(again) == 50 and not any(again.check_and_add(v) for v in values)


def test_the_log_is_bounded_private_and_forgets_expired_entries(tmp_path: Path) -> None:
    path = tmp_path / "log"
    now = [1000.0]
    log = ReplayLog(path, window_s=100, capacity=3, clock=lambda: now[0], slack=0)
    for i, at in enumerate([900.5, 950.0, 960.0, 970.0, 980.0]):
        log._seen[bytes([i])] = at  # as if committed then
    log._rewrite(list(log._seen.items()))
    os.chmod(path, 0o644)
    with path.open("a") as fh:
        fh.write("990.0 zz\n985.0 05")  # an invalid line, then a torn one (a crash mid-write)
    reopened = ReplayLog(path, window_s=100, capacity=3, clock=lambda: now[0], slack=0)
    assert len(reopened) == 3  # 900.5 is out of the window; then the newest 3 of 4
    assert not reopened.check_and_add(bytes([4])) and reopened.check_and_add(bytes([1]))
    assert path.stat().st_mode & 0o777 == 0o600  # rewritten owner-only at open
    assert len(path.read_text().splitlines()) == 3


async def test_a_log_that_cannot_be_written_refuses_requests(tmp_path: Path) -> None:
    keys_path = tmp_path / "ohttp-keys.json"
    http, keys = start_node(keys_path)
    log_path = replay_log_path(keys_path)

    def broken(*_: object) -> None:
        raise OSError(28, "No space left on device")

    original = ReplayLog._append
    ReplayLog._append = broken  # type: ignore[method-assign]
    try:
        sealed, _ = sealed_models_request(keys)
        answer = await post(http, sealed)
    finally:
        ReplayLog._append = original  # type: ignore[method-assign]
    assert answer.status_code == 503 and answer.json()["type"] == PROBLEM_PREFIX + "unavailable"
    fresh, _ = sealed_models_request(keys)
    assert (await post(http, fresh)).status_code == 200  # served again once it can write
    assert log_path.exists()
    await http.aclose()


def test_an_unreadable_log_stops_the_node_from_starting(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.mkdir()  # not a file: cannot be read
    with pytest.raises(NodeSetupError, match="replay log"):
        ReplayLog(path, window_s=60, capacity=10)


def test_node_data_files_are_owner_only_even_over_leftovers(tmp_path: Path) -> None:
    """Key file, ticket queue and replay log: 0600, also when a crash left a loose tmp file
    or the file itself was loosened."""
    from veil.node.payments import TicketQueue

    keys_path = tmp_path / "ohttp-keys.json"
    (tmp_path / ".ohttp-keys.json.tmp").write_text("{}")
    os.chmod(tmp_path / ".ohttp-keys.json.tmp", 0o644)
    NodeKeys.generate().save(keys_path)
    queue_path = tmp_path / "tickets.jsonl"
    (tmp_path / ".tickets.jsonl.tmp").write_text("")
    os.chmod(tmp_path / ".tickets.jsonl.tmp", 0o644)
    queue_path.write_text("")
    os.chmod(queue_path, 0o644)
    TicketQueue(queue_path)
    log_path = replay_log_path(keys_path)
    (tmp_path / f".{log_path.name}.tmp").write_text("")
    os.chmod(tmp_path / f".{log_path.name}.tmp", 0o644)
    ReplayLog(log_path, window_s=60, capacity=10)
    for path in (keys_path, queue_path, log_path):
        assert path.stat().st_mode & 0o777 == 0o600, path
