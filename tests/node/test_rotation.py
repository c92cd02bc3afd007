"""OHTTP key rotation by key age: on a running node, and across restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

from veil.node.keys import NodeKeys, load_or_create_keys
from veil.node.rotation import (
    age_keys,
    age_keys_at_start,
    next_change_at,
    replay_window_for,
    rotate_periodically,
)


async def run_for(keys: NodeKeys, period: float, path: Path | None, seconds: float) -> None:
    task = asyncio.create_task(rotate_periodically(keys, period, path))
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_keys_rotate_on_schedule_and_persist(tmp_path: Path) -> None:
    keys = NodeKeys.generate(key_id=7)
    path = tmp_path / "keys.json"
    task = asyncio.create_task(rotate_periodically(keys, 0.05, path))
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if keys.current.key_id == 9:
                break
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert keys.current.key_id == 9
    assert keys.get(7) is None  # two rotations later, the first key opens nothing
    assert path.stat().st_mode & 0o777 == 0o600
    assert NodeKeys.load(path).encoded_configs() == keys.encoded_configs()


def test_key_age_rules() -> None:
    keys = NodeKeys.generate(key_id=1, now=1000.0)
    assert not age_keys(keys, 10, 1009.9) and keys.current.key_id == 1
    assert next_change_at(keys, 10) == 1010.0
    assert age_keys(keys, 10, 1010.0)  # current: rotated at `period` old
    assert (keys.current.key_id, keys.previous.key_id) == (2, 1)  # type: ignore[union-attr]
    assert next_change_at(keys, 10) == 1020.0  # the previous goes when 2 periods old
    # a node that was down a long while: the current rotates at once and the one it replaces
    # is already past two periods, so it opens nothing either
    assert age_keys(keys, 10, 1100.0)
    assert keys.current.key_id == 3 and keys.previous is None
    # a previous key rotated out late (its successor made at start) leaves at 2 periods old
    keys = NodeKeys.generate(key_id=1, now=1000.0)
    age_keys(keys, 10, 1015.0)  # previous made at 1000, current at 1015
    assert next_change_at(keys, 10) == 1020.0
    age_keys(keys, 10, 1020.0)
    assert keys.current.key_id == 2 and keys.previous is None
    # a creation time from the future (clock went back) counts from now, not from then
    keys = NodeKeys.generate(key_id=1, now=5000.0)
    assert age_keys(keys, 10, 1000.0) and keys.current_created_at == 1000.0


def test_creation_times_survive_restarts(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    keys = load_or_create_keys(path)
    keys.rotate(now=keys.current_created_at + 5)
    keys.save(path)
    again = NodeKeys.load(path)
    assert again.current_created_at == round(keys.current_created_at, 3)
    assert again.previous_created_at == round(keys.previous_created_at or 0, 3)
    # a key file from before creation times were kept: its keys count as old
    path.write_text(json.dumps({"keys": [{"key_id": 4, "secret": "11" * 32}]}))
    old = NodeKeys.load(path)
    age_keys_at_start(old, 900, path)
    assert old.current.key_id == 5 and old.previous is None  # rotated, the old one dropped
    assert NodeKeys.load(path).current.key_id == 5


def test_restarts_every_few_seconds_still_rotate(tmp_path: Path) -> None:
    """Restarts every 3 s with a 10 s period: the key still changes once it is 10 s old."""
    path = tmp_path / "keys.json"
    load_or_create_keys(path)
    first = NodeKeys.load(path)
    start = first.current_created_at
    seen: list[tuple[float, int, int | None]] = []
    for t in range(0, 40, 3):  # each "run": load the file, age the keys, serve a while
        keys = NodeKeys.load(path)
        if age_keys(keys, 10, start + t):
            keys.save(path)
        prev = None if keys.previous is None else keys.previous.key_id
        seen.append((t, keys.current.key_id, prev))
    ids = {t: current for t, current, _ in seen}
    k = first.current.key_id
    assert ids[9] == k and ids[12] == (k + 1) % 256  # rotated at the first start past 10 s
    assert ids[21] == (k + 1) % 256 and ids[24] == (k + 2) % 256  # and again 12 s later
    assert all(current != prev for _, current, prev in seen)
    # a rotated-out key never opens requests past 2 periods of age: at 24 s the first key
    # (made at 0) is gone
    assert NodeKeys.load(path).get(k) is None


async def test_rotation_follows_key_age_across_real_restarts(tmp_path: Path) -> None:
    """A node restarted every 0.2 s with a 0.6 s period rotates anyway; a timer counted from
    each process start (the old behaviour) would never fire."""
    path = tmp_path / "keys.json"
    initial = load_or_create_keys(path).current.key_id
    deadline = time.time() + 2.0
    while time.time() < deadline:  # one "process" per iteration
        keys = load_or_create_keys(path)
        age_keys_at_start(keys, 0.6, path)
        await run_for(keys, 0.6, path, 0.2)
    final = NodeKeys.load(path)
    rotations = (final.current.key_id - initial) % 256
    assert rotations >= 2
    assert time.time() - final.current_created_at < 0.6 + 0.5  # never far past its period


async def test_the_next_rotation_is_scheduled_from_the_key_age(tmp_path: Path) -> None:
    keys = NodeKeys.generate(key_id=1, now=time.time() - 4.9)  # 0.1 s before its 5 s period
    started = time.monotonic()
    await run_for(keys, 5.0, None, 1.0)
    assert keys.current.key_id == 2 and time.monotonic() - started < 2.0


def test_replay_window_covers_a_key_lifetime() -> None:
    # a key opens requests while current and while previous: two periods
    assert replay_window_for(900) >= 1800
