"""Which nodes a client may use: the chain's registry, each node verified under a mode's policy.

`Discovery` keeps two things:

* a **chain view** (`ChainView`): the active operators of the NodeRegistry with their records,
  the minimum stake and the chain's time, read lazily and kept `view_ttl_s` (a few seconds);
* a **verified session per (node, mode)** (`veil.client.session.VeilSession`): the node's
  descriptor fetched through the relay (a node's relay id is its operator address) and
  verified under the mode's policy, with the ReleaseLog as the release source; then checked
  against the registry: the descriptor's address is the operator's, and the served model's
  weights hash is the one registered on chain.

`eligible(mode, model_id)` returns the usable candidates and, for every other node, why it was
refused. Which candidate gets a request, and node health (requests in flight, time to first
byte, down after a failure), belong to the gateway's `Router` (`veil.client.gateway.routing`);
discovery only asks it, through `down_for`, which nodes to skip without checking them.
Refusals are cached for `refusal_ttl_s`, so a `tee` request in a network of `dev` nodes does
not fetch every descriptor again each time. A cached session is verified again (in a worker
thread, not on the event loop) every `reverify_s`, so rotated OHTTP keys are usually known
before a request meets them. Nothing here sends a request to a node: only the
public descriptor fetches go through the relay.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from veil.attest.errors import NodeRejected
from veil.attest.policy import Policy, PrivacyMode
from veil.attest.report import StepStatus
from veil.client.errors import ClientError, DescriptorUnavailable
from veil.client.receipts import ReceiptStore
from veil.client.session import VeilSession, connect
from veil.errors import VeilError
from veil.wire.endpoint import is_canonical_endpoint

if TYPE_CHECKING:
    from veil.chain.tickets import TicketDomain
    from veil.chain.types import NodeInfo, SenderFunds

__all__ = [
    "Candidate",
    "ChainReader",
    "ChainView",
    "Discovery",
    "DiscoveryConfig",
    "Refusal",
    "Selection",
]

log = logging.getLogger(__name__)

POLICY = "policy"  # a refusal kind: the node does not satisfy the mode's policy (or registry)
UNAVAILABLE = "unavailable"  # a refusal kind: the node could not be reached or checked now


class ChainReader(Protocol):
    """What discovery and payment read from the chain (`veil.chain.ChainClient` has it all)."""

    def iter_active_operators(self) -> Iterable[tuple[str, int]]: ...
    def get_node(self, operator: str) -> NodeInfo: ...
    def min_stake(self) -> int: ...
    def chain_time(self) -> int: ...
    def is_release_approved(self, model_hash: bytes, measurement: bytes) -> bool: ...
    def ticket_domain(self) -> TicketDomain: ...
    def sender_funds(self, sender: str | None = None) -> SenderFunds: ...


@dataclass(frozen=True)
class DiscoveryConfig:
    view_ttl_s: float = 5.0  # the chain view is read again when older than this
    max_stale_s: float = 60.0  # a failed re-read keeps the old view this long at most
    refusal_ttl_s: float = 10.0  # a node refused under a mode is not checked again for this
    reverify_s: float = 300.0  # a cached session's descriptor is fetched and verified again
    down_s: float = 30.0  # the gateway's Router skips a node that failed this long
    ewma_alpha: float = 0.3  # the Router's weight of the newest time-to-first-byte sample
    max_kept_receipts: int = 64  # verified receipts kept in memory per session
    verify_workers: int = 4  # descriptor fetches run in parallel


@dataclass(frozen=True)
class ChainView:
    """The registry as read at one moment."""

    nodes: tuple[NodeInfo, ...]  # active operators' records, in registration order
    min_stake: int  # token base units
    chain_time: int  # latest block timestamp when read
    read_at: float  # local monotonic time of the read
    wall_at: float  # local wall time of the read

    def node(self, operator: str) -> NodeInfo | None:
        return next((n for n in self.nodes if n.operator.lower() == operator.lower()), None)

    def chain_now(self) -> int:
        """The chain's time now, estimated from the read (blocks may be rare on a devnet)."""
        return self.chain_time + max(0, int(time.time() - self.wall_at))


@dataclass(frozen=True)
class Refusal:
    kind: str  # POLICY or UNAVAILABLE
    reason: str  # one line, for the user
    until: float = 0.0  # monotonic time the refusal is kept until

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "reason": self.reason}


