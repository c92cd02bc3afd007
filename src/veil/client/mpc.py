"""Reaching MPC parties hosted by nodes: one verified, key-pinned OHTTP client per node.

The `mpc` mode splits every hidden state into three shares, one per node. Each node's share
must travel sealed to that node's own key, or whoever sees the three connections (the relay,
a network observer) could add them back up. So each party gets its own `httpx.Client` over an
`OhttpTransport` to its node through the relay, pinned to the keys of that node's verified
descriptor (`veil.client.session.connect`).

    parties = mpc_parties([(relay, "node-a"), (relay, "node-b"), (relay, "node-c")])
    backend = MpcChatBackend(source, parties)        # veil.mpc.api; a fresh set per session
    with RemoteSession(parties(), settings, sha) as s: ...  # or directly (veil.mpc.client)

The three ids must be three different nodes (three different verified addresses): one operator
holding two shares breaks the honest-majority assumption. This module builds only httpx
clients; the MPC protocol itself is `veil.mpc` (the client room does not import it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import httpx

from veil.client.errors import NodeRejected
from veil.client.policy import PrivacyMode
from veil.client.session import VeilSession, connect

__all__ = ["MpcParties", "mpc_parties"]

MpcParties = Callable[[], list[tuple[str, httpx.Client]]]


def mpc_parties(
    nodes: Sequence[tuple[str, str]],
    *,
    mode: PrivacyMode | str = PrivacyMode.MPC,
    timeout_s: float = 600.0,
    outer: httpx.BaseTransport | None = None,
    **connect_kwargs: Any,
) -> MpcParties:
    """Verify each (relay_url, node_id) now; return a factory of fresh (node_id, httpx.Client)
    pairs, one set per MPC session (the session closes them).

    `mode` is the policy each node's descriptor must pass (`mpc` accepts `dev` nodes);
    `timeout_s` bounds one party request (a prefill chunk of the real model takes tens of
    seconds); `outer` reaches the relay (tests). Raises `NodeRejected` (check `distinct`)
    when two ids are the same node, or whatever `connect` raises for a node that fails.
    """
    sessions: list[VeilSession] = [
        connect(
            relay_url,
            node_id,
            mode=mode,
            outer=outer,
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            **connect_kwargs,
        )
        for relay_url, node_id in nodes
    ]
    addresses = [s.address.lower() for s in sessions]
    if len(set(addresses)) != len(addresses):
        raise NodeRejected(
            "two of the MPC parties are the same node: each share must go to another operator",
            check="distinct",
        )

    def fresh() -> list[tuple[str, httpx.Client]]:
        return [
            (s.node_id, httpx.Client(transport=s.transport(), timeout=timeout_s)) for s in sessions
        ]

    return fresh
