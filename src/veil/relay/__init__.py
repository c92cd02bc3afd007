"""Oblivious relay: forwards sealed requests to known node gateways and streams answers back.

It sees client addresses and ciphertext, never content; it keeps no access log. Names load
lazily so that `veil relay --help` (via `veil.commands.relay`) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Node",
    "NodeDirectory",
    "RelayConfig",
    "StaticNodeDirectory",
    "create_relay_app",
    "load_nodes",
]

_HOME = {
    "RelayConfig": "veil.relay.app",
    "create_relay_app": "veil.relay.app",
    "Node": "veil.relay.directory",
    "NodeDirectory": "veil.relay.directory",
    "StaticNodeDirectory": "veil.relay.directory",
    "load_nodes": "veil.relay.directory",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(name)