@dataclass(frozen=True)
class Candidate:
    """A node verified for a mode and model, with the registry record it was checked against."""

    info: NodeInfo
    session: VeilSession
    mode: PrivacyMode

    @property
    def operator(self) -> str:
        return self.info.operator


@dataclass
class Selection:
    candidates: list[Candidate]
    refusals: dict[str, Refusal]  # operator -> why it is not a candidate

    def reasons(self) -> str:
        return "; ".join(f"{op}: {r.reason}" for op, r in self.refusals.items()) or "none"


@dataclass
class _Verified:
    """What discovery holds of one node: its sessions and refusals per mode."""

    sessions: dict[PrivacyMode, VeilSession] = field(default_factory=dict)
    verified_at: dict[PrivacyMode, float] = field(default_factory=dict)  # monotonic
    refusals: dict[PrivacyMode, Refusal] = field(default_factory=dict)


def registry_reason(info: NodeInfo, min_stake: int) -> str | None:
    """Why the registry record alone rules the node out (None: it does not)."""
    if not info.active:
        return "not active in the registry"
    if info.stake < min_stake:
        return f"stake {info.stake} below the minimum {min_stake}"
    if not is_canonical_endpoint(info.endpoint):  # relays skip it too (veil.wire.endpoint)
        return "registered endpoint is not http(s)://host[:port]"
    return None


def serves(info: NodeInfo, model_id: str) -> bool:
    return any(m.model_id == model_id for m in info.models)


