"""Reaching MPC parties hosted by nodes: which nodes, and one verified, key-pinned OHTTP client
per node.

The `mpc` mode splits every hidden state into three shares, one per node. Each node's share
must travel sealed to that node's own key, or whoever sees the three connections (the relay,
a network observer) could add them back up. So each party gets its own `httpx.Client` over an
`OhttpTransport` to its node through the relay, pinned to the keys of that node's verified
descriptor (`veil.client.session.connect`).

    parties = mpc_parties([(relay, "node-a"), (relay, "node-b"), (relay, "node-c")])
    backend = MpcChatBackend(source, parties)        # veil.mpc.api; a fresh set per session
    with RemoteSession(parties(), settings, sha) as s: ...  # or directly (veil.mpc.client)

The three must be three different nodes (three different verified addresses): one operator
holding two shares breaks the honest-majority assumption. `choose_parties` picks them from
verified candidates (the gateway's discovery) by what each node's signed descriptor says of
its party (`veil.identity.MpcParty`): the model, the protocol and the layers' weights digest
must agree. This module builds only httpx clients; the MPC protocol itself is `veil.mpc`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from veil.attest.errors import NodeRejected
from veil.attest.policy import PrivacyMode
from veil.client.errors import NoPartyQuorum, PartiesBusy
from veil.client.session import VeilSession, connect
from veil.identity import MpcParty

if TYPE_CHECKING:
    from veil.client.discovery import Candidate

__all__ = [
    "MPC_WORLD_SIZE",
    "MpcParties",
    "PartyChoice",
    "choose_parties",
    "mpc_parties",
    "parties_of",
    "party_of",
]

MpcParties = Callable[[], list[tuple[str, httpx.Client]]]
# parties per session of the protocols a client may use without a trusted dealer (aby3)
MPC_WORLD_SIZE = {"aby3": 3}


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
    return parties_of(sessions, timeout_s=timeout_s)


def parties_of(sessions: Sequence[VeilSession], *, timeout_s: float = 600.0) -> MpcParties:
    """The party factory of sessions already verified (e.g. by the gateway's discovery);
    `NodeRejected` (check `distinct`) when two of them are the same node."""
    addresses = [s.address.lower() for s in sessions]
    if len(set(addresses)) != len(addresses):
        raise NodeRejected(
            "two of the MPC parties are the same node: each share must go to another operator",
            check="distinct",
        )
    held = list(sessions)
    relay_timeout = httpx.Timeout(timeout_s, connect=10.0)  # the relay hop of each request

    def fresh() -> list[tuple[str, httpx.Client]]:
        return [
            (
                s.node_id,
                httpx.Client(transport=s.transport(timeout=relay_timeout), timeout=timeout_s),
            )
            for s in held
        ]

    return fresh


def party_of(session: VeilSession) -> MpcParty | None:
    """The MPC party a verified node's descriptor states (None: it hosts none)."""
    descriptor = session.report.descriptor
    return None if descriptor is None else descriptor.mpc


@dataclass(frozen=True)
class PartyChoice:
    """The nodes chosen for one MPC session, and what their descriptors agree on."""

    candidates: tuple[Candidate, ...]  # in rank order: the first is rank 0
    protocol: str
    weights_sha256: str  # hex, what the client's model source must match

    @property
    def operators(self) -> list[str]:
        return [c.operator for c in self.candidates]


def choose_parties(
    candidates: Sequence[Candidate],
    model_id: str,
    *,
    protocol: str = "aby3",
    busy: Collection[str] = (),
) -> PartyChoice:
    """Pick the parties of one session among verified candidates, in the order given (the
    caller ranks them): nodes whose descriptor states a party for `model_id` with `protocol`,
    of distinct operators, all with the same layer weights; none of the `busy` operators.

    Raises `NoPartyQuorum` saying what is missing (no party for the model, another protocol,
    too few, weights that disagree), or `PartiesBusy` when only busy ones would complete it.
    Sends nothing: it reads verified descriptors only.
    """
    need = MPC_WORLD_SIZE.get(protocol)
    if need is None:
        raise NoPartyQuorum(
            f"the gateway runs only {', '.join(MPC_WORLD_SIZE)} MPC sessions, not {protocol!r}"
        )
    hosting: list[tuple[Candidate, MpcParty]] = []
    for c in candidates:
        party = party_of(c.session)
        if party is not None and party.model_id == model_id:
            hosting.append((c, party))
    if not hosting:
        raise NoPartyQuorum(f"no verified node hosts an MPC party for {model_id!r}")
    matching = [(c, p) for c, p in hosting if p.protocol == protocol]
    if not matching:
        others = sorted({p.protocol for _, p in hosting})
        raise NoPartyQuorum(
            f"the MPC parties for {model_id!r} run {', '.join(others)}, not {protocol}"
        )
    groups: dict[bytes, list[Candidate]] = {}
    seen: set[str] = set()
    for c, p in matching:
        if c.operator.lower() in seen:  # one share per operator
            continue
        seen.add(c.operator.lower())
        groups.setdefault(p.weights_hash, []).append(c)
    weights, group = max(groups.items(), key=lambda kv: len(kv[1]))  # first of the largest
    if len(group) < need:
        split = "" if len(groups) == 1 else f" ({len(groups)} different layer weights among them)"
        raise NoPartyQuorum(
            f"{protocol} needs {need} party nodes of distinct operators for {model_id!r}; "
            f"{len(group)} verified node(s) host one{split}"
        )
    busy_ops = {op.lower() for op in busy}
    idle = [c for c in group if c.operator.lower() not in busy_ops]
    if len(idle) < need:
        raise PartiesBusy(
            f"the MPC parties for {model_id!r} are busy with other sessions of this gateway "
            f"({len(group) - len(idle)} of {len(group)}; a party runs one session at a time)"
        )
    return PartyChoice(tuple(idle[:need]), protocol, weights.hex())
