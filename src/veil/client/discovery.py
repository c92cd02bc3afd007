"""Which nodes a client may use: the chain's registry, each node verified under a mode's policy.

`Discovery` keeps two things:

* a **chain view** (`ChainView`): the active operators of the NodeRegistry with their records,
  the minimum stake and the chain's time, read lazily and kept `view_ttl_s` (a few seconds);
* a **verified session per (node, mode)** (`veil.client.session.VeilSession`): the node's
  descriptor fetched through the relay (a node's relay id is its operator address) and
  verified under the mode's policy, with the ReleaseLog as the release source; then checked
  against the registry: the descriptor's address is the operator's, and the served model's
  weights hash is the one registered on chain.

A node is **checked in the background**, never on a caller's thread: one descriptor fetch (with
short connect and read deadlines and an overall one, `DiscoveryConfig`) verified under every
mode at once, in a worker pool. `start(mode, model_id)` sorts the nodes without waiting: a
cached session is a candidate now, a cached refusal a refusal, anything else starts (or joins)
its node's check and is *pending*. The caller waits for pending checks as long as it chooses
(`eligible` here, `veil.client.gateway.common.select` on the event loop), and `settle` counts
a check not done by then as unavailable for this round; it goes on, and its result is cached
for the next. So one node that accepts TCP and never answers delays nobody: a request with a
verified node at hand waits for no check at all, and the listings wait a fraction of a second.

A node whose fetch failed is not checked again for `retry_s`, doubled with each failure in a
row up to `retry_max_s`, and reset by a success. Policy refusals are cached for
`refusal_ttl_s`, so a `tee` request in a network of `dev` nodes does not fetch every
descriptor again each time. A cached session is verified again every `reverify_s`, in the
background while it stays in use, so rotated OHTTP keys are usually known before a request
meets them.

Which candidate gets a request, and node health (requests in flight, time to first byte, down
after a failure), belong to the gateway's `Router` (`veil.client.gateway.routing`); discovery
only asks it, through `down_for`, which nodes to skip without checking them. Nothing here
sends a request to a node: only the public descriptor fetches go through the relay.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from veil.attest.errors import NodeRejected
from veil.attest.policy import Policy, PrivacyMode
from veil.attest.report import StepStatus
from veil.client.errors import DescriptorUnavailable
from veil.client.receipts import ReceiptStore
from veil.client.session import VeilSession, fetch_descriptor, open_session
from veil.errors import VeilError
from veil.wire.endpoint import is_canonical_endpoint

if TYPE_CHECKING:
    from veil.chain.tickets import TicketDomain
    from veil.chain.types import NodeInfo, SenderFunds, TokenKeys

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

    def active_nodes(self) -> Sequence[NodeInfo]: ...
    def min_stake(self) -> int: ...
    def chain_time(self) -> int: ...
    def is_release_approved(self, model_hash: bytes, measurement: bytes) -> bool: ...
    def ticket_domain(self) -> TicketDomain: ...
    def sender_funds(self, sender: str | None = None) -> SenderFunds: ...
    def token_keys(self, operator: str) -> TokenKeys: ...


@dataclass(frozen=True)
class DiscoveryConfig:
    view_ttl_s: float = 5.0  # the chain view is read again when older than this
    max_stale_s: float = 60.0  # a failed re-read keeps the old view this long at most
    refusal_ttl_s: float = 10.0  # a node refused under a mode is not checked again for this
    reverify_s: float = 300.0  # a cached session's descriptor is fetched and verified again
    down_s: float = 30.0  # the gateway's Router skips a node that failed a request this long,
    down_max_s: float = 600.0  # ...doubled for each failure in a row, up to this
    ewma_alpha: float = 0.3  # the Router's weight of the newest time-to-first-byte sample
    max_kept_receipts: int = 64  # verified receipts kept in memory per session
    verify_workers: int = 8  # node checks (descriptor fetches) in flight at once
    # Descriptor and ticket-params fetches through the relay: short, separate deadlines, since
    # these documents are small and a node that accepts TCP and never answers must cost a
    # background check seconds, not anyone's wait. (A chat request keeps the transport's
    # own, longer read deadline: generation takes long.)
    connect_timeout_s: float = 2.0  # to open a connection to the relay
    read_timeout_s: float = 5.0  # longest silence while an answer is awaited or read
    write_timeout_s: float = 5.0  # to send the request
    pool_timeout_s: float = 2.0  # to get a connection from the client's pool
    fetch_deadline_s: float = 10.0  # one descriptor fetch at most (its bytes may trickle)
    # How long callers wait for checks in flight; a node not checked by then is unavailable
    # for this round (its check goes on, and counts for the next):
    check_deadline_s: float = 3.0  # a chat request with no verified node at hand
    listing_deadline_s: float = 0.5  # /v1/models and /veil/status, all modes together
    retry_s: float = 2.0  # a node whose fetch failed is checked again after this,
    retry_max_s: float = 300.0  # ...doubled for each failure in a row, up to this
    retry_jitter: float = 0.25  # ...less a random fraction up to this
    # A request that has enough verified nodes at hand looks only at those; the sweep over
    # every node (which starts the checks that are due) then runs in the background, at most
    # this often per (mode, model), so 1,000 registered nodes cost a request no time.
    sweep_s: float = 2.0

    def fetch_timeout(self) -> httpx.Timeout:
        """The deadlines of descriptor and ticket-params fetches."""
        return httpx.Timeout(
            connect=self.connect_timeout_s,
            read=self.read_timeout_s,
            write=self.write_timeout_s,
            pool=self.pool_timeout_s,
        )


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
    was_eligible: bool = False  # UNAVAILABLE, but it passed the mode's policy when last checked

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
    """The nodes of one (mode, model) request: candidates, refusals, and checks in flight
    (`pending`, until `Discovery.settle` makes each a candidate or a refusal)."""

    candidates: list[Candidate]
    refusals: dict[str, Refusal]  # operator -> why it is not a candidate
    mode: PrivacyMode = PrivacyMode.ANONYMOUS
    model_id: str | None = None
    pending: dict[str, Future[None]] = field(default_factory=dict)  # operator -> its check
    nodes: dict[str, tuple[int, NodeInfo]] = field(default_factory=dict)  # view order, record
    started: dict[str, float] = field(default_factory=dict)  # pending: its check's start
    unsettled: set[str] = field(default_factory=set)  # unavailable: checks still running

    def reasons(self) -> str:
        return "; ".join(f"{op}: {r.reason}" for op, r in self.refusals.items()) or "none"

    def wait_left(self, began: float, wait_s: float, enough: int | None) -> float:
        """Seconds still worth waiting for the checks in flight (0: none), for a caller that
        began at `began` (`time.monotonic()`) and waits `wait_s` at most: while fewer than
        `enough` candidates are at hand (None: until all checks end), and no longer than
        `wait_s` after the newest of those checks began, so a check that has already run
        that long is not waited for again by every later caller."""
        if not self.pending or (enough is not None and len(self.candidates) >= enough):
            return 0.0
        newest = max(self.started[op] for op in self.pending)
        return max(0.0, min(began, newest) + wait_s - time.monotonic())

    def refused_by_policy(self) -> bool:
        """Whether this is a policy refusal (403) rather than an outage (503).

        True when there is no candidate, some node is refused by the policy or the registry,
        and no node that is unavailable now passed the policy when last checked. A node whose
        descriptor was never seen counts neither way (what it would present is unknown), so an
        unreachable newcomer cannot turn a refusal into a 503; a node that is unreachable but
        was refused by this policy when last seen counts as refused (`Discovery` reports it as
        a policy refusal). Nothing known of any node is a 503."""
        if self.candidates or self.pending:
            return False
        refusals = self.refusals.values()
        return any(r.kind == POLICY for r in refusals) and not any(r.was_eligible for r in refusals)


@dataclass
class _Node:
    """What discovery holds of one node: its sessions and refusals per mode, its check."""

    sessions: dict[PrivacyMode, VeilSession] = field(default_factory=dict)
    refusals: dict[PrivacyMode, Refusal] = field(default_factory=dict)  # kept until `until`
    passed: set[PrivacyMode] = field(default_factory=set)  # when last checked
    policy_refused: dict[PrivacyMode, str] = field(default_factory=dict)  # when last checked
    checked_at: float | None = None  # monotonic time of the last complete check
    check: Future[None] | None = None  # the check in flight
    check_started: float = 0.0  # time.monotonic() when it began
    failures: int = 0  # fetches failed in a row
    retry_at: float = 0.0  # monotonic: no check before this (backoff after failures)
    unreachable: str = ""  # why the last fetch failed
    # while in backoff: (seconds left, the refusal saying so), per mode
    waiting: dict[PrivacyMode, tuple[int, Refusal]] = field(default_factory=dict)


@dataclass
class _Serving:
    """A view's nodes for one model: those the registry allows, and those it refuses."""

    nodes: dict[str, tuple[int, NodeInfo]]  # operator -> (view index, record)
    refused: dict[str, tuple[int, NodeInfo, Refusal]]


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
        # One transport (connection pool) for every descriptor fetch: thread-safe, and a new
        # one per fetch would cost each check a TLS context's CPU.
        self._fetcher = descriptor_outer or httpx.HTTPTransport()
        self._clock = clock
        self._down_for = down_for
        self._releases = ChainReleases(chain)  # type: ignore[arg-type]
        self._view: ChainView | None = None
        self._chain_lock = threading.Lock()  # one chain read at a time
        self._lock = threading.Lock()  # the caches
        self._nodes: dict[str, _Node] = {}
        self._pool = ThreadPoolExecutor(self.config.verify_workers, "veil-verify")
        # Per chain view: the nodes serving a model, in view order, and registry refusals.
        self._serving_of: tuple[ChainView | None, dict[str | None, _Serving]] = (None, {})
        self._sweeper = ThreadPoolExecutor(1, "veil-sweep")
        self._swept: dict[tuple[PrivacyMode, str | None], float] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._sweeper.shutdown(wait=False, cancel_futures=True)
        if self._descriptor_outer is None:
            self._fetcher.close()

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
        nodes = tuple(self.chain.active_nodes())
        chain_time = self.chain.chain_time()
        view = ChainView(nodes, min_stake, chain_time, self._clock(), time.time())
        log.debug("chain view: %d active node(s)", len(nodes))
        return view

    def fresh_view(self) -> ChainView | None:
        """The cached chain view when it is young enough to use as is; else None."""
        view = self._view
        if view is not None and self._clock() - view.read_at < self.config.view_ttl_s:
            return view
        return None

    # ------------------------------------------------------------------ selection

    def policy(self, mode: PrivacyMode) -> Policy:
        return Policy.for_mode(mode, releases=self._releases)

    def _node(self, operator: str) -> _Node:
        with self._lock:
            return self._nodes.setdefault(operator, _Node())

    def _serving(self, view: ChainView, model_id: str | None) -> _Serving:
        """The view's nodes serving `model_id` (None: all), read once per view."""
        cached_view, per_model = self._serving_of
        previous = per_model.get(model_id)
        if cached_view is not view:
            per_model = {}
            self._serving_of = (view, per_model)
        elif previous is not None:
            return previous
        serving = _Serving({}, {})
        for i, info in enumerate(view.nodes):
            op = info.operator
            # a record the chain client kept unchanged keeps its verdict (the endpoint check
            # is the costly part at 1,000 nodes)
            old_ok = previous.nodes.get(op) if previous else None
            old_refused = previous.refused.get(op) if previous else None
            if old_ok is not None and old_ok[1] is info:
                serving.nodes[op] = (i, info)
                continue
            if old_refused is not None and old_refused[1] is info:
                serving.refused[op] = (i, info, old_refused[2])
                continue
            if model_id is not None and not serves(info, model_id):
                continue
            reason = registry_reason(info, view.min_stake)
            if reason is not None:
                serving.refused[op] = (i, info, Refusal(POLICY, reason))
            else:
                serving.nodes[op] = (i, info)
        per_model[model_id] = serving
        return serving

    def start(
        self,
        mode: PrivacyMode | str,
        model_id: str | None,
        view: ChainView | None = None,
        *,
        enough: int | None = None,
    ) -> Selection:
        """The nodes for `mode` (serving `model_id`, when given) as far as known now, without
        waiting: checks that are due start in the background and are listed as `pending`.
        Nodes `down_for` skips count as refused (`unavailable`). Reads the chain only when no
        `view` is given and the cached one is stale.

        With `enough`, when at least that many verified nodes are at hand, only they are
        looked at (no refusals are listed); the sweep over all nodes then runs in the
        background if it has not run for `sweep_s`."""
        mode = PrivacyMode(mode)
        view = view or self.view()
        serving = self._serving(view, model_id)
        if enough is not None:
            selection = self._verified_only(mode, model_id, serving, enough)
            if selection is not None:
                key = (mode, model_id)
                if self._clock() - self._swept.get(key, -float("inf")) >= self.config.sweep_s:
                    self._swept[key] = self._clock()
                    with contextlib.suppress(RuntimeError):  # shut down: closing
                        self._sweeper.submit(self._sweep, mode, model_id, view)
                return selection
        return self._sweep(mode, model_id, view)

    def _sweep(self, mode: PrivacyMode, model_id: str | None, view: ChainView) -> Selection:
        """Every node serving `model_id`: candidates, refusals and checks started."""
        self._swept[(mode, model_id)] = self._clock()
        serving = self._serving(view, model_id)
        selection = Selection([], {}, mode, model_id)
        for op, (i, info, refusal) in serving.refused.items():
            selection.nodes[op] = (i, info)
            selection.refusals[op] = refusal
        for i, info in serving.nodes.values():
            self._consider(selection, i, info)
        return selection

    def _verified_only(
        self, mode: PrivacyMode, model_id: str | None, serving: _Serving, enough: int
    ) -> Selection | None:
        """A selection of the verified nodes alone, or None when fewer than `enough`."""
        with self._lock:
            verified = [op for op, node in self._nodes.items() if mode in node.sessions]
        verified = [op for op in verified if op in serving.nodes]
        if len(verified) < enough:
            return None
        selection = Selection([], {}, mode, model_id)
        for op in verified:
            i, info = serving.nodes[op]
            self._consider(selection, i, info)
        if len(selection.candidates) < enough:
            return None
        return selection

    def _consider(self, selection: Selection, i: int, info: NodeInfo) -> None:
        selection.nodes[info.operator] = (i, info)
        down = self._down_for(info.operator) if self._down_for is not None else 0.0
        if down > 0:
            why = f"failed recently; skipped for {down:.0f} s more"
            selection.refusals[info.operator] = self._unavailable(
                info.operator, selection.mode, why
            )
            return
        outcome = self._classify(info, selection.mode, selection.model_id, start=True)
        self._place(
            selection,
            info,
            outcome or self._unavailable(info.operator, selection.mode, "not checked"),
        )

    def settle(self, selection: Selection, *, final: bool = False) -> Selection:
        """Place the pending nodes whose check has ended; with `final`, the others too, as
        unavailable for this round (their checks go on, for the next)."""
        for op, check in list(selection.pending.items()):
            running = not check.done()
            if running and not final:
                continue
            del selection.pending[op]
            selection.started.pop(op, None)
            info = selection.nodes[op][1]
            outcome = None
            if not running:
                outcome = self._classify(info, selection.mode, selection.model_id, start=False)
            if isinstance(outcome, Future):  # another check of the node began meanwhile
                running = True
                if not final:
                    self._place(selection, info, outcome)
                    continue
            if running:
                why = "not checked yet: its descriptor fetch is still running"
                outcome = self._unavailable(op, selection.mode, why)
                selection.unsettled.add(op)
            elif outcome is None:
                outcome = self._unavailable(op, selection.mode, "not checked")
            self._place(selection, info, outcome)
        if final:
            selection.candidates.sort(key=lambda c: selection.nodes[c.operator][0])
        return selection

    def eligible(
        self,
        mode: PrivacyMode | str,
        model_id: str | None,
        *,
        wait_s: float | None = None,
        enough: int | None = None,
    ) -> Selection:
        """`start`, then wait (blocking) for checks in flight, at most `wait_s` (default
        `check_deadline_s`) and only until `enough` candidates are at hand (None: all)."""
        selection = self.start(mode, model_id, enough=enough)
        wait_s = self.config.check_deadline_s if wait_s is None else wait_s
        began = time.monotonic()
        while (left := selection.wait_left(began, wait_s, enough)) > 0:
            wait(list(selection.pending.values()), timeout=left, return_when=FIRST_COMPLETED)
            self.settle(selection)
        return self.settle(selection, final=True)

    def _place(
        self, selection: Selection, info: NodeInfo, outcome: Candidate | Refusal | Future[None]
    ) -> None:
        if isinstance(outcome, Candidate):
            selection.candidates.append(outcome)
        elif isinstance(outcome, Refusal):
            selection.refusals[info.operator] = outcome
        else:
            selection.pending[info.operator] = outcome
            selection.started[info.operator] = self._node(info.operator).check_started

    def _classify(
        self, info: NodeInfo, mode: PrivacyMode, model_id: str | None, *, start: bool
    ) -> Candidate | Refusal | Future[None] | None:
        """The node under `mode` from what is cached: a candidate, a refusal, or its check in
        flight (started here when due and `start`); None when nothing is known or running."""
        node = self._node(info.operator)
        now = self._clock()
        with self._lock:
            refusal = node.refusals.get(mode)
            if refusal is not None and now >= refusal.until:
                del node.refusals[mode]
                refusal = None
            session = node.sessions.get(mode)
            stale = node.checked_at is None or now - node.checked_at >= self.config.reverify_s
            due = (session is None and refusal is None) or (session is not None and stale)
            if due and start and node.check is None and now >= node.retry_at:
                with contextlib.suppress(RuntimeError):  # the pool is shut down: closing
                    node.check = self._pool.submit(self._check_node, info)
                    node.check_started = time.monotonic()
            check, retry_at, unreachable = node.check, node.retry_at, node.unreachable
        if session is not None:  # in use while it is verified again in the background
            refused = self._match_registry(session, info, model_id)
            return refused or Candidate(info, session, mode)
        if refusal is not None:
            return refusal
        if check is not None:
            return check
        if unreachable and now < retry_at:
            left = round(retry_at - now)
            waiting = node.waiting.get(mode)
            if waiting is None or waiting[0] != left:  # made once a second, not per request
                why = f"unreachable ({unreachable}); next check in {left} s"
                waiting = node.waiting[mode] = (left, self._unavailable(info.operator, mode, why))
            return waiting[1]
        return None

    def _unavailable(self, operator: str, mode: PrivacyMode, why: str) -> Refusal:
        """The refusal of a node that cannot be used now: a policy refusal when it failed
        this mode's policy when last checked (being unreachable does not change that)."""
        node = self._node(operator)
        with self._lock:
            refused = node.policy_refused.get(mode)
            passed = mode in node.passed
        if refused is not None:
            return Refusal(POLICY, f"{refused} (when last checked; now {why})")
        return Refusal(UNAVAILABLE, why, was_eligible=passed)

    # ------------------------------------------------------------------ checks (workers)

    def _check_node(self, info: NodeInfo) -> None:
        """Fetch the node's descriptor once and verify it under every mode (a worker thread)."""
        node = self._node(info.operator)
        try:
            try:
                data = fetch_descriptor(
                    self.relay_url,
                    info.operator,
                    transport=self._fetcher,
                    timeout=self.config.fetch_timeout(),
                    deadline_s=self.config.fetch_deadline_s,
                )
            except DescriptorUnavailable as err:
                self._unreachable(node, info.operator, str(err))
                return
            outcomes = {mode: self._verify(info, node, mode, data) for mode in PrivacyMode}
            with self._lock:
                for mode, outcome in outcomes.items():
                    if isinstance(outcome, Refusal):
                        node.refusals[mode] = outcome
                        node.sessions.pop(mode, None)
                        if outcome.kind == POLICY:
                            node.passed.discard(mode)
                            node.policy_refused[mode] = outcome.reason
                    else:
                        node.sessions[mode] = outcome
                        node.refusals.pop(mode, None)
                        node.passed.add(mode)
                        node.policy_refused.pop(mode, None)
                node.checked_at = self._clock()
                node.failures, node.retry_at, node.unreachable = 0, 0.0, ""
                node.waiting.clear()
        except Exception:  # never lose a check silently: the node stays unchecked, and says so
            log.exception("checking node %s failed", info.operator)
            self._unreachable(node, info.operator, "its check failed")
        finally:
            with self._lock:
                node.check = None

    def _verify(
        self, info: NodeInfo, node: _Node, mode: PrivacyMode, data: bytes
    ) -> VeilSession | Refusal:
        """The node's session under `mode` from its descriptor `data` (a cached session is
        verified again in place, and must keep its address), or why not."""
        until = self._clock() + self.config.refusal_ttl_s
        session = node.sessions.get(mode)
        try:
            if session is not None:
                session.reverify(data)
                return session
            session = open_session(
                self.relay_url,
                info.operator,
                data,
                policy=self.policy(mode),
                store=self.store,
                outer=self._descriptor_outer,
                fetch_timeout=self.config.fetch_timeout(),
            )
        except NodeRejected as err:
            return Refusal(POLICY, f"refused at {err.check}: {err}", until)
        except VeilError as err:  # a chain error while checking releases, a key list...
            reason = f"could not be checked: {type(err).__name__}: {err}"
            return Refusal(UNAVAILABLE, reason, until, was_eligible=mode in node.passed)
        session.checker.max_kept = self.config.max_kept_receipts
        log.info("node %s verified for %s (%s)", info.operator, mode, session.attestation_kind)
        return session

    def _unreachable(self, node: _Node, operator: str, why: str) -> None:
        """The node's fetch failed: its sessions go, and it waits out a growing backoff."""
        with self._lock:
            node.failures += 1
            backoff = self.config.retry_s * 2 ** min(node.failures - 1, 32)
            backoff = min(self.config.retry_max_s, backoff)
            # spread out: 1,000 nodes that failed together are not all checked again together
            backoff *= 1 - self.config.retry_jitter * random.random()
            node.retry_at = self._clock() + backoff
            node.unreachable = why
            node.sessions.clear()
            node.waiting.clear()
        log.info("node %s not checked (%s); next check in %.0f s", operator, why, backoff)

    def _match_registry(
        self, session: VeilSession, info: NodeInfo, model_id: str | None
    ) -> Refusal | None:
        """Why the verified descriptor does not match the registry (None: it does): it must
        be the registered operator's, serving what it registered, and `model_id` must be
        approved in it."""
        if session.address.lower() != info.operator.lower():
            return Refusal(POLICY, f"its descriptor names {session.address}, not the operator")
        approved = {m.model_id: m.weights_hash for m in session.report.approved_models}
        for entry in info.models:
            if model_id is not None and entry.model_id != model_id:
                continue
            if entry.model_id not in approved:
                return Refusal(POLICY, f"{entry.model_id!r} is not an approved release on it")
            if approved[entry.model_id] != entry.weights_hash:
                return Refusal(
                    POLICY,
                    f"the weights hash it serves for {entry.model_id!r} differs from the "
                    "registry's",
                )
        return None

    def drop_session(self, operator: str, mode: PrivacyMode) -> None:
        """Forget a session whose node failed verification again (keys, identity)."""
        node = self._node(operator)
        with self._lock:
            node.sessions.pop(mode, None)


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
