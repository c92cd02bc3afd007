"""Scheduled OHTTP key rotation on a running node."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from veil.node.keys import NodeKeys
from veil.node.rotation import replay_window_for, rotate_periodically


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
    assert keys.current.key_id == 9 and keys.previous is not None and keys.previous.key_id == 8
    assert keys.get(7) is None  # two rotations later, the first key opens nothing
    assert path.stat().st_mode & 0o777 == 0o600
    assert NodeKeys.load(path).encoded_configs() == keys.encoded_configs()


def test_replay_window_covers_a_key_lifetime() -> None:
    # a key opens requests while current and while previous: two periods
    assert replay_window_for(900) >= 1800
