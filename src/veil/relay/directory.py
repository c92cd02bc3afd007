"""Which node gateways the relay forwards to: a config file now, the on-chain registry later.

The file (TOML or JSON, chosen by extension) lists nodes by id::

    [[nodes]]
    id = "node-a"
    url = "http://127.0.0.1:8001"     # node base URL; gateway at /gateway, keys at
                                      # /.well-known/ohttp-keys

`NodeDirectory` is the seam the registry will fill: the relay only asks it for a node by id.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from veil.errors import VeilError
from veil.identity.descriptor import DESCRIPTOR_PATH
from veil.wire.ohttp import GATEWAY_PATH, KEYS_PATH

__all__ = ["Node", "NodeConfigError", "NodeDirectory", "StaticNodeDirectory", "load_nodes"]

_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class NodeConfigError(VeilError):
    """The node list file is missing, unreadable or invalid."""


@dataclass(frozen=True)
class Node:
    """A node gateway the relay may forward to."""

    node_id: str
    url: str  # base URL, no trailing slash

    @property
    def gateway_url(self) -> str:
        return self.url + GATEWAY_PATH

    @property
    def keys_url(self) -> str:
        return self.url + KEYS_PATH

    @property
    def descriptor_url(self) -> str:
        return self.url + DESCRIPTOR_PATH


class NodeDirectory(Protocol):
    """Looks up a node by id; None means the relay must refuse to forward."""

    def get(self, node_id: str, /) -> Node | None: ...


class StaticNodeDirectory:
    """A fixed set of nodes (from a config file)."""

    def __init__(self, nodes: list[Node]) -> None:
        self._nodes = {n.node_id: n for n in nodes}
        if len(self._nodes) != len(nodes):
            raise NodeConfigError("duplicate node id")

    def get(self, node_id: str, /) -> Node | None:
        return self._nodes.get(node_id)

    def __len__(self) -> int:
        return len(self._nodes)


def valid_node_id(node_id: str) -> bool:
    return bool(_NODE_ID.match(node_id))


def _node(entry: object) -> Node:
    if not isinstance(entry, dict):
        raise NodeConfigError("each node must be a table/object")
    node_id, url = entry.get("id"), entry.get("url")
    if not isinstance(node_id, str) or not valid_node_id(node_id):
        raise NodeConfigError(f"bad node id {node_id!r}")
    if not isinstance(url, str):
        raise NodeConfigError(f"node {node_id}: url missing")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise NodeConfigError(f"node {node_id}: url must be http(s)://host[:port][/base]")
    return Node(node_id, url.rstrip("/"))


def load_nodes(path: Path) -> StaticNodeDirectory:
    """Read a TOML (`.toml`) or JSON node list."""
    try:
        text = Path(path).read_text()
        data = tomllib.loads(text) if str(path).endswith(".toml") else json.loads(text)
    except (OSError, ValueError) as err:
        raise NodeConfigError(f"cannot read node list {path}: {err}") from None
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, list):
        raise NodeConfigError("node list needs a `nodes` array")
    return StaticNodeDirectory([_node(entry) for entry in nodes])