class Discovery:
    """The chain view and verified sessions per (node, mode); thread-safe.

    `down_for(operator)`: seconds a node is still skipped for after a failure (the gateway's
    `Router.down_for`); such a node is refused as `unavailable` without being checked. None:
    no node is ever skipped."""

    def __init__(
        self,
        chain: ChainReader,
        relay_url: str,
        *,
        store: ReceiptStore | None = None,
        descriptor_outer: httpx.BaseTransport | None = None,
        config: DiscoveryConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        down_for: Callable[[str], float] | None = None,
    ) -> None:
        from veil.chain.releases import ChainReleases

        self.chain = chain
        self.relay_url = relay_url
        self.store = store
        self.config = config or DiscoveryConfig()
        self._descriptor_outer = descriptor_outer
        self._clock = clock
        self._down_for = down_for
        self._releases = ChainReleases(chain)  # type: ignore[arg-type]
        self._view: ChainView | None = None
        self._chain_lock = threading.Lock()  # one chain read at a time
        self._lock = threading.Lock()  # the caches
        self._nodes: dict[str, _Verified] = {}
        self._pool = ThreadPoolExecutor(self.config.verify_workers, "veil-verify")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ chain view

    @property
    def last_view(self) -> ChainView | None:
        """The latest view read, however old (None before the first read)."""
        return self._view

    def view(self, *, force: bool = False) -> ChainView:
        """The chain view, read again when older than `view_ttl_s` (raises `ChainError` when
        the chain cannot be read and no view younger than `max_stale_s` is at hand)."""
        with self._chain_lock:
            now = self._clock()
            view = self._view
            if view is not None and not force and now - view.read_at < self.config.view_ttl_s:
                return view
            try:
                view = self._read_view()
            except VeilError as err:
                if view is not None and now - view.read_at < self.config.max_stale_s:
                    log.warning(
                        "chain read failed (%s); using the view of %.0f s ago",
                        type(err).__name__,
                        now - view.read_at,
                    )
                    return view
                raise
            self._view = view
            return view

    def _read_view(self) -> ChainView:
        min_stake = self.chain.min_stake()
        nodes = tuple(self.chain.get_node(op) for op, _stake in self.chain.iter_active_operators())
        chain_time = self.chain.chain_time()
        view = ChainView(nodes, min_stake, chain_time, self._clock(), time.time())
        log.debug("chain view: %d active node(s)", len(nodes))
        return view

    # ------------------------------------------------------------------ verification

    def policy(self, mode: PrivacyMode) -> Policy:
        return Policy.for_mode(mode, releases=self._releases)

    def _node(self, operator: str) -> _Verified:
        with self._lock:
            return self._node_locked(operator)

    def _node_locked(self, operator: str) -> _Verified:
        return self._nodes.setdefault(operator, _Verified())

    def fresh_view(self) -> ChainView | None:
        """The cached chain view when it is young enough to use as is; else None."""
        view = self._view
        if view is not None and self._clock() - view.read_at < self.config.view_ttl_s:
            return view
        return None

    def eligible_cached(self, mode: PrivacyMode | str, model_id: str | None) -> Selection | None:
        """`eligible` from what is cached alone (no chain read, no descriptor fetch), so the
        gateway can decide on the event loop; None when anything needs I/O first."""
        if self.fresh_view() is None:
            return None
        try:
            return self.eligible(mode, model_id, cached_only=True)
        except _NotCached:
            return None

    def _check(
        self,
        info: NodeInfo,
        mode: PrivacyMode,
        model_id: str | None,
        *,
        cached_only: bool = False,
    ) -> Candidate:
        """A verified candidate for `info` under `mode` (serving `model_id`), or raise
        `_Refused`. Uses the cached session or refusal when there is one (with `cached_only`,
        raises `_NotCached` where it would have to fetch)."""
        node = self._node(info.operator)
        now = self._clock()
        with self._lock:
            refusal = node.refusals.get(mode)
            if refusal is not None and now >= refusal.until:
                del node.refusals[mode]
                refusal = None
            session = node.sessions.get(mode)
        if refusal is not None:
            raise _Refused(refusal)
        due = session is not None and now - node.verified_at.get(mode, now) >= (
            self.config.reverify_s
        )
        if cached_only and (session is None or due):
            raise _NotCached
        if session is None:
            session = self._verify(info, mode)
        elif due:
            self._reverify(session, node, mode)
        # The session stays cached either way: the registry is matched again on every call.
        self._match_registry(session, info, model_id)
        return Candidate(info, session, mode)

    def _verify(self, info: NodeInfo, mode: PrivacyMode) -> VeilSession:
        node = self._node(info.operator)
        try:
            session = connect(
                self.relay_url,
                info.operator,
                policy=self.policy(mode),
                store=self.store,
                outer=self._descriptor_outer,
            )
        except NodeRejected as err:
            raise self._refuse(node, mode, POLICY, f"refused at {err.check}: {err}") from None
        except DescriptorUnavailable as err:
            raise self._refuse(node, mode, UNAVAILABLE, str(err)) from None
        except VeilError as err:  # a chain error while checking releases, a key list...
            reason = f"could not be checked: {type(err).__name__}: {err}"
            raise self._refuse(node, mode, UNAVAILABLE, reason) from None
        session.checker.max_kept = self.config.max_kept_receipts
        log.info("node %s verified for %s (%s)", info.operator, mode, session.attestation_kind)
        with self._lock:
            node.sessions[mode] = session
            node.verified_at[mode] = self._clock()
        return session

    def _reverify(self, session: VeilSession, node: _Verified, mode: PrivacyMode) -> None:
        try:
            session.reverify()
        except NodeRejected as err:
            raise self._refuse(node, mode, POLICY, f"refused at {err.check}: {err}") from None
        except VeilError as err:
            reason = f"could not be verified again: {type(err).__name__}: {err}"
            raise self._refuse(node, mode, UNAVAILABLE, reason) from None
        with self._lock:
            node.verified_at[mode] = self._clock()

    def _refuse(self, node: _Verified, mode: PrivacyMode, kind: str, reason: str) -> _Refused:
        refusal = Refusal(kind, reason, self._clock() + self.config.refusal_ttl_s)
        with self._lock:
            node.refusals[mode] = refusal
            node.sessions.pop(mode, None)
        return _Refused(refusal)

    def _match_registry(self, session: VeilSession, info: NodeInfo, model_id: str | None) -> None:
        """The verified descriptor must be the registered operator's, serving what it
        registered; and `model_id` must be approved in it."""
        if session.address.lower() != info.operator.lower():
            raise _Refused(
                Refusal(POLICY, f"its descriptor names {session.address}, not the operator")
            )
        approved = {m.model_id: m.weights_hash for m in session.report.approved_models}
        for entry in info.models:
            if model_id is not None and entry.model_id != model_id:
                continue
            if entry.model_id not in approved:
                raise _Refused(
                    Refusal(POLICY, f"{entry.model_id!r} is not an approved release on it")
                )
            if approved[entry.model_id] != entry.weights_hash:
                raise _Refused(
                    Refusal(
                        POLICY,
                        f"the weights hash it serves for {entry.model_id!r} differs from "
                        "the registry's",
                    )
                )

    def eligible(
        self, mode: PrivacyMode | str, model_id: str | None, *, cached_only: bool = False
    ) -> Selection:
        """The nodes usable for `mode` (serving `model_id`, when given) and why the others
        are not. Nodes `down_for` skips count as refused (`unavailable`)."""
        mode = PrivacyMode(mode)
        view = self.fresh_view() if cached_only else self.view()
        if view is None:
            raise _NotCached
        refusals: dict[str, Refusal] = {}
        todo: list[NodeInfo] = []
        for info in view.nodes:
            if model_id is not None and not serves(info, model_id):
                continue
            reason = registry_reason(info, view.min_stake)
            if reason is not None:
                refusals[info.operator] = Refusal(POLICY, reason)
                continue
            down = self._down_for(info.operator) if self._down_for is not None else 0.0
            if down > 0:
                refusals[info.operator] = Refusal(
                    UNAVAILABLE, f"failed recently; skipped for {down:.0f} s more"
                )
                continue
            todo.append(info)
        if cached_only:  # inline: nothing here waits on I/O
            checks = [
                (info, functools.partial(self._check, info, mode, model_id, cached_only=True))
                for info in todo
            ]
        else:  # in parallel: a check may fetch and verify a descriptor
            checks = [
                (info, self._pool.submit(self._check, info, mode, model_id).result) for info in todo
            ]
        candidates: list[Candidate] = []
        for info, result in checks:
            try:
                candidates.append(result())
            except _Refused as refused:
                refusals[info.operator] = refused.refusal
        return Selection(candidates, refusals)

    def drop_session(self, operator: str, mode: PrivacyMode) -> None:
        """Forget a session whose node failed verification again (keys, identity)."""
        with self._lock:
            self._node_locked(operator).sessions.pop(mode, None)

    # ------------------------------------------------------------------ status

    def status(self, modes: Iterable[PrivacyMode]) -> list[dict[str, Any]]:
        """Every known node: registry record, verification per mode (or why not). The
        gateway adds each node's health (`Router.health`)."""
        view = self.view()
        selections = {mode: self.eligible(mode, None) for mode in modes}
        out = []
        for info in view.nodes:
            verified: dict[str, Any] = {}
            for mode, selection in selections.items():
                found = next((c for c in selection.candidates if c.operator == info.operator), None)
                if found is not None:
                    verified[str(mode)] = {
                        "verified": True,
                        "attestation": found.session.attestation_kind,
                        "isolation": found.session.report.isolation,
                    }
                else:
                    refusal = selection.refusals.get(info.operator)
                    verified[str(mode)] = {
                        "verified": False,
                        "reason": refusal.reason if refusal else "not checked",
                    }
            party = next(
                (
                    c.session.report.descriptor.mpc
                    for sel in selections.values()
                    for c in sel.candidates
                    if c.operator == info.operator and c.session.report.descriptor is not None
                ),
                None,
            )
            out.append(
                {
                    "address": info.operator,
                    "endpoint": info.endpoint,
                    "stake": str(info.stake),
                    "active": info.active,
                    "models": [
                        {"id": m.model_id, "weights_sha256": m.weights_hash.hex()}
                        for m in info.models
                    ],
                    "modes": verified,
                    "mpc_party": None if party is None else party.to_json(),
                }
            )
        return out


class _NotCached(Exception):
    """A cache-only check met something that needs I/O."""


class _Refused(ClientError):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


def verification_summary(candidate: Candidate, min_stake: int) -> str:
    """One ASCII line naming the checks a candidate passed (for the `x-veil-verification`
    header)."""
    report = candidate.session.report
    passed = [s.name for s in report.steps if s.status is StepStatus.PASSED]
    passed = [name for name in passed if name != "descriptor"]
    parts = [
        f"registry: active, stake {candidate.info.stake} >= {min_stake}",
        "descriptor verified: " + ", ".join(passed),
        "operator and weights hash match the registry",
        *(f"{s.name}: {s.detail}" for s in report.steps if s.status is StepStatus.WARNING),
        "receipt: checked",
    ]
    text = "; ".join(parts)
    return text.encode("ascii", "replace").decode("ascii")
