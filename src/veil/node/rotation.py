"""OHTTP key rotation by key age, across restarts.

A key opens requests for two rotation periods from its creation: as the current key until it
is `period` old, then as the previous key until it is `2 * period` old. The ages come from the
creation times in the key file, so a node that restarts more often than the period still
rotates, and a node that was down for a while rotates (and drops a too-old previous key) as it
starts, before it serves anything. The gateway's replay memory covers the same span
(`replay_window_for`), so a captured request is refused for as long as any key can open it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from veil.node.keys import NodeKeys

__all__ = [
    "age_keys",
    "age_keys_at_start",
    "next_change_at",
    "replay_window_for",
    "rotate_periodically",
]

log = logging.getLogger(__name__)


def replay_window_for(rotation_s: float) -> float:
    """Seconds a key can open requests (current, then previous), plus clock slack."""
    return 2 * rotation_s + 60


def age_keys(keys: NodeKeys, period_s: float, now: float) -> bool:
    """Rotate a current key `period_s` old or more; drop a previous key `2 * period_s` old or
    more. Returns whether anything changed (then save the keys).

    A creation time in the future (the clock went back, or a copied file) counts from `now`.
    """
    changed = False
    if keys.current_created_at > now:
        keys.current_created_at, changed = now, True
    if keys.previous_created_at is not None and keys.previous_created_at > now:
        keys.previous_created_at, changed = now, True
    if now - keys.current_created_at >= period_s:
        keys.rotate(now)
        changed = True
    if keys.previous_created_at is not None and now - keys.previous_created_at >= 2 * period_s:
        keys.drop_previous()
        changed = True
    return changed


def next_change_at(keys: NodeKeys, period_s: float) -> float:
    """When `age_keys` next has something to do (unix seconds)."""
    due = keys.current_created_at + period_s
    if keys.previous_created_at is not None:
        due = min(due, keys.previous_created_at + 2 * period_s)
    return due


def _save_and_log(keys: NodeKeys, path: Path | None) -> None:
    if path is not None:
        keys.save(path)  # a few hundred bytes; kept on the loop so rotation and file agree
    previous = "none" if keys.previous is None else str(keys.previous.key_id)
    log.info("OHTTP keys: current key id %d, previous %s", keys.current.key_id, previous)


def age_keys_at_start(keys: NodeKeys, period_s: float, path: Path | None) -> None:
    """Bring keys loaded from a file up to date before the node serves (or registers) them."""
    if age_keys(keys, period_s, time.time()):
        _save_and_log(keys, path)


async def rotate_periodically(
    keys: NodeKeys,
    period_s: float,
    path: Path | None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Keep `keys` aged (`age_keys`) until cancelled, sleeping until the next change is due;
    persist to `path` (0600) when given."""
    while True:
        if age_keys(keys, period_s, clock()):
            _save_and_log(keys, path)
        await asyncio.sleep(max(0.001, next_change_at(keys, period_s) - clock()))
