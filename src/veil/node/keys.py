"""Where a node keeps its OHTTP keys between runs."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

from veil.node.errors import NodeSetupError
from veil.node.gateway import NodeKeys

__all__ = ["load_or_create_keys"]

log = logging.getLogger(__name__)


def load_or_create_keys(path: Path | None) -> NodeKeys:
    """Load the key file (refused if others can read it), or create it 0600; None: memory only."""
    if path is None:
        return NodeKeys.generate()
    if path.exists():
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise NodeSetupError(f"{path} is accessible to other users; chmod 600 it")
        try:
            return NodeKeys.load(path)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise NodeSetupError(f"cannot read OHTTP keys from {path}: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = NodeKeys.generate()
    keys.save(path)
    log.info("created OHTTP keys in %s", path)
    return keys
