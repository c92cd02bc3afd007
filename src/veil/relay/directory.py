"""Which node gateways the relay forwards to: a config file, or the on-chain registry.

The file (TOML or JSON, chosen by extension) lists nodes by id::

    [[nodes]]
    id = "node-a"
    url = "http://127.0.0.1:8001"     # the node's endpoint; gateway at /gateway, keys at
                                      # /.well-known/ohttp-keys

Every URL, from a file or the chain, must be a canonical endpoint (`veil.wire.endpoint`:
`http(s)://host[:port]`, nothing more); the relay appends the fixed paths itself.

`ChainNodeDirectory` reads the NodeRegistry instead: a node's id is its operator address
(EIP-55, matched case-insensitively) and its URL the endpoint it registered; only active
nodes (bonded stake at least the minimum) are listed. The relay only asks `get(id)`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from veil.errors import VeilError
from veil.wire.endpoint import EndpointError, check_endpoint
from veil.wire.http import DESCRIPTOR_PATH
from veil.wire.ohttp import GATEWAY_PATH, KEYS_PATH

__all__ = [
    "ChainNodeDirectory",
    "Node",
    "NodeConfigError",
    "NodeDirectory",
    "StaticNodeDirectory",
    "load_nodes",
]

log = logging.getLogger(__name__)

_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class NodeConfigError(VeilError):
    """The node list file is missing, unreadable or invalid."""


@dataclass(frozen=True)
class Node:
    """A node gateway the relay may forward to."""

    node_id: str
    url: str  # a canonical endpoint (veil.wire.endpoint): scheme, host, port

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
    return bool(_NODE_ID.fullmatch(node_id))  # `$` alone would let a final newline through


def _node(entry: object) -> Node:
    if not isinstance(entry, dict):
        raise NodeConfigError("each node must be a table/object")
    node_id, url = entry.get("id"), entry.get("url")
    if not isinstance(node_id, str) or not valid_node_id(node_id):
        raise NodeConfigError(f"bad node id {node_id!r}")
    if not isinstance(url, str):
        raise NodeConfigError(f"node {node_id}: url missing")
    try:
        return Node(node_id, check_endpoint(url))
    except EndpointError as err:
        raise NodeConfigError(f"node {node_id}: {err}") from None


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


class ChainNodeDirectory:
    """Active nodes from the on-chain registry, refreshed every `refresh_s` in a thread.

    `read` returns (operator, endpoint) pairs: `lambda: [(n.operator, n.endpoint) for n in
    chain.active_nodes()]` with a `veil.chain.ChainClient`. A lookup that misses refreshes at
    once (at most once per `min_gap_s`), so a node that just registered is reachable
    without waiting. A registry entry whose endpoint is not canonical is skipped and logged
    (the relay never forwards to it); a failed read keeps the last good list.
    """

    def __init__(
        self,
        read: Callable[[], Iterable[tuple[str, str]]],
        *,
        refresh_s: float = 5.0,
        min_gap_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._refresh_s = refresh_s
        self._min_gap_s = min_gap_s
        self._clock = clock
        self._nodes: dict[str, Node] = {}
        # operator -> (registered endpoint, its Node or None when refused): an unchanged
        # entry is reused, so a refresh of 1,000 nodes checks and logs only what changed.
        self._seen: dict[str, tuple[str, Node | None]] = {}
        self._last = -float("inf")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        with self._lock:
            self._last = self._clock()
            try:
                entries = list(self._read())
            except Exception as err:  # the chain may be briefly unreachable: keep the list
                log.warning(
                    "relay: registry read failed (%s); keeping %d node(s)",
                    type(err).__name__,
                    len(self._nodes),
                )
                return
            seen: dict[str, tuple[str, Node | None]] = {}
            for operator, endpoint in entries:
                key = operator.lower()
                known = self._seen.get(key)
                if known is not None and known[0] == endpoint:
                    seen[key] = known  # unchanged: neither checked nor logged again
                    continue
                try:
                    seen[key] = (endpoint, _node({"id": operator, "url": endpoint}))
                except NodeConfigError as err:
                    log.warning("relay: skipping registry entry: %s", err)
                    seen[key] = (endpoint, None)
            self._seen = seen
            self._nodes = {key: node for key, (_e, node) in seen.items() if node is not None}

    def get(self, node_id: str, /) -> Node | None:
        node = self._nodes.get(node_id.lower())
        if node is None and self._clock() - self._last >= self._min_gap_s:
            self.refresh()
            node = self._nodes.get(node_id.lower())
        return node

    def __len__(self) -> int:
        return len(self._nodes)

    def start(self) -> ChainNodeDirectory:
        """First read now, then keep refreshing in a daemon thread until `stop()`."""
        self.refresh()

        def loop() -> None:
            while not self._stop.wait(self._refresh_s):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="registry-refresh", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
