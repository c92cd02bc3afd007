"""Periodic OHTTP key rotation for a running node.

A rotated-out key stays as the previous key for one more period, so requests sealed just
before a rotation still open. The gateway's replay cache must therefore remember requests for
two periods (`replay_window_for`), which bounds how long a captured request can be replayed.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from veil.node.keys import NodeKeys

__all__ = ["replay_window_for", "rotate_periodically"]

log = logging.getLogger(__name__)


def replay_window_for(rotation_s: float) -> float:
    """Seconds a key can open requests (current, then previous), plus clock slack."""
    return 2 * rotation_s + 60


async def rotate_periodically(keys: NodeKeys, interval_s: float, path: Path | None) -> None:
    """Rotate every `interval_s` seconds until cancelled; persist to `path` (0600) when given."""
    while True:
        await asyncio.sleep(interval_s)
        fresh = keys.rotate()
        if path is not None:
            keys.save(path)  # a few hundred bytes; kept on the loop so rotation and file agree
        log.info("rotated OHTTP keys: current key id %d", fresh.key_id)
